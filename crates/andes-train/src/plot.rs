//! The curves of a run as SVGs, drawn at its end: loss always, reward for GRPO.

use std::path::Path;

use plotters::prelude::*;

use crate::error::TrainError;
use crate::metrics::StepMetrics;

/// Draws `run_dir/loss.svg` and, when the steps carry rewards, `run_dir/reward.svg`.
pub fn draw_curves(metrics: &[StepMetrics], run_dir: &Path) -> Result<(), TrainError> {
    let loss = Curve {
        title: "loss",
        y_label: "loss",
        train: |m| Some(m.loss),
        eval: |m| m.eval_loss,
    };
    curves(metrics, &loss, &run_dir.join("loss.svg"))?;
    if metrics.iter().any(|m| m.reward.is_some()) {
        let reward = Curve {
            title: "reward",
            y_label: "mean reward",
            train: |m| m.reward,
            eval: |m| m.eval_reward,
        };
        curves(metrics, &reward, &run_dir.join("reward.svg"))?;
    }
    Ok(())
}

/// What one chart shows: a training series per step and a held-out series at evaluations.
struct Curve {
    title: &'static str,
    y_label: &'static str,
    train: fn(&StepMetrics) -> Option<f64>,
    eval: fn(&StepMetrics) -> Option<f64>,
}

fn curves(metrics: &[StepMetrics], curve: &Curve, path: &Path) -> Result<(), TrainError> {
    let series = |pick: fn(&StepMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| pick(m).map(|v| (m.step as f64, v)))
            .collect()
    };
    let train = series(curve.train);
    let eval = series(curve.eval);
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.last().map_or(1.0, |p| p.0).max(1.0);
    let values = train.iter().chain(&eval).map(|p| p.1);
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let margin = ((high - low) * 0.05).max(1e-3);
    let fail = |e: &dyn std::fmt::Display| TrainError::io(path, e.to_string());
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(curve.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, (low - margin)..(high + margin))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(curve.y_label)
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
