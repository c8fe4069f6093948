//! How fast the decoding products stream a packed format through this CPU: the rate (GB/s of
//! codes, scales and zero points) at which `PackedMatrix::multiply` takes one vector (or
//! `VECTORS`, as a prompt or a speculative block does) through `MATRICES` distinct
//! `ROWS × COLS` matrices, best of many passes. Many matrices put the
//! weights past the caches, as decoding a model does; one keeps them in cache, which leaves
//! the kernel's own cost. The threads are rayon's (`RAYON_NUM_THREADS`); the products take
//! int8-rounded inputs unless `ANDES_F32_PRODUCTS=1`, and `ANDES_DECODE_ROWS=one|four` picks
//! the rows a pass as in `andes generate`.
//!
//! `cargo run --release -p andes-runtime --example product_speed -- int4-g128-asym 3072 1024 64 [VECTORS]`

use andes_runtime::packed::PackedMatrix;
use andes_runtime::throughput::{best_pass_seconds, test_matrix};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: product_speed FORMAT ROWS COLS MATRICES [VECTORS] (e.g. int4-g128-asym 3072 1024 64)";
    let (format, rows, cols, matrices, vectors) = match args.as_slice() {
        [format, rows, cols, matrices] => (format, rows, cols, matrices, "1"),
        [format, rows, cols, matrices, vectors] => (format, rows, cols, matrices, &vectors[..]),
        _ => return Err(usage.into()),
    };
    let vectors: usize = vectors.parse()?;
    let (rows, cols, matrices): (usize, usize, usize) =
        (rows.parse()?, cols.parse()?, matrices.parse()?);
    let int8_activations = std::env::var("ANDES_F32_PRODUCTS").as_deref() != Ok("1");
    let packed = (0..matrices)
        .map(|_| test_matrix(format, rows, cols, int8_activations))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes: usize = packed.iter().map(PackedMatrix::bytes).sum();
    let best = best_pass_seconds(&packed, vectors, 15 + 1000 / matrices);
    println!(
        "{format} {rows}x{cols} x{matrices}, {vectors} vectors: {:.1} MB, best pass {:.3} ms, {:.2} GB/s",
        bytes as f64 / 1e6,
        best * 1e3,
        bytes as f64 / best / 1e9
    );
    Ok(())
}
