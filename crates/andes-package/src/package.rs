//! The mobile weight package `andes quantize` writes (`docs/package-format.md`): a Qwen3 model
//! (or an AndesVL model's language model, its vision tower and projector kept in float) with
//! its linears packed per a bit plan fitted to a target profile, the embedding and head tables
//! rounded to the profile's table format when it names one, everything else in the profile's
//! float precision, the tokenizer, and a manifest with the sha256 of every file.
//! Written in a temporary sibling directory and renamed into place. [`load_package`] checks
//! checksums, shapes and plan consistency and rebuilds the dequantized model, which is what
//! `andes verify`, `andes inspect` and `andes eval --model PKG` run on.

use std::collections::BTreeMap;
use std::path::Path;

use andes_model::andesvl::{AndesVLConfig, VisionSide, load_vision_side, vision_side_safetensors};
use andes_model::checkpoint::{
    SafetensorsShards, SaveDtype, load_parameters, parameters_safetensors, write_atomically,
};
use andes_model::quantize::{linear_shapes, quantized_linears, quantized_tables, table_shapes};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_model::{Model, ModelConfig};
use andes_quant::{BitPlan, BpwReport, FloatPrecision, QuantizedTensor, TargetProfile, dequantize};
use burn::tensor::{DType, Device};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::alignment::{align, check_alignment, is_padding};
use crate::error::PackageError;
use crate::files::{
    MANIFEST_FILE, checksums, quantized_file, read_manifest, read_quantized_file, staging_dir,
    verify_checksums,
};
use andes_model::checkpoint::sha256;

/// The package layout this crate writes: 3, the tables quantized in [`TABLES_FILE`] when the
/// target names a table format. Versions 2 (never quantized tables) and 1 (the same files,
/// 8-byte aligned) are still read.
pub const PACKAGE_VERSION: u32 = 3;
/// `kind` of a package manifest (a bundle's manifest has none).
pub const PACKAGE_KIND: &str = "andes-package";
/// Packed linears (`NAME.qweight`, `NAME.scales`, `NAME.qzeros`).
pub const QUANTIZED_FILE: &str = "quantized_linears.safetensors";
/// Everything else: norms, and the embedding and an untied head unless they are in
/// [`TABLES_FILE`], in the profile's float precision.
pub const FLOAT_FILE: &str = "float_tensors.safetensors";
/// The embedding table and an untied head, packed as [`QUANTIZED_FILE`]'s linears are
/// (`model.embed_tokens.qweight`, ...), when the target names a table format.
pub const TABLES_FILE: &str = "quantized_tables.safetensors";
/// The bit plan the linears follow.
pub const PLAN_FILE: &str = "bit_plan.json";
/// An AndesVL package's vision tower and projector, in the profile's float precision.
pub const VISION_FILE: &str = "vision_tensors.safetensors";
/// Files of the source model copied when present (`config.json` always is).
const MODEL_SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "preprocessor_config.json",
];

/// Sizes and bits per weight, both ways the issue of "1.8 bpw" can be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightSummary {
    /// Weights of the quantized linears.
    pub linear_weights: u64,
    /// All other parameters of the language model (norms, and the tables unless quantized).
    pub float_parameters: u64,
    /// Bytes of [`QUANTIZED_FILE`].
    pub quantized_bytes: u64,
    /// Bytes of [`FLOAT_FILE`].
    pub float_bytes: u64,
    /// Bits per weight over the quantized linears: codes, scales and zero points.
    pub bpw_linears: f64,
    /// `8 · stored bytes / (linear_weights + float_parameters + vision_parameters +
    /// table_parameters)`: the whole weight payload, file headers included, over every
    /// parameter.
    pub bpw_package: f64,
    /// Parameters of an AndesVL model's vision tower and projector (0 for a text model).
    #[serde(default)]
    pub vision_parameters: u64,
    /// Bytes of [`VISION_FILE`] (0 for a text model).
    #[serde(default)]
    pub vision_bytes: u64,
    /// Entries of the quantized tables (0 where the target keeps them float).
    #[serde(default)]
    pub table_parameters: u64,
    /// Bytes of [`TABLES_FILE`] (0 where there is none).
    #[serde(default)]
    pub table_bytes: u64,
}

