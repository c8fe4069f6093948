//! Gradient buckets, as PyTorch DDP forms them: the gradients laid end to end in flat buffers
//! of about `cap` bytes, in reverse order of the forward pass (the order backward produces
//! them), so that a data-parallel step reduces a few large buffers instead of one small tensor
//! per parameter; each buffer is one collective call.

use std::collections::BTreeSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};

/// PyTorch DDP's default `bucket_cap_mb`.
pub const DEFAULT_BUCKET_MB: f64 = 25.0;

/// Where one gradient lies in its bucket.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    id: ParamId,
    dims: Vec<usize>,
    start: usize,
    len: usize,
}

/// Gradients laid end to end in one flat tensor.
#[derive(Debug)]
pub struct Bucket {
    slots: Vec<Slot>,
    /// The gradients, flattened and concatenated.
    pub values: Tensor<1>,
}

impl Bucket {
    /// Elements of the bucket.
    pub fn len(&self) -> usize {
        self.slots.last().map_or(0, |slot| slot.start + slot.len)
    }

    /// Whether the bucket holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes the gradients of the parameters of `model` named in `with_gradients` out of `grads`
/// (zeros where `grads` lacks one, so every replica fills the same buckets) and lays them in
/// buckets of at most `cap_bytes` each (a larger gradient has a bucket of its own), last
/// parameter first; a bucket holds one dtype.
pub fn into_buckets<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    with_gradients: &BTreeSet<ParamId>,
    cap_bytes: usize,
) -> Vec<Bucket> {
    struct Take<'a> {
        grads: &'a mut GradientsParams,
        with_gradients: &'a BTreeSet<ParamId>,
        taken: Vec<(ParamId, Vec<usize>, Tensor<1>)>,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !self.with_gradients.contains(&param.id) {
                return;
            }
            let grad = self
                .grads
                .remove::<D>(param.id)
                .unwrap_or_else(|| param.val().inner().zeros_like());
            let dims = grad.dims().to_vec();
            let len: usize = dims.iter().product();
            self.taken.push((param.id, dims, grad.reshape([len])));
        }
    }
    let mut take = Take {
        grads,
        with_gradients,
        taken: Vec::new(),
    };
    model.visit(&mut take);
    let mut buckets = Vec::new();
    let mut parts: Vec<Tensor<1>> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut bytes = 0;
    let mut dtype: Option<DType> = None;
    let close = |parts: &mut Vec<Tensor<1>>, slots: &mut Vec<Slot>, buckets: &mut Vec<Bucket>| {
        if !parts.is_empty() {
            buckets.push(Bucket {
                slots: std::mem::take(slots),
                values: Tensor::cat(std::mem::take(parts), 0),
            });
        }
    };
    for (id, dims, flat) in take.taken.into_iter().rev() {
        let len = flat.dims()[0];
        let size = len * flat.dtype().size();
        if !parts.is_empty() && (bytes + size > cap_bytes || dtype != Some(flat.dtype())) {
            close(&mut parts, &mut slots, &mut buckets);
            bytes = 0;
        }
        let start = slots.last().map_or(0, |slot: &Slot| slot.start + slot.len);
        dtype = Some(flat.dtype());
        slots.push(Slot {
            id,
            dims,
            start,
            len,
        });
        parts.push(flat);
        bytes += size;
    }
    close(&mut parts, &mut slots, &mut buckets);
    buckets
}

/// Puts every bucket's gradients back into `grads`, each in its parameter's shape.
pub fn from_buckets<M: Module>(model: &M, grads: &mut GradientsParams, buckets: Vec<Bucket>) {
    struct Put<'a> {
        grads: &'a mut GradientsParams,
        parts: std::collections::HashMap<ParamId, (Vec<usize>, Tensor<1>)>,
    }
    impl ModuleVisitor for Put<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((dims, flat)) = self.parts.remove(&param.id) {
                let shape: [usize; D] = dims.try_into().expect("a parameter keeps its rank");
                self.grads.register(param.id, flat.reshape(shape));
            }
        }
    }
    let mut parts = std::collections::HashMap::new();
    for bucket in buckets {
        for slot in bucket.slots {
            let flat = bucket.values.clone().narrow(0, slot.start, slot.len);
            parts.insert(slot.id, (slot.dims, flat));
        }
    }
    model.visit(&mut Put { grads, parts });
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    use super::*;

    #[derive(Module, Debug)]
    struct Net {
        first: Linear,
        second: Linear,
        third: Linear,
    }

    fn net(device: &Device) -> Net {
        Net {
            first: LinearConfig::new(8, 16).init(device),
            second: LinearConfig::new(16, 16).init(device),
            third: LinearConfig::new(16, 4).init(device),
        }
    }

    fn all_ids(net: &Net) -> BTreeSet<ParamId> {
        struct Ids(BTreeSet<ParamId>);
        impl ModuleVisitor for Ids {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.insert(param.id);
            }
        }
        let mut ids = Ids(BTreeSet::new());
        net.visit(&mut ids);
        ids.0
    }

    #[test]
    fn buckets_fill_last_parameter_first_and_give_every_gradient_back() {
        let device = Device::flex().autodiff();
        let net = net(&device);
        let x = Tensor::<2>::ones([2, 8], &device);
        let loss = net
            .third
            .forward(net.second.forward(net.first.forward(x)))
            .sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        let original: Vec<Vec<f32>> = [&net.first.weight, &net.second.weight, &net.third.weight]
            .iter()
            .map(|param| {
                grads
                    .get::<2>(param.id)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            })
            .collect();
        let ids = all_ids(&net);
        // Last first, 4 bytes an element: third (bias 4, weight 64) and second's bias 16 fill
        // 336 bytes, second's weight (256) would pass 1200; it and first's bias (16) fill
        // 1088; first's weight (128) opens the third bucket.
        let buckets = into_buckets(&net, &mut grads, &ids, 1200);
        let sizes: Vec<usize> = buckets.iter().map(Bucket::len).collect();
        assert_eq!(sizes, [84, 272, 128]);
        assert_eq!(buckets[0].slots[0].id, net.third.bias.as_ref().unwrap().id);
        from_buckets(&net, &mut grads, buckets);
        for (param, expected) in [&net.first.weight, &net.second.weight, &net.third.weight]
            .iter()
            .zip(original)
        {
            let back = grads.get::<2>(param.id).unwrap();
            assert_eq!(back.into_data().try_to_vec::<f32>().unwrap(), expected);
        }
    }
}
