//! What this CPU does with the runtime's products, measured for a target profile's cost model
//! (`andes bench cpu`): the memory read bandwidth, which bounds a decoded token that reads
//! every weight once, and each weight format's kernel throughput with the weights in cache,
//! which bounds it where unpacking the codes takes longer than reading them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use andes_quant::{
    KernelThroughput, QuantFormat, Sourced, TargetProfile, WeightShape, quantize_rtn,
};
use half::f16;
use serde::Serialize;

use crate::RuntimeError;
use crate::packed::PackedMatrix;

/// Rows and columns of the matrix a kernel's throughput is measured on: a Qwen3-0.6B
/// projection's input width, small enough to stay in cache (512 KB at int4, 2 MB in f16).
pub const KERNEL_MATRIX: (usize, usize) = (1024, 1024);

/// A `rows × cols` matrix of `kind` (an andes format string, `f16` or `f32`) with fixed
/// pseudo-random weights, laid out as the loader lays out a package's tensors for
/// `int8_activations`.
pub fn test_matrix(
    kind: &str,
    rows: usize,
    cols: usize,
    int8_activations: bool,
) -> Result<PackedMatrix, RuntimeError> {
    let weights = test_weights(rows, cols);
    let mut matrix = match kind {
        "f32" => PackedMatrix::from_f32(rows, cols, weights),
        "f16" => PackedMatrix::from_f16(
            rows,
            cols,
            weights.iter().map(|&w| f16::from_f32(w)).collect(),
        ),
        format => {
            let format: QuantFormat = format.parse().map_err(|e| {
                RuntimeError::Request(format!("kernel {format:?}: {e} (or f16, f32)"))
            })?;
            let quantized = quantize_rtn(&weights, WeightShape::new(rows, cols), format)
                .map_err(|e| RuntimeError::Request(format!("kernel {format}: {e}")))?;
            PackedMatrix::from_quantized(&quantized)
        }
    };
    matrix.set_int8_activations(int8_activations);
    Ok(matrix)
}

/// The fixed pseudo-random `rows × cols` weights of [`test_matrix`], in [−0.5, 0.5).
fn test_weights(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| (i * 7919 % 1013) as f32 / 1013.0 - 0.5)
        .collect()
}

/// The fastest of `passes` passes that multiply each of `matrices` by `vectors` vectors, in
/// seconds.
pub fn best_pass_seconds(matrices: &[PackedMatrix], vectors: usize, passes: usize) -> f64 {
    let cols = matrices.first().map_or(0, PackedMatrix::cols);
    let x: Vec<f32> = (0..vectors * cols)
        .map(|i| ((i % 17) as f32 - 8.0) / 9.0)
        .collect();
    let mut best = f64::MAX;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        let checksum: f32 = matrices.iter().map(|m| m.multiply(&x)[0]).sum();
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(checksum);
    }
    best
}

/// Billions of weights a second the product of `kind` (see [`test_matrix`]) takes one vector
/// through, weights in cache, on rayon's threads: the best pass of those run in about
/// `seconds`.
pub fn kernel_gweights_s(
    kind: &str,
    int8_activations: bool,
    seconds: f64,
) -> Result<f64, RuntimeError> {
    let (rows, cols) = KERNEL_MATRIX;
    let matrix = [test_matrix(kind, rows, cols, int8_activations)?];
    let once = best_pass_seconds(&matrix, 1, 3);
    let passes = (seconds / once) as usize;
    let best = best_pass_seconds(&matrix, 1, passes);
    Ok((rows * cols) as f64 / best / 1e9)
}