impl WeightSummary {
    /// Bytes of every weight file: what the package stores and a runtime reads in.
    pub fn stored_bytes(&self) -> u64 {
        self.quantized_bytes + self.float_bytes + self.vision_bytes + self.table_bytes
    }
}

/// `manifest.json` of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageManifest {
    /// [`PACKAGE_VERSION`].
    pub format_version: u32,
    /// [`PACKAGE_KIND`].
    pub kind: String,
    /// The profile the package was fitted to, in full (the cost model reads it).
    pub target: TargetProfile,
    /// The float model it was made from: its directory and the sha256 of its config.
    pub source: BTreeMap<String, String>,
    /// How it was quantized: initialiser, budget, calibration file and its sha256.
    pub quantization: serde_json::Value,
    /// Sizes and bpw.
    pub weights: WeightSummary,
    /// sha256 of every file but the manifest.
    pub files: BTreeMap<String, String>,
}

/// What a package is made of.
pub struct PackageInput<'a> {
    /// The float model's directory (config.json, tokenizer files are copied from it).
    pub source_dir: &'a Path,
    /// The (language) model with every linear on its quantization grid.
    pub model: &'a Qwen3ForCausalLM,
    /// An AndesVL model's vision side and configuration, kept in float.
    pub vision: Option<(&'a VisionSide, &'a AndesVLConfig)>,
    /// Its plan (with target and budget when the planner made it).
    pub plan: &'a BitPlan,
    /// The target profile.
    pub target: &'a TargetProfile,
    /// Free-form record of how it was quantized.
    pub quantization: serde_json::Value,
    /// Further files to ship (name, bytes), e.g. the plan's heatmap.
    pub extra_files: Vec<(String, Vec<u8>)>,
}

