//! What a package holds, as `andes quantize` and `andes inspect` print it: bpw over the
//! linears and over the whole payload, sizes, the plan (per linear and by format), and the
//! target's cost estimate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_model::qwen3::Qwen3Config;
use andes_quant::{
    BitPlan, COST_FORMULAS, CostEstimate, PackedWeights, TargetProfile, WeightShape,
    bits_per_weight, estimate,
};
use burn::tensor::{DType, Device};
use serde::Serialize;

use crate::error::PackageError;
use crate::heatmap::format_bpw;
use crate::package::{PackageManifest, load_package};

/// One linear of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedLinear {
    /// Hugging Face module name.
    pub name: String,
    /// Its format.
    pub format: String,
    /// Its exact bits per weight, scales and zero points counted.
    pub bpw: f64,
    /// The sensitivity the planner chose by, when it planned.
    pub sensitivity: Option<f64>,
}

/// The linears of one format.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FormatShare {
    /// The format.
    pub format: String,
    /// Linears in it.
    pub layers: usize,
    /// Their weights.
    pub weights: u64,
    /// Their bits per weight together.
    pub bpw: f64,
}

/// A written package, summarised.
#[derive(Debug, Clone)]
pub struct PackageReport {
    /// The package directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: PackageManifest,
    /// Its plan's budget, when the planner fitted it to one.
    pub budget_bpw: Option<f64>,
    /// Each linear, in model order.
    pub linears: Vec<PlannedLinear>,
    /// The plan by format.
    pub formats: Vec<FormatShare>,
    /// The profile the cost is estimated on: the package's target unless another was asked.
    pub estimated_on: String,
    /// The cost estimate at the report's context length.
    pub cost: CostEstimate,
    /// Seconds from the request to the report.
    pub seconds: f64,
}

impl PackageReport {
    /// The report of the package at `dir` with `manifest`, `plan` over linears of `shapes`
    /// (model order), and the cost at `context` tokens on `device` (the package's own target
    /// when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: &Path,
        manifest: PackageManifest,
        plan: BitPlan,
        config: &Qwen3Config,
        shapes: &[(String, WeightShape)],
        context: u64,
        device: Option<&TargetProfile>,
        started: Instant,
    ) -> Self {
        let w = &manifest.weights;
        let bytes = w.stored_bytes();
        let layers = plan
            .layers
            .iter()
            .zip(shapes)
            .map(|(e, (_, s))| (e.format, *s));
        let device = device.unwrap_or(&manifest.target);
        let head = manifest.target.head_kind();
        let weights = PackedWeights::new(device, bytes, layers, head);
        let cost = estimate(device, weights, config.cost_shape(), context);
        let estimated_on = device.name.clone();
        let mut by_format: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        let mut linears = Vec::with_capacity(plan.layers.len());
        for (entry, (_, shape)) in plan.layers.iter().zip(shapes) {
            let bits = bits_per_weight(entry.format, *shape);
            let slot = by_format.entry(entry.format.to_string()).or_default();
            *slot = (
                slot.0 + 1,
                slot.1 + bits.weights,
                slot.2 + bits.total_bits(),
            );
            linears.push(PlannedLinear {
                name: entry.name.clone(),
                format: entry.format.to_string(),
                bpw: format_bpw(entry.format, shape.out_features, shape.in_features),
                sensitivity: entry.sensitivity,
            });
        }
        let formats = by_format
            .into_iter()
            .map(|(format, (layers, weights, bits))| FormatShare {
                format,
                layers,
                weights,
                bpw: bits as f64 / weights as f64,
            })
            .collect();
        Self {
            dir: dir.to_owned(),
            manifest,
            budget_bpw: plan.budget_bpw,
            linears,
            formats,
            estimated_on,
            cost,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// One JSON object; its `bpw` is the average over the quantized linears.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "package": self.dir.display().to_string(),
            "target": self.manifest.target.name,
            "bpw": self.manifest.weights.bpw_linears,
            "bpw_package": self.manifest.weights.bpw_package,
            "weights": self.manifest.weights,
            "cost_estimate": self.cost,
            "estimated_on": self.estimated_on,
            "cost_formulas": COST_FORMULAS,
            "budget_bpw": self.budget_bpw,
            "plan": self.formats,
            "seconds": self.seconds,
        })
    }

    /// The plan, a linear a row, as a Markdown table.
    pub fn linear_table(&self) -> String {
        let mut table = String::from("| layer | format | bpw | sensitivity |\n|---|---|---|---|\n");
        for linear in &self.linears {
            table.push_str(&format!(
                "| {} | {} | {:.3} | {} |\n",
                linear.name,
                linear.format,
                linear.bpw,
                linear
                    .sensitivity
                    .map_or("—".into(), |s| format!("{s:.4e}"))
            ));
        }
        table
    }
}

