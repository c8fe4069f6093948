//! The 1+N bundle of a package: the package `andes quantize` wrote, verbatim under
//! `package/`, and N PEFT adapters under `adapters/NAME/`, bound in the manifest to the sha256
//! of the package's manifest (which lists the sha256 of every package file, so it names the
//! whole base). An adapter is taken in only when it was trained against that very package
//! (`[model] package` of the `lora` stage), so what the phone computes is what training saw.
//! [`Bundle`] loads the base once and switches the active adapter between requests.
//!
//! Written in a staging directory and renamed into place. `manifest.json` holds the sha256 of
//! every adapter file; the package's files are checked against the package's own manifest,
//! once, whether the bundle is verified or loaded.

use std::path::Path;

use andes_model::checkpoint::{file_sha256, write_atomically};
use andes_model::lora::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, import_peft_adapter};
use andes_model::{Model, ModelConfig};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::PackageError;
use crate::files::{MANIFEST_FILE, checksums, read_manifest, staging_dir, verify_checksums};
use crate::package::{
    PackageManifest, PackageParts, load_package, open_package, verify_package_files,
};

/// The layout of a package bundle (a float-checkpoint bundle of QALFT runs is version 1).
pub const PACKAGE_BUNDLE_VERSION: u32 = 2;
/// Where the package lies inside the bundle.
pub const PACKAGE_DIR: &str = "package";
/// Where the adapters lie inside the bundle, a directory each, named as the adapter.
pub const ADAPTERS_DIR: &str = "adapters";
/// Written beside an adapter trained against a package: which package, by its hash.
pub const TRAINED_AGAINST_FILE: &str = "base_package.json";

/// The package an adapter was trained against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedAgainst {
    /// The package directory, as the recipe named it.
    pub package: String,
    /// [`package_sha256`] of it when training started.
    pub package_sha256: String,
}

/// The hash that names a package: the sha256 of its `manifest.json`, which lists the sha256
/// of every file of the package.
pub fn package_sha256(package: &Path) -> Result<String, PackageError> {
    Ok(file_sha256(&package.join(MANIFEST_FILE))?)
}

/// `manifest.json` of a package bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageBundleManifest {
    /// [`PACKAGE_BUNDLE_VERSION`].
    pub format_version: u32,
    /// [`package_sha256`] of `package/`: the package every adapter was trained against.
    pub package_sha256: String,
    /// The adapters, in the order given.
    pub adapters: Vec<BoundAdapter>,
    /// sha256 of every adapter file, by path under `adapters/`.
    pub files: BTreeMap<String, String>,
}

/// An adapter in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundAdapter {
    /// Its name (`--adapter NAME`), which is its directory under `adapters/`.
    pub name: String,
    /// Free-form provenance (run, stage, data, steps).
    pub provenance: serde_json::Value,
}

/// One adapter to bundle: a PEFT directory and the package it was trained against.
pub struct BundledAdapter<'a> {
    /// Its name in the bundle.
    pub name: &'a str,
    /// Directory with `adapter_config.json` and `adapter_model.safetensors`.
    pub dir: &'a Path,
    /// The package it was trained against; none for an adapter trained on a float model.
    pub trained_against: Option<TrainedAgainst>,
    /// Provenance recorded in the manifest.
    pub provenance: serde_json::Value,
}

/// Writes the bundle of `package` and `adapters` to `out` (which must not exist). Refuses,
/// writing nothing, an adapter trained against another package or a float model, and a
/// repeated name.
pub fn write_package_bundle(
    out: &Path,
    package: &Path,
    adapters: &[BundledAdapter<'_>],
) -> Result<PackageBundleManifest, PackageError> {
    let package_files = verify_package_files(package)?.files;
    let hash = package_sha256(package)?;
    let mut bound = Vec::new();
    for adapter in adapters {
        if bound.iter().any(|b: &BoundAdapter| b.name == adapter.name) {
            return Err(PackageError::Incompatible(format!(
                "two adapters are named `{}`; names must be unique in a bundle",
                adapter.name
            )));
        }
        let trained = match &adapter.trained_against {
            Some(trained) => &trained.package_sha256,
            None => {
                return Err(PackageError::Incompatible(format!(
                    "adapter `{}` ({}) was trained on a float model, not against a package; \
                     train it with [model] package = \"{}\"",
                    adapter.name,
                    adapter.dir.display(),
                    package.display()
                )));
            }
        };
        if *trained != hash {
            return Err(PackageError::Incompatible(format!(
                "adapter `{}` ({}) was trained against the package with sha256 {trained}, but \
                 {} has sha256 {hash}; a 1+N bundle ships the base its adapters were trained on",
                adapter.name,
                adapter.dir.display(),
                package.display()
            )));
        }
        bound.push(BoundAdapter {
            name: adapter.name.to_string(),
            provenance: adapter.provenance.clone(),
        });
    }
    let tmp = staging_dir(out)?;
    let names = package_files
        .keys()
        .map(String::as_str)
        .chain([MANIFEST_FILE]);
    copy_files(package, &tmp.join(PACKAGE_DIR), names)?;
    for adapter in adapters {
        let names = [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE];
        copy_files(
            adapter.dir,
            &tmp.join(ADAPTERS_DIR).join(adapter.name),
            names,
        )?;
    }
    let manifest = PackageBundleManifest {
        format_version: PACKAGE_BUNDLE_VERSION,
        package_sha256: hash,
        adapters: bound,
        files: checksums(&tmp.join(ADAPTERS_DIR))?,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    write_atomically(&tmp.join(MANIFEST_FILE), &json)?;
    std::fs::rename(&tmp, out).map_err(|e| PackageError::io(out, e))?;
    Ok(manifest)
}

/// Copies files `names` (paths relative to `from`) into `to`.
fn copy_files<'n>(
    from: &Path,
    to: &Path,
    names: impl IntoIterator<Item = &'n str>,
) -> Result<(), PackageError> {
    for name in names {
        let (source, target) = (from.join(name), to.join(name));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| PackageError::io(parent, e))?;
        }
        std::fs::copy(&source, &target).map_err(|e| PackageError::io(&source, e))?;
    }
    Ok(())
}