/// Writes the package to `out` (which must not exist).
pub fn write_package(
    out: &Path,
    input: &PackageInput<'_>,
) -> Result<PackageManifest, PackageError> {
    let tmp = staging_dir(out)?;
    let copy = |name: &str, required: bool| -> Result<Option<Vec<u8>>, PackageError> {
        let source = input.source_dir.join(name);
        if !source.exists() && !required {
            return Ok(None);
        }
        let bytes = std::fs::read(&source).map_err(|e| PackageError::io(&source, e))?;
        write_atomically(&tmp.join(name), &bytes)?;
        Ok(Some(bytes))
    };
    let config_bytes = copy("config.json", true)?.expect("required");
    for (name, bytes) in &input.extra_files {
        write_atomically(&tmp.join(name), bytes)?;
    }
    for name in MODEL_SIDE_FILES {
        copy(name, false)?;
    }

    let quantized = quantized_linears(input.model)?;
    let shapes = linear_shapes(input.model);
    if quantized.len() != shapes.len() {
        return Err(PackageError::Incompatible(format!(
            "{} of the model's {} linears are quantized; a package quantizes them all",
            quantized.len(),
            shapes.len()
        )));
    }
    check_plan(input.plan, &quantized, &tmp.join(PLAN_FILE))?;
    write_atomically(&tmp.join(PLAN_FILE), input.plan.to_json().as_bytes())?;
    let alignment = input.target.alignment() as usize;
    let quantized_bytes = quantized_file(&quantized, &tmp.join(QUANTIZED_FILE), Some(alignment))?;
    let tables = match &input.target.tables {
        Some(tables) => quantized_tables(input.model, tables.format)?,
        None => Vec::new(),
    };
    let table_bytes = if tables.is_empty() {
        0
    } else {
        quantized_file(&tables, &tmp.join(TABLES_FILE), Some(alignment))?
    };
    let skip: Vec<String> = shapes
        .iter()
        .map(|(name, _)| name)
        .chain(tables.iter().map(|(name, _)| name))
        .map(|name| format!("{name}.weight"))
        .collect();
    let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
    let dtype = match input.target.unquantized.precision {
        FloatPrecision::F16 => SaveDtype::F16,
        FloatPrecision::F32 => SaveDtype::F32,
    };
    let float_path = tmp.join(FLOAT_FILE);
    let floats = parameters_safetensors(input.model, &float_path, dtype, &skip, &|n| n.into())?;
    let (float_parameters, float_bytes) = write_aligned(&float_path, &floats, alignment)?;
    let (vision_parameters, vision_bytes) = match input.vision {
        Some((vision, config)) => {
            let vision_path = tmp.join(VISION_FILE);
            let bytes = vision_side_safetensors(vision, config, &vision_path, dtype)?;
            write_aligned(&vision_path, &bytes, alignment)?
        }
        None => (0, 0),
    };
    let linears: BpwReport = quantized.iter().map(|(_, q)| q.bits_per_weight()).sum();
    let table_parameters = tables.iter().map(|(_, q)| q.shape().numel() as u64).sum();
    let mut weights = WeightSummary {
        linear_weights: linears.weights,
        float_parameters,
        quantized_bytes,
        float_bytes,
        bpw_linears: linears.bpw,
        bpw_package: 0.0,
        vision_parameters,
        vision_bytes,
        table_parameters,
        table_bytes,
    };
    weights.bpw_package = 8.0 * weights.stored_bytes() as f64
        / (linears.weights + float_parameters + vision_parameters + table_parameters) as f64;
    let manifest = PackageManifest {
        format_version: PACKAGE_VERSION,
        kind: PACKAGE_KIND.into(),
        target: input.target.clone(),
        source: BTreeMap::from([
            ("model".into(), input.source_dir.display().to_string()),
            ("config_sha256".into(), sha256(&config_bytes)),
        ]),
        quantization: input.quantization.clone(),
        weights,
        files: checksums(&tmp)?,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    write_atomically(&tmp.join(MANIFEST_FILE), &json)?;
    std::fs::rename(&tmp, out).map_err(|e| PackageError::io(out, e))?;
    Ok(manifest)
}

/// Writes the safetensors `bytes` to `path` with every tensor aligned to `alignment` bytes;
/// returns the file's parameters (alignment fillers aside) and its size.
fn write_aligned(path: &Path, bytes: &[u8], alignment: usize) -> Result<(u64, u64), PackageError> {
    let aligned = align(bytes, alignment, path)?;
    let parameters = SafeTensors::deserialize(&aligned)
        .map_err(|e| PackageError::io(path, format!("{e:?}")))?
        .tensors()
        .iter()
        .filter(|(name, _)| !is_padding(name))
        .map(|(_, view)| view.shape().iter().product::<usize>() as u64)
        .sum();
    write_atomically(path, &aligned)?;
    Ok((parameters, aligned.len() as u64))
}

/// Whether `dir` holds a package (rather than a Hugging Face model or a bundle).
pub fn is_package(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|v| v["kind"] == PACKAGE_KIND)
}

