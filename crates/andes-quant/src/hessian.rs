//! The Hessian of a linear layer's output error with respect to its weights, accumulated from
//! calibration activations: what GPTQ weighs each weight's rounding error by.

use crate::error::QuantError;

/// Tokens added to the sum per pass over it.
const TOKEN_CHUNK: usize = 32;

/// `H = 2/n · Σₜ xₜ xₜᵀ` over the `n` calibration tokens `xₜ` seen by a linear layer, `[in_features,
/// in_features]`.
///
/// For one output row `w`, the squared output error over the calibration set is
/// `Σₜ ((w − ŵ)·xₜ)² = (n/2) · (w − ŵ) H (w − ŵ)ᵀ`, so `H` is the Hessian of the layer-wise
/// objective of GPTQ (Frantar et al. 2022, arXiv:2210.17323, eq. 1); the factor 2/n is the
/// reference implementation's, kept so that `damp_percent` means the same thing.
///
/// The sum `Σ xxᵀ` is kept in f64 (each product of two f32 is exact in f64) and scaled only when
/// read, so accumulating in several batches gives the same matrix as one batch, up to the order of
/// f64 additions.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    in_features: usize,
    tokens: usize,
    /// `Σ x xᵀ`, row-major; only the upper triangle (`col ≥ row`) is maintained. A
    /// diagonal-only accumulator keeps just `Σ x_i²` (`in_features` entries).
    sum: Vec<f64>,
    diagonal_only: bool,
}

impl Hessian {
    /// An empty accumulator for a layer with `in_features` inputs.
    pub fn new(in_features: usize) -> Self {
        Hessian {
            in_features,
            tokens: 0,
            sum: vec![0.0; in_features * in_features],
            diagonal_only: false,
        }
    }

    /// An accumulator of the diagonal only (`Σ x_i²`, llama.cpp's importance matrix): `in`
    /// numbers and `in` multiply-adds per token instead of `in²`, for sensitivities of large
    /// models; GPTQ refuses it.
    pub fn diagonal_only(in_features: usize) -> Self {
        Hessian {
            in_features,
            tokens: 0,
            sum: vec![0.0; in_features],
            diagonal_only: true,
        }
    }

    /// Whether the full matrix is kept (GPTQ needs it).
    pub fn is_full(&self) -> bool {
        !self.diagonal_only
    }

