//! The 1+N bundle: one base, N adapters (AndesVL's 1+N LoRA). The base is the float checkpoint
//! the adapters were trained on, named by path and sha256, plus, when QALFT quantized it, its
//! packed linears (`base/quantized_linears.safetensors`) and bit plan; each adapter is a PEFT
//! directory (`adapters/NAME/adapter_config.json`, `adapter_model.safetensors`) that PEFT loads
//! onto the transformers model. Optionally `base-dequantized/` holds the quantized base as a
//! float Hugging Face checkpoint, so transformers + PEFT reproduce QALFT's numbers exactly.
//!
//! The bundle is assembled in a temporary sibling directory and renamed into place; the
//! manifest records the sha256 of every file, and [`verify_bundle`] checks them.

use std::collections::BTreeMap;
use std::path::Path;

use andes_model::checkpoint::{SaveDtype, save_qwen3, write_atomically};
use andes_model::lora::peft::export_peft_adapter;
use andes_model::quantize::{bake_quantized_weights, grid_plan, quantized_linears};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_quant::BpwReport;
use serde::{Deserialize, Serialize};

use crate::error::PackageError;
use crate::files::{
    MANIFEST_FILE, checksums, quantized_file, read_manifest, staging_dir, verify_checksums,
};
use andes_model::checkpoint::sha256;

/// The bundle layout this crate writes and reads.
pub const BUNDLE_VERSION: u32 = 1;

/// The shared base of a bundle.
pub struct BundleBase<'a> {
    /// The float Hugging Face checkpoint the adapters were trained on.
    pub checkpoint: &'a Path,
    /// Its configuration.
    pub config: &'a Qwen3Config,
    /// The base as the adapters saw it (quantized by QALFT, or float); any adapters attached
    /// to it are ignored.
    pub model: &'a Qwen3ForCausalLM,
    /// How it was quantized (the recipe's `[quant]` section), when it was.
    pub quantization: Option<serde_json::Value>,
}

/// One adapter of a bundle.
pub struct BundleAdapter<'a> {
    /// Its name in the bundle (`adapters/NAME/`).
    pub name: &'a str,
    /// A model with the adapter attached under `name`.
    pub model: &'a Qwen3ForCausalLM,
    /// Free-form provenance (run directory, data, steps, final losses).
    pub provenance: serde_json::Value,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_VERSION`].
    pub format_version: u32,
    /// The base.
    pub base: BaseEntry,
    /// The adapters, in the order given.
    pub adapters: Vec<AdapterEntry>,
    /// sha256 of every other file, by path relative to the bundle root.
    pub files: BTreeMap<String, String>,
}

/// The base in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseEntry {
    /// Path of the float checkpoint, as given.
    pub checkpoint: String,
    /// sha256 of its `config.json`, so a reader can tell it has the same base.
    pub config_sha256: String,
    /// The recipe's quantization settings, when quantized.
    pub quantization: Option<serde_json::Value>,
    /// Bits per weight over the quantized linears (scales and zero points counted).
    pub bpw_linears: Option<f64>,
    /// Bytes of the whole quantized-linears file.
    pub quantized_file_bytes: Option<u64>,
}

/// An adapter in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterEntry {
    /// Its name.
    pub name: String,
    /// Its directory, relative to the bundle root.
    pub path: String,
    /// Provenance.
    pub provenance: serde_json::Value,
}

/// Writes the bundle of `base` and `adapters` to `out` (which must not exist), with
/// `base-dequantized/` when `dequantized_base`. Returns the manifest written.
pub fn write_bundle(
    out: &Path,
    base: &BundleBase<'_>,
    adapters: &[BundleAdapter<'_>],
    dequantized_base: bool,
) -> Result<Manifest, PackageError> {
    let mut names: Vec<&str> = adapters.iter().map(|a| a.name).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(PackageError::Incompatible(format!(
            "two adapters are named `{}`; names must be unique in a bundle",
            pair[0]
        )));
    }
    let tmp = staging_dir(out)?;

    let config_path = base.checkpoint.join("config.json");
    let config_bytes =
        std::fs::read(&config_path).map_err(|e| PackageError::io(&config_path, e))?;
    let mut base_entry = BaseEntry {
        checkpoint: base.checkpoint.display().to_string(),
        config_sha256: sha256(&config_bytes),
        quantization: base.quantization.clone(),
        bpw_linears: None,
        quantized_file_bytes: None,
    };
    let quantized = quantized_linears(base.model)?;
    if !quantized.is_empty() {
        let dir = tmp.join("base");
        std::fs::create_dir_all(&dir).map_err(|e| PackageError::io(&dir, e))?;
        let bytes = quantized_file(&quantized, &dir.join("quantized_linears.safetensors"), None)?;
        write_atomically(
            &dir.join("bit_plan.json"),
            grid_plan(base.model).to_json().as_bytes(),
        )?;
        let total: BpwReport = quantized.iter().map(|(_, q)| q.bits_per_weight()).sum();
        base_entry.bpw_linears = Some(total.bpw);
        base_entry.quantized_file_bytes = Some(bytes);
    }
    if dequantized_base {
        let mut baked = base.model.clone();
        bake_quantized_weights(&mut baked);
        let dir = tmp.join("base-dequantized");
        save_qwen3(&baked, base.config, &dir, SaveDtype::F32)?;
        let tokenizer = base.checkpoint.join("tokenizer.json");
        if tokenizer.exists() {
            let bytes = std::fs::read(&tokenizer).map_err(|e| PackageError::io(&tokenizer, e))?;
            write_atomically(&dir.join("tokenizer.json"), &bytes)?;
        }
    }
    let mut entries = Vec::new();
    for adapter in adapters {
        let same_model = std::ptr::eq(adapter.model, base.model);
        if !same_model && quantized_linears(adapter.model)? != quantized {
            return Err(PackageError::Incompatible(format!(
                "adapter `{}` was trained on another quantized base than the bundle's (other \
                 codes or scales: trained scales, another plan or initialiser); a 1+N bundle \
                 shares one base, so train its adapters with the same [quant] and \
                 learn_scales = false, or bundle this adapter alone",
                adapter.name
            )));
        }
        let path = format!("adapters/{}", adapter.name);
        let base_name = if dequantized_base {
            "../../base-dequantized".to_string()
        } else {
            base_entry.checkpoint.clone()
        };
        export_peft_adapter(adapter.model, adapter.name, &tmp.join(&path), &base_name)?;
        entries.push(AdapterEntry {
            name: adapter.name.to_string(),
            path,
            provenance: adapter.provenance.clone(),
        });
    }
    let manifest = Manifest {
        format_version: BUNDLE_VERSION,
        base: base_entry,
        adapters: entries,
        files: checksums(&tmp)?,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    write_atomically(&tmp.join(MANIFEST_FILE), &json)?;
    std::fs::rename(&tmp, out).map_err(|e| PackageError::io(out, e))?;
    Ok(manifest)
}

/// Reads a bundle's manifest and checks that its files are exactly those listed, with their
/// sha256.
pub fn verify_bundle(dir: &Path) -> Result<Manifest, PackageError> {
    let manifest: Manifest = read_manifest(dir)?;
    let path = dir.join(MANIFEST_FILE);
    if manifest.format_version != BUNDLE_VERSION {
        return Err(PackageError::Corrupt {
            path,
            message: format!(
                "format_version {} is not {BUNDLE_VERSION}, the version this andes reads",
                manifest.format_version
            ),
        });
    }
    verify_checksums(dir, &manifest.files)?;
    Ok(manifest)
}
