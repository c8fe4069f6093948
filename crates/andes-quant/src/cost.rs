//! A first-order cost model of a package on a target: memory for the weights and the KV
//! cache, and the speed bounds of prefill (compute) and decode (memory bandwidth). These are
//! estimates from the profile's peak numbers, not measurements; the formulas are printed with
//! them.

use serde::Serialize;

use crate::bpw::bits_per_weight;
use crate::format::QuantFormat;
use crate::target::TargetProfile;
use crate::tensor::WeightShape;

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

/// A package's weights as stored and as held in the device's memory once loaded: the two
/// differ where the target unpacks a format to another at load (`unpacks_to`, e.g. int2 to
/// int4 on the Dimensity 9500), which costs memory and bandwidth at the unpacked size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WeightBytes {
    /// Bytes in the package.
    pub stored: u64,
    /// Bytes in memory after loading, read once per decoded token.
    pub resident: u64,
}

impl WeightBytes {
    /// `stored` bytes of weights, among them the linears `layers` (format, shape): each
    /// linear the target unpacks at load is resident at its unpacked format's size.
    pub fn new(
        target: &TargetProfile,
        stored: u64,
        layers: impl IntoIterator<Item = (QuantFormat, WeightShape)>,
    ) -> Self {
        let (packed_bits, unpacked_bits) =
            layers
                .into_iter()
                .fold((0u64, 0u64), |(packed, unpacked), (format, shape)| {
                    let resident = target.resident_format(format);
                    (
                        packed + bits_per_weight(format, shape).total_bits(),
                        unpacked + bits_per_weight(resident, shape).total_bits(),
                    )
                });
        Self {
            stored,
            resident: (stored + unpacked_bits / 8).saturating_sub(packed_bits / 8),
        }
    }
}

/// The estimate for one context length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostEstimate {
    /// Bytes of the package's weights.
    pub weight_bytes: u64,
    /// Bytes the weights take in memory once loaded (more than `weight_bytes` where the
    /// target unpacks a format at load), read once per decoded token.
    pub resident_weight_bytes: u64,
    /// Context length the KV figures are for.
    pub context: u64,
    /// `2 · layers · kv_heads · head_dim · context · activation_bits/8`.
    pub kv_cache_bytes: u64,
    /// Memory the target lets a model use.
    pub memory_bytes: u64,
    /// Whether the resident weights and the KV cache fit in it.
    pub fits: bool,
    /// `bandwidth / (resident_weight_bytes + kv_cache_bytes)`: every decoded token reads all
    /// weights and the whole cache once (an upper bound at full context).
    pub decode_tokens_per_s: f64,
    /// `compute_tops · 10¹² / (2 · active_params)`: prompt tokens at the accelerator's peak
    /// (an upper bound; attention's context-dependent work is left out).
    pub prefill_tokens_per_s: f64,
}

/// The formulas, as printed beside the numbers.
pub const COST_FORMULAS: &str = "decode tok/s ≤ bandwidth / (resident weight bytes + KV bytes), \
formats the target unpacks at load counted at their unpacked size; \
prefill tok/s ≤ peak ops/s / (2 · active params); KV bytes = 2 · layers · kv_heads · head_dim \
· context · activation bytes (estimates from the profile's peak figures)";

/// Estimates `weights` of a model of `shape` at `context` tokens on `target`.
pub fn estimate(
    target: &TargetProfile,
    weights: WeightBytes,
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
        weight_bytes: weights.stored,
        resident_weight_bytes: weights.resident,
        context,
        kv_cache_bytes,
        memory_bytes,
        fits: weights.resident + kv_cache_bytes <= memory_bytes,
        decode_tokens_per_s: bandwidth / (weights.resident + kv_cache_bytes) as f64,
        prefill_tokens_per_s: target.compute_tops.value * 1e12
            / (2.0 * shape.active_params.max(1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{AllowedFormat, Execution, Sourced};

    fn target(unpacks_to: Option<QuantFormat>) -> TargetProfile {
        let sourced = |value: f64| Sourced {
            value,
            source: "test".into(),
        };
        let allowed = |format: &str, execution, unpacks_to| AllowedFormat {
            format: format.parse().unwrap(),
            execution,
            unpacks_to,
            source: "test".into(),
        };
        TargetProfile {
            name: "t".into(),
            description: String::new(),
            linear_formats: vec![
                allowed("int4-channel-sym", Execution::Native, None),
                allowed("int2-g64-asym", Execution::Unpack, unpacks_to),
            ],
            unquantized: crate::target::Unquantized {
                precision: crate::target::FloatPrecision::F16,
                source: String::new(),
            },
            tables: None,
            activation_bits: sourced(16.0),
            alignment_bytes: sourced(64.0),
            memory_gib: sourced(1.0),
            bandwidth_gb_s: sourced(100.0),
            compute_tops: sourced(10.0),
        }
    }

    const SHAPE: ModelShape = ModelShape {
        active_params: 500_000_000,
        layers: 28,
        kv_heads: 8,
        head_dim: 128,
    };

    #[test]
    fn decode_is_bandwidth_over_bytes_moved() {
        let target = target(None);
        let weights = WeightBytes::new(&target, 400_000_000, []);
        let estimate = estimate(&target, weights, SHAPE, 1000);
        // KV: 2·28·8·128·1000·2 bytes = 114 688 000.
        assert_eq!(estimate.kv_cache_bytes, 114_688_000);
        let expected = 100e9 / (400_000_000.0 + 114_688_000.0);
        assert!((estimate.decode_tokens_per_s - expected).abs() < 1e-9);
        assert!((estimate.prefill_tokens_per_s - 10_000.0).abs() < 1e-9);
        assert!(estimate.fits);
        let big = WeightBytes::new(&target, 1 << 30, []);
        assert!(!super::estimate(&target, big, SHAPE, 1000).fits);
    }

    #[test]
    fn a_format_unpacked_at_load_costs_its_unpacked_size() {
        let int2: QuantFormat = "int2-g64-asym".parse().unwrap();
        let int4: QuantFormat = "int4-channel-sym".parse().unwrap();
        let shape = WeightShape {
            out_features: 1024,
            in_features: 4096,
        };
        let layers = [(int2, shape), (int4, shape)];
        let floats = 1_000_000;
        let bytes = |format| bits_per_weight(format, shape).total_bits() / 8;
        let stored = floats + bytes(int2) + bytes(int4);
        // Unpacked in the kernel: memory and bandwidth follow the packed bytes.
        let in_kernel = WeightBytes::new(&target(None), stored, layers);
        assert_eq!(in_kernel.resident, stored);
        // Unpacked to int4 at load: the int2 linear sits in memory as int4.
        let unpacking = target(Some(int4));
        let at_load = WeightBytes::new(&unpacking, stored, layers);
        assert_eq!(at_load.stored, stored);
        assert_eq!(at_load.resident, floats + 2 * bytes(int4));
        let slower = estimate(&unpacking, at_load, SHAPE, 1000);
        let faster = estimate(&unpacking, in_kernel, SHAPE, 1000);
        assert!(slower.decode_tokens_per_s < faster.decode_tokens_per_s);
        assert_eq!(slower.resident_weight_bytes, at_load.resident);
    }
}
