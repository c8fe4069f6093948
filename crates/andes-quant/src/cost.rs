//! A first-order cost model of a package on a target: memory for the weights and the KV
//! cache, and the speed bounds of prefill (compute) and decode (memory bandwidth and, where
//! the profile gives its kernels' throughput, the time they take to unpack and multiply).
//! These are estimates from the profile's figures, not measurements; the formulas are
//! printed with them.

use std::collections::BTreeSet;

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
    /// Weights of the LM head (the embedding table when tied), multiplied every token in the
    /// tables' format.
    pub head_weights: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Key/value heads per layer.
    pub kv_heads: u64,
    /// Width of a head.
    pub head_dim: u64,
}

/// A package's weights as stored and as held in the device's memory once loaded, and the
/// time the device's kernels take over its linears. Stored and resident differ where the
/// target unpacks a format to another at load (`unpacks_to`, e.g. int2 to int4 on the
/// Dimensity 9500), which costs memory, bandwidth and kernel time at the unpacked format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PackedWeights {
    /// Bytes in the package.
    pub stored: u64,
    /// Bytes in memory after loading, read once per decoded token.
    pub resident: u64,
    /// Seconds the profile's kernels take over the linears a decoded token (those of a
    /// format it gives a figure for).
    pub linear_kernel_seconds: f64,
    /// Resident formats of linears the profile's kernels give no figure for (none where it
    /// gives no kernel figures at all).
    pub unmeasured_formats: BTreeSet<String>,
    /// The kind the LM head is stored in (a format string, `f16` or `f32`).
    pub head_kind: String,
}