    /// Adds a batch of activations `x`, `[tokens, in_features]` row-major: the inputs of the
    /// linear layer, one row per token (batch and sequence flattened). Refuses a buffer of the
    /// wrong length and any non-finite value, and then leaves the Hessian unchanged.
    pub fn accumulate(&mut self, x: &[f32], tokens: usize) -> Result<(), QuantError> {
        let d = self.in_features;
        if tokens.checked_mul(d) != Some(x.len()) {
            return Err(QuantError::ActivationLength {
                tokens,
                in_features: d,
                expected: tokens.saturating_mul(d),
                found: x.len(),
            });
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFiniteActivation {
                token: i / d,
                feature: i % d,
                value: x[i],
            });
        }
        if self.diagonal_only {
            for token in x.chunks_exact(d.max(1)) {
                for (s, &v) in self.sum.iter_mut().zip(token) {
                    *s += f64::from(v) * f64::from(v);
                }
            }
            self.tokens += tokens;
            return Ok(());
        }
        // Tokens are taken a chunk at a time so that one row of the sum stays in cache while the
        // chunk's tokens are added to it; each entry still sums its tokens in order.
        let mut chunk = Vec::with_capacity(TOKEN_CHUNK * d);
        for tokens_x in x.chunks(TOKEN_CHUNK * d.max(1)) {
            chunk.clear();
            chunk.extend(tokens_x.iter().map(|&v| f64::from(v)));
            for i in 0..d {
                let upper = &mut self.sum[i * d + i..(i + 1) * d];
                for token in chunk.chunks_exact(d) {
                    let xi = token[i];
                    if xi == 0.0 {
                        continue;
                    }
                    for (s, &xj) in upper.iter_mut().zip(&token[i..]) {
                        *s += xi * xj;
                    }
                }
            }
        }
        self.tokens += tokens;
        Ok(())
    }

    /// Adds a batch of `tokens` tokens given by its Gram matrix `Σₜ xₜ xₜᵀ` (`[in, in]`
    /// row-major, symmetric; for a diagonal-only Hessian just `Σₜ xₜ²`, `in` entries), computed
    /// where the activations are, as one matrix product: the way to feed a large model's
    /// calibration, `in²` multiply-adds per token on the device's matmul instead of this
    /// crate's loops. The batch is summed in f32 there (as the GPTQ reference sums its
    /// Hessian), batches in f64 here. A non-finite entry is refused, the Hessian unchanged:
    /// [`Hessian::accumulate`] on the batch's activations then names the bad one (or, when
    /// only the f32 squares overflowed, takes the batch in f64).
    pub fn accumulate_gram(&mut self, gram: &[f32], tokens: usize) -> Result<(), QuantError> {
        if gram.len() != self.sum.len() {
            return Err(QuantError::GramLength {
                expected: self.sum.len(),
                found: gram.len(),
            });
        }
        if let Some(index) = gram.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFiniteGram {
                index,
                value: gram[index],
            });
        }
        let d = self.in_features;
        if self.diagonal_only {
            for (s, &g) in self.sum.iter_mut().zip(gram) {
                *s += f64::from(g);
            }
        } else {
            for i in 0..d {
                let row = i * d + i..(i + 1) * d;
                for (s, &g) in self.sum[row.clone()].iter_mut().zip(&gram[row]) {
                    *s += f64::from(g);
                }
            }
        }
        self.tokens += tokens;
        Ok(())
    }

    /// Input features: the side of the matrix.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Calibration tokens accumulated so far (`n`).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The diagonal of `H = 2/n · Σ x xᵀ`: the mean squared input of each feature (twice),
    /// llama.cpp's "importance matrix"; all zeros while no token has been accumulated.
    pub fn diagonal(&self) -> Vec<f64> {
        let d = self.in_features;
        let factor = if self.tokens == 0 {
            0.0
        } else {
            2.0 / self.tokens as f64
        };
        if self.diagonal_only {
            return self.sum.iter().map(|s| s * factor).collect();
        }
        (0..d).map(|i| self.sum[i * d + i] * factor).collect()
    }

    /// The full symmetric `H = 2/n · Σ x xᵀ`, `[in_features, in_features]` row-major f64; all
    /// zeros while no token has been accumulated.
    pub fn matrix(&self) -> Vec<f64> {
        let d = self.in_features;
        let factor = if self.tokens == 0 {
            0.0
        } else {
            2.0 / self.tokens as f64
        };
        let mut h = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                let v = factor * self.sum[i * d + j];
                h[i * d + j] = v;
                h[j * d + i] = v;
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_two_over_n_times_the_sum_of_outer_products() {
        let mut h = Hessian::new(2);
        h.accumulate(&[1.0, 2.0, 3.0, -1.0], 2)
            .expect("valid batch");
        // Σ xxᵀ = [[1+9, 2-3], [2-3, 4+1]] = [[10, -1], [-1, 5]]; 2/n = 1.
        assert_eq!(h.matrix(), vec![10.0, -1.0, -1.0, 5.0]);
        assert_eq!(h.tokens(), 2);
    }

    #[test]
    fn batches_accumulate_like_one_batch() {
        let x: Vec<f32> = (0..30)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25)
            .collect();
        let mut once = Hessian::new(3);
        once.accumulate(&x, 10).expect("valid");
        let mut split = Hessian::new(3);
        split.accumulate(&x[..12], 4).expect("valid");
        split.accumulate(&x[12..], 6).expect("valid");
        assert_eq!(once, split);
    }

    #[test]
    fn a_batchs_gram_matrix_accumulates_like_its_activations() {
        let x: Vec<f32> = (0..30)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25)
            .collect();
        let (tokens, d) = (10, 3);
        let mut from_activations = Hessian::new(d);
        from_activations.accumulate(&x, tokens).expect("valid");
        let mut diagonal_from_activations = Hessian::diagonal_only(d);
        diagonal_from_activations
            .accumulate(&x, tokens)
            .expect("valid");
        let gram: Vec<f32> = (0..d * d)
            .map(|ij| {
                let (i, j) = (ij / d, ij % d);
                (0..tokens).map(|t| x[t * d + i] * x[t * d + j]).sum()
            })
            .collect();
        let mut from_gram = Hessian::new(d);
        from_gram.accumulate_gram(&gram, tokens).expect("valid");
        assert_eq!(from_gram, from_activations);
        let squares: Vec<f32> = (0..d).map(|i| gram[i * d + i]).collect();
        let mut diagonal_from_gram = Hessian::diagonal_only(d);
        diagonal_from_gram
            .accumulate_gram(&squares, tokens)
            .expect("valid");
        assert_eq!(diagonal_from_gram, diagonal_from_activations);
        assert!(matches!(
            from_gram.accumulate_gram(&squares, tokens),
            Err(QuantError::GramLength {
                expected: 9,
                found: 3
            })
        ));
        assert!(matches!(
            from_gram.accumulate_gram(&[0.0, 0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0], 1),
            Err(QuantError::NonFiniteGram { index: 4, .. })
        ));
        assert_eq!(from_gram.tokens(), tokens);
    }

    #[test]
    fn refuses_wrong_lengths_and_non_finite_values_without_changing() {
        let mut h = Hessian::new(3);
        assert!(matches!(
            h.accumulate(&[0.0; 5], 2),
            Err(QuantError::ActivationLength {
                expected: 6,
                found: 5,
                ..
            })
        ));
        assert!(matches!(
            h.accumulate(&[0.0, 0.0, 0.0, 0.0, f32::INFINITY, 0.0], 2),
            Err(QuantError::NonFiniteActivation {
                token: 1,
                feature: 1,
                ..
            })
        ));
        assert_eq!(h, Hessian::new(3));
        assert!(h.matrix().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn diagonal_only_keeps_the_full_diagonal_and_gptq_refuses_it() {
        let (d, tokens) = (5, 7);
        let x: Vec<f32> = (0..d * tokens)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let (mut full, mut diagonal) = (Hessian::new(d), Hessian::diagonal_only(d));
        full.accumulate(&x, tokens).unwrap();
        diagonal.accumulate(&x, tokens).unwrap();
        assert_eq!(full.diagonal(), diagonal.diagonal());
        assert!(full.is_full() && !diagonal.is_full());
        let format = "int4-channel-sym".parse().unwrap();
        let shape = crate::WeightShape::new(2, d);
        let error = crate::quantize_gptq(&[0.5; 10], shape, &diagonal, format, Default::default())
            .unwrap_err();
        assert_eq!(error, QuantError::DiagonalHessian);
    }
}
