//! Target profiles (`configs/targets/*.toml`): what a device executes and how fast, for the
//! bit-allocation planner (which formats it may choose) and the cost model (memory, decode
//! speed). Every number carries its source, or says it is an estimate; unknown keys and
//! impossible values are errors naming the file and key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::QuantError;
use crate::format::QuantFormat;

/// How a weight format runs on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Execution {
    /// The accelerator executes it as stored.
    Native,
    /// Stored packed, unpacked to a native format when loaded or per layer (costs time or
    /// memory; storage and bandwidth still follow the packed size).
    Unpack,
}

/// One weight format the target allows for the language model's linears.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedFormat {
    /// An andes format string (`docs/quant-formats.md`).
    pub format: QuantFormat,
    /// Native or unpacked.
    pub execution: Execution,
    /// For an `unpack` format, the native format the loader turns it into: that is what then
    /// sits in memory and is read for every decoded token, so the cost model counts its size.
    /// Absent, the kernel unpacks as it reads (llama.cpp-style) and memory and bandwidth
    /// follow the packed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacks_to: Option<QuantFormat>,
    /// Where the claim comes from, or "estimate: ...".
    pub source: String,
}

/// A number with its source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sourced {
    /// The value, in the unit the key names.
    pub value: f64,
    /// Where it comes from, or "estimate: ...".
    pub source: String,
}

/// How fast the device's kernels multiply a vector by a matrix of each weight format held in
/// cache: the compute side of a decoded token, which bounds decoding where unpacking a
/// format costs more time than reading its bytes (int1, ternary and int2 codes on a CPU, as
/// llama.cpp's IQ1 and IQ2 types).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelThroughput {
    /// Billions of weights a second by format: an andes format string, or `f16` / `f32` for
    /// float tables.
    pub gweights_s: BTreeMap<String, f64>,
    /// Where the figures come from (`andes bench cpu` measures them), or "estimate: ...".
    pub source: String,
}

/// Precision of the parts the planner does not quantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloatPrecision {
    /// 16-bit floats.
    F16,
    /// 32-bit floats.
    F32,
}

impl FloatPrecision {
    /// Its name in profiles (`f16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> u64 {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

/// What the package keeps unquantized and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unquantized {
    /// Precision of embeddings, norms, the LM head when untied, the vision tower and the
    /// projector in the package.
    pub precision: FloatPrecision,
    /// Why.
    pub source: String,
}

/// How the token-embedding table and the LM head (one table when tied) are stored when the
/// target quantizes them: the largest tensors of a small model (Qwen3-0.6B's 151,936 × 1,024
/// table is 311 MB in f16, more than its linears at 4 bits), read whole by every decoded token
/// through the head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFormat {
    /// An andes format string (`docs/quant-formats.md`), applied by round to nearest.
    pub format: QuantFormat,
    /// Where the choice comes from, or "estimate: ...".
    pub source: String,
}

/// A device the package is fitted to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetProfile {
    /// Identifier (`dimensity9500`), recorded in plans and packages.
    pub name: String,
    /// One line about the device.
    pub description: String,
    /// Formats the planner may give the language model's linears.
    pub linear_formats: Vec<AllowedFormat>,
    /// Everything not quantized (norms, vision tower, projector, and the tables unless
    /// `tables` is set).
    pub unquantized: Unquantized,
    /// The token-embedding and LM-head tables quantized in this format; absent, they stay at
    /// `unquantized.precision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<TableFormat>,
    /// Bits of the activations the accelerator computes with (KV cache stored at this width).
    pub activation_bits: Sourced,
    /// Tensors in the package start at multiples of this many bytes.
    pub alignment_bytes: Sourced,
    /// Memory a model may use on the device, GiB (weights and KV cache).
    pub memory_gib: Sourced,
    /// DRAM bandwidth, GB/s (10⁹ bytes per second).
    pub bandwidth_gb_s: Sourced,
    /// Peak accelerator throughput, TOPS (10¹² operations per second) at the activation
    /// width.
    pub compute_tops: Sourced,
    /// The kernels' throughput by format; absent, decoding is estimated from bandwidth alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelThroughput>,
}

