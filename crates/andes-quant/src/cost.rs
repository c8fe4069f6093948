//! A first-order cost model of a package on a target: memory for the weights and the KV
//! cache, and the speed bounds of prefill (compute) and decode (memory bandwidth). These are
//! estimates from the profile's peak numbers, not measurements; the formulas are printed with
//! them.

use serde::Serialize;

use crate::target::TargetProfile;

/// The shape facts the model needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ModelShape {
    /// Parameters that take part in every token's forward pass (embedding rows excluded:
    /// one row is read per token).
    pub active_params: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Key/value heads per layer.
    pub kv_heads: u64,
    /// Width of a head.
    pub head_dim: u64,
}

/// The estimate for one context length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostEstimate {
    /// Bytes of the package's weights (read from memory once per decoded token).
    pub weight_bytes: u64,
    /// Context length the KV figures are for.
    pub context: u64,
    /// `2 · layers · kv_heads · head_dim · context · activation_bits/8`.
    pub kv_cache_bytes: u64,
    /// Memory the target lets a model use.
    pub memory_bytes: u64,
    /// Whether weights and KV cache fit in it.
    pub fits: bool,
    /// `bandwidth / (weight_bytes + kv_cache_bytes)`: every decoded token reads all weights
    /// and the whole cache once (an upper bound at full context).
    pub decode_tokens_per_s: f64,
    /// `compute_tops · 10¹² / (2 · active_params)`: prompt tokens at the accelerator's peak
    /// (an upper bound; attention's context-dependent work is left out).
    pub prefill_tokens_per_s: f64,
}

/// The formulas, as printed beside the numbers.
pub const COST_FORMULAS: &str = "decode tok/s ≤ bandwidth / (weight bytes + KV bytes); \
prefill tok/s ≤ peak ops/s / (2 · active params); KV bytes = 2 · layers · kv_heads · head_dim \
· context · activation bytes (estimates from the profile's peak figures)";

/// Estimates `weight_bytes` of weights of a model of `shape` at `context` tokens on `target`.
pub fn estimate(
    target: &TargetProfile,
    weight_bytes: u64,
    shape: ModelShape,
    context: u64,
) -> CostEstimate {
    let activation_bytes = target.activation_bits.value / 8.0;
    let kv_cache_bytes =
        (2 * shape.layers * shape.kv_heads * shape.head_dim * context) as f64 * activation_bytes;
    let kv_cache_bytes = kv_cache_bytes as u64;
    let memory_bytes = (target.memory_gib.value * (1u64 << 30) as f64) as u64;
    let bandwidth = target.bandwidth_gb_s.value * 1e9;
    CostEstimate {
        weight_bytes,
        context,
        kv_cache_bytes,
        memory_bytes,
        fits: weight_bytes + kv_cache_bytes <= memory_bytes,
        decode_tokens_per_s: bandwidth / (weight_bytes + kv_cache_bytes) as f64,
        prefill_tokens_per_s: target.compute_tops.value * 1e12
            / (2.0 * shape.active_params.max(1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Sourced;

    #[test]
    fn decode_is_bandwidth_over_bytes_moved() {
        let sourced = |value: f64| Sourced {
            value,
            source: "test".into(),
        };
        let target = TargetProfile {
            name: "t".into(),
            description: String::new(),
            linear_formats: Vec::new(),
            unquantized: crate::target::Unquantized {
                precision: crate::target::FloatPrecision::F16,
                source: String::new(),
            },
            activation_bits: sourced(16.0),
            alignment_bytes: sourced(64.0),
            memory_gib: sourced(1.0),
            bandwidth_gb_s: sourced(100.0),
            compute_tops: sourced(10.0),
        };
        let shape = ModelShape {
            active_params: 500_000_000,
            layers: 28,
            kv_heads: 8,
            head_dim: 128,
        };
        let estimate = estimate(&target, 400_000_000, shape, 1000);
        // KV: 2·28·8·128·1000·2 bytes = 114 688 000.
        assert_eq!(estimate.kv_cache_bytes, 114_688_000);
        let expected = 100e9 / (400_000_000.0 + 114_688_000.0);
        assert!((estimate.decode_tokens_per_s - expected).abs() < 1e-9);
        assert!((estimate.prefill_tokens_per_s - 10_000.0).abs() < 1e-9);
        assert!(estimate.fits);
        assert!(!super::estimate(&target, 1 << 30, shape, 1000).fits);
    }
}
