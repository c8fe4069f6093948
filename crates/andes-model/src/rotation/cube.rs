//! The rotary rotation (and its transpose) as one CubeCL kernel, a row of `head_dim` a plane
//! (`crate::plane_rows`): a unit takes the pairs `(j, j + h)` of its columns, reads `x` and
//! the tables once, computes in f32 and writes once.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use cubecl::prelude::*;

use super::{RotationCore, composed_rotation};
use crate::plane_rows::{address_type, empty_like, plane_row, row_launch, row_start};

/// `y_j = a·cos_j − b·s_lo`, `y_{j+h} = b·cos_{j+h} + a·s_hi` for `(a, b) = (x_j, x_{j+h})`:
/// the rotation with `(s_lo, s_hi) = (sin_j, sin_{j+h})`, its transpose with `(−sin_{j+h},
/// −sin_j)`. The tables broadcast against `x` (read through their own shapes and strides).
#[cube(launch_unchecked, address_type = "dynamic")]
fn rotation_kernel<E: Float, T: Float>(
    x: &Tensor<E>,
    cos: &Tensor<T>,
    sin: &Tensor<T>,
    y: &mut Tensor<E>,
    rows: u32,
    transposed: u32,
    #[define(E, T)] _dtypes: [ElemType; 2],
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
    let (x_step, y_step) = (x.stride(last), y.stride(last));
    let (cos_step, sin_step) = (cos.stride(last), sin.stride(last));
    let mut j = UNIT_POS_X as usize;
    while j < half {
        let a = f32::cast_from(x[x_row + j * x_step]);
        let b = f32::cast_from(x[x_row + (j + half) * x_step]);
        let cos_lo = f32::cast_from(cos[cos_row + j * cos_step]);
        let cos_hi = f32::cast_from(cos[cos_row + (j + half) * cos_step]);
        let sin_lo = f32::cast_from(sin[sin_row + j * sin_step]);
        let sin_hi = f32::cast_from(sin[sin_row + (j + half) * sin_step]);
        let mut s_lo = sin_lo;
        let mut s_hi = sin_hi;
        if transposed == 1 {
            s_lo = -sin_hi;
            s_hi = -sin_lo;
        }
        y[y_row + j * y_step] = E::cast_from(a * cos_lo - b * s_lo);
        y[y_row + (j + half) * y_step] = E::cast_from(b * cos_hi + a * s_hi);
        j += CUBE_DIM_X as usize;
    }
}

impl RotationCore for CubeBackend {
    fn rotation(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self> {
        let Some((count, dim, rows)) = row_launch(&x) else {
            return composed_rotation::<Self>(x, cos, sin, transposed);
        };
        if cos.dtype != sin.dtype {
            return composed_rotation::<Self>(x, cos, sin, transposed);
        }
        let x = into_contiguous(x);
        let y = empty_like(&x);
        let dtypes = [
            dtype_to_storage_type(x.dtype),
            dtype_to_storage_type(cos.dtype),
        ];
        let client = x.client.clone();
        let address = address_type(&[&x, &cos, &sin, &y]);
        // SAFETY: every index the kernel forms lies in its tensor: rows past the last return
        // first, columns stay under the row's width, and each tensor is indexed through its
        // own shape and strides (the tables' broadcast dimensions stay at 0).
        unsafe {
            rotation_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                x.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                rows,
                transposed as u32,
                dtypes,
            );
        }
        y
    }
}

/// Run on a CUDA device (this file is compiled into GPU builds only): `TEST_CRATE=andes-model
/// scripts/gpu/build-cuda.sh` builds the test binary, `FILTER=rotation
/// scripts/gpu/kernel_tests.sh` runs it on the GPU machine.
#[cfg(all(test, feature = "cuda-untuned"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{DType, Tensor};

    use super::*;
    use crate::test_tensors::{filled, values};

    /// The kernel against the composed rotation, both directions: shared and per-row tables,
    /// a transposed (strided) input, bf16.
    #[test]
    fn kernel_matches_the_composed_rotation() {
        let device = crate::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::BF16, 2e-2)] {
            for (shape, tables, transposed_input) in [
                ([4, 16, 64, 128], [1, 1, 64, 128], false),
                ([2, 8, 33, 128], [2, 1, 33, 128], false),
                ([1, 3, 7, 64], [1, 1, 7, 64], true),
            ] {
                let [b, h, s, d] = shape;
                let x = match transposed_input {
                    true => filled([b, s, h, d], 1, &device).swap_dims(1, 2),
                    false => filled(shape, 1, &device),
                }
                .cast(dtype);
                let (cos, sin) = (filled(tables, 2, &device), filled(tables, 3, &device));
                for transposed in [false, true] {
                    let run = |kernel: bool| {
                        let (x, cos, sin) = (
                            x.clone().into_dispatch(),
                            cos.clone().into_dispatch(),
                            sin.clone().into_dispatch(),
                        );
                        values(Tensor::<4>::from_dispatch(match kernel {
                            true => <Dispatch as RotationCore>::rotation(x, cos, sin, transposed),
                            false => composed_rotation::<Dispatch>(x, cos, sin, transposed),
                        }))
                    };
                    let (kernel, reference) = (run(true), run(false));
                    let gap = kernel
                        .iter()
                        .zip(&reference)
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    eprintln!(
                        "{shape:?} tables {tables:?} {dtype:?} transposed {transposed}: {gap}"
                    );
                    if gap > tolerance {
                        failures.push(format!("{shape:?} {dtype:?} transposed {transposed}"));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "the kernel differs from the composed rotation: {failures:?}"
        );
    }
}
