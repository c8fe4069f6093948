//! The per-head norm and rotation, and its backward pass, as one CubeCL kernel each. A row
//! of `head_dim` belongs to a group of a plane's units ([`RowSplit`]): each unit holds vectors
//! of its columns `j` of the row's first half and their partners `j + h`, reads each operand
//! once in its own dtype and layout, computes in f32 and writes once, in `x`'s layout. A
//! row's sums are shuffles within its group. The backward kernel's groups each walk many rows
//! and keep their sums of `du ⊙ n` in registers, so `dγ` is a reduction of a row a group, not
//! of a row a token.
//!
//! At a head of 128 in bf16 a row is 16 vectors of 8: 8 units a row, 4 rows a plane, 16-byte
//! loads. A plane a row with an element a unit ran 7× the time the kernels' bytes need on an
//! H100 (BENCHMARKS.md): each 256-byte row paid the plane's whole indexing, a plane-wide sum
//! and 2-byte loads.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::{NormRotationCore, composed_backward, composed_norm_rotation};
use crate::plane_rows::{
    ROWS_PER_CUBE, address_type, empty_in_order_of, plane_row, row_start, widest_vector,
};
use crate::rms_norm::sum_rows;

/// Row groups of the backward kernel at most (each walks `rows / groups` rows): enough to
/// fill an H100 several times over, few enough that `dγ`'s last sum (4 MB at a head of 128)
/// is small beside the kernel.
const BACKWARD_GROUPS: usize = 8192;

/// How a row is shared among a plane's units: vectors of `vector` elements, `units` units a
/// row (a power of two no wider than the plane), each holding `slots` vectors of the first
/// half and their partners in the second.
#[derive(Clone, Copy, Debug)]
struct RowSplit {
    vector: usize,
    units: usize,
    slots: usize,
}

impl RowSplit {
    /// The widest vectors every operand can be read in, and the fewest units that hold a
    /// row's half.
    fn of(width: usize, plane: usize, operands: &[&CubeTensor]) -> Self {
        let half = width / 2;
        let vector = widest_vector(operands, half);
        let vectors = half / vector;
        let units = vectors.next_power_of_two().min(plane);
        Self {
            vector,
            units,
            slots: vectors.div_ceil(units),
        }
    }

    /// Rows a plane takes at once.
    fn rows_per_plane(self, plane: usize) -> usize {
        plane / self.units
    }
}

/// `Σ` over a vector's elements.
#[cube]
fn elements_sum<N: Size>(value: Vector<f32, N>) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for e in 0..value.vector_size() {
        sum += value.extract(e);
    }
    sum
}

/// `Σ` of `value` over the `units` units of this unit's group (aligned runs of the plane).
#[cube]
fn group_sum(value: f32, #[comptime] units: usize) -> f32 {
    let mut sum = value;
    let mut mask = 1u32;
    #[unroll]
    for _ in 0..comptime!(units.trailing_zeros()) {
        sum += plane_shuffle_xor(sum, mask);
        mask *= 2;
    }
    sum
}

/// `(mean(x²) + ε)^(-1/2)` of a row whose columns this unit holds in `lo`/`hi` (the slots
/// with `part + i·units < half`).
#[cube]
fn group_inverse_rms<N: Size>(
    lo: &Array<Vector<f32, N>>,
    hi: &Array<Vector<f32, N>>,
    part: usize,
    half: usize,
    width: usize,
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] slots: usize,
) -> f32 {
    let mut squares = 0.0f32;
    #[unroll]
    for i in 0..slots {
        if part + i * units < half {
            squares += elements_sum(lo[i] * lo[i] + hi[i] * hi[i]);
        }
    }
    let squares = group_sum(squares, units);
    1.0f32 / (squares / f32::cast_from(width) + epsilon).sqrt()
}

