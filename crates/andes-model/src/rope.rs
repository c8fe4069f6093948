//! Rotary position embeddings in the Hugging Face "rotate half" layout, as Qwen3 uses them,
//! with the scalings `config.json` may ask for (linear, dynamic NTK, YaRN) computed as
//! transformers computes them.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kv_cache::Position;
use crate::norm_rotation::norm_rotation;
use crate::rotation::rotate;

/// The `rope_type`s andes computes, as transformers does.
pub const ROPE_TYPES: [&str; 4] = ["default", "linear", "dynamic", "yarn"];

/// Rotary settings as Hugging Face writes them: `rope_scaling` (transformers 4) or
/// `rope_parameters` (transformers 5, which also carries `rope_theta`). The YaRN keys are
/// read as transformers 5 reads them; keys a kind does not use are ignored, as there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// One of [`ROPE_TYPES`]; others are refused.
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// Scaling factor of `linear`, `dynamic` and `yarn` (required by each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Rotary base (only in the transformers 5 `rope_parameters` layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// `yarn`: the context the model was pretrained for; absent, `max_position_embeddings`.
    /// (`dynamic` ignores it: transformers scales from `max_position_embeddings` there.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// `yarn`: pairs turning more often than this over the original context keep their
    /// frequency (absent or 0: 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    /// `yarn`: pairs turning less often than this are fully interpolated (absent or 0: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    /// `yarn`: with `mscale_all_dim`, the attention factor becomes
    /// `mscale(factor, mscale) / mscale(factor, mscale_all_dim)` (DeepSeek's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    /// `yarn`: see `mscale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    /// `yarn`: the factor on cos and sin, replacing the one derived from `factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// `yarn`: whether the ramp's ends are rounded out to whole dimensions (absent: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Other keys of the section, kept for saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_rope_type() -> String {
    "default".into()
}

impl Default for RopeScaling {
    fn default() -> Self {
        Self {
            rope_type: default_rope_type(),
            factor: None,
            rope_theta: None,
            original_max_position_embeddings: None,
            beta_fast: None,
            beta_slow: None,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl RopeScaling {
    /// Checks the kind is one andes implements and has what it needs; errors are
    /// `(key, message)` for the caller to attach to a file.
    pub fn validated(&self, section: &str) -> Result<Self, (String, String)> {
        let kind = self.rope_type.as_str();
        match kind {
            "default" => {}
            "linear" | "dynamic" | "yarn" => match self.factor {
                Some(f) if f > 0.0 => {}
                other => {
                    return Err((
                        format!("{section}.factor"),
                        format!("found {other:?}, expected a positive number for {kind} scaling"),
                    ));
                }
            },
            other => {
                let [kinds @ .., last] = ROPE_TYPES.map(|k| format!("{k:?}"));
                return Err((
                    format!("{section}.rope_type"),
                    format!(
                        "{other:?} is not supported; expected {} or {last}",
                        kinds.join(", ")
                    ),
                ));
            }
        }
        if kind == "yarn" && self.original_max_position_embeddings == Some(0) {
            return Err((
                format!("{section}.original_max_position_embeddings"),
                "found 0, expected a positive integer".into(),
            ));
        }
        Ok(self.clone())
    }
}

/// Everything a rotary angle depends on besides the position, from one `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Width of a head: dimension `i` turns with dimension `i + head_dim / 2`.
    pub head_dim: usize,
    /// Rotary base.
    pub theta: f64,
    /// The kind and its keys, validated ([`RopeScaling::validated`]).
    pub scaling: RopeScaling,
    /// `max_position_embeddings`: `dynamic`'s original length, and `yarn`'s when the section
    /// names none.
    pub max_position_embeddings: usize,
}

/// The rotation of one forward pass: pair `i` of the token at position `p` turns by
/// `p · inv_freq[i]`, and cos and sin are both multiplied by `attention_factor` (YaRN's
/// temperature; 1 for the other kinds), which is how transformers applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frequencies {
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// The factor on cos and sin.
    pub attention_factor: f32,
}

impl Rope {
    /// The frequencies of a forward pass whose last token sits at position `seq_len - 1`,
    /// computed in f32 (f64 where transformers computes in Python floats) in transformers'
    /// order of operations (`modeling_rope_utils.py`), so that they match it to within an ulp
    /// (where `powf` implementations differ). Only `dynamic` depends on `seq_len`: past
    /// `L₀ = max_position_embeddings` the base grows to
    /// `base · (factor·L/L₀ − (factor − 1))^(d/(d−2))` with `L = seq_len`.
    ///
    /// transformers keeps `dynamic`'s frequencies as state across calls (they follow the
    /// longest sequence seen, and reset when a call ends within `L₀`); here a pass from
    /// position `start` with `seq` tokens passes `seq_len = start + seq`. The two agree on a
    /// single forward and on generation whose length only grows (cached keys keep the
    /// rotation of the pass that wrote them, in both); they differ when, after a longer
    /// sequence, a shorter one still past `L₀` is run on the same transformers model (which
    /// keeps the longer length's frequencies).
    pub fn frequencies(&self, seq_len: usize) -> Frequencies {
        let d = self.head_dim;
        let factor = self.scaling.factor.unwrap_or(1.0);
        let powers = |base: f32| -> Vec<f32> {
            (0..d / 2)
                .map(|i| base.powf((2 * i) as f32 / d as f32))
                .collect()
        };
        let plain = |base: f32| -> Vec<f32> { powers(base).iter().map(|p| 1.0 / p).collect() };
        let base = self.theta as f32;
        let (inv_freq, attention_factor) = match self.scaling.rope_type.as_str() {
            "linear" => (plain(base).iter().map(|f| f / factor as f32).collect(), 1.0),
            "dynamic" => {
                let original = self.max_position_embeddings;
                let length = seq_len.max(original) as f32;
                let stretch = factor as f32 * length / original as f32 - (factor - 1.0) as f32;
                let exponent = (d as f64 / (d as f64 - 2.0)) as f32;
                (plain(base * stretch.powf(exponent)), 1.0)
            }
            "yarn" => self.yarn(&powers(base), factor),
            _ => (plain(base), 1.0),
        };
        Frequencies {
            inv_freq,
            attention_factor: attention_factor as f32,
        }
    }

