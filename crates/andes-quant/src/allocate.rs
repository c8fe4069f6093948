//! Bit allocation: choose one format per linear to minimise the summed sensitivity under a
//! budget of total bits (scales and zero points counted), a multiple-choice knapsack.
//!
//! Solved by dynamic programming over the budget cut into [`BUDGET_STEPS`] units, each
//! option's bits rounded *up* to whole units so the answer never exceeds the budget (exact
//! when a unit is one bit); the slack the rounding leaves is then spent greedily, on the
//! upgrade with the largest sensitivity drop per extra bit that still fits, and on exchanges
//! of bits between two layers that lower the total. llama.cpp's
//! `llama-quantize --target-bpw` solves the same problem per tensor.

use crate::error::QuantError;
use crate::format::QuantFormat;

/// One format a layer may take, with its exact storage and its measured sensitivity.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The format.
    pub format: QuantFormat,
    /// Bits the layer costs in this format (codes + scales + zeros).
    pub bits: u64,
    /// Loss increase, or a Hessian-weighted error, of the layer in this format.
    pub sensitivity: f64,
}

/// One layer's options.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerChoices {
    /// Hugging Face module name.
    pub name: String,
    /// Number of weights.
    pub weights: u64,
    /// Formats it may take (at least one).
    pub options: Vec<Choice>,
}

/// The solver's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// Index into each layer's `options`.
    pub choices: Vec<usize>,
    /// Bits of the chosen formats, never above the budget.
    pub total_bits: u64,
    /// Summed sensitivity of the chosen formats.
    pub total_sensitivity: f64,
}

/// Picks a format per layer whose total bits stay within `budget_bits`, minimising the summed
/// sensitivity. Fails, with the numbers, when even the cheapest formats exceed the budget.
pub fn allocate(layers: &[LayerChoices], budget_bits: u64) -> Result<Allocation, QuantError> {
    let weights: u64 = layers.iter().map(|l| l.weights).sum();
    let mut choices = Vec::with_capacity(layers.len());
    for layer in layers {
        let cheapest = (0..layer.options.len())
            .min_by(|&a, &b| {
                let (a, b) = (&layer.options[a], &layer.options[b]);
                a.bits
                    .cmp(&b.bits)
                    .then(a.sensitivity.total_cmp(&b.sensitivity))
            })
            .ok_or_else(|| QuantError::Budget(format!("layer `{}` has no format", layer.name)))?;
        choices.push(cheapest);
    }
    let bits = |choices: &[usize]| -> u64 {
        layers
            .iter()
            .zip(choices)
            .map(|(l, &c)| l.options[c].bits)
            .sum()
    };
    let mut used = bits(&choices);
    if used > budget_bits {
        return Err(QuantError::Budget(format!(
            "a budget of {:.4} bpw ({budget_bits} bits over {weights} weights) is below the \
             smallest the allowed formats reach: {:.4} bpw ({used} bits) with every layer in \
             its cheapest format",
            budget_bits as f64 / weights as f64,
            used as f64 / weights as f64
        )));
    }
    choices = knapsack(layers, &choices, budget_bits);
    used = bits(&choices);
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, layer) in layers.iter().enumerate() {
            let current = &layer.options[choices[i]];
            for (j, option) in layer.options.iter().enumerate() {
                let gain = current.sensitivity - option.sensitivity;
                if option.bits <= current.bits || gain <= 0.0 {
                    continue;
                }
                let extra = option.bits - current.bits;
                if used + extra > budget_bits {
                    continue;
                }
                let ratio = gain / extra as f64;
                if best.is_none_or(|(r, _, _)| ratio > r) {
                    best = Some((ratio, i, j));
                }
            }
        }
        let Some((_, i, j)) = best else { break };
        used = used - layers[i].options[choices[i]].bits + layers[i].options[j].bits;
        choices[i] = j;
    }
    improve_by_exchanges(layers, &mut choices, budget_bits);
    let total_sensitivity = layers
        .iter()
        .zip(&choices)
        .map(|(l, &c)| l.options[c].sensitivity)
        .sum();
    Ok(Allocation {
        total_bits: bits(&choices),
        choices,
        total_sensitivity,
    })
}