/// The manifest of package `dir`, its kind and version checked and every file against its
/// sha256: the package's integrity, without rebuilding the model.
pub(crate) fn verify_package_files(dir: &Path) -> Result<PackageManifest, PackageError> {
    let manifest: PackageManifest = read_manifest(dir)?;
    if manifest.kind != PACKAGE_KIND || !(1..=PACKAGE_VERSION).contains(&manifest.format_version) {
        return Err(PackageError::Corrupt {
            path: dir.join(MANIFEST_FILE),
            message: format!(
                "kind {:?} version {} is not {PACKAGE_KIND:?} version 1 to {PACKAGE_VERSION}, \
                 what this andes reads",
                manifest.kind, manifest.format_version
            ),
        });
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    manifest
        .target
        .check(&format!("{} (target)", manifest_path.display()))?;
    verify_checksums(dir, &manifest.files)?;
    Ok(manifest)
}

/// A package read back and checked.
pub struct LoadedPackage {
    /// Its manifest.
    pub manifest: PackageManifest,
    /// The (language) model's configuration.
    pub config: Qwen3Config,
    /// An AndesVL package's configuration and float vision side.
    pub vision: Option<(AndesVLConfig, VisionSide)>,
    /// The bit plan.
    pub plan: BitPlan,
    /// The model with every linear dequantized from the package's codes: bit for bit what
    /// the quantized model computed when the package was written.
    pub model: Qwen3ForCausalLM,
}

/// A package's parts, every one checked but nothing rebuilt: what a runtime that reads the
/// packed codes directly needs, and what [`load_package`] dequantizes.
pub struct PackageParts {
    /// Its manifest.
    pub manifest: PackageManifest,
    /// The model's configuration (AndesVL when the package carries a vision side).
    pub config: ModelConfig,
    /// The bit plan.
    pub plan: BitPlan,
    /// Every packed linear, in model order, checked against its format and shape.
    pub quantized: Vec<(String, QuantizedTensor)>,
    /// The quantized embedding and untied head (`model.embed_tokens`, `lm_head`), empty where
    /// the target keeps them float.
    pub tables: Vec<(String, QuantizedTensor)>,
    /// The bytes of the float tensors' safetensors file (embeddings, norms, an untied head).
    pub float_bytes: Vec<u8>,
}

/// Reads and checks `dir`: manifest version and kind, every checksum, alignment, the plan
/// against the config's linears, each packed linear's parts against its format and shape.
/// Any fault is an error naming the file and what differs.
pub fn open_package(dir: &Path) -> Result<PackageParts, PackageError> {
    let corrupt = |path: &Path, message: String| PackageError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let manifest = verify_package_files(dir)?;
    if manifest.format_version >= 2 {
        let alignment = manifest.target.alignment() as usize;
        for name in [QUANTIZED_FILE, FLOAT_FILE, VISION_FILE, TABLES_FILE] {
            let path = dir.join(name);
            if path.exists() {
                let bytes = std::fs::read(&path).map_err(|e| PackageError::io(&path, e))?;
                check_alignment(&bytes, alignment, &path)?;
            }
        }
    }
    let config_path = dir.join("config.json");
    let config = ModelConfig::from_file(&config_path)?;
    // A model is built from the config before its weights are read: a config declaring more
    // than the weight files could hold, at one bit a parameter, is refused before anything is
    // allocated for it.
    let weight_bytes = [QUANTIZED_FILE, FLOAT_FILE, VISION_FILE, TABLES_FILE]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|metadata| metadata.len() as u128)
        .sum::<u128>();
    let declared = config.text_config().allocated_elements();
    if declared > 8 * weight_bytes {
        return Err(corrupt(
            &config_path,
            format!(
                "declares a model of {declared} parameters and table entries, more than the \
                 {weight_bytes} bytes of its weight files hold at one bit each"
            ),
        ));
    }
    let plan_path = dir.join(PLAN_FILE);
    let plan = BitPlan::read(&plan_path).map_err(|e| corrupt(&plan_path, e.to_string()))?;
    let shapes = linear_shapes(&Qwen3ForCausalLM::new(
        config.text_config(),
        &Device::flex(),
    )?);
    let quantized = read_quantized_file(&dir.join(QUANTIZED_FILE), &shapes)?;
    check_plan(&plan, &quantized, &plan_path)?;
    let tables = read_tables(dir, &manifest.target, config.text_config())?;
    let float_path = dir.join(FLOAT_FILE);
    let float_bytes = std::fs::read(&float_path).map_err(|e| PackageError::io(&float_path, e))?;
    Ok(PackageParts {
        manifest,
        config,
        plan,
        quantized,
        tables,
        float_bytes,
    })
}

/// The quantized tables of package `dir`, each in the format its target names: none where
/// the target keeps them float (and then there must be no [`TABLES_FILE`]).
fn read_tables(
    dir: &Path,
    target: &TargetProfile,
    config: &Qwen3Config,
) -> Result<Vec<(String, QuantizedTensor)>, PackageError> {
    let path = dir.join(TABLES_FILE);
    let Some(expected) = &target.tables else {
        if path.exists() {
            return Err(PackageError::Corrupt {
                path,
                message: "is there, but the manifest's target keeps the tables float".into(),
            });
        }
        return Ok(Vec::new());
    };
    let tables = read_quantized_file(&path, &table_shapes(config))?;
    if let Some((name, q)) = tables.iter().find(|(_, q)| q.format() != expected.format) {
        return Err(PackageError::Corrupt {
            path,
            message: format!(
                "`{name}` is packed as {} but the manifest's target says tables are {}",
                q.format(),
                expected.format
            ),
        });
    }
    Ok(tables)
}

