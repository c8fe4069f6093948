//! The per-head norm and rotation, and its backward pass, as one CubeCL kernel each, a row of
//! `head_dim` a plane (`crate::plane_rows`): a unit takes the pairs `(j, j + h)` of its
//! columns, reads each operand once in its own dtype and layout, computes in f32 and writes
//! once, in `x`'s layout. The backward kernel's planes each walk many rows and keep their sums
//! of `du ⊙ n` in registers, so `dγ` is a reduction of a row a plane, not of a row a token.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{NormRotationCore, composed_backward, composed_norm_rotation};
use crate::plane_rows::{
    ROWS_PER_CUBE, address_type, empty_in_order_of, plane_row, row_launch, row_start,
};
use crate::rms_norm::cube::inverse_rms;
use crate::rms_norm::sum_rows;

/// Planes of the backward kernel at most (each walks `rows / planes` rows): enough to fill an
/// H100 four times over at eight planes a cube, few enough that `dγ`'s last sum (4 MB at a
/// head of 128) is small beside the kernel.
const BACKWARD_PLANES: usize = 8192;

/// `y = R·(γ ⊙ x·r)`, a row a plane; `rows` rows of `x`. The tables broadcast against `x`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn norm_rotation_kernel<E: Float, G: Float, T: Float>(
    x: &Tensor<E>,
    gamma: &Tensor<G>,
    cos: &Tensor<T>,
    sin: &Tensor<T>,
    y: &mut Tensor<E>,
    rows: u32,
    epsilon: f32,
    #[define(E, G, T)] _dtypes: [ElemType; 3],
) {
    let row = plane_row();
    if row >= rows as usize {
        terminate!();
    }
    let last = x.rank() - 1;
    let half = x.shape(last) / 2;
    let x_row = row_start(x, x, row);
    let y_row = row_start(x, &*y, row);
    let cos_row = row_start(x, cos, row);
    let sin_row = row_start(x, sin, row);
    let r = inverse_rms(x, x_row, epsilon);
    let (x_step, y_step, g_step) = (x.stride(last), y.stride(last), gamma.stride(0));
    let (cos_step, sin_step) = (cos.stride(last), sin.stride(last));
    let mut j = UNIT_POS_X as usize;
    while j < half {
        let a = f32::cast_from(x[x_row + j * x_step]) * r * f32::cast_from(gamma[j * g_step]);
        let b = f32::cast_from(x[x_row + (j + half) * x_step])
            * r
            * f32::cast_from(gamma[(j + half) * g_step]);
        let cos_lo = f32::cast_from(cos[cos_row + j * cos_step]);
        let cos_hi = f32::cast_from(cos[cos_row + (j + half) * cos_step]);
        let sin_lo = f32::cast_from(sin[sin_row + j * sin_step]);
        let sin_hi = f32::cast_from(sin[sin_row + (j + half) * sin_step]);
        y[y_row + j * y_step] = E::cast_from(a * cos_lo - b * sin_lo);
        y[y_row + (j + half) * y_step] = E::cast_from(b * cos_hi + a * sin_hi);
        j += CUBE_DIM_X as usize;
    }
}