/// Profiles shipped in the binary, by name (`configs/targets/NAME.toml`).
const BUILTIN_TARGETS: [(&str, &str); 3] = [
    (
        "dimensity9500",
        include_str!("../../../configs/targets/dimensity9500.toml"),
    ),
    (
        "generic-cpu",
        include_str!("../../../configs/targets/generic-cpu.toml"),
    ),
    (
        "snapdragon8elite",
        include_str!("../../../configs/targets/snapdragon8elite.toml"),
    ),
];

impl TargetProfile {
    /// A built-in profile by name, or else a profile file at that path: what `--target`
    /// takes.
    pub fn resolve(target: &str) -> Result<Self, QuantError> {
        if let Some((name, text)) = BUILTIN_TARGETS.iter().find(|(name, _)| *name == target) {
            return Self::parse(text, &format!("configs/targets/{name}.toml (built in)"));
        }
        if !Path::new(target).exists() {
            let names: Vec<&str> = BUILTIN_TARGETS.iter().map(|(n, _)| *n).collect();
            return Err(QuantError::TargetFile {
                path: target.into(),
                key: String::new(),
                message: format!(
                    "neither a built-in target ({}) nor a profile file",
                    names.join(", ")
                ),
            });
        }
        Self::read(Path::new(target))
    }