/// Bytes a second rayon's threads read from a 1 GiB buffer, each its contiguous share (the
/// best of three passes): the memory bandwidth a decoding step can use.
pub fn read_bandwidth() -> f64 {
    let words = (1usize << 30) / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads().max(1);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            buffer
                .chunks(words.div_ceil(threads))
                .map(|chunk| {
                    scope.spawn(move || chunk.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// This CPU's figures, as `andes bench cpu` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct CpuMeasurement {
    /// The CPU's model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// Threads the products ran on (rayon's).
    pub threads: usize,
    /// Whether the products rounded their inputs to int8 (`--int8-activations`).
    pub int8_activations: bool,
    /// [`read_bandwidth`], GB/s.
    pub read_bandwidth_gb_s: f64,
    /// [`kernel_gweights_s`] by kind.
    pub kernel_gweights_s: BTreeMap<String, f64>,
}

impl CpuMeasurement {
    /// Measures the read bandwidth and the kernels of every linear format `base` allows, the
    /// kind its packages store the LM head in, and the kinds of `extra`, each for about
    /// `seconds`.
    pub fn measure(
        base: &TargetProfile,
        extra: &[String],
        int8_activations: bool,
        seconds: f64,
    ) -> Result<Self, RuntimeError> {
        let kinds: BTreeSet<String> = (base.formats().iter().map(ToString::to_string))
            .chain([base.head_kind()])
            .chain(extra.iter().cloned())
            .collect();
        let kernel_gweights_s = kinds
            .into_iter()
            .map(|kind| {
                Ok((
                    kind.clone(),
                    kernel_gweights_s(&kind, int8_activations, seconds)?,
                ))
            })
            .collect::<Result<_, RuntimeError>>()?;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                let line = info.lines().find(|l| l.starts_with("model name"))?;
                Some(line.split_once(':')?.1.trim().to_string())
            })
            .unwrap_or_else(|| "an unnamed CPU".into());
        Ok(Self {
            cpu,
            threads: rayon::current_num_threads(),
            int8_activations,
            read_bandwidth_gb_s: read_bandwidth() / 1e9,
            kernel_gweights_s,
        })
    }

    /// `base` with this CPU's measured bandwidth and kernels in place of its own figures:
    /// the profile `andes inspect --target` estimates this CPU's decoding with.
    pub fn profile(&self, base: &TargetProfile) -> TargetProfile {
        let how = format!(
            "measured by `andes bench cpu` on {}, {} threads{}",
            self.cpu,
            self.threads,
            if self.int8_activations {
                ", int8 activations"
            } else {
                ""
            }
        );
        TargetProfile {
            name: format!("{}-measured", base.name),
            description: format!("{} ({how})", base.description),
            bandwidth_gb_s: Sourced {
                value: self.read_bandwidth_gb_s,
                source: format!("{how}: a 1 GiB buffer read by every thread"),
            },
            kernels: Some(KernelThroughput {
                gweights_s: self.kernel_gweights_s.clone(),
                source: format!(
                    "{how}: the best pass of one vector through a {}×{} matrix held in cache",
                    KERNEL_MATRIX.0, KERNEL_MATRIX.1
                ),
            }),
            ..base.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's test matrix multiplies as its weights dequantized by `andes_quant` do
    /// (int3 also on rows of 100 codes, whole three-byte words and a two-byte tail), and a
    /// name that is no kind is refused by name.
    #[test]
    fn test_matrices_multiply_like_their_weights_and_bad_kinds_are_named() {
        let kinds = [
            ("f32", 128),
            ("f16", 128),
            ("int4-g128-sym", 128),
            ("int3-g64-asym", 128),
            ("int3-channel-sym", 100),
            ("int2-g64-asym", 128),
            ("ternary-g64", 128),
        ];
        for (kind, cols) in kinds {
            let weights = test_weights(16, cols);
            let reference = match kind.parse::<QuantFormat>() {
                Ok(format) => andes_quant::dequantize(
                    &quantize_rtn(&weights, WeightShape::new(16, cols), format).unwrap(),
                ),
                Err(_) => weights,
            };
            let x: Vec<f32> = (0..cols).map(|i| (i % 5) as f32 - 2.0).collect();
            let y = test_matrix(kind, 16, cols, false).unwrap().multiply(&x);
            for (r, &value) in y.iter().enumerate() {
                let row = &reference[r * cols..(r + 1) * cols];
                let expected: f32 = row.iter().zip(&x).map(|(w, x)| w * x).sum();
                assert!(
                    (value - expected).abs() < 2e-2,
                    "{kind} row {r}: {value} vs {expected}"
                );
            }
        }
        let error = test_matrix("int5-g64", 16, 128, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("int5-g64"), "{error}");
        assert!(kernel_gweights_s("f16", false, 0.01).unwrap() > 0.0);
    }
}