/// `dx` of every row and each plane's `Σ du ⊙ n` over its rows (`partials`, `[planes,
/// head_dim]` in f32), a plane walking the rows `plane, plane + planes, …`; a unit holds the
/// columns `j = unit + i·plane_width`, `i < slots`, of the first half and their partners.
#[cube(launch_unchecked, address_type = "dynamic")]
fn norm_rotation_grad_kernel<E: Float, G: Float, T: Float>(
    x: &Tensor<E>,
    gamma: &Tensor<G>,
    cos: &Tensor<T>,
    sin: &Tensor<T>,
    grad: &Tensor<E>,
    grad_x: &mut Tensor<E>,
    partials: &mut Tensor<f32>,
    rows: u32,
    planes: u32,
    epsilon: f32,
    #[comptime] slots: usize,
    #[define(E, G, T)] _dtypes: [ElemType; 3],
) {
    let plane = plane_row();
    let last = x.rank() - 1;
    let width = x.shape(last);
    let half = width / 2;
    let (x_step, dy_step, out_step) = (x.stride(last), grad.stride(last), grad_x.stride(last));
    let (g_step, cos_step, sin_step) = (gamma.stride(0), cos.stride(last), sin.stride(last));
    let mut sums_lo = Array::<f32>::new(slots);
    let mut sums_hi = Array::<f32>::new(slots);
    // This row's x and g = du ⊙ γ, for the second pass.
    let mut x_lo = Array::<f32>::new(slots);
    let mut x_hi = Array::<f32>::new(slots);
    let mut g_lo = Array::<f32>::new(slots);
    let mut g_hi = Array::<f32>::new(slots);
    #[unroll]
    for i in 0..slots {
        sums_lo[i] = 0.0f32;
        sums_hi[i] = 0.0f32;
    }
    let mut row = plane;
    while row < rows as usize {
        let x_row = row_start(x, x, row);
        let dy_row = row_start(x, grad, row);
        let cos_row = row_start(x, cos, row);
        let sin_row = row_start(x, sin, row);
        let r = inverse_rms(x, x_row, epsilon);
        let mut dot = 0.0f32;
        #[unroll]
        for i in 0..slots {
            let j = UNIT_POS_X as usize + i * CUBE_DIM_X as usize;
            x_lo[i] = 0.0f32;
            x_hi[i] = 0.0f32;
            g_lo[i] = 0.0f32;
            g_hi[i] = 0.0f32;
            if j < half {
                let dy_lo = f32::cast_from(grad[dy_row + j * dy_step]);
                let dy_hi = f32::cast_from(grad[dy_row + (j + half) * dy_step]);
                let cos_lo = f32::cast_from(cos[cos_row + j * cos_step]);
                let cos_hi = f32::cast_from(cos[cos_row + (j + half) * cos_step]);
                let sin_lo = f32::cast_from(sin[sin_row + j * sin_step]);
                let sin_hi = f32::cast_from(sin[sin_row + (j + half) * sin_step]);
                let du_lo = dy_lo * cos_lo + dy_hi * sin_hi;
                let du_hi = dy_hi * cos_hi - dy_lo * sin_lo;
                x_lo[i] = f32::cast_from(x[x_row + j * x_step]);
                x_hi[i] = f32::cast_from(x[x_row + (j + half) * x_step]);
                sums_lo[i] += du_lo * x_lo[i] * r;
                sums_hi[i] += du_hi * x_hi[i] * r;
                g_lo[i] = du_lo * f32::cast_from(gamma[j * g_step]);
                g_hi[i] = du_hi * f32::cast_from(gamma[(j + half) * g_step]);
                dot += g_lo[i] * x_lo[i] + g_hi[i] * x_hi[i];
            }
        }
        let k = r * r * r * plane_sum(dot) / f32::cast_from(width);
        let out_row = row_start(x, &*grad_x, row);
        #[unroll]
        for i in 0..slots {
            let j = UNIT_POS_X as usize + i * CUBE_DIM_X as usize;
            if j < half {
                grad_x[out_row + j * out_step] = E::cast_from(r * g_lo[i] - k * x_lo[i]);
                grad_x[out_row + (j + half) * out_step] = E::cast_from(r * g_hi[i] - k * x_hi[i]);
            }
        }
        row += planes as usize;
    }
    let start = plane * partials.stride(0);
    let step = partials.stride(1);
    #[unroll]
    for i in 0..slots {
        let j = UNIT_POS_X as usize + i * CUBE_DIM_X as usize;
        if j < half {
            partials[start + j * step] = sums_lo[i];
            partials[start + (j + half) * step] = sums_hi[i];
        }
    }
}

/// Whether the kernels take these operands: an even head and tables of one dtype (the
/// backward pass also asks for a gradient in `x`'s dtype).
fn served(
    x: &FloatTensor<CubeBackend>,
    cos: &FloatTensor<CubeBackend>,
    sin: &FloatTensor<CubeBackend>,
) -> bool {
    let shape = &x.meta.shape;
    shape[shape.num_dims() - 1] % 2 == 0 && cos.dtype == sin.dtype
}

impl NormRotationCore for CubeBackend {
    fn norm_rotation(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let launch = row_launch(&x);
        let Some((count, dim, rows)) = launch.filter(|_| served(&x, &cos, &sin)) else {
            return composed_norm_rotation::<Self>(x, gamma, cos, sin, epsilon);
        };
        let y = empty_in_order_of(&x);
        let dtypes = [x.dtype, gamma.dtype, cos.dtype].map(dtype_to_storage_type);
        let client = x.client.clone();
        let address = address_type(&[&x, &gamma, &cos, &sin, &y]);
        // SAFETY: every index the kernel forms lies in its tensor: rows past the last return
        // first, columns stay under the row's width (γ's length), and each tensor is indexed
        // through its own shape and strides (the tables' broadcast dimensions stay at 0).
        unsafe {
            norm_rotation_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                x.into_tensor_arg(),
                gamma.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                rows,
                epsilon as f32,
                dtypes,
            );
        }
        y
    }

    fn norm_rotation_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let launch = row_launch(&x);
        let served = served(&x, &cos, &sin) && grad.dtype == x.dtype;
        let Some((_, dim, rows)) = launch.filter(|_| served) else {
            return composed_backward::<Self>(x, gamma, cos, sin, grad, epsilon);
        };
        let width = x.meta.shape[x.meta.shape.num_dims() - 1];
        let slots = (width / 2).div_ceil(dim.x as usize);
        let cubes = (rows as usize)
            .min(BACKWARD_PLANES)
            .div_ceil(ROWS_PER_CUBE as usize);
        let planes = cubes * ROWS_PER_CUBE as usize;
        let grad_x = empty_in_order_of(&x);
        let partials = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::from(vec![planes, width]),
            DType::F32,
        );
        let gamma_dtype = FloatDType::from(gamma.dtype);
        let dtypes = [x.dtype, gamma.dtype, cos.dtype].map(dtype_to_storage_type);
        let client = x.client.clone();
        let address = address_type(&[&x, &gamma, &cos, &sin, &grad, &grad_x, &partials]);
        // SAFETY: a plane reads only rows under `rows` and columns under the row's width, each
        // tensor through its own shape and strides, and writes its own row of `partials`
        // (`planes` rows, one a plane of the launch).
        unsafe {
            norm_rotation_grad_kernel::launch_unchecked(
                &client,
                CubeCount::new_1d(cubes as u32),
                dim,
                address,
                x.into_tensor_arg(),
                gamma.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                grad.into_tensor_arg(),
                grad_x.clone().into_tensor_arg(),
                partials.clone().into_tensor_arg(),
                rows,
                planes as u32,
                epsilon as f32,
                slots,
                dtypes,
            );
        }
        (grad_x, sum_rows::<Self>(partials, gamma_dtype))
    }
}

