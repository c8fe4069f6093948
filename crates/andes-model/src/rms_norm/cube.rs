//! RMSNorm and its input's gradient as one CubeCL kernel each, a row a plane
//! (`crate::plane_rows`): each reads its operands once a pass over the row, in their own
//! dtype, computes in f32 and writes its result once.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use cubecl::prelude::*;

use super::{RmsNormCore, composed_grad_input, composed_rms_norm};
use crate::plane_rows::{address_type, empty_like, plane_row, row_launch, row_start};

/// `r = (mean(x²) + ε)^(-1/2)` of the row of `x` starting at `start`, summed over the plane.
#[cube]
fn inverse_rms<E: Float>(x: &Tensor<E>, start: usize, epsilon: f32) -> f32 {
    let last = x.rank() - 1;
    let (width, step) = (x.shape(last), x.stride(last));
    let mut squares = 0.0f32;
    let mut col = UNIT_POS_X as usize;
    while col < width {
        let value = f32::cast_from(x[start + col * step]);
        squares += value * value;
        col += CUBE_DIM_X as usize;
    }
    let squares = plane_sum(squares);
    1.0f32 / (squares / f32::cast_from(width) + epsilon).sqrt()
}

/// `y = γ ⊙ x·r`, a row a plane; `rows` rows of `x`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rms_norm_kernel<E: Float, G: Float>(
    x: &Tensor<E>,
    gamma: &Tensor<G>,
    y: &mut Tensor<E>,
    rows: u32,
    epsilon: f32,
    #[define(E, G)] _dtypes: [ElemType; 2],
) {
    let row = plane_row();
    if row >= rows as usize {
        terminate!();
    }
    let last = x.rank() - 1;
    let width = x.shape(last);
    let (x_row, y_row) = (row_start(x, x, row), row_start(x, &*y, row));
    let r = inverse_rms(x, x_row, epsilon);
    let (x_step, y_step, g_step) = (x.stride(last), y.stride(last), gamma.stride(0));
    let mut col = UNIT_POS_X as usize;
    while col < width {
        let value = f32::cast_from(x[x_row + col * x_step]) * r;
        y[y_row + col * y_step] = E::cast_from(value * f32::cast_from(gamma[col * g_step]));
        col += CUBE_DIM_X as usize;
    }
}

/// `dx = r·g − (r³/n)·(g·x)·x`, `g = dy ⊙ γ`, a row a plane; `rows` rows of `x`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn grad_input_kernel<E: Float, G: Float>(
    x: &Tensor<E>,
    gamma: &Tensor<G>,
    grad: &Tensor<E>,
    grad_x: &mut Tensor<E>,
    rows: u32,
    epsilon: f32,
    #[define(E, G)] _dtypes: [ElemType; 2],
) {
    let row = plane_row();
    if row >= rows as usize {
        terminate!();
    }
    let last = x.rank() - 1;
    let width = x.shape(last);
    let x_row = row_start(x, x, row);
    let dy_row = row_start(x, grad, row);
    let out_row = row_start(x, &*grad_x, row);
    let (x_step, dy_step) = (x.stride(last), grad.stride(last));
    let (g_step, out_step) = (gamma.stride(0), grad_x.stride(last));
    let r = inverse_rms(x, x_row, epsilon);
    let mut dot = 0.0f32;
    let mut col = UNIT_POS_X as usize;
    while col < width {
        let g = f32::cast_from(grad[dy_row + col * dy_step]) * f32::cast_from(gamma[col * g_step]);
        dot += g * f32::cast_from(x[x_row + col * x_step]);
        col += CUBE_DIM_X as usize;
    }
    let k = r * r * r * plane_sum(dot) / f32::cast_from(width);
    let mut col = UNIT_POS_X as usize;
    while col < width {
        let g = f32::cast_from(grad[dy_row + col * dy_step]) * f32::cast_from(gamma[col * g_step]);
        let value = f32::cast_from(x[x_row + col * x_step]);
        grad_x[out_row + col * out_step] = E::cast_from(r * g - k * value);
        col += CUBE_DIM_X as usize;
    }
}

