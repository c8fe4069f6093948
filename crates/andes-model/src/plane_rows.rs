//! What the kernels that give each row of a tensor to one plane (warp) share: the launch
//! geometry and the indexing of a row through a tensor's own strides (attention's softmax,
//! `sdpa/cube.rs`; RMSNorm, `rms_norm/cube.rs`). A plane's units stride the row together, so
//! reads are coalesced, and a row's reductions are plane reductions, with no shared memory.
//! Also [`widest_vector`]: the vectors the norm-rotation kernels and the LM head's read rows in.

use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::ops::permute;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Rows (planes) a cube takes.
pub const ROWS_PER_CUBE: u32 = 8;

/// The row this unit's plane owns: planes are numbered across the cubes, [`ROWS_PER_CUBE`] a
/// cube (`row_launch`'s geometry).
#[cube]
pub fn plane_row() -> usize {
    CUBE_POS * CUBE_DIM_Y as usize + UNIT_POS_Y as usize
}

/// Where row `row` of `like` (rows counted over every dimension but the last) starts in
/// `tensor`, which has `like`'s shape or broadcasts to it (a dimension of size 1 stays at 0).
/// Every tensor is read through its own strides: CubeCL may pad a tensor's rows. The
/// coordinates are `like`'s, the same for every tensor a kernel indexes, so the compiler
/// divides once a row; a broadcast dimension is a select, not another division.
#[cube]
pub fn row_start<L: CubePrimitive, T: CubePrimitive>(
    like: &Tensor<L>,
    tensor: &Tensor<T>,
    row: usize,
) -> usize {
    let rank = like.rank();
    let mut rest = row;
    let mut start = 0;
    for step in 1..rank {
        let dim = rank - 1 - step;
        let coordinate = rest % like.shape(dim);
        rest /= like.shape(dim);
        start += select(tensor.shape(dim) == 1, 0usize, coordinate) * tensor.stride(dim);
    }
    start
}

/// The launch geometry of a row kernel over `tensor` (a plane a row, [`ROWS_PER_CUBE`] rows a
/// cube) and its number of rows (every dimension but the last); `None` where the device's
/// planes have no fixed width (the row would not be one plane) or planes are not supported.
pub fn row_launch(tensor: &CubeTensor) -> Option<(CubeCount, CubeDim, u32)> {
    let hardware = &tensor.client.properties().hardware;
    let plane = hardware.plane_size_max;
    if plane != hardware.plane_size_min || plane < 2 {
        return None;
    }
    let shape = &tensor.meta.shape;
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let cubes = rows.div_ceil(ROWS_PER_CUBE as usize) as u32;
    Some((
        CubeCount::new_1d(cubes),
        CubeDim::new_2d(plane, ROWS_PER_CUBE),
        rows as u32,
    ))
}

/// The widest index type any of `tensors` needs (32-bit indices where every one fits).
pub fn address_type(tensors: &[&CubeTensor]) -> AddressType {
    tensors
        .iter()
        .map(|tensor| tensor.required_address_type())
        .max()
        .unwrap_or_default()
}

/// The widest vector (8, 4, 2 or 1 elements) every one of `tensors` can be read in along its
/// last dimension, and that divides `run`, the elements a kernel takes in whole vectors from
/// where it starts (half a head; a row): contiguous along the last dimension, every other
/// stride and the last dimension multiples of it. (A view's offset is a multiple of the memory
/// alignment, or CubeCL copies the slice.)
pub fn widest_vector(tensors: &[&CubeTensor], run: usize) -> usize {
    let fits = |tensor: &CubeTensor, vector: usize| {
        let (shape, strides) = (tensor.meta.shape(), tensor.meta.strides());
        let last = strides.len() - 1;
        strides[last] == 1
            && shape[last] % vector == 0
            && strides[..last].iter().all(|s| s % vector == 0)
    };
    [8, 4, 2]
        .into_iter()
        .find(|&vector| run % vector == 0 && tensors.iter().all(|t| fits(t, vector)))
        .unwrap_or(1)
}

/// A new tensor of `tensor`'s shape, dtype and device (its own strides: CubeCL chooses them).
pub fn empty_like(tensor: &CubeTensor) -> CubeTensor {
    empty_device_dtype(
        tensor.client.clone(),
        tensor.device.clone(),
        tensor.meta.shape.clone(),
        tensor.dtype,
    )
}

/// A new tensor of `tensor`'s shape, dtype and device whose memory runs in `tensor`'s order of
/// dimensions (its strides, largest first), without gaps: written by a row kernel over a view
/// (the heads of a projection, `[b, s, h, d]` seen as `[b, h, s, d]`), it is a view of the same
/// kind, so the producer's reshape of a gradient back to its own layout is free.
pub fn empty_in_order_of(tensor: &CubeTensor) -> CubeTensor {
    let shape = &tensor.meta.shape;
    let strides = tensor.meta.strides();
    let rank = shape.num_dims();
    let mut order: Vec<usize> = (0..rank).collect();
    order.sort_by_key(|&dim| std::cmp::Reverse(strides[dim]));
    let laid_out: Vec<usize> = order.iter().map(|&dim| shape[dim]).collect();
    let memory = empty_device_dtype(
        tensor.client.clone(),
        tensor.device.clone(),
        laid_out.into(),
        tensor.dtype,
    );
    let mut axes = vec![0; rank];
    for (position, &dim) in order.iter().enumerate() {
        axes[dim] = position;
    }
    permute(memory, &axes)
}