/// Moves bits between two layers (one takes a costlier format, another a cheaper one) while
/// that lowers the total sensitivity within the exact budget: recovers what rounding to
/// budget units lost when the optimum spends the budget to the last bit.
fn improve_by_exchanges(layers: &[LayerChoices], choices: &mut [usize], budget_bits: u64) {
    let mut used: u64 = layers
        .iter()
        .zip(&*choices)
        .map(|(l, &c)| l.options[c].bits)
        .sum();
    loop {
        let mut best: Option<(f64, usize, usize, usize, usize)> = None;
        for (a, up_layer) in layers.iter().enumerate() {
            let up_now = &up_layer.options[choices[a]];
            for (ja, up) in up_layer.options.iter().enumerate() {
                if up.bits <= up_now.bits || up.sensitivity >= up_now.sensitivity {
                    continue;
                }
                let gain = up_now.sensitivity - up.sensitivity;
                for (b, down_layer) in layers.iter().enumerate() {
                    if b == a {
                        continue;
                    }
                    let down_now = &down_layer.options[choices[b]];
                    for (jb, down) in down_layer.options.iter().enumerate() {
                        let loss = down.sensitivity - down_now.sensitivity;
                        let after = used + up.bits - up_now.bits + down.bits - down_now.bits;
                        if down.bits >= down_now.bits || after > budget_bits || loss >= gain {
                            continue;
                        }
                        if best.is_none_or(|(g, ..)| gain - loss > g) {
                            best = Some((gain - loss, a, ja, b, jb));
                        }
                    }
                }
            }
        }
        let Some((_, a, ja, b, jb)) = best else {
            return;
        };
        used = used + layers[a].options[ja].bits - layers[a].options[choices[a]].bits
            + layers[b].options[jb].bits
            - layers[b].options[choices[b]].bits;
        choices[a] = ja;
        choices[b] = jb;
    }
}

/// Resolution of the dynamic programme: the budget is cut into this many units.
pub const BUDGET_STEPS: u64 = 100_000;