impl RmsNormCore for CubeBackend {
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        let Some((count, dim, rows)) = row_launch(&x) else {
            return composed_rms_norm::<Self>(x, gamma, epsilon);
        };
        let (x, gamma) = (into_contiguous(x), into_contiguous(gamma));
        let y = empty_like(&x);
        let dtypes = [
            dtype_to_storage_type(x.dtype),
            dtype_to_storage_type(gamma.dtype),
        ];
        let client = x.client.clone();
        let address = address_type(&[&x, &gamma, &y]);
        // SAFETY: every index the kernel forms lies in its tensor: rows past the last return
        // first, columns stay under the row's width (γ's length), and each tensor is indexed
        // through its own shape and strides.
        unsafe {
            rms_norm_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                x.into_tensor_arg(),
                gamma.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                rows,
                epsilon as f32,
                dtypes,
            );
        }
        y
    }

    fn rms_norm_grad_input(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let Some((count, dim, rows)) = row_launch(&x) else {
            return composed_grad_input::<Self>(x, gamma, grad, epsilon);
        };
        let (x, gamma, grad) = (
            into_contiguous(x),
            into_contiguous(gamma),
            into_contiguous(grad),
        );
        let grad_x = empty_like(&x);
        let dtypes = [
            dtype_to_storage_type(x.dtype),
            dtype_to_storage_type(gamma.dtype),
        ];
        let client = x.client.clone();
        let address = address_type(&[&x, &gamma, &grad, &grad_x]);
        // SAFETY: as for the norm: rows past the last return first, columns stay under the
        // row's width, each tensor indexed through its own shape and strides.
        unsafe {
            grad_input_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                x.into_tensor_arg(),
                gamma.into_tensor_arg(),
                grad.into_tensor_arg(),
                grad_x.clone().into_tensor_arg(),
                rows,
                epsilon as f32,
                dtypes,
            );
        }
        grad_x
    }
}

/// Run on a CUDA device (this file is compiled into GPU builds only): `TEST_CRATE=andes-model
/// scripts/gpu/build-cuda.sh` builds the test binary, `FILTER=rms_norm
/// scripts/gpu/kernel_tests.sh` runs it on the GPU machine.
#[cfg(all(test, feature = "cuda-untuned"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{DType, Tensor};

    use super::*;
    use crate::test_tensors::{filled, relative_gap, values};

    /// Both kernels against their composed forms: the hidden norm's rows, the per-head norm's,
    /// widths that are not a multiple of the plane, a transposed (strided) input, bf16.
    #[test]
    fn kernels_match_the_composed_norm_and_its_gradient() {
        let device = crate::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
            for (shape, transposed) in [
                ([2, 3, 64, 1024], false),
                ([4, 16, 33, 128], false),
                ([1, 2, 5, 100], false),
                ([1, 3, 7, 37], false),
                ([2, 8, 16, 128], true),
            ] {
                // A transposed input is a view of a tensor laid out [b, s, h, d].
                let [b, h, s, d] = shape;
                let make = |seed| match transposed {
                    true => filled([b, s, h, d], seed, &device).swap_dims(1, 2),
                    false => filled(shape, seed, &device),
                };
                let (x, dy) = (make(1).cast(dtype), make(2).cast(dtype));
                let gamma = filled([shape[3]], 3, &device).cast(dtype);
                let eps = 1e-6;
                let kernel = <Dispatch as RmsNormCore>::rms_norm(
                    x.clone().into_dispatch(),
                    gamma.clone().into_dispatch(),
                    eps,
                );
                let reference = composed_rms_norm::<Dispatch>(
                    x.clone().into_dispatch(),
                    gamma.clone().into_dispatch(),
                    eps,
                );
                let norm = relative_gap(
                    &values(Tensor::<4>::from_dispatch(kernel)),
                    &values(Tensor::<4>::from_dispatch(reference)),
                );
                let kernel = <Dispatch as RmsNormCore>::rms_norm_grad_input(
                    x.clone().into_dispatch(),
                    gamma.clone().into_dispatch(),
                    dy.clone().into_dispatch(),
                    eps,
                );
                let reference = composed_grad_input::<Dispatch>(
                    x.into_dispatch(),
                    gamma.into_dispatch(),
                    dy.into_dispatch(),
                    eps,
                );
                let grad = relative_gap(
                    &values(Tensor::<4>::from_dispatch(kernel)),
                    &values(Tensor::<4>::from_dispatch(reference)),
                );
                eprintln!("{shape:?} {dtype:?} transposed {transposed}: norm {norm}, dx {grad}");
                if norm > tolerance || grad > tolerance {
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
