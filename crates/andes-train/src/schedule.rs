//! Learning rate as a pure function of the step: linear warmup, then cosine decay to a floor.
//!
//! A function of the step (rather than a stateful scheduler) makes resume exact by
//! construction: the restored step is the whole schedule state.

use serde::{Deserialize, Serialize};

/// `[schedule]` of a recipe; a missing section or key takes [`Schedule::default`]'s value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// Steps of linear warmup from 0 to the peak rate.
    pub warmup_steps: usize,
    /// Final rate as a fraction of the peak (cosine floor).
    pub min_lr_ratio: f64,
}

impl Default for Schedule {
    /// No warmup; decay to a tenth of the peak.
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

impl Schedule {
    /// Learning rate of optimizer step `step` (0-based) of `total` steps, peak `peak`.
    pub fn lr(&self, step: usize, total: usize, peak: f64) -> f64 {
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let s = Schedule {
            warmup_steps: 4,
            min_lr_ratio: 0.1,
        };
        assert_eq!(s.lr(0, 104, 1.0), 0.25);
        assert_eq!(s.lr(3, 104, 1.0), 1.0);
        assert!((s.lr(4, 104, 1.0) - 1.0).abs() < 1e-12);
        assert!((s.lr(54, 104, 1.0) - 0.55).abs() < 1e-12);
        assert!((s.lr(104, 104, 1.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_missing_section_or_key_takes_the_defaults() {
        let whole: Schedule = toml::from_str("").unwrap();
        assert_eq!(whole, Schedule::default());
        let partial: Schedule = toml::from_str("warmup_steps = 5").unwrap();
        assert_eq!(partial.min_lr_ratio, Schedule::default().min_lr_ratio);
        assert_eq!(partial.warmup_steps, 5);
    }
}