    /// The profile as the TOML text [`TargetProfile::parse`] reads back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a profile is plain data, always TOML")
    }

    /// Reads and validates a profile file.
    pub fn read(path: &Path) -> Result<Self, QuantError> {
        let text = std::fs::read_to_string(path).map_err(|e| QuantError::TargetFile {
            path: path.display().to_string(),
            key: String::new(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates profile text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, QuantError> {
        let fail = |key: &str, message: String| QuantError::TargetFile {
            path: origin.to_string(),
            key: key.into(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| fail("", e.to_string()))?;
        let profile: Self = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| fail(&e.path().to_string(), e.inner().to_string()))?;
        profile.check(origin)?;
        Ok(profile)
    }

    /// Fails, naming `origin` and the key, unless every value is possible: what a profile
    /// read from a file (or from a package's manifest, which no checksum covers) must pass.
    pub fn check(&self, origin: &str) -> Result<(), QuantError> {
        let fail = |key: &str, message: String| QuantError::TargetFile {
            path: origin.to_string(),
            key: key.into(),
            message,
        };
        let profile = self;
        if profile.linear_formats.is_empty() {
            return Err(fail(
                "linear_formats",
                "at least one format is needed".into(),
            ));
        }
        let positive = [
            ("activation_bits", &profile.activation_bits),
            ("alignment_bytes", &profile.alignment_bytes),
            ("memory_gib", &profile.memory_gib),
            ("bandwidth_gb_s", &profile.bandwidth_gb_s),
            ("compute_tops", &profile.compute_tops),
        ];
        for (key, sourced) in positive {
            if !(sourced.value.is_finite() && sourced.value > 0.0) {
                return Err(fail(
                    &format!("{key}.value"),
                    format!(
                        "{} is impossible: it must be a positive number",
                        sourced.value
                    ),
                ));
            }
            if sourced.source.trim().is_empty() {
                return Err(fail(
                    &format!("{key}.source"),
                    "every value needs a source (or \"estimate: why\")".into(),
                ));
            }
        }
        if ![8.0, 16.0, 32.0].contains(&profile.activation_bits.value) {
            return Err(fail(
                "activation_bits.value",
                format!("{}: expected 8, 16 or 32", profile.activation_bits.value),
            ));
        }
        for (i, allowed) in profile.linear_formats.iter().enumerate() {
            let Some(to) = allowed.unpacks_to else {
                continue;
            };
            let key = format!("linear_formats[{i}].unpacks_to");
            if allowed.execution != Execution::Unpack {
                return Err(fail(
                    &key,
                    format!("{}: only an `unpack` format is unpacked", allowed.format),
                ));
            }
            let native = profile
                .linear_formats
                .iter()
                .any(|f| f.format == to && f.execution == Execution::Native);
            if !native {
                return Err(fail(
                    &key,
                    format!("{to}: expected one of this profile's `native` formats"),
                ));
            }
        }
        if let Some(tables) = &profile.tables
            && tables.source.trim().is_empty()
        {
            return Err(fail(
                "tables.source",
                "every value needs a source (or \"estimate: why\")".into(),
            ));
        }
        if let Some(kernels) = &profile.kernels {
            if kernels.source.trim().is_empty() {
                return Err(fail(
                    "kernels.source",
                    "every value needs a source (or \"estimate: why\")".into(),
                ));
            }
            for (key, &rate) in &kernels.gweights_s {
                let named =
                    ["f16", "f32"].contains(&key.as_str()) || key.parse::<QuantFormat>().is_ok();
                if !named {
                    return Err(fail(
                        &format!("kernels.gweights_s.{key}"),
                        "expected an andes format string, f16 or f32".into(),
                    ));
                }
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(fail(
                        &format!("kernels.gweights_s.{key}"),
                        format!("{rate} is impossible: it must be a positive number"),
                    ));
                }
            }
        }
        let alignment = profile.alignment_bytes.value;
        if alignment.fract() != 0.0 || !(alignment as u64).is_power_of_two() {
            return Err(fail(
                "alignment_bytes.value",
                format!("{alignment}: expected a power of two"),
            ));
        }
        Ok(())
    }

    /// The formats the planner may choose.
    pub fn formats(&self) -> Vec<QuantFormat> {
        self.linear_formats.iter().map(|f| f.format).collect()
    }

    /// The format a linear stored as `format` occupies in the device's memory once loaded:
    /// the one the profile unpacks it to, else itself.
    pub fn resident_format(&self, format: QuantFormat) -> QuantFormat {
        self.linear_formats
            .iter()
            .find(|f| f.format == format)
            .and_then(|f| f.unpacks_to)
            .unwrap_or(format)
    }

    /// The kind a package for this target stores its LM head in: the tables' format, else
    /// the unquantized precision (`f16`, `f32`).
    pub fn head_kind(&self) -> String {
        match &self.tables {
            Some(tables) => tables.format.to_string(),
            None => self.unquantized.precision.name().into(),
        }
    }

    /// Seconds the kernels take over `weights` weights of `kind` (a format string, `f16` or
    /// `f32`) a decoded token, where the profile gives that kind's throughput.
    pub fn kernel_seconds(&self, kind: &str, weights: u64) -> Option<f64> {
        let rate = self.kernels.as_ref()?.gweights_s.get(kind)?;
        Some(weights as f64 / (rate * 1e9))
    }

    /// Tensor alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment_bytes.value as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
name = "test"
description = "a test device"
linear_formats = [
  { format = "int4-channel-sym", execution = "native", source = "datasheet" },
  { format = "ternary-g128", execution = "unpack", source = "estimate: guess" },
]
unquantized = { precision = "f16", source = "datasheet" }
activation_bits = { value = 16, source = "datasheet" }
alignment_bytes = { value = 64, source = "estimate" }
memory_gib = { value = 4, source = "estimate" }
bandwidth_gb_s = { value = 85.3, source = "LPDDR5X" }
compute_tops = { value = 50, source = "estimate" }
"#;

    const KERNELS: &str = r#"
[kernels]
gweights_s = { "int4-channel-sym" = 10.0, "ternary-g128" = 2.5, f16 = 5.0 }
source = "measured"
"#;

    #[test]
    fn kernel_figures_give_the_seconds_a_token_spends_in_each_kind() {
        let profile = read(&format!("{VALID}{KERNELS}")).unwrap();
        let seconds = profile
            .kernel_seconds("ternary-g128", 5_000_000_000)
            .unwrap();
        assert!((seconds - 2.0).abs() < 1e-12);
        assert_eq!(profile.kernel_seconds("int8-channel-sym", 1), None);
        assert_eq!(read(VALID).unwrap().kernel_seconds("f16", 1), None);
        // written and read back unchanged, as `andes bench cpu --profile-out` writes it
        let again = TargetProfile::parse(&profile.to_toml(), "written").unwrap();
        assert_eq!(again, profile);
    }

    fn read(text: &str) -> Result<TargetProfile, QuantError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, text).unwrap();
        TargetProfile::read(&path)
    }

    #[test]
    fn shipped_profiles_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/targets");
        for name in ["dimensity9500", "generic-cpu", "snapdragon8elite"] {
            let profile = TargetProfile::read(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(profile.name, name);
        }
    }

    #[test]
    fn built_in_targets_resolve_by_name_and_unknown_names_list_them() {
        for (name, _) in BUILTIN_TARGETS {
            assert_eq!(TargetProfile::resolve(name).unwrap().name, name);
        }
        let error = TargetProfile::resolve("dimensity9400")
            .unwrap_err()
            .to_string();
        assert!(error.contains("dimensity9400"), "{error}");
        assert!(error.contains("dimensity9500, generic-cpu"), "{error}");
    }

    #[test]
    fn valid_profile_reads() {
        let profile = read(VALID).unwrap();
        assert_eq!(profile.formats().len(), 2);
        assert_eq!(profile.alignment(), 64);
        let ternary: QuantFormat = "ternary-g128".parse().unwrap();
        assert_eq!(profile.resident_format(ternary), ternary);
        let unpacked = read(&VALID.replace(
            "execution = \"unpack\",",
            "execution = \"unpack\", unpacks_to = \"int4-channel-sym\",",
        ))
        .unwrap();
        assert_eq!(
            unpacked.resident_format(ternary),
            "int4-channel-sym".parse().unwrap()
        );
    }

    #[test]
    fn unknown_keys_impossible_values_and_bad_formats_name_the_key() {
        let cases = [
            (VALID.replace("description", "descripton"), "descripton"),
            (
                VALID.replace("value = 85.3", "value = -1"),
                "bandwidth_gb_s.value",
            ),
            (
                VALID.replace("value = 64", "value = 48"),
                "alignment_bytes.value",
            ),
            (
                VALID.replace("int4-channel-sym", "int5-channel-sym"),
                "linear_formats[0].format",
            ),
            (
                VALID.replace("\"native\"", "\"magic\""),
                "linear_formats[0].execution",
            ),
            (
                VALID.replace("source = \"LPDDR5X\"", "source = \" \""),
                "bandwidth_gb_s.source",
            ),
            (
                VALID.replace(
                    "execution = \"unpack\",",
                    "execution = \"unpack\", unpacks_to = \"int8-channel-sym\",",
                ),
                "linear_formats[1].unpacks_to",
            ),
            (
                VALID.replace(
                    "execution = \"native\",",
                    "execution = \"native\", unpacks_to = \"int4-channel-sym\",",
                ),
                "linear_formats[0].unpacks_to",
            ),
            (
                format!("{VALID}{KERNELS}").replace("ternary-g128\" = 2.5", "int5-g64\" = 2.5"),
                "kernels.gweights_s.int5-g64",
            ),
            (
                format!("{VALID}{KERNELS}").replace("= 2.5", "= 0"),
                "kernels.gweights_s.ternary-g128",
            ),
            (
                format!("{VALID}{KERNELS}").replace("measured", ""),
                "kernels.source",
            ),
        ];
        for (text, key) in cases {
            let error = read(&text).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }
}