    /// YaRN ("NTK-by-parts"): pairs that turn fewer than `beta_slow` times over the original
    /// context are interpolated (divided by `factor`), those turning more than `beta_fast`
    /// times are kept, with a linear ramp over the dimensions between; `powers` are
    /// `base^(2i/d)`. Returns the frequencies and the attention factor
    /// (`0.1·ln(factor) + 1` unless the section sets it).
    fn yarn(&self, powers: &[f32], factor: f64) -> (Vec<f32>, f64) {
        let s = &self.scaling;
        let d = self.head_dim as f64;
        let original = s
            .original_max_position_embeddings
            .unwrap_or(self.max_position_embeddings) as f64;
        let nonzero = |v: Option<f64>| v.filter(|v| *v != 0.0);
        // the (fractional) dimension whose pair turns `rotations` times over the original context
        let dimension = |rotations: f64| {
            (d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln())
                / (2.0 * self.theta.ln())
        };
        let mut low = dimension(nonzero(s.beta_fast).unwrap_or(32.0));
        let mut high = dimension(nonzero(s.beta_slow).unwrap_or(1.0));
        if s.truncate.unwrap_or(true) {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
        if low == high {
            high += 0.001;
        }
        let inv_freq = powers
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                let kept = 1.0 - ramp;
                (1.0 / (factor as f32 * p)) * (1.0 - kept) + (1.0 / p) * kept
            })
            .collect();
        let mscale = |m: f64| {
            if factor <= 1.0 {
                1.0
            } else {
                0.1 * m * factor.ln() + 1.0
            }
        };
        let attention = s.attention_factor.unwrap_or_else(|| {
            match (nonzero(s.mscale), nonzero(s.mscale_all_dim)) {
                (Some(m), Some(all)) => mscale(m) / mscale(all),
                _ => mscale(1.0),
            }
        });
        (inv_freq, attention)
    }

    /// Longest sequence andes runs: `max_position_embeddings`, or the context a scaling is
    /// meant to reach when longer: `factor × original_max_position_embeddings` for `yarn`,
    /// `factor × max_position_embeddings` for `dynamic` (transformers sets no limit).
    pub fn context(&self) -> usize {
        let factor = self.scaling.factor.unwrap_or(1.0);
        let stretched = |length: usize| (factor * length as f64).floor() as usize;
        let max = self.max_position_embeddings;
        match self.scaling.rope_type.as_str() {
            "yarn" => max.max(stretched(
                self.scaling.original_max_position_embeddings.unwrap_or(max),
            )),
            "dynamic" => max.max(stretched(max)),
            _ => max,
        }
    }