impl PackedWeights {
    /// `stored` bytes of weights, among them the linears `layers` (format, shape) and an LM
    /// head stored as `head_kind`, on `target`: each linear the target unpacks at load is
    /// resident, and multiplied, at its unpacked format.
    pub fn new(
        target: &TargetProfile,
        stored: u64,
        layers: impl IntoIterator<Item = (QuantFormat, WeightShape)>,
        head_kind: String,
    ) -> Self {
        let (mut packed_bits, mut unpacked_bits, mut seconds) = (0u64, 0u64, 0.0);
        let mut unmeasured_formats = BTreeSet::new();
        for (format, shape) in layers {
            let resident = target.resident_format(format);
            packed_bits += bits_per_weight(format, shape).total_bits();
            unpacked_bits += bits_per_weight(resident, shape).total_bits();
            match target.kernel_seconds(&resident.to_string(), shape.numel() as u64) {
                Some(s) => seconds += s,
                None if target.kernels.is_some() => {
                    unmeasured_formats.insert(resident.to_string());
                }
                None => {}
            }
        }
        Self {
            stored,
            resident: (stored + unpacked_bits / 8).saturating_sub(packed_bits / 8),
            linear_kernel_seconds: seconds,
            unmeasured_formats,
            head_kind,
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
    /// The lower of the bandwidth and kernel bounds: reading and unpacking overlapped
    /// (a roofline; the upper bound).
    pub decode_tokens_per_s: f64,
    /// `bandwidth / (resident_weight_bytes + kv_cache_bytes)`: every decoded token reads all
    /// weights and the whole cache once (an upper bound at full context).
    pub decode_bandwidth_tokens_per_s: f64,
    /// `1 / Σ weights / kernel throughput of their format` over the linears and the head,
    /// where the profile gives its kernels' throughput (attention's work left out).
    pub decode_kernel_tokens_per_s: Option<f64>,
    /// `1 / (1 / bandwidth bound + 1 / kernel bound)`: reading and unpacking one after the
    /// other, as a core that stalls on its loads does (the lower estimate; measured decoding
    /// lies between the two).
    pub decode_serial_tokens_per_s: Option<f64>,
    /// Formats multiplied every token that the profile's kernel figures leave out (their
    /// time is not in the kernel bound).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_unmeasured: Vec<String>,
    /// `compute_tops · 10¹² / (2 · active_params)`: prompt tokens at the accelerator's peak
    /// (an upper bound; attention's context-dependent work is left out).
    pub prefill_tokens_per_s: f64,
}

/// The formulas, as printed beside the numbers.
pub const COST_FORMULAS: &str = "decode tok/s ≤ bandwidth / (resident weight bytes + KV bytes), \
formats the target unpacks at load counted at their unpacked size, and, where the profile \
gives its kernels' throughput, ≤ 1 / Σ weights / throughput of their format over the linears \
and the head (≥ 1 / (1 / bandwidth bound + 1 / kernel bound) when reading and unpacking do \
not overlap); prefill tok/s ≤ peak ops/s / (2 · active params); KV bytes = 2 · layers · \
kv_heads · head_dim · context · activation bytes (estimates from the profile's figures)";

/// Estimates `weights` of a model of `shape` at `context` tokens on `target`.
pub fn estimate(
    target: &TargetProfile,
    weights: PackedWeights,
    shape: ModelShape,
    context: u64,
) -> CostEstimate {
    let activation_bytes = target.activation_bits.value / 8.0;
    let kv_cache_bytes =
        (2 * shape.layers * shape.kv_heads * shape.head_dim * context) as f64 * activation_bytes;
    let kv_cache_bytes = kv_cache_bytes as u64;
    let memory_bytes = (target.memory_gib.value * (1u64 << 30) as f64) as u64;
    let bandwidth = target.bandwidth_gb_s.value * 1e9;
    let bandwidth_bound = bandwidth / (weights.resident + kv_cache_bytes) as f64;
    let mut unmeasured = weights.unmeasured_formats;
    let kernel_bound = target.kernels.as_ref().map(|_| {
        let head_seconds = target.kernel_seconds(&weights.head_kind, shape.head_weights);
        if head_seconds.is_none() {
            unmeasured.insert(weights.head_kind);
        }
        1.0 / (weights.linear_kernel_seconds + head_seconds.unwrap_or(0.0))
    });
    CostEstimate {
        weight_bytes: weights.stored,
        resident_weight_bytes: weights.resident,
        context,
        kv_cache_bytes,
        memory_bytes,
        fits: weights.resident + kv_cache_bytes <= memory_bytes,
        decode_tokens_per_s: kernel_bound.map_or(bandwidth_bound, |k| k.min(bandwidth_bound)),
        decode_bandwidth_tokens_per_s: bandwidth_bound,
        decode_kernel_tokens_per_s: kernel_bound,
        decode_serial_tokens_per_s: kernel_bound.map(|k| 1.0 / (1.0 / bandwidth_bound + 1.0 / k)),
        kernel_unmeasured: unmeasured.into_iter().collect(),
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
            kernels: None,
        }
    }

    const SHAPE: ModelShape = ModelShape {
        active_params: 500_000_000,
        head_weights: 100_000_000,
        layers: 28,
        kv_heads: 8,
        head_dim: 128,
    };

    #[test]
    fn decode_is_bandwidth_over_bytes_moved() {
        let target = target(None);
        let weights = PackedWeights::new(&target, 400_000_000, [], "f16".into());
        let estimate = estimate(&target, weights, SHAPE, 1000);
        // KV: 2·28·8·128·1000·2 bytes = 114 688 000.
        assert_eq!(estimate.kv_cache_bytes, 114_688_000);
        let expected = 100e9 / (400_000_000.0 + 114_688_000.0);
        assert!((estimate.decode_tokens_per_s - expected).abs() < 1e-9);
        assert!((estimate.prefill_tokens_per_s - 10_000.0).abs() < 1e-9);
        assert!(estimate.fits);
        let big = PackedWeights::new(&target, 1 << 30, [], "f16".into());
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
        let in_kernel = PackedWeights::new(&target(None), stored, layers, "f16".into());
        assert_eq!(in_kernel.resident, stored);
        // Unpacked to int4 at load: the int2 linear sits in memory as int4.
        let unpacking = target(Some(int4));
        let at_load = PackedWeights::new(&unpacking, stored, layers, "f16".into());
        assert_eq!(at_load.stored, stored);
        assert_eq!(at_load.resident, floats + 2 * bytes(int4));
        let slower = estimate(&unpacking, at_load.clone(), SHAPE, 1000);
        let faster = estimate(&unpacking, in_kernel, SHAPE, 1000);
        assert!(slower.decode_tokens_per_s < faster.decode_tokens_per_s);
        assert_eq!(slower.resident_weight_bytes, at_load.resident);
    }

    /// With kernel figures, decoding is bounded by the slower of reading the bytes and
    /// multiplying the weights; a format the figures leave out is named.
    #[test]
    fn kernel_figures_bound_decoding_where_unpacking_is_slower_than_reading() {
        let int2: QuantFormat = "int2-g64-asym".parse().unwrap();
        let shape = WeightShape {
            out_features: 1000,
            in_features: 1000,
        };
        let layers = || [(int2, shape)];
        let mut target = target(None);
        let kernels = |pairs: &[(&str, f64)]| crate::target::KernelThroughput {
            gweights_s: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            source: "test".into(),
        };
        // 10⁶ linear weights at 0.001 G/s (1 s) and 10⁸ head weights at 1000 G/s (0.1 ms).
        target.kernels = Some(kernels(&[("int2-g64-asym", 0.001), ("f16", 1000.0)]));
        let weights = PackedWeights::new(&target, 400_000_000, layers(), "f16".into());
        let slow = estimate(&target, weights, SHAPE, 1000);
        let kernel = slow.decode_kernel_tokens_per_s.unwrap();
        assert!((kernel - 1.0 / 1.0001).abs() < 1e-9, "{kernel}");
        assert!(kernel < slow.decode_bandwidth_tokens_per_s);
        assert_eq!(slow.decode_tokens_per_s, kernel);
        let serial = slow.decode_serial_tokens_per_s.unwrap();
        let expected = 1.0 / (1.0 / kernel + 1.0 / slow.decode_bandwidth_tokens_per_s);
        assert!((serial - expected).abs() < 1e-9 && serial < kernel);
        assert!(slow.kernel_unmeasured.is_empty());
        // Fast kernels leave the bandwidth bound; the head's float format without a figure
        // is named and left out.
        target.kernels = Some(kernels(&[("int2-g64-asym", 1000.0)]));
        let weights = PackedWeights::new(&target, 400_000_000, layers(), "f16".into());
        let fast = estimate(&target, weights, SHAPE, 1000);
        assert_eq!(fast.decode_tokens_per_s, fast.decode_bandwidth_tokens_per_s);
        assert_eq!(fast.kernel_unmeasured, ["f16"]);
        // Without figures the kernels are not estimated at all.
        target.kernels = None;
        let weights = PackedWeights::new(&target, 400_000_000, layers(), "f16".into());
        let bare = estimate(&target, weights, SHAPE, 1000);
        assert_eq!(bare.decode_kernel_tokens_per_s, None);
        assert_eq!(bare.decode_serial_tokens_per_s, None);
        assert!(bare.kernel_unmeasured.is_empty());
    }
}
