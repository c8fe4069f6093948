//! AdamW's update of one parameter and its two moments, written into their own buffers, as
//! one operation.
//!
//! [`crate::in_place_adamw::InPlaceAdamW`] must write every update back into the buffers a
//! replayed graph reads. Composed of Burn's operations, one parameter's update is a dozen
//! element-wise operations followed by three in-place copies: every element of the
//! parameter, its gradient and both moments crosses memory several times. On CubeCL backends
//! (`adamw_update/cube.rs`, in GPU builds) it is one kernel that reads the parameter, the
//! gradient and the moments once, computes in f32, and writes the parameter and moments once,
//! in place, as torch's fused AdamW does. Elsewhere (and for a tensor the kernel cannot
//! address in place) the update is composed and copied in place: the same arithmetic.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Scalar, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Slice};

#[cfg(feature = "cube")]
mod cube;

/// The step's hyperparameters: betas, epsilon, and the weight decay of this parameter (0 for
/// norm scales and biases).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hyperparameters {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The update on each backend: one kernel on CubeCL backends, composed elsewhere.
#[backend_extension(
    Flex,
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube")
)]
pub trait AdamWUpdate: Backend {
    /// torch's AdamW step of `param` with gradient `grad` (any float dtype) and moments
    /// `first`, `second` (the parameter's dtype): `factors` is `[4]` f32 on the device, the
    /// learning rate, the bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`, and the factor the
    /// gradient is scaled by first (clipping's; 1 without). Returns the new
    /// parameter and moments, each in its input's own buffer where that buffer is held once.
    #[fusion(meta = |param, _grad, first, second, _factors, _beta1, _beta2, _eps, _decay| (
        param.clone(),
        first.clone(),
        second.clone()
    ))]
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        first: FloatTensor<Self>,
        second: FloatTensor<Self>,
        factors: FloatTensor<Self>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let hyper = Hyperparameters::of(beta1, beta2, eps, weight_decay);
        composed_update::<Self>(param, grad, first, second, factors, hyper)
    }
}

impl AdamWUpdate for burn::backend::Flex {}

/// [`AdamWUpdate::adamw_update`] composed of Burn's operations, in the parameter's dtype:
///
/// `g ← g·s` (`s` the gradient's scale), `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p·(1 − lr·λ) − lr·(m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`,
///
/// each result then written into its input's buffer (`slice_assign`, in place where the
/// buffer is held once).
pub(crate) fn composed_update<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    first: FloatTensor<B>,
    second: FloatTensor<B>,
    factors: FloatTensor<B>,
    hyper: Hyperparameters,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dtype = param.dtype();
    let rank = param.shape().num_dims();
    let scalar = |value: f64| Scalar::new(value, &dtype);
    // Factor `index` of `factors`, in the parameter's dtype, shaped to broadcast over it.
    let factor = |index: usize| {
        let one = B::float_slice(factors.clone(), &[Slice::from(index..index + 1)]);
        B::float_reshape(B::float_cast(one, dtype.into()), Shape::from(vec![1; rank]))
    };
    let (learning_rate, correction1, correction2) = (factor(0), factor(1), factor(2));
    let grad = B::float_mul(B::float_cast(grad, dtype.into()), factor(3));
    let new_first = B::float_add(
        B::float_mul_scalar(first.clone(), scalar(hyper.beta1)),
        B::float_mul_scalar(grad.clone(), scalar(1.0 - hyper.beta1)),
    );
    let new_second = B::float_add(
        B::float_mul_scalar(second.clone(), scalar(hyper.beta2)),
        B::float_mul_scalar(B::float_mul(grad.clone(), grad), scalar(1.0 - hyper.beta2)),
    );
    let corrected_first = B::float_div(new_first.clone(), correction1);
    let root = B::float_sqrt(B::float_div(new_second.clone(), correction2));
    let step = B::float_mul(
        B::float_div(
            corrected_first,
            B::float_add_scalar(root, scalar(hyper.eps)),
        ),
        learning_rate.clone(),
    );
    let decayed = if hyper.weight_decay == 0.0 {
        param.clone()
    } else {
        let keep = B::float_add_scalar(
            B::float_mul_scalar(learning_rate, scalar(-hyper.weight_decay)),
            scalar(1.0),
        );
        B::float_mul(param.clone(), keep)
    };
    let new_param = B::float_sub(decayed, step);
    let whole = vec![Slice::full(); rank];
    (
        B::float_slice_assign(param, &whole, new_param),
        B::float_slice_assign(first, &whole, new_first),
        B::float_slice_assign(second, &whole, new_second),
    )
}

impl Hyperparameters {
    /// The four scalars [`AdamWUpdate::adamw_update`] takes, as one value.
    fn of(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
        }
    }

    /// The scalars a kernel launch takes, in f32.
    #[cfg(feature = "cube")]
    fn f32s(self) -> [f32; 4] {
        [self.beta1, self.beta2, self.eps, self.weight_decay].map(|x| x as f32)
    }
}