    /// Positions whose angles do not depend on the sequence's length, so tables can hold
    /// them: all of [`Rope::context`], except for `dynamic` only the original length.
    pub fn fixed_positions(&self) -> usize {
        match self.scaling.rope_type.as_str() {
            "dynamic" => self.max_position_embeddings,
            _ => self.context(),
        }
    }
}

impl Frequencies {
    /// cos and sin of `positions`, `[positions.len(), head_dim]` each (the halves repeated,
    /// times the attention factor), as the rotate-half layout uses them.
    pub fn tables(&self, positions: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
        let size = positions.len() * 2 * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(size), Vec::with_capacity(size));
        for position in positions {
            for _half in 0..2 {
                for f in &self.inv_freq {
                    let angle = position as f32 * f;
                    cos.push(angle.cos() * self.attention_factor);
                    sin.push(angle.sin() * self.attention_factor);
                }
            }
        }
        (cos, sin)
    }
}

/// Precomputed cos/sin tables, `[positions, head_dim]` each, for the positions whose angles
/// do not depend on the sequence's length ([`Rope::fixed_positions`]); a pass beyond them
/// (`dynamic` past its original length) computes its own rows.
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    cos: Tensor<2>,
    sin: Tensor<2>,
    #[module(skip)]
    rope: Rope,
}

impl RotaryEmbedding {
    /// Builds the tables of `rope`.
    pub fn new(rope: Rope, device: &Device) -> Self {
        let positions = rope.fixed_positions();
        let (cos, sin) = rope.frequencies(positions).tables(0..positions);
        let shape = [positions, rope.head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            rope,
        }
    }

    /// Positions the tables cover: a sequence within them can run from a position held on
    /// the device (a replayed decode).
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Longest sequence (prompt plus generated tokens) the model runs ([`Rope::context`]).
    pub fn context(&self) -> usize {
        self.rope.context()
    }

    /// `norm` (Qwen3's per-head query or key RMSNorm) then the rotation of `x` (`[batch, heads,
    /// seq, head_dim]`) whose tokens sit at `position`, as one operation ([`norm_rotation`]),
    /// returned in `x`'s dtype.
    pub fn normalise_and_rotate(
        &self,
        norm: &RmsNorm,
        x: Tensor<4>,
        position: &Position,
    ) -> Tensor<4> {
        let [_, _, seq, head_dim] = x.dims();
        let (cos, sin) = match position {
            Position::Start(start) if start + seq > self.max_positions() => {
                let rows = *start..start + seq;
                let (cos, sin) = self.rope.frequencies(rows.end).tables(rows);
                let device = x.device();
                (
                    Tensor::from_data(TensorData::new(cos, [seq, head_dim]), &device),
                    Tensor::from_data(TensorData::new(sin, [seq, head_dim]), &device),
                )
            }
            Position::Start(start) => (
                self.cos.clone().narrow(0, *start, seq),
                self.sin.clone().narrow(0, *start, seq),
            ),
            Position::Device { index, .. } => (
                self.cos.clone().select(0, index.clone()),
                self.sin.clone().select(0, index.clone()),
            ),
            Position::Packed { positions, .. } => {
                let [batch, _] = positions.dims();
                let flat: Tensor<1, Int> = positions.clone().reshape([batch * seq]);
                let rows = |table: &Tensor<2>| -> Tensor<4> {
                    table
                        .clone()
                        .select(0, flat.clone())
                        .reshape([batch, 1, seq, head_dim])
                };
                return norm_rotation(norm, x, rows(&self.cos), rows(&self.sin));
            }
        };
        norm_rotation(norm, x, cos.unsqueeze(), sin.unsqueeze())
    }
}

