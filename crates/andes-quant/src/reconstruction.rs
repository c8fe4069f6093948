//! How far a quantized weight is from the original: the number RTN, GPTQ and the bit-allocation
//! solver compare.

use crate::error::QuantError;

/// Relative Frobenius error `‖w − ŵ‖_F / ‖w‖_F`, accumulated in f64 so that large matrices and
/// small errors are not lost to f32 rounding. Scale-free, so layers of different magnitude
/// compare directly. When `w` is all zeros the result is 0 if `ŵ` is too and infinity otherwise.
pub fn reconstruction_error(w: &[f32], w_hat: &[f32]) -> Result<f64, QuantError> {
    if w.len() != w_hat.len() {
        return Err(QuantError::LengthMismatch {
            left: w.len(),
            right: w_hat.len(),
        });
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&a, &b) in w.iter().zip(w_hat) {
        let d = f64::from(a) - f64::from(b);
        diff += d * d;
        norm += f64::from(a) * f64::from(a);
    }
    Ok(match (diff == 0.0, norm == 0.0) {
        (true, _) => 0.0,
        (false, true) => f64::INFINITY,
        (false, false) => (diff / norm).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_frobenius_error_of_known_pairs() {
        assert_eq!(reconstruction_error(&[3.0, 4.0], &[3.0, 4.0]), Ok(0.0));
        assert_eq!(reconstruction_error(&[3.0, 4.0], &[0.0, 0.0]), Ok(1.0));
        // ‖(0, 1)‖ / ‖(3, 4)‖ = 1/5.
        assert_eq!(reconstruction_error(&[3.0, 4.0], &[3.0, 3.0]), Ok(0.2));
        assert_eq!(reconstruction_error(&[0.0, 0.0], &[0.0, 0.0]), Ok(0.0));
        assert_eq!(reconstruction_error(&[0.0], &[1.0]), Ok(f64::INFINITY));
    }

    #[test]
    fn refuses_tensors_of_different_lengths() {
        assert_eq!(
            reconstruction_error(&[1.0, 2.0], &[1.0]),
            Err(QuantError::LengthMismatch { left: 2, right: 1 })
        );
    }
}
