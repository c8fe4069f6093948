//! AdamW's update as one CubeCL kernel, in place.
//!
//! A unit takes one element: it reads the parameter, the gradient and both moments once,
//! computes torch's AdamW step in f32, and writes the parameter and moments back into their
//! own buffers. Memory traffic is the update's floor (four reads and three writes an element),
//! where the composed update crossed memory for each of its operations and then copied each
//! result into place.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_std::Metadata;
use cubecl::prelude::*;

use super::{AdamWUpdate, Hyperparameters, composed_update};

/// Units a cube takes.
const UNITS_PER_CUBE: u32 = 256;

/// One element a unit, every tensor `[rows, width]` addressed through its row stride (CubeCL
/// may pad rows; the last dimension is contiguous in each).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel<P: Float, G: Float>(
    param: &mut Tensor<P>,
    grad: &Tensor<G>,
    first: &mut Tensor<P>,
    second: &mut Tensor<P>,
    factors: &Tensor<f32>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    #[define(P, G)] _dtypes: [ElemType; 2],
) {
    let width = param.shape(1);
    let position = ABSOLUTE_POS;
    if position >= param.shape(0) * width {
        terminate!();
    }
    let row = position / width;
    let col = position % width;
    let at_param = row * param.stride(0) + col;
    let at_grad = row * grad.stride(0) + col;
    let at_first = row * first.stride(0) + col;
    let at_second = row * second.stride(0) + col;

    let learning_rate = factors[0];
    let g = f32::cast_from(grad[at_grad]) * factors[3];
    let m = f32::cast_from(first[at_first]) * beta1 + g * (1.0 - beta1);
    let v = f32::cast_from(second[at_second]) * beta2 + g * g * (1.0 - beta2);
    let step = (m / factors[1]) / ((v / factors[2]).sqrt() + eps) * learning_rate;
    let p = f32::cast_from(param[at_param]) * (learning_rate * -weight_decay + 1.0) - step;
    first[at_first] = P::cast_from(m);
    second[at_second] = P::cast_from(v);
    param[at_param] = P::cast_from(p);
}

/// `meta` seen as `[rows, width]` over the same memory (a vector as one row), where its last
/// dimension is contiguous and it is untiled; `None` otherwise.
fn row_view(meta: &Metadata) -> Option<Metadata> {
    if meta.is_tiled() {
        return None;
    }
    match (meta.shape.len(), &meta.strides[..]) {
        (1, [1]) => Some(Metadata::new([1, meta.shape[0]], [meta.shape[0], 1])),
        (2, [_, 1]) => Some(meta.clone()),
        _ => None,
    }
}

impl AdamWUpdate for CubeBackend {
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
        let shape = param.meta.shape.clone();
        let kernel_reads = param.dtype == first.dtype
            && param.dtype == second.dtype
            && factors.dtype == DType::F32
            && factors.meta.shape.num_elements() == 4
            && [&grad, &first, &second]
                .iter()
                .all(|other| other.meta.shape == shape)
            && [&param, &first, &second].iter().all(|t| t.can_mut());
        let rows = [&param, &first, &second].map(|t| row_view(&t.meta));
        let (true, [Some(param_rows), Some(first_rows), Some(second_rows)]) = (kernel_reads, rows)
        else {
            return composed_update::<Self>(param, grad, first, second, factors, hyper);
        };
        // A gradient made contiguous is always row-addressable.
        let grad = into_contiguous(grad);
        let grad_rows = row_view(&grad.meta).expect("a contiguous rank-1 or rank-2 gradient");
        let with_meta = |mut tensor: CubeTensor, meta: Metadata| {
            tensor.meta = Box::new(meta);
            tensor
        };
        let originals = [&param, &first, &second].map(|t| (*t.meta).clone());
        let param = with_meta(param, param_rows);
        let grad = with_meta(grad, grad_rows);
        let first = with_meta(first, first_rows);
        let second = with_meta(second, second_rows);
        let factors = into_contiguous(factors);
        let client = param.client.clone();
        let dim = CubeDim::new_1d(UNITS_PER_CUBE);
        let count = cubecl::calculate_cube_count_elemwise(&client, shape.num_elements(), dim);
        let address = [&param, &grad, &first, &second]
            .iter()
            .map(|t| t.required_address_type())
            .max()
            .unwrap_or_default();
        let dtypes = [
            dtype_to_storage_type(param.dtype),
            dtype_to_storage_type(grad.dtype),
        ];
        let [beta1, beta2, eps, weight_decay] = hyper.f32s();
        // SAFETY: units past the last element return first; every other unit indexes row
        // `position / width`, column `position % width` of tensors of one `[rows, width]`
        // shape, each through its own row stride, with the last dimension contiguous
        // (`row_view`); `factors` has four elements (checked above).
        unsafe {
            adamw_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                param.clone().into_tensor_arg(),
                grad.into_tensor_arg(),
                first.clone().into_tensor_arg(),
                second.clone().into_tensor_arg(),
                factors.into_tensor_arg(),
                beta1,
                beta2,
                eps,
                weight_decay,
                dtypes,
            );
        }
        let [param_meta, first_meta, second_meta] = originals;
        (
            with_meta(param, param_meta),
            with_meta(first, first_meta),
            with_meta(second, second_meta),
        )
    }
}