/// `x·cos + rotate_half(x)·sin` for `x` `[batch, heads, seq, head_dim]` and tables
/// `[seq, head_dim]`, where `rotate_half([x1, x2]) = [-x2, x1]` (the transformers convention,
/// shared by the text model's 1D and the vision tower's 2D rotary embeddings).
pub fn rotate_half(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    rotate(x, cos.unsqueeze(), sin.unsqueeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::path::Path;

    fn scaling(section: Value) -> RopeScaling {
        serde_json::from_value(section).unwrap()
    }

    #[test]
    fn unsupported_kinds_are_refused_naming_the_supported_ones() {
        for kind in ["llama3", "longrope", "su"] {
            let (key, message) = scaling(json!({"rope_type": kind, "factor": 8.0}))
                .validated("rope_parameters")
                .unwrap_err();
            assert_eq!(key, "rope_parameters.rope_type");
            assert_eq!(
                message,
                format!(
                    "\"{kind}\" is not supported; \
                     expected \"default\", \"linear\", \"dynamic\" or \"yarn\""
                )
            );
        }
    }

    #[test]
    fn scaled_kinds_need_a_positive_factor() {
        for kind in ["linear", "dynamic", "yarn"] {
            for factor in [json!(null), json!(0.0), json!(-2.0)] {
                let (key, message) = scaling(json!({"type": kind, "factor": factor}))
                    .validated("rope_scaling")
                    .unwrap_err();
                assert_eq!(key, "rope_scaling.factor");
                assert!(
                    message.contains(&format!("for {kind} scaling")),
                    "{message}"
                );
            }
            let valid = scaling(json!({"rope_type": kind, "factor": 4.0}));
            assert_eq!(valid.validated("rope_scaling"), Ok(valid.clone()));
        }
    }

    /// The frequencies and attention factors transformers computes (`ROPE_INIT_FUNCTIONS`, as
    /// written to `fixtures/rope/frequencies.json` by `make_qwen3_fixtures.py`): default,
    /// linear, YaRN with each of its keys, dynamic below and past its original length.
    #[test]
    fn frequencies_match_transformers() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/rope/frequencies.json");
        let table: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let scaling = scaling(case["rope_parameters"].clone())
                .validated("rope_parameters")
                .unwrap();
            let rope = Rope {
                head_dim: case["head_dim"].as_u64().unwrap() as usize,
                theta: scaling.rope_theta.unwrap(),
                scaling,
                max_position_embeddings: case["max_position_embeddings"].as_u64().unwrap() as usize,
            };
            let seq_len = case["seq_len"].as_u64().unwrap() as usize;
            let got = rope.frequencies(seq_len);
            let want: Vec<f32> = case["inv_freq"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got.inv_freq.len(), want.len());
            let error = got
                .inv_freq
                .iter()
                .zip(&want)
                .map(|(g, w)| ((g - w) / w).abs())
                .fold(0.0f32, f32::max);
            let label = format!("{} at length {seq_len}", case["rope_parameters"]);
            eprintln!("{label}: inverse frequencies' relative error {error:e}");
            assert!(
                error <= 1e-6,
                "{label}: inverse frequencies off by {error:e}"
            );
            let factor = case["attention_factor"].as_f64().unwrap() as f32;
            assert_eq!(got.attention_factor, factor, "{label}");
        }
    }

    #[test]
    fn dynamic_is_plain_rope_within_its_original_length() {
        let rope = |kind: &str| Rope {
            head_dim: 64,
            theta: 10_000.0,
            scaling: scaling(json!({"rope_type": kind, "factor": 4.0})),
            max_position_embeddings: 2048,
        };
        let plain = rope("default").frequencies(1);
        for seq_len in [1, 100, 2048] {
            assert_eq!(rope("dynamic").frequencies(seq_len), plain);
        }
        assert!(rope("dynamic").frequencies(2049).inv_freq[1] < plain.inv_freq[1]);
        assert_eq!(rope("dynamic").context(), 8192);
        assert_eq!(rope("dynamic").fixed_positions(), 2048);
        assert_eq!(rope("linear").context(), 2048);
    }

    /// YaRN reaches `factor ×` its original context, or `max_position_embeddings` if longer.
    #[test]
    fn yarn_context() {
        let rope = |max_position_embeddings| Rope {
            head_dim: 128,
            theta: 1e6,
            scaling: scaling(json!({"rope_type": "yarn", "factor": 4.0,
                                    "original_max_position_embeddings": 32768})),
            max_position_embeddings,
        };
        assert_eq!(rope(40960).context(), 131072);
        assert_eq!(rope(40960).fixed_positions(), 131072);
        assert_eq!(rope(200000).context(), 200000);
    }
}
