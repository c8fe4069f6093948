//! `andes inspect`: what a package holds: bpw over the linears and over the whole payload,
//! sizes, the plan by format, and the target's cost estimate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use andes_package::load_package;
use andes_quant::bits_per_weight;
use burn::tensor::{DType, Device};
use clap::Args;

use super::quantize::{package_cost, print_summary, summary_json};

/// Arguments of `andes inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Package directory written by `andes quantize`.
    package: PathBuf,
    /// Context length of the KV-cache figures.
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// One JSON object (its `bpw` is the average over the quantized linears).
    #[arg(long)]
    json: bool,
}

/// Runs `andes inspect` (which verifies the package first).
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let package = load_package(&args.package, &Device::flex(), DType::F32)?;
    let cost = package_cost(&package.manifest, &package.config, args.context);
    let shapes = andes_model::quantize::linear_shapes(&package.model);
    let mut by_format: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for (entry, (_, shape)) in package.plan.layers.iter().zip(&shapes) {
        let report = bits_per_weight(entry.format, *shape);
        let slot = by_format.entry(entry.format.to_string()).or_default();
        *slot = (
            slot.0 + 1,
            slot.1 + report.weights,
            slot.2 + report.total_bits(),
        );
    }
    let plan: Vec<serde_json::Value> = by_format
        .iter()
        .map(|(format, (layers, weights, bits))| {
            serde_json::json!({
                "format": format, "layers": layers, "weights": weights,
                "bpw": *bits as f64 / *weights as f64,
            })
        })
        .collect();
    if args.json {
        let mut summary = summary_json(&args.package, &package.manifest, &cost, started);
        summary["plan"] = plan.into();
        summary["budget_bpw"] = package.plan.budget_bpw.into();
        println!("{summary}");
    } else {
        print_summary(&args.package, &package.manifest, &cost);
        println!("  plan (budget {:?} bpw):", package.plan.budget_bpw);
        for (format, (layers, weights, bits)) in &by_format {
            println!(
                "    {format:>18}: {layers:>4} linears, {weights:>12} weights, {:.3} bpw",
                *bits as f64 / *weights as f64
            );
        }
    }
    Ok(())
}