/// Whether `dir` is a package bundle (its manifest says [`PACKAGE_BUNDLE_VERSION`]).
pub fn is_package_bundle(dir: &Path) -> bool {
    read_manifest::<PackageBundleManifest>(dir)
        .is_ok_and(|m| m.format_version == PACKAGE_BUNDLE_VERSION)
}

/// The manifest of package bundle `dir`, its version checked, every adapter file against its
/// sha256, and the package it carries against the hash the adapters are bound to (the
/// package's own files are checked by the caller, once).
fn read_bound_manifest(dir: &Path) -> Result<PackageBundleManifest, PackageError> {
    let manifest: PackageBundleManifest = read_manifest(dir)?;
    let corrupt = |message: String| PackageError::Corrupt {
        path: dir.join(MANIFEST_FILE),
        message,
    };
    if manifest.format_version != PACKAGE_BUNDLE_VERSION {
        return Err(corrupt(format!(
            "format_version {} is not {PACKAGE_BUNDLE_VERSION}, a package bundle",
            manifest.format_version
        )));
    }
    verify_checksums(&dir.join(ADAPTERS_DIR), &manifest.files)?;
    let package = dir.join(PACKAGE_DIR);
    let hash = package_sha256(&package)?;
    if manifest.package_sha256 != hash {
        return Err(corrupt(format!(
            "the adapters are bound to package {} but {} has sha256 {hash}",
            manifest.package_sha256,
            package.display()
        )));
    }
    Ok(manifest)
}

/// Checks a package bundle: every adapter file against the manifest's sha256, the package's
/// files against the package's manifest, and that manifest against the hash the adapters are
/// bound to.
pub fn verify_package_bundle(dir: &Path) -> Result<PackageBundleManifest, PackageError> {
    let manifest = read_bound_manifest(dir)?;
    verify_package_files(&dir.join(PACKAGE_DIR))?;
    Ok(manifest)
}

/// Checks bundle `dir` as [`verify_package_bundle`] does and opens its package
/// ([`open_package`]), for a runtime reading the packed codes; adapter `NAME` lives in
/// `dir/adapters/NAME` (PEFT layout).
pub fn open_package_bundle(
    dir: &Path,
) -> Result<(PackageBundleManifest, PackageParts), PackageError> {
    let manifest = read_bound_manifest(dir)?;
    let parts = open_package(&dir.join(PACKAGE_DIR))?;
    Ok((manifest, parts))
}

/// A loaded package bundle: the base once, every adapter attached under its name, one of
/// them (or none) active. Switching is [`Bundle::activate`]; outputs depend only on which
/// adapter is active.
pub struct Bundle {
    /// The verified manifest.
    pub manifest: PackageBundleManifest,
    /// The manifest of the package it carries.
    pub package: PackageManifest,
    /// The base's configuration.
    pub config: ModelConfig,
    model: Model,
}

impl Bundle {
    /// Verifies and loads bundle `dir` on `device` in `dtype`: the package dequantized, each
    /// adapter attached, none active.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, PackageError> {
        let manifest = read_bound_manifest(dir)?;
        // Loading checks the package's files.
        let loaded = load_package(&dir.join(PACKAGE_DIR), device, dtype)?;
        let package = loaded.manifest.clone();
        let (config, mut model) = loaded.into_model();
        for adapter in &manifest.adapters {
            let path = dir.join(ADAPTERS_DIR).join(&adapter.name);
            import_peft_adapter(model.language_model_mut(), &path, &adapter.name)?;
        }
        Ok(Self {
            manifest,
            package,
            config,
            model,
        })
    }

    /// The adapters' names, in the manifest's order.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.manifest
            .adapters
            .iter()
            .map(|a| a.name.as_str())
            .collect()
    }

    /// Makes adapter `name` the active one (none: the bare base).
    pub fn activate(&mut self, name: Option<&str>) -> Result<(), PackageError> {
        if let Some(name) = name
            && !self.adapter_names().contains(&name)
        {
            return Err(PackageError::Incompatible(format!(
                "the bundle has no adapter `{name}`; it has {}",
                self.adapter_names().join(", ")
            )));
        }
        self.model.language_model_mut().set_active_adapter(name)?;
        Ok(())
    }

    /// The model with the active adapter.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The configuration and the model with the active adapter, for a caller that runs one.
    pub fn into_model(self) -> (ModelConfig, Model) {
        (self.config, self.model)
    }
}