/// `y = R·(γ ⊙ x·r)`; `rows` rows of `x`, `rows_per_plane` of them a plane. The tables
/// broadcast against `x`; indices count vectors.
#[cube(launch_unchecked, address_type = "dynamic")]
fn norm_rotation_kernel<E: Float, G: Float, T: Float, N: Size>(
    x: &Tensor<Vector<E, N>>,
    gamma: &Tensor<Vector<G, N>>,
    cos: &Tensor<Vector<T, N>>,
    sin: &Tensor<Vector<T, N>>,
    y: &mut Tensor<Vector<E, N>>,
    rows: u32,
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] slots: usize,
    #[define(E, G, T)] _dtypes: [ElemType; 3],
) {
    let rows = rows as usize;
    let first = plane_row() * (CUBE_DIM_X as usize / units);
    if first >= rows {
        terminate!();
    }
    let n = x.vector_size();
    let part = UNIT_POS_X as usize % units;
    let row = first + UNIT_POS_X as usize / units;
    // A group past the last row reads the last row, so its plane's shuffles stay whole.
    let valid = row < rows;
    let row = select(valid, row, rows - 1);
    let last = x.rank() - 1;
    let width = x.shape(last);
    let half = width / (2 * n);
    let (x_step, y_step, g_step) = (x.stride(last), y.stride(last), gamma.stride(0));
    let (cos_step, sin_step) = (cos.stride(last), sin.stride(last));
    let x_row = row_start(x, x, row) / n;
    let mut lo = Array::<Vector<f32, N>>::new(slots);
    let mut hi = Array::<Vector<f32, N>>::new(slots);
    #[unroll]
    for i in 0..slots {
        let j = part + i * units;
        if j < half {
            lo[i] = Vector::cast_from(x[x_row + j * x_step]);
            hi[i] = Vector::cast_from(x[x_row + (j + half) * x_step]);
        }
    }
    let r = Vector::<f32, N>::new(group_inverse_rms(
        &lo, &hi, part, half, width, epsilon, units, slots,
    ));
    if valid {
        let y_row = row_start(x, &*y, row) / n;
        let cos_row = row_start(x, cos, row) / n;
        let sin_row = row_start(x, sin, row) / n;
        #[unroll]
        for i in 0..slots {
            let j = part + i * units;
            if j < half {
                let a = lo[i] * r * Vector::cast_from(gamma[j * g_step]);
                let b = hi[i] * r * Vector::cast_from(gamma[(j + half) * g_step]);
                let cos_lo = Vector::<f32, N>::cast_from(cos[cos_row + j * cos_step]);
                let cos_hi = Vector::<f32, N>::cast_from(cos[cos_row + (j + half) * cos_step]);
                let sin_lo = Vector::<f32, N>::cast_from(sin[sin_row + j * sin_step]);
                let sin_hi = Vector::<f32, N>::cast_from(sin[sin_row + (j + half) * sin_step]);
                y[y_row + j * y_step] = Vector::cast_from(a * cos_lo - b * sin_lo);
                y[y_row + (j + half) * y_step] = Vector::cast_from(b * cos_hi + a * sin_hi);
            }
        }
    }
}

