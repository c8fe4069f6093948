//! The loss curves of a run as an SVG, drawn at its end.

use std::path::Path;

use plotters::prelude::*;

use crate::error::TrainError;
use crate::metrics::StepMetrics;

/// Draws training loss per step and held-out loss at evaluation steps to `path` (SVG).
pub fn loss_curves(metrics: &[StepMetrics], path: &Path) -> Result<(), TrainError> {
    let train: Vec<(f64, f64)> = metrics.iter().map(|m| (m.step as f64, m.loss)).collect();
    let eval: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.eval_loss.map(|l| (m.step as f64, l)))
        .collect();
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.last().map_or(1.0, |p| p.0).max(1.0);
    let losses = train.iter().chain(&eval).map(|p| p.1);
    let (low, high) = losses.fold((f64::MAX, f64::MIN), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let margin = ((high - low) * 0.05).max(1e-3);
    let fail = |e: &dyn std::fmt::Display| TrainError::io(path, e.to_string());
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, (low - margin)..(high + margin))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("mean NLL (nats)")
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))
        .map_err(|e| fail(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.clone(), &RED))
            .map_err(|e| fail(&e))?
            .label("held-out")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        chart
            .draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}