/// Run on a CUDA device (this file is compiled into GPU builds only): `TEST_CRATE=andes-model
/// scripts/gpu/build-cuda.sh` builds the test binary, `FILTER=norm_rotation
/// scripts/gpu/kernel_tests.sh` runs it on the GPU machine.
#[cfg(all(test, feature = "cuda-untuned"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::Tensor;

    use super::*;
    use crate::test_tensors::{filled, relative_gap, values};

    /// Both kernels against their composed forms: the 0.6B step's query heads (more rows than
    /// the backward kernel has planes), a head not a multiple of the plane, per-row tables,
    /// a head-transposed input, bf16.
    #[test]
    fn kernels_match_the_composed_norm_rotation_and_its_gradients() {
        let device = crate::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            for (shape, tables, transposed) in [
                ([4, 16, 1024, 128], [1, 1, 1024, 128], true),
                ([2, 8, 33, 128], [2, 1, 33, 128], false),
                ([1, 3, 7, 80], [1, 1, 7, 80], true),
            ] {
                let [b, h, s, d] = shape;
                let make = |seed| match transposed {
                    true => filled([b, s, h, d], seed, &device).swap_dims(1, 2),
                    false => filled(shape, seed, &device),
                };
                let (x, dy) = (make(1).cast(dtype), make(2).cast(dtype));
                let gamma = filled([d], 3, &device);
                let (cos, sin) = (filled(tables, 4, &device), filled(tables, 5, &device));
                let eps = 1e-6;
                let args = || {
                    (
                        x.clone().into_dispatch(),
                        gamma.clone().into_dispatch(),
                        cos.clone().into_dispatch(),
                        sin.clone().into_dispatch(),
                    )
                };
                let (xa, ga, ca, sa) = args();
                let kernel = <Dispatch as NormRotationCore>::norm_rotation(xa, ga, ca, sa, eps);
                let (xa, ga, ca, sa) = args();
                let reference = composed_norm_rotation::<Dispatch>(xa, ga, ca, sa, eps);
                let output = relative_gap(
                    &values(Tensor::<4>::from_dispatch(kernel)),
                    &values(Tensor::<4>::from_dispatch(reference)),
                );
                let (xa, ga, ca, sa) = args();
                let (dx, dgamma) = <Dispatch as NormRotationCore>::norm_rotation_backward(
                    xa,
                    ga,
                    ca,
                    sa,
                    dy.clone().into_dispatch(),
                    eps,
                );
                let (xa, ga, ca, sa) = args();
                let (dx_ref, dgamma_ref) =
                    composed_backward::<Dispatch>(xa, ga, ca, sa, dy.clone().into_dispatch(), eps);
                let dx = relative_gap(
                    &values(Tensor::<4>::from_dispatch(dx)),
                    &values(Tensor::<4>::from_dispatch(dx_ref)),
                );
                let dgamma = relative_gap(
                    &values(Tensor::<1>::from_dispatch(dgamma)),
                    &values(Tensor::<1>::from_dispatch(dgamma_ref)),
                );
                eprintln!(
                    "{shape:?} tables {tables:?} {dtype:?} transposed {transposed}: \
                     y {output}, dx {dx}, dγ {dgamma}"
                );
                if output > tolerance || dx > tolerance || dgamma > tolerance {
                    failures.push(format!("{shape:?} {dtype:?} transposed {transposed}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "kernels differ from the composed forms: {failures:?}"
        );
    }
}