/// Run on a CUDA device (this file is compiled into GPU builds only): `TEST_CRATE=andes-train
/// scripts/gpu/build-cuda.sh` builds the test binary, `scripts/gpu/kernel_tests.sh` runs it on
/// the GPU machine.
#[cfg(all(test, feature = "cube"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{DType, Device, Tensor, TensorData};

    use super::*;

    fn filled<const D: usize>(shape: [usize; D], seed: usize, device: &Device) -> Tensor<D> {
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919 + seed * 104_729) as f32 * 0.618).sin())
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor
            .cast(DType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// The kernel's parameter and moments against the composed update's, largest gap.
    fn gap<const D: usize>(shape: [usize; D], dtype: DType, decay: f64, device: &Device) -> f32 {
        let factors = Tensor::<1>::from_floats([1e-3, 0.1, 0.001, 0.5], device);
        let run = |fused: bool| {
            let [param, grad, first, second] = [1, 2, 3, 4].map(|seed| {
                let t = filled(shape, seed, device).cast(dtype);
                // Second moments are never negative.
                if seed == 4 { t.abs() } else { t }
            });
            let args = (
                param.into_dispatch(),
                grad.into_dispatch(),
                first.into_dispatch(),
                second.into_dispatch(),
                factors.clone().into_dispatch(),
            );
            let (p, m, v) = if fused {
                <Dispatch as AdamWUpdate>::adamw_update(
                    args.0, args.1, args.2, args.3, args.4, 0.9, 0.95, 1e-8, decay,
                )
            } else {
                let hyper = Hyperparameters {
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: decay,
                };
                composed_update::<Dispatch>(args.0, args.1, args.2, args.3, args.4, hyper)
            };
            [p, m, v].map(|t| values(Tensor::<D>::from_dispatch(t)))
        };
        let (kernel, composed) = (run(true), run(false));
        kernel
            .iter()
            .zip(&composed)
            .flat_map(|(a, b)| a.iter().zip(b))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs() / b.abs().max(1.0)))
    }

    #[test]
    fn the_kernel_updates_as_the_composed_adamw_does() {
        let device = andes_model::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
            for decay in [0.0, 0.1] {
                let gaps = [
                    gap([1000], dtype, decay, &device),
                    gap([37, 129], dtype, decay, &device),
                    gap([256, 1024], dtype, decay, &device),
                ];
                eprintln!("{dtype:?} decay {decay}: {gaps:?}");
                if gaps.iter().any(|&g| !(g <= tolerance)) {
                    failures.push(format!("{dtype:?} decay {decay}: {gaps:?}"));
                }
            }
        }
        assert!(failures.is_empty(), "kernel differs: {failures:?}");
    }
}