/// The optimum over budget units (see the module doc); `fallback` (the cheapest choices,
/// known to fit) when rounding up leaves no feasible answer.
fn knapsack(layers: &[LayerChoices], fallback: &[usize], budget_bits: u64) -> Vec<usize> {
    let unit = budget_bits.div_ceil(BUDGET_STEPS).max(1);
    let capacity = (budget_bits / unit) as usize;
    let mut best = vec![f64::INFINITY; capacity + 1];
    best[0] = 0.0;
    let mut taken: Vec<Vec<u8>> = Vec::with_capacity(layers.len());
    for layer in layers {
        let mut next = vec![f64::INFINITY; capacity + 1];
        let mut choice = vec![u8::MAX; capacity + 1];
        for (j, option) in layer.options.iter().enumerate() {
            let cost = option.bits.div_ceil(unit) as usize;
            for used in cost..=capacity {
                let total = best[used - cost] + option.sensitivity;
                if total < next[used] {
                    next[used] = total;
                    choice[used] = j as u8;
                }
            }
        }
        best = next;
        taken.push(choice);
    }
    let Some(mut used) = (0..=capacity)
        .filter(|&u| best[u].is_finite())
        .min_by(|&a, &b| best[a].total_cmp(&best[b]))
    else {
        return fallback.to_vec();
    };
    let mut choices = vec![0; layers.len()];
    for (i, layer) in layers.iter().enumerate().rev() {
        let j = taken[i][used] as usize;
        choices[i] = j;
        used -= layer.options[j].bits.div_ceil(unit) as usize;
    }
    choices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, options: &[(u64, f64)]) -> LayerChoices {
        LayerChoices {
            name: name.into(),
            weights: 100,
            options: options
                .iter()
                .map(|&(bits, sensitivity)| Choice {
                    format: "int4-channel-sym".parse().unwrap(),
                    bits,
                    sensitivity,
                })
                .collect(),
        }
    }

    /// Exhaustive optimum, for small instances.
    fn brute_force(layers: &[LayerChoices], budget: u64) -> f64 {
        let mut best = f64::INFINITY;
        let mut index = vec![0usize; layers.len()];
        loop {
            let bits: u64 = layers
                .iter()
                .zip(&index)
                .map(|(l, &c)| l.options[c].bits)
                .sum();
            if bits <= budget {
                let cost: f64 = layers
                    .iter()
                    .zip(&index)
                    .map(|(l, &c)| l.options[c].sensitivity)
                    .sum();
                best = best.min(cost);
            }
            let mut k = 0;
            loop {
                if k == layers.len() {
                    return best;
                }
                index[k] += 1;
                if index[k] < layers[k].options.len() {
                    break;
                }
                index[k] = 0;
                k += 1;
            }
        }
    }

    #[test]
    fn spends_bits_where_sensitivity_drops_most() {
        let layers = [
            layer("sensitive", &[(200, 10.0), (400, 1.0)]),
            layer("robust", &[(200, 1.1), (400, 1.0)]),
        ];
        let allocation = allocate(&layers, 600).unwrap();
        assert_eq!(allocation.choices, vec![1, 0]);
        assert_eq!(allocation.total_bits, 600);
    }

    #[test]
    fn too_small_a_budget_says_the_smallest_reachable_bpw() {
        let layers = [layer("a", &[(200, 1.0), (400, 0.5)])];
        let error = allocate(&layers, 150).unwrap_err().to_string();
        assert!(
            error.contains("1.5000 bpw") && error.contains("2.0000 bpw"),
            "{error}"
        );
    }

    /// Random instances (sensitivity falling ever more slowly with bits, as quantization
    /// error does): within the budget and equal to the exhaustive optimum (a unit is one bit
    /// at these sizes, so the programme is exact); scaled to model-sized bit counts, at least
    /// as good as the optimum of a budget one rounding allowance smaller.
    #[test]
    fn optimal_on_random_instances() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let mut worst: f64 = 0.0;
        for _ in 0..100 {
            let layers: Vec<LayerChoices> = (0..6)
                .map(|i| {
                    let scale = 0.1 + 10.0 * next();
                    let size = 50 + (next() * 200.0) as u64;
                    let options: Vec<(u64, f64)> = [1.6, 2.1, 3.1, 4.1, 8.1]
                        .iter()
                        .map(|bpw| ((bpw * size as f64) as u64, scale * 4f64.powf(-bpw)))
                        .collect();
                    let mut l = layer(&format!("l{i}"), &options);
                    l.weights = size;
                    l
                })
                .collect();
            let min: u64 = layers.iter().map(|l| l.options[0].bits).sum();
            let max: u64 = layers.iter().map(|l| l.options[4].bits).sum();
            let budget = min + ((max - min) as f64 * next() * 0.5) as u64;
            let allocation = allocate(&layers, budget).unwrap();
            assert!(allocation.total_bits <= budget);
            let optimum = brute_force(&layers, budget);
            worst = worst.max(allocation.total_sensitivity / optimum - 1.0);
            // Model-sized bit counts: a unit is many bits; still within the budget and close.
            let scaled: Vec<LayerChoices> = layers
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    l.options.iter_mut().for_each(|o| o.bits *= 1_000_000);
                    l
                })
                .collect();
            let large = allocate(&scaled, budget * 1_000_000).unwrap();
            assert!(large.total_bits <= budget * 1_000_000);
            // The guarantee of rounding up: at least as good as the optimum of a budget
            // smaller by one unit per layer (here 6 units of budget/10⁵ bits, under one bit
            // of the unscaled instance).
            assert!(large.total_sensitivity <= brute_force(&layers, budget - 1) + 1e-12);
        }
        assert!(worst <= 1e-12, "worst gap to the optimum {worst}");
    }
}