/// `dx` of every row and each group's `Σ du ⊙ n` over its rows (`partials`, `[groups,
/// head_dim]` in f32), a group walking the rows `group, group + groups, …`. A plane's groups
/// step together (a group past the last row repeats it without writing), so its shuffles
/// stay whole.
#[cube(launch_unchecked, address_type = "dynamic")]
fn norm_rotation_grad_kernel<E: Float, G: Float, T: Float, N: Size>(
    x: &Tensor<Vector<E, N>>,
    gamma: &Tensor<Vector<G, N>>,
    cos: &Tensor<Vector<T, N>>,
    sin: &Tensor<Vector<T, N>>,
    grad: &Tensor<Vector<E, N>>,
    grad_x: &mut Tensor<Vector<E, N>>,
    partials: &mut Tensor<Vector<f32, N>>,
    rows: u32,
    groups: u32,
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] slots: usize,
    #[define(E, G, T)] _dtypes: [ElemType; 3],
) {
    let (rows, groups) = (rows as usize, groups as usize);
    let n = x.vector_size();
    let first = plane_row() * (CUBE_DIM_X as usize / units);
    let part = UNIT_POS_X as usize % units;
    let group = first + UNIT_POS_X as usize / units;
    let last = x.rank() - 1;
    let width = x.shape(last);
    let half = width / (2 * n);
    let (x_step, dy_step, out_step) = (x.stride(last), grad.stride(last), grad_x.stride(last));
    let (g_step, cos_step, sin_step) = (gamma.stride(0), cos.stride(last), sin.stride(last));
    let zero = Vector::<f32, N>::new(0.0f32);
    let mut sums_lo = Array::<Vector<f32, N>>::new(slots);
    let mut sums_hi = Array::<Vector<f32, N>>::new(slots);
    // This row's x and g = du ⊙ γ, for the second pass.
    let mut x_lo = Array::<Vector<f32, N>>::new(slots);
    let mut x_hi = Array::<Vector<f32, N>>::new(slots);
    let mut g_lo = Array::<Vector<f32, N>>::new(slots);
    let mut g_hi = Array::<Vector<f32, N>>::new(slots);
    #[unroll]
    for i in 0..slots {
        sums_lo[i] = zero;
        sums_hi[i] = zero;
    }
    let mut step = 0;
    while first + step < rows {
        let row = group + step;
        let valid = row < rows;
        let row = select(valid, row, rows - 1);
        let x_row = row_start(x, x, row) / n;
        let dy_row = row_start(x, grad, row) / n;
        let cos_row = row_start(x, cos, row) / n;
        let sin_row = row_start(x, sin, row) / n;
        #[unroll]
        for i in 0..slots {
            let j = part + i * units;
            if j < half {
                x_lo[i] = Vector::cast_from(x[x_row + j * x_step]);
                x_hi[i] = Vector::cast_from(x[x_row + (j + half) * x_step]);
            }
        }
        let r = group_inverse_rms(&x_lo, &x_hi, part, half, width, epsilon, units, slots);
        let r_vector = Vector::<f32, N>::new(r);
        let mut dot = 0.0f32;
        #[unroll]
        for i in 0..slots {
            let j = part + i * units;
            if j < half {
                let dy_lo = Vector::<f32, N>::cast_from(grad[dy_row + j * dy_step]);
                let dy_hi = Vector::<f32, N>::cast_from(grad[dy_row + (j + half) * dy_step]);
                let cos_lo = Vector::<f32, N>::cast_from(cos[cos_row + j * cos_step]);
                let cos_hi = Vector::<f32, N>::cast_from(cos[cos_row + (j + half) * cos_step]);
                let sin_lo = Vector::<f32, N>::cast_from(sin[sin_row + j * sin_step]);
                let sin_hi = Vector::<f32, N>::cast_from(sin[sin_row + (j + half) * sin_step]);
                let du_lo = dy_lo * cos_lo + dy_hi * sin_hi;
                let du_hi = dy_hi * cos_hi - dy_lo * sin_lo;
                if valid {
                    sums_lo[i] += du_lo * x_lo[i] * r_vector;
                    sums_hi[i] += du_hi * x_hi[i] * r_vector;
                }
                g_lo[i] = du_lo * Vector::cast_from(gamma[j * g_step]);
                g_hi[i] = du_hi * Vector::cast_from(gamma[(j + half) * g_step]);
                dot += elements_sum(g_lo[i] * x_lo[i] + g_hi[i] * x_hi[i]);
            }
        }
        let k = Vector::<f32, N>::new(r * r * r * group_sum(dot, units) / f32::cast_from(width));
        if valid {
            let out_row = row_start(x, &*grad_x, row) / n;
            #[unroll]
            for i in 0..slots {
                let j = part + i * units;
                if j < half {
                    grad_x[out_row + j * out_step] =
                        Vector::cast_from(r_vector * g_lo[i] - k * x_lo[i]);
                    grad_x[out_row + (j + half) * out_step] =
                        Vector::cast_from(r_vector * g_hi[i] - k * x_hi[i]);
                }
            }
        }
        step += groups;
    }
    let start = group * partials.stride(0) / n;
    #[unroll]
    for i in 0..slots {
        let j = part + i * units;
        if j < half {
            partials[start + j] = sums_lo[i];
            partials[start + j + half] = sums_hi[i];
        }
    }
}

/// The launch of a row-group kernel: the split of a row (`None` where the device's planes
/// have no fixed width or planes are not supported, or the head is odd), cubes of
/// [`ROWS_PER_CUBE`] planes.
fn geometry(x: &CubeTensor, operands: &[&CubeTensor]) -> Option<(RowSplit, CubeDim, usize)> {
    let hardware = &x.client.properties().hardware;
    let plane = hardware.plane_size_max as usize;
    let width = x.meta.shape[x.meta.shape.num_dims() - 1];
    if plane != hardware.plane_size_min as usize || plane < 2 || width % 2 != 0 {
        return None;
    }
    let split = RowSplit::of(width, plane, operands);
    let rows_per_cube = split.rows_per_plane(plane) * ROWS_PER_CUBE as usize;
    Some((
        split,
        CubeDim::new_2d(plane as u32, ROWS_PER_CUBE),
        rows_per_cube,
    ))
}