/// Reads `dir` as [`open_package`] does, then rebuilds the model on `device` with every
/// linear and table dequantized, the float tensors checked against the config.
pub fn load_package(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<LoadedPackage, PackageError> {
    let corrupt = |path: &Path, message: String| PackageError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let PackageParts {
        manifest,
        config: model_config,
        plan,
        quantized,
        tables,
        float_bytes,
    } = open_package(dir)?;
    let (config, andesvl) = match model_config {
        ModelConfig::Text(config) => (config, None),
        ModelConfig::VisionLanguage(andesvl) => (andesvl.text_config.clone(), Some(andesvl)),
    };
    let model = Qwen3ForCausalLM::new(&config, device)?;
    let float_path = dir.join(FLOAT_FILE);
    let floats = SafeTensors::deserialize(&float_bytes)
        .map_err(|e| corrupt(&float_path, format!("not a safetensors file: {e:?}")))?;
    let dequantized: Vec<(String, Vec<usize>, Vec<u8>)> = quantized
        .iter()
        .chain(&tables)
        .map(|(name, q)| {
            let shape = q.shape();
            let bytes = dequantize(q).iter().flat_map(|v| v.to_le_bytes()).collect();
            (
                format!("{name}.weight"),
                vec![shape.out_features, shape.in_features],
                bytes,
            )
        })
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = floats.tensors();
    for (name, shape, bytes) in &dequantized {
        if floats.tensor(name).is_ok() {
            return Err(corrupt(&float_path, format!("`{name}` is also packed")));
        }
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| corrupt(&float_path, format!("{e:?}")))?;
        views.push((name.clone(), view));
    }
    let combined =
        safetensors::serialize(views, None).map_err(|e| corrupt(&float_path, format!("{e:?}")))?;
    let mut shards = SafetensorsShards::from_memory(&float_path, &combined)?;
    let model = load_parameters(model, &mut shards, dtype)?;
    if config.tie_word_embeddings {
        shards.ignore("lm_head.weight");
    }
    shards.ignore_where(is_padding);
    shards.ensure_all_used()?;
    let vision = match andesvl {
        Some(andesvl) => {
            let mut shards = SafetensorsShards::open_file(&dir.join(VISION_FILE))?;
            let vision = load_vision_side(&andesvl, &mut shards, device, dtype)?;
            shards.ignore_where(is_padding);
            shards.ensure_all_used()?;
            Some((andesvl, vision))
        }
        None => None,
    };
    Ok(LoadedPackage {
        manifest,
        config,
        vision,
        plan,
        model,
    })
}

impl LoadedPackage {
    /// The model as any other loaded model: its configuration (AndesVL when the package
    /// carries a vision side) and the dequantized model.
    pub fn into_model(self) -> (ModelConfig, Model) {
        let (config, vision) = match self.vision {
            Some((andesvl, vision)) => (ModelConfig::VisionLanguage(andesvl), Some(vision)),
            None => (ModelConfig::Text(self.config), None),
        };
        (config, Model::from_parts(self.model, vision))
    }
}

/// A model to run, from a Hugging Face directory or a package (dequantized): what every
/// command's `--model` takes. The package's manifest comes along when it is one.
pub fn load_model(
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(ModelConfig, Model, Option<PackageManifest>), PackageError> {
    if is_package(path) {
        let package = load_package(path, device, dtype)?;
        let manifest = package.manifest.clone();
        let (config, model) = package.into_model();
        Ok((config, model, Some(manifest)))
    } else {
        let (config, model) = Model::load(path, device, dtype)?;
        Ok((config, model, None))
    }
}

/// The plan must name every packed linear once, with its format.
fn check_plan(
    plan: &BitPlan,
    quantized: &[(String, QuantizedTensor)],
    path: &Path,
) -> Result<(), PackageError> {
    let names: Vec<String> = quantized.iter().map(|(n, _)| n.clone()).collect();
    let formats = plan
        .formats_for(&names, &path.display().to_string())
        .map_err(|e| PackageError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    for (name, q) in quantized {
        if formats[name] != q.format() {
            return Err(PackageError::Corrupt {
                path: path.to_owned(),
                message: format!(
                    "`{name}` is packed as {} but the plan says {}",
                    q.format(),
                    formats[name]
                ),
            });
        }
    }
    Ok(())
}