/// Reads and verifies the package at `dir` and reports on it with KV figures at `context`
/// tokens, the cost estimated on `device` (the package's target when `None`): what `andes
/// inspect` prints.
pub fn inspect_package(
    dir: &Path,
    context: u64,
    device: Option<&TargetProfile>,
) -> Result<PackageReport, PackageError> {
    let started = Instant::now();
    let package = load_package(dir, &Device::flex(), DType::F32)?;
    let shapes = andes_model::quantize::linear_shapes(&package.model);
    Ok(PackageReport::new(
        dir,
        package.manifest,
        package.plan,
        &package.config,
        &shapes,
        context,
        device,
        started,
    ))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Sizes, bpw both ways, the plan by format, and the cost model.
impl fmt::Display for PackageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, cost) = (&self.manifest.weights, &self.cost);
        writeln!(
            f,
            "package {} for {}",
            self.dir.display(),
            self.manifest.target.name
        )?;
        writeln!(
            f,
            "  bpw over the quantized linears (scales, zeros counted): {:.4}   bpw of the whole \
             weight payload (embeddings, norms, headers included): {:.4}",
            w.bpw_linears, w.bpw_package
        )?;
        writeln!(
            f,
            "  quantized linears: {} weights in {:.2} MiB; other parameters: {} in {:.2} MiB",
            w.linear_weights,
            mib(w.quantized_bytes),
            w.float_parameters,
            mib(w.float_bytes)
        )?;
        if let Some(tables) = &self.manifest.target.tables {
            writeln!(
                f,
                "  embedding and head tables ({}): {} entries in {:.2} MiB",
                tables.format,
                w.table_parameters,
                mib(w.table_bytes)
            )?;
        }
        if w.vision_parameters > 0 {
            writeln!(
                f,
                "  vision tower and projector (float): {} parameters in {:.2} MiB",
                w.vision_parameters,
                mib(w.vision_bytes)
            )?;
        }
        writeln!(
            f,
            "  estimate on {}: weights {:.1} MiB ({:.1} MiB in memory) + KV cache at {} tokens \
             {:.1} MiB of {:.0} MiB ({}); decode ≤ {:.1} tok/s; prefill ≤ {:.0} tok/s",
            self.estimated_on,
            mib(cost.weight_bytes),
            mib(cost.resident_weight_bytes),
            cost.context,
            mib(cost.kv_cache_bytes),
            mib(cost.memory_bytes),
            if cost.fits { "fits" } else { "does NOT fit" },
            cost.decode_tokens_per_s,
            cost.prefill_tokens_per_s
        )?;
        if let (Some(kernels), Some(serial)) = (
            cost.decode_kernel_tokens_per_s,
            cost.decode_serial_tokens_per_s,
        ) {
            write!(
                f,
                "  decode bounds: bandwidth ≤ {:.1} tok/s, kernels ≤ {kernels:.1} tok/s; read \
                 and unpacked one after the other {serial:.1} tok/s",
                cost.decode_bandwidth_tokens_per_s
            )?;
            if !cost.kernel_unmeasured.is_empty() {
                write!(
                    f,
                    " (the profile gives no kernel figure for {}: not counted)",
                    cost.kernel_unmeasured.join(", ")
                )?;
            }
            writeln!(f)?;
        }
        writeln!(f, "  ({COST_FORMULAS})")?;
        match self.budget_bpw {
            Some(budget) => writeln!(f, "  plan (budget {budget} bpw):")?,
            None => writeln!(f, "  plan (applied from a plan file):")?,
        }
        for share in &self.formats {
            writeln!(
                f,
                "    {:>18}: {:>4} linears, {:>12} weights, {:.3} bpw",
                share.format, share.layers, share.weights, share.bpw
            )?;
        }
        Ok(())
    }
}