impl NormRotationCore for CubeBackend {
    fn norm_rotation(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let y = empty_in_order_of(&x);
        let geometry = geometry(&x, &[&x, &gamma, &cos, &sin, &y]);
        let Some((split, dim, rows_per_cube)) = geometry.filter(|_| cos.dtype == sin.dtype) else {
            return composed_norm_rotation::<Self>(x, gamma, cos, sin, epsilon);
        };
        let rows = x.meta.num_elements() / x.meta.shape[x.meta.shape.num_dims() - 1];
        let count = CubeCount::new_1d(rows.div_ceil(rows_per_cube) as u32);
        let dtypes = [x.dtype, gamma.dtype, cos.dtype].map(dtype_to_storage_type);
        let client = x.client.clone();
        let address = address_type(&[&x, &gamma, &cos, &sin, &y]);
        // SAFETY: every index the kernel forms lies in its tensor: planes past the last row
        // return first, a group past it reads the last row and writes nothing, vectors stay
        // under the row's width (γ's length), and each tensor is indexed through its own shape
        // and strides (the tables' broadcast dimensions stay at 0), in vectors every operand
        // can be read in (`RowSplit::of`).
        unsafe {
            norm_rotation_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                split.vector,
                x.into_tensor_arg(),
                gamma.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                rows as u32,
                epsilon as f32,
                split.units,
                split.slots,
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
        let grad_x = empty_in_order_of(&x);
        let geometry = geometry(&x, &[&x, &gamma, &cos, &sin, &grad, &grad_x]);
        let served = cos.dtype == sin.dtype && grad.dtype == x.dtype;
        let Some((split, dim, rows_per_cube)) = geometry.filter(|_| served) else {
            return composed_backward::<Self>(x, gamma, cos, sin, grad, epsilon);
        };
        let width = x.meta.shape[x.meta.shape.num_dims() - 1];
        let rows = x.meta.num_elements() / width;
        let cubes = rows.min(BACKWARD_GROUPS).div_ceil(rows_per_cube);
        let groups = cubes * rows_per_cube;
        let partials = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::from(vec![groups, width]),
            DType::F32,
        );
        let gamma_dtype = FloatDType::from(gamma.dtype);
        let dtypes = [x.dtype, gamma.dtype, cos.dtype].map(dtype_to_storage_type);
        let client = x.client.clone();
        let address = address_type(&[&x, &gamma, &cos, &sin, &grad, &grad_x, &partials]);
        // SAFETY: a group reads only rows under `rows` (one past the last reads the last and
        // writes nothing) and vectors under the row's width, each tensor through its own shape
        // and strides in vectors every operand can be read in, and writes its own row of
        // `partials` (`groups` contiguous rows of `width`, a multiple of the vector).
        unsafe {
            norm_rotation_grad_kernel::launch_unchecked(
                &client,
                CubeCount::new_1d(cubes as u32),
                dim,
                address,
                split.vector,
                x.into_tensor_arg(),
                gamma.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                grad.into_tensor_arg(),
                grad_x.clone().into_tensor_arg(),
                partials.clone().into_tensor_arg(),
                rows as u32,
                groups as u32,
                epsilon as f32,
                split.units,
                split.slots,
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
    /// the backward kernel has groups), a head of 64 (8 rows a plane), heads whose vectors
    /// leave units of a group idle (80) or take two slots a unit (640), a half head too odd
    /// for vectors (6), rows that end inside a plane, per-row tables, a head-transposed input,
    /// bf16.
    #[test]
    fn kernels_match_the_composed_norm_rotation_and_its_gradients() {
        let device = crate::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            for (shape, tables, transposed) in [
                ([4, 16, 1024, 128], [1, 1, 1024, 128], true),
                ([2, 8, 33, 128], [2, 1, 33, 128], false),
                ([1, 3, 7, 80], [1, 1, 7, 80], true),
                ([2, 4, 9, 64], [1, 1, 9, 64], true),
                ([1, 2, 5, 640], [1, 1, 5, 640], true),
                ([2, 2, 9, 6], [2, 1, 9, 6], false),
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
