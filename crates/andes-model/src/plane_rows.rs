//! What the kernels that give each row of a tensor to one plane (warp) share: the launch
//! geometry and the indexing of a row through a tensor's own strides (attention's softmax,
//! `sdpa/cube.rs`; RMSNorm, `rms_norm/cube.rs`). A plane's units stride the row together, so
//! reads are coalesced, and a row's reductions are plane reductions, with no shared memory.

use burn_cubecl::ops::numeric::empty_device_dtype;
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
/// Every tensor is read through its own strides: CubeCL may pad a tensor's rows.
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
        start += (coordinate % tensor.shape(dim)) * tensor.stride(dim);
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

/// A new tensor of `tensor`'s shape, dtype and device (its own strides: CubeCL chooses them).
pub fn empty_like(tensor: &CubeTensor) -> CubeTensor {
    empty_device_dtype(
        tensor.client.clone(),
        tensor.device.clone(),
        tensor.meta.shape.clone(),
        tensor.dtype,
    )
}
