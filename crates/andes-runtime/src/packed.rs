//! Matrix products straight from a package's packed codes.
//!
//! A [`PackedMatrix`] keeps the codes exactly as the package stores them (row-major, each row
//! on a byte boundary, `docs/quant-formats.md`): those bytes are what a decoding step reads,
//! so their size is the memory traffic the runtime pays. Repacking at load only widens the
//! f16 scales and the packed zero points to f32 (a few percent of the bytes) and builds a
//! per-byte decoding table for the width.
//!
//! A product takes one row at a time: the row's codes are decoded into an f32 scratch row
//! (one table lookup per byte: 8 codes for int1, 5 for ternary, 4 for int2, 2 for int4, 1
//! for int8; int3 decodes 8 codes from every 3 bytes), then each group contributes
//! `scale · (Σ codeᵢ·xᵢ − zero · Σ xᵢ)`, where `Σ xᵢ` over the group is computed once per
//! input vector for all rows. The scratch row stays in L1 and the dot products run over
//! contiguous f32 in eight independent lanes, which the compiler vectorizes. Rows are split
//! across threads; a product of several vectors (prefill, a speculative block) decodes each
//! row once for all of them.

use std::borrow::Cow;
use std::sync::Mutex;

use andes_quant::{Bits, QuantizedTensor};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::int8_inputs::{Int8Inputs, Layout};
use crate::team;

/// Rows given to one task: enough work to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 32;

/// How a row's bytes become codes: a table of the codes of each of the 256 byte values, `K`
/// per byte (a fixed-size copy per byte), or int3's eight codes in every three bytes.
#[derive(Debug, Clone)]
enum Codes {
    Eight(Vec<[f32; 8]>),
    /// Ternary, with each byte's five codes also as the low bytes of a `u64` (the fused path
    /// decodes a row to bytes, eight bytes a store).
    Five(Vec<[f32; 5]>, Box<[u64; 256]>),
    Four(Vec<[f32; 4]>),
    Two(Vec<[f32; 2]>),
    One(Vec<[f32; 1]>),
    Int3,
}

/// A `[rows, cols]` weight matrix to multiply vectors by: packed codes with their groups'
/// scales and zero points, or plain f32 (an unquantized model).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    weights: Weights,
    /// Multiply in integers against inputs rounded to int8 where a kernel can
    /// ([`PackedMatrix::set_int8_activations`]).
    int8_activations: bool,
}

#[derive(Debug, Clone)]
enum Weights {
    Packed(Packed),
    Float(Vec<f32>),
    Half(Vec<f16>),
}

/// Packed codes with their groups' scales and zero points, widened to f32.
#[derive(Debug, Clone)]
struct Packed {
    codes: Codes,
    /// The codes row by row, or in [`Tiles`]' order where `tiles` is set.
    bytes: Vec<u8>,
    row_bytes: usize,
    group: usize,
    groups: usize,
    scales: Vec<f32>,
    zeros: Vec<f32>,
    /// The scales of rows laid out sixteen rows at a time, where their codes are.
    tiles: Option<Tiles>,
}

/// Rows of int8, int4, int2 or int1 codes interleaved sixteen at a time for the integer
/// kernel, so that one `vpdpbusd` takes four codes of each of sixteen rows (one plane of four
/// bytes) against four inputs broadcast: a tile's sixteen outputs come out in one register,
/// with no sum across lanes a row (a row a pass took 0.09 ms for a 3072 × 1024 int4 product
/// in cache on one thread, 3.7 ns a block of 128 codes, most of it in planes, scales and
/// sums; the tiles run the products 1.2–2.5× faster on one thread, int8's 2.3×).
/// Tile `t` holds rows `16t..16t + 16`: for each chunk of 4 bytes of a row, the chunk of
/// every row in turn, 64 bytes. The codes are reordered in place; the scales are kept in
/// both orders, here the tiles' scales and `scale·zero` terms, `[tile][group][16]` (two
/// floats a group: 16 bytes a row of 1024 int4 codes in groups of 128, against its 512).
#[derive(Debug, Clone)]
struct Tiles {
    scales: Vec<f32>,
    offsets: Offsets,
}

/// The `scale·zero` terms of [`Tiles`]: one zero point for every group (symmetric formats
/// store none and take their grid's middle) needs no array of its own, the tile's scales
/// times it, which spares a decoding step 32 of the 576 bytes it reads a row of 1024 int4
/// codes in groups of 128.
#[derive(Debug, Clone)]
enum Offsets {
    OneZero(f32),
    PerGroup(Vec<f32>),
}

impl Tiles {
    /// Where byte `j` of row `r` lies among tiles of rows of `row_bytes` bytes.
    fn index(r: usize, j: usize, row_bytes: usize) -> usize {
        (r / 16) * 16 * row_bytes + (j / 4) * 64 + (r % 16) * 4 + j % 4
    }
}

impl Packed {
    /// Ternary codes, `rows` rows of `cols`, packed four a byte as int2 packs them; scales
    /// and zero points unchanged.
    fn at_two_bits(&self, rows: usize, cols: usize) -> Packed {
        let row_bytes = cols.div_ceil(4);
        let mut bytes = vec![0u8; rows * row_bytes];
        let mut decoded = vec![0u8; 5 * self.row_bytes + 3];
        for (r, packed) in bytes.chunks_mut(row_bytes).enumerate() {
            self.codes.decode_bytes(self.row(r).0, &mut decoded);
            for (i, &code) in decoded[..cols].iter().enumerate() {
                packed[i / 4] |= code << (2 * (i % 4));
            }
        }
        Packed {
            codes: Codes::two_bits(),
            bytes,
            row_bytes,
            scales: self.scales.clone(),
            zeros: self.zeros.clone(),
            tiles: None,
            ..*self
        }
    }

    /// Row `r`'s packed bytes and its groups, where the codes are row by row.
    fn row(&self, r: usize) -> (&[u8], Groups<'_>) {
        debug_assert!(
            self.tiles.is_none(),
            "rows in tiles have no bytes of their own"
        );
        (
            &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes],
            self.groups_of(r),
        )
    }

    /// Row `r`'s groups.
    fn groups_of(&self, r: usize) -> Groups<'_> {
        let grid = r * self.groups..(r + 1) * self.groups;
        Groups {
            group: self.group,
            scales: &self.scales[grid.clone()],
            zeros: &self.zeros[grid],
        }
    }

    /// Row `r`'s packed bytes, gathered from the tiles where the codes are in them.
    fn row_codes(&self, r: usize) -> Cow<'_, [u8]> {
        match self.tiles {
            None => Cow::Borrowed(self.row(r).0),
            Some(_) => Cow::Owned(
                (0..self.row_bytes)
                    .map(|j| self.bytes[Tiles::index(r, j, self.row_bytes)])
                    .collect(),
            ),
        }
    }

    /// Reorders `rows` rows of `cols` codes (whole blocks of 128, whole tiles) into
    /// [`Tiles`], or back to row by row.
    fn set_tiles(&mut self, on: bool, rows: usize, cols: usize) {
        if on == self.tiles.is_some() {
            return;
        }
        assert_eq!(
            self.row_bytes * self.codes.per_byte().expect("codes of whole bits"),
            cols,
            "rows without padding"
        );
        // A tile's sixteen rows span the same bytes in both orders: each is reordered
        // through a copy of its own, not of the matrix.
        let span = 16 * self.row_bytes;
        let mut copy = vec![0u8; span];
        for bytes in self.bytes[..rows * self.row_bytes].chunks_exact_mut(span) {
            copy.copy_from_slice(bytes);
            for lane in 0..16 {
                for j in 0..self.row_bytes {
                    let row_wise = lane * self.row_bytes + j;
                    let tiled = Tiles::index(lane, j, self.row_bytes);
                    if on {
                        bytes[tiled] = copy[row_wise];
                    } else {
                        bytes[row_wise] = copy[tiled];
                    }
                }
            }
        }
        self.tiles = on.then(|| {
            let groups = self.groups;
            // A row-major `[rows, groups]` array in the tiles' order.
            let tiled = |value: &dyn Fn(usize) -> f32| {
                let mut out = vec![0f32; rows * groups];
                for r in 0..rows {
                    for g in 0..groups {
                        out[((r / 16) * groups + g) * 16 + r % 16] = value(r * groups + g);
                    }
                }
                out
            };
            let zeros = &self.zeros[..rows * groups];
            let one_zero = zeros
                .first()
                .copied()
                .filter(|&zero| zeros.iter().all(|&z| z == zero));
            let offsets = match one_zero {
                Some(zero) => Offsets::OneZero(zero),
                None => Offsets::PerGroup(tiled(&|i| self.scales[i] * self.zeros[i])),
            };
            Tiles {
                scales: tiled(&|i| self.scales[i]),
                offsets,
            }
        });
    }
}

/// One row's groups: their length, scales and zero points.
#[derive(Clone, Copy)]
struct Groups<'a> {
    group: usize,
    scales: &'a [f32],
    zeros: &'a [f32],
}

impl Groups<'_> {
    /// `Σ_g scale_g·zero_g·Σ_{i∈g} xᵢ` from a vector's group sums: what the zero points take
    /// off the row's product with it. Summed in eight independent lanes (vectorized by the
    /// compiler), then the tail: a row's term is on decoding's path once a row.
    #[inline]
    fn zero_points_term(&self, sums: &[f32]) -> f32 {
        let (scales, zeros, sums) = (self.scales, self.zeros, &sums[..self.scales.len()]);
        let whole = scales.len() / 8 * 8;
        let mut lanes = [0.0f32; 8];
        let chunks = scales[..whole].chunks_exact(8).zip(zeros.chunks_exact(8));
        for ((scales, zeros), sums) in chunks.zip(sums.chunks_exact(8)) {
            for (k, lane) in lanes.iter_mut().enumerate() {
                *lane += scales[k] * zeros[k] * sums[k];
            }
        }
        let tail = (whole..scales.len()).map(|g| scales[g] * zeros[g] * sums[g]);
        lanes.iter().sum::<f32>() + tail.sum::<f32>()
    }
}

impl PackedMatrix {
    /// The package's tensor, codes kept packed.
    pub fn from_quantized(tensor: &QuantizedTensor) -> Self {
        let shape = tensor.shape();
        let format = tensor.format();
        let bits = format.bits();
        let codes = match bits {
            Bits::Int3 => Codes::Int3,
            Bits::Ternary => {
                let trit = |byte: u32, i: usize| (byte / 3u32.pow(i as u32)) % 3;
                let bytes = Box::new(std::array::from_fn(|byte| {
                    (0..5).fold(0u64, |word, i| {
                        word | u64::from(trit(byte as u32, i)) << (8 * i)
                    })
                }));
                Codes::Five(table(trit), bytes)
            }
            Bits::Int1 => Codes::Eight(table(|byte, i| (byte >> i) & 1)),
            Bits::Int2 => Codes::two_bits(),
            Bits::Int4 => Codes::Two(table(|byte, i| (byte >> (4 * i)) & 15)),
            Bits::Int8 => Codes::One(table(|byte, _| byte)),
        };
        let groups = tensor.groups_per_row();
        PackedMatrix {
            rows: shape.out_features,
            cols: shape.in_features,
            int8_activations: false,
            weights: Weights::Packed(Packed {
                codes,
                row_bytes: tensor.packed().len() / shape.out_features,
                bytes: tensor.packed().to_vec(),
                group: format.granularity().group_len(shape.in_features),
                groups,
                scales: tensor.scales().iter().map(|s| f32::from(*s)).collect(),
                zeros: tensor.zero_points(),
                tiles: None,
            }),
        }
    }

    /// An unquantized `[rows, cols]` row-major matrix.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        PackedMatrix {
            rows,
            cols,
            weights: Weights::Float(values),
            int8_activations: false,
        }
    }

    /// An unquantized `[rows, cols]` row-major matrix kept in f16 (a package's float
    /// tensors at the target's precision): half the bytes of f32, widened row by row.
    pub fn from_f16(rows: usize, cols: usize, values: Vec<f16>) -> Self {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        PackedMatrix {
            rows,
            cols,
            weights: Weights::Half(values),
            int8_activations: false,
        }
    }

    /// Row `r` in f32 (an embedding lookup); a packed row dequantized as
    /// `andes_quant::dequantize` does, `scale · (code − zero)`.
    pub fn row(&self, r: usize) -> Vec<f32> {
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.weights {
            Weights::Float(values) => values[span].to_vec(),
            Weights::Half(values) => values[span].to_f32_vec(),
            Weights::Packed(packed) => {
                let (bytes, groups) = (packed.row_codes(r), packed.groups_of(r));
                let mut row = vec![0.0f32; self.cols.next_multiple_of(8) + 8];
                packed.codes.decode(&bytes, &mut row);
                row.truncate(self.cols);
                let grid = groups.scales.iter().zip(groups.zeros);
                for (values, (scale, zero)) in row.chunks_mut(groups.group).zip(grid) {
                    values.iter_mut().for_each(|v| *v = scale * (*v - zero));
                }
                row
            }
        }
    }

    /// Multiplies in integer arithmetic against inputs rounded to int8 in blocks of 128 or 64
    /// (`crate::int8_inputs`, llama.cpp's scheme) where this CPU and these weights allow it:
    /// codes of one to eight bits and ternary, whose groups are whole blocks, on AVX-512
    /// VNNI. Faster, but not the f32 products: a greedy decode may differ where two tokens
    /// nearly tie.
    ///
    /// Ternary codes (five a byte, in base 3) have no integer kernel of their own: where the
    /// integer kernels run (groups of whole blocks), their rows are repacked here at two bits
    /// a code, int2's layout, so a step reads a quarter more of their bytes but decodes none
    /// of them (`perf` put 16% of a 1.8-bpw decode step in the function that decoded them).
    pub fn set_int8_activations(&mut self, on: bool) {
        self.int8_activations = on;
        if let (true, Weights::Packed(packed)) = (on && has_int8_kernels(), &mut self.weights)
            && matches!(packed.codes, Codes::Five(..))
            && Layout::for_rows(4, packed.group, self.cols).is_some()
        {
            *packed = packed.at_two_bits(self.rows, self.cols);
        }
        if let Weights::Packed(packed) = &mut self.weights
            && packed.codes.per_byte().is_some()
            && packed.group.is_multiple_of(128)
            && self.cols.is_multiple_of(128)
            && self.rows.is_multiple_of(16)
        {
            packed.set_tiles(on && has_int8_kernels(), self.rows, self.cols);
        }
    }

    /// The layout of the rounded inputs the integer kernel of these weights takes, where
    /// [`PackedMatrix::set_int8_activations`] asked for one and one runs here: codes of one
    /// to eight bits (ternary as its decoded bytes) whose groups are whole blocks of 64.
    fn int8_layout(&self) -> Option<Layout> {
        let Weights::Packed(packed) = &self.weights else {
            return None;
        };
        let layout = Layout::for_rows(packed.codes.per_byte()?, packed.group, self.cols)?;
        (self.int8_activations && has_int8_kernels()).then_some(layout)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes a product reads: the packed codes, scales and zero points as stored here (tiles
    /// with one zero point read no zero points).
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Packed(packed) => {
                let zeros = match &packed.tiles {
                    Some(Tiles {
                        offsets: Offsets::OneZero(_),
                        ..
                    }) => 0,
                    _ => packed.zeros.len(),
                };
                packed.bytes.len() + 4 * (packed.scales.len() + zeros)
            }
            Weights::Float(values) => 4 * values.len(),
            Weights::Half(values) => 2 * values.len(),
        }
    }

    /// `y = W·x` for each of the `x.len() / cols` vectors of `x` (row-major), appended as
    /// rows of `rows` to the returned vector.
    pub fn multiply(&self, x: &[f32]) -> Vec<f32> {
        let mut outputs = Self::multiply_each(&[self], x);
        outputs.pop().expect("one matrix, one output")
    }

    /// [`PackedMatrix::multiply`] of every matrix of `matrices` (all of one input width) with
    /// the same `x`, in one pass over the threads: the rows of all are dealt out together,
    /// so the threads wake once for q, k and v (or gate and up) instead of once a matrix,
    /// and the inputs' group sums and int8 rounding are made once for the matrices that
    /// share their group and rounding layout.
    pub fn multiply_each(matrices: &[&PackedMatrix], x: &[f32]) -> Vec<Vec<f32>> {
        Self::products(matrices, x, four_rows_a_pass())
    }

    /// [`PackedMatrix::multiply_each`], decoding's integer products four rows a pass or one
    /// as `four_rows` says.
    fn products(matrices: &[&PackedMatrix], x: &[f32], four_rows: bool) -> Vec<Vec<f32>> {
        let cols = matrices[0].cols;
        let count = x.len() / cols;
        assert_eq!(count * cols, x.len(), "inputs of {cols} features");
        assert!(
            matrices.iter().all(|m| m.cols == cols),
            "matrices of one input width"
        );
        // The prepared inputs each matrix reads, made once for each distinct (group, layout).
        let mut prepared: Vec<PreparedInputs> = Vec::new();
        let mut inputs_of = Vec::with_capacity(matrices.len());
        for matrix in matrices {
            let group = match &matrix.weights {
                Weights::Packed(packed) => Some(packed.group),
                _ => None,
            };
            let layout = matrix.int8_layout();
            let index = match prepared
                .iter()
                .position(|p| (p.group, p.layout) == (group, layout))
            {
                Some(index) => index,
                None => {
                    prepared.push(PreparedInputs::of(x, cols, group, layout));
                    prepared.len() - 1
                }
            };
            inputs_of.push(index);
        }
        // outputs[r·count + m] of each matrix: row-major by output row, so each task owns
        // whole rows.
        let mut outputs: Vec<Vec<f32>> = matrices
            .iter()
            .map(|m| vec![0.0f32; m.rows * count])
            .collect();
        // Each task's matrix, first row and outputs (a lock taken once, by its task).
        let tasks: Vec<Mutex<(usize, usize, &mut [f32])>> = outputs
            .iter_mut()
            .enumerate()
            .flat_map(|(which, out)| {
                out.chunks_mut(ROWS_PER_TASK * count)
                    .enumerate()
                    .map(move |(task, out)| Mutex::new((which, task * ROWS_PER_TASK, out)))
            })
            .collect();
        team::for_each(tasks.len(), &|task| {
            let mut task = tasks[task].lock().expect("a task runs once");
            let (which, first, ref mut out) = *task;
            let matrix = matrices[which];
            let inputs = &prepared[inputs_of[which]];
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                unsafe { matrix.rows_avx2(x, inputs, first, out, four_rows) };
                return;
            }
            matrix.rows_products::<false>(x, inputs, first, out, four_rows);
        });
        if count == 1 {
            return outputs;
        }
        matrices
            .iter()
            .zip(outputs)
            .map(|(matrix, outputs)| {
                let mut by_vector = vec![0.0f32; outputs.len()];
                for (r, row) in outputs.chunks(count).enumerate() {
                    for (m, &y) in row.iter().enumerate() {
                        by_vector[m * matrix.rows + r] = y;
                    }
                }
                by_vector
            })
            .collect()
    }

    /// [`PackedMatrix::rows_products`] compiled for AVX2 with fused multiply-adds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(
        &self,
        x: &[f32],
        inputs: &PreparedInputs,
        first: usize,
        out: &mut [f32],
        four_rows: bool,
    ) {
        self.rows_products::<true>(x, inputs, first, out, four_rows);
    }

    /// The products of rows `first..` (as many as `out` holds, `count` outputs each) with
    /// every vector of `x` (or of its int8 roundings in `inputs`, where made), each row
    /// decoded at most once into the scratch; one vector's integer products four rows a pass
    /// where `four_rows`.
    #[inline(always)]
    fn rows_products<const FMA: bool>(
        &self,
        x: &[f32],
        inputs: &PreparedInputs,
        first: usize,
        out: &mut [f32],
        four_rows: bool,
    ) {
        let (sums, int8) = (&inputs.sums[..], &inputs.int8[..]);
        let cols = self.cols;
        let count = x.len() / cols;
        #[cfg(target_arch = "x86_64")]
        if let (true, Weights::Packed(packed)) = (FMA, &self.weights)
            && !int8.is_empty()
            && matches!(packed.codes.fused(), Some(kind) if kind != fused::Kind::Ternary)
        {
            // Integer products: the task's rows in one call.
            let task = Int8Task {
                packed,
                first,
                inputs: int8,
                sums,
                four_rows,
            };
            // SAFETY: FMA is only set on the AVX2 path; `int8` is only filled where
            // `int8_layout` found the integer kernels run here.
            unsafe { fused::int8_task(&task, out) };
            return;
        }
        // A row decoded to f32, or to one code a byte (ternary), for the kernels below.
        let mut row = vec![0.0f32; cols.next_multiple_of(8) + 8];
        let mut codes = vec![0u8; cols + 8];
        for (i, out) in out.chunks_mut(count).enumerate() {
            let r = first + i;
            match &self.weights {
                Weights::Float(values) => {
                    let weights = &values[r * cols..(r + 1) * cols];
                    for (m, y) in out.iter_mut().enumerate() {
                        *y = dot::<FMA>(weights, &x[m * cols..(m + 1) * cols]);
                    }
                }
                Weights::Half(values) => {
                    let halves = &values[r * cols..(r + 1) * cols];
                    #[cfg(target_arch = "x86_64")]
                    if FMA && has_f16c() {
                        for (m, y) in out.iter_mut().enumerate() {
                            // SAFETY: FMA is only set on the AVX2 path; F16C checked.
                            *y = unsafe { fused::f16_dot(halves, &x[m * cols..(m + 1) * cols]) };
                        }
                        continue;
                    }
                    halves.convert_to_f32_slice(&mut row[..cols]);
                    for (m, y) in out.iter_mut().enumerate() {
                        *y = dot::<FMA>(&row[..cols], &x[m * cols..(m + 1) * cols]);
                    }
                }
                Weights::Packed(packed) => {
                    let (bytes, groups) = packed.row(r);
                    #[cfg(target_arch = "x86_64")]
                    if let (true, Some(kind)) = (FMA, packed.codes.fused()) {
                        let source = if kind == fused::Kind::Ternary {
                            packed.codes.decode_bytes(bytes, &mut codes);
                            &codes[..]
                        } else {
                            bytes
                        };
                        // SAFETY: FMA is only set on the AVX2 path (`rows_avx2`); `int8` is
                        // only filled where `int8_layout` found its kernel runs here.
                        unsafe { fused::rows(kind, source, x, sums, &groups, out) };
                        continue;
                    }
                    packed.codes.decode(bytes, &mut row);
                    let (group, count) = (groups.group, groups.scales.len());
                    for (m, y) in out.iter_mut().enumerate() {
                        let input = &x[m * cols..(m + 1) * cols];
                        let sums = &sums[m * count..(m + 1) * count];
                        let per_group = groups.scales.iter().zip(groups.zeros).zip(sums);
                        let mut total = 0.0f32;
                        for (g, ((scale, zero), sum)) in per_group.enumerate() {
                            let span = g * group..((g + 1) * group).min(cols);
                            let codes_x = dot::<FMA>(&row[span.clone()], &input[span]);
                            total += scale * (codes_x - zero * sum);
                        }
                        *y = total;
                    }
                }
            }
        }
    }
}

/// One task of the integer products: rows `first..` of `packed` (as many as the outputs
/// hold) with each vector rounded to int8 in `inputs` (`sums`, their group sums, for the zero
/// points' term), one vector's four rows a pass where `four_rows`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Int8Task<'a> {
    packed: &'a Packed,
    first: usize,
    inputs: &'a [Int8Inputs],
    sums: &'a [f32],
    four_rows: bool,
}

/// Whether decoding's integer products take four rows a pass (each block of the rounded input
/// loaded once for the four) or one. Which is faster depends on the CPU: four rows were 1.3×
/// faster than one on the Intel Xeon they were written on (single-threaded, one matrix), one
/// row 1.26–1.45× faster than four on an AMD EPYC (whole decodes; BENCHMARKS.md, "Beside
/// llama.cpp's IQ types"), so AMD's CPUs take one row and others four, and
/// `ANDES_DECODE_ROWS=one|four` overrides. The products are the same bit for bit either way.
fn four_rows_a_pass() -> bool {
    static FOUR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUR.get_or_init(|| match std::env::var("ANDES_DECODE_ROWS").as_deref() {
        Ok("one") => false,
        Ok("four") => true,
        _ => !made_by_amd(),
    })
}

/// Whether the CPU's vendor string (`cpuid` leaf 0) is AMD's.
fn made_by_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let id = std::arch::x86_64::__cpuid(0);
        [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes) == [*b"Auth", *b"enti", *b"cAMD"]
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What the products of packed rows read besides the inputs themselves, made once for every
/// matrix of one group size and rounding layout.
struct PreparedInputs {
    /// The group size the sums cover; none for float and half tables.
    group: Option<usize>,
    /// The layout the inputs are rounded to int8 in; none for f32 products.
    layout: Option<Layout>,
    /// Each vector's sums over each group (for the zero points' term).
    sums: Vec<f32>,
    /// Each vector rounded to int8.
    int8: Vec<Int8Inputs>,
}

impl PreparedInputs {
    /// The sums and roundings of the vectors of `x` (`cols` features each).
    fn of(x: &[f32], cols: usize, group: Option<usize>, layout: Option<Layout>) -> Self {
        let sums = match group {
            Some(group) => x
                .chunks(cols)
                .flat_map(|v| v.chunks(group).map(sum_in_lanes))
                .collect(),
            None => Vec::new(),
        };
        let int8 = match layout {
            Some(layout) => x.chunks(cols).map(|v| Int8Inputs::new(v, layout)).collect(),
            None => Vec::new(),
        };
        Self {
            group,
            layout,
            sums,
            int8,
        }
    }
}

/// `Σ values` in eight independent lanes, then the tail: vectorized by the compiler, where a
/// sum in order is one chain of dependent additions (a group sum of 128 inputs for every
/// projection of a token, on its serial path).
fn sum_in_lanes(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Whether the CPU converts f16 in hardware (checked once).
#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    static FEATURE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FEATURE.get_or_init(|| std::arch::is_x86_feature_detected!("f16c"))
}

/// Whether the integer kernels of `--int8-activations` run on this CPU (x86-64 with AVX-512
/// VNNI); elsewhere the products stay f32.
pub fn has_int8_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    return fused::has_avx512_vnni();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU runs AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    static FEATURES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

impl Codes {
    /// Codes a byte where each takes whole bits of it (not ternary's five, nor int3).
    fn per_byte(&self) -> Option<usize> {
        match self {
            Codes::One(_) => Some(1),
            Codes::Two(_) => Some(2),
            Codes::Four(_) => Some(4),
            Codes::Eight(_) => Some(8),
            Codes::Five(..) | Codes::Int3 => None,
        }
    }

    /// int2's codes: four a byte, lowest bits first.
    fn two_bits() -> Codes {
        Codes::Four(table(|byte, i| (byte >> (2 * i)) & 3))
    }

    /// The fused AVX2 kernel for these codes, if there is one (every width but int3).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn fused(&self) -> Option<fused::Kind> {
        match self {
            Codes::Two(_) => Some(fused::Kind::Int4),
            Codes::Four(_) => Some(fused::Kind::Int2),
            Codes::Eight(_) => Some(fused::Kind::Int1),
            Codes::Five(..) => Some(fused::Kind::Ternary),
            Codes::One(_) => Some(fused::Kind::Int8),
            Codes::Int3 => None,
        }
    }

    /// Ternary codes of one packed row as bytes into `out` (at least 5·bytes + 3 long): one
    /// eight-byte store a byte, each overlapping the next.
    #[inline(always)]
    fn decode_bytes(&self, bytes: &[u8], out: &mut [u8]) {
        if let Codes::Five(_, words) = self {
            assert!(out.len() >= 5 * bytes.len() + 3, "room for the last store");
            let dst = out.as_mut_ptr();
            for (j, &byte) in bytes.iter().enumerate() {
                // SAFETY: 5j + 8 ≤ 5·len + 3 ≤ out.len() (asserted above).
                unsafe {
                    (dst.add(5 * j) as *mut u64).write_unaligned(words[byte as usize].to_le())
                };
            }
        }
    }

    /// Decodes one packed row into `out` (at least the row's codes long plus 8).
    #[inline(always)]
    fn decode(&self, bytes: &[u8], out: &mut [f32]) {
        match self {
            Codes::Eight(table) => decode_with(table, bytes, out),
            Codes::Five(table, _) => decode_with(table, bytes, out),
            Codes::Four(table) => decode_with(table, bytes, out),
            Codes::Two(table) => decode_with(table, bytes, out),
            Codes::One(table) => decode_with(table, bytes, out),
            Codes::Int3 => {
                #[cfg(target_arch = "x86_64")]
                if has_avx2_fma() {
                    // SAFETY: AVX2 checked.
                    return unsafe { fused::decode_int3(bytes, out) };
                }
                for (chunk, word) in out.chunks_exact_mut(8).zip(int3_words(bytes)) {
                    for (i, code) in chunk.iter_mut().enumerate() {
                        *code = ((word >> (3 * i)) & 7) as f32;
                    }
                }
            }
        }
    }
}

/// Each three bytes of an int3 row (fewer at its end) as one word of eight 3-bit codes, the
/// first code in the low bits. Whole triples are read as fixed-size words: a loop over a
/// slice of any length a triple cost the decoder half its time.
#[inline(always)]
fn int3_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    let triples = bytes.chunks_exact(3);
    let tail = triples.remainder();
    let word = |t: &[u8]| {
        t.iter()
            .enumerate()
            .fold(0u32, |word, (i, &b)| word | u32::from(b) << (8 * i))
    };
    triples
        .map(|t| u32::from(t[0]) | u32::from(t[1]) << 8 | u32::from(t[2]) << 16)
        .chain((!tail.is_empty()).then(|| word(tail)))
}

/// One fixed-size copy per byte; the last byte's codes may run past the row's codes into
/// the scratch row's padding, which is never read.
#[inline]
fn decode_with<const K: usize>(table: &[[f32; K]], bytes: &[u8], out: &mut [f32]) {
    for (chunk, &byte) in out.chunks_exact_mut(K).zip(bytes) {
        chunk.copy_from_slice(&table[byte as usize]);
    }
}

/// The codes of every byte value, `code(byte, i)` the `i`-th code of `byte`.
fn table<const K: usize>(code: impl Fn(u32, usize) -> u32) -> Vec<[f32; K]> {
    (0..256u32)
        .map(|byte| std::array::from_fn(|i| code(byte, i) as f32))
        .collect()
}

/// The products on AVX2: int4 and int2 without a decoded row (32 codes at a time split out of
/// their bytes with shifts and masks, interleaved back into order, widened to f32 and
/// multiplied into two accumulators: the codes never leave registers); int1 bits as lane masks
/// selecting the inputs to add; int8 as stored and ternary from a row decoded to one byte a
/// code, widened 16 at a time.
#[cfg(target_arch = "x86_64")]
mod fused {
    use std::arch::x86_64::*;

    use super::{Groups, Int8Task, int3_words};

    /// Int3 codes decoded to f32, eight a three-byte word: the word broadcast to eight lanes,
    /// each shifted right by its code's place, masked and converted (a code at a time, the
    /// products of an int3 row took four times an int2 row's).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn decode_int3(bytes: &[u8], out: &mut [f32]) {
        let places = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
        let seven = _mm256_set1_epi32(7);
        for (chunk, word) in out.chunks_exact_mut(8).zip(int3_words(bytes)) {
            let word = _mm256_set1_epi32(word as i32);
            let codes = _mm256_and_si256(_mm256_srlv_epi32(word, places), seven);
            // SAFETY: `chunk` holds eight f32.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_cvtepi32_ps(codes)) };
        }
    }

    /// Which kernel reads a row.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kind {
        /// Two codes a byte.
        Int4,
        /// Four codes a byte.
        Int2,
        /// Eight codes a byte, as masks.
        Int1,
        /// One code a byte, read as stored.
        Int8,
        /// Ternary, decoded to one code a byte first.
        Ternary,
    }

    /// One row's products with every vector of `x` (see `PackedMatrix::rows_products`), or
    /// of `int8` where it holds them rounded: then the CPU has AVX-512 VNNI and the groups
    /// are whole blocks of the codes' layout (`PackedMatrix::int8_layout`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(
        kind: Kind,
        source: &[u8],
        x: &[f32],
        sums: &[f32],
        row: &Groups<'_>,
        out: &mut [f32],
    ) {
        let cols = x.len() / out.len();
        let groups = row.scales.len();
        let zeros_x = |m: usize| row.zero_points_term(&sums[m * groups..(m + 1) * groups]);
        let whole_units = row.group.is_multiple_of(32) && cols.is_multiple_of(32);
        if has_avx512() && whole_units && kind != Kind::Int2 {
            for (m, y) in out.iter_mut().enumerate() {
                let input = &x[m * cols..(m + 1) * cols];
                // SAFETY: AVX-512 checked; groups and the row are whole units of 32 codes.
                let codes_x = unsafe {
                    match kind {
                        Kind::Int4 => wide::int4_row(source, input, row.group, row.scales),
                        Kind::Int1 => wide::int1_row(source, input, row.group, row.scales),
                        _ => wide::bytes_row(source, input, row.group, row.scales),
                    }
                };
                *y = codes_x - zeros_x(m);
            }
            return;
        }
        let per_byte = match kind {
            Kind::Int4 => 2,
            Kind::Int2 => 4,
            Kind::Int1 => 8,
            Kind::Int8 | Kind::Ternary => 1,
        };
        for (m, y) in out.iter_mut().enumerate() {
            let input = &x[m * cols..(m + 1) * cols];
            let sums = &sums[m * groups..(m + 1) * groups];
            let mut total = 0.0f32;
            let per_group = row.scales.iter().zip(row.zeros).zip(sums);
            for (g, ((scale, zero), sum)) in per_group.enumerate() {
                let start = g * row.group;
                let end = (start + row.group).min(cols);
                let bytes = &source[start / per_byte..];
                let x = &input[start..end];
                // SAFETY: AVX2 and FMA are enabled for this function.
                let codes_x = unsafe {
                    match kind {
                        Kind::Int4 => int4_dot(bytes, x),
                        Kind::Int2 => int2_dot(bytes, x),
                        Kind::Int1 => int1_dot(bytes, x),
                        Kind::Int8 | Kind::Ternary => bytes_dot(bytes, x),
                    }
                };
                total += scale * (codes_x - zero * sum);
            }
            *y = total;
        }
    }

    /// The integer products of `task` into `out` (see `wide::int8_task`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn int8_task(task: &Int8Task<'_>, out: &mut [f32]) {
        // SAFETY: the caller found VNNI and whole blocks (`int8_layout`).
        unsafe { wide::int8_task(task, out) };
    }

    /// Whether the CPU also runs AVX-512 VNNI (checked once): the integer kernels.
    pub(super) fn has_avx512_vnni() -> bool {
        static FEATURES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FEATURES.get_or_init(|| has_avx512() && std::arch::is_x86_feature_detected!("avx512vnni"))
    }

    /// Whether the CPU runs AVX-512 F and BW (checked once): the [`wide`] kernels.
    pub(super) fn has_avx512() -> bool {
        static FEATURES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FEATURES.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
        })
    }

    /// `Σ codeᵢ·xᵢ` for one code a byte.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn bytes_dot(bytes: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: 32 code bytes from i lie inside the decoded row.
            unsafe {
                let first = _mm_loadu_si128(bytes.as_ptr().add(i) as *const __m128i);
                let second = _mm_loadu_si128(bytes.as_ptr().add(i + 16) as *const __m128i);
                accumulate(first, &x[i..i + 16], &mut acc[..2]);
                accumulate(second, &x[i + 16..i + 32], &mut acc[2..]);
            }
            i += 32;
        }
        let tail: f32 = (i..n).map(|j| f32::from(bytes[j]) * x[j]).sum();
        // SAFETY: AVX2 is enabled.
        unsafe { finish(acc, tail) }
    }

    /// `Σ codeᵢ·xᵢ` for int1 codes (eight a byte, lowest bit first): each byte's bits become
    /// lane masks that select the inputs to add.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn int1_dot(bytes: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let byte = _mm256_set1_epi32(i32::from(bytes[i / 8 + k]));
                let mask = _mm256_cmpeq_epi32(_mm256_and_si256(byte, bits), bits);
                // SAFETY: 8 inputs from i + 8k lie inside `x`.
                let values = unsafe { _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)) };
                *acc = _mm256_add_ps(*acc, _mm256_and_ps(_mm256_castsi256_ps(mask), values));
            }
            i += 32;
        }
        let tail: f32 = (i..n)
            .map(|j| f32::from((bytes[j / 8] >> (j % 8)) & 1) * x[j])
            .sum();
        // SAFETY: AVX2 is enabled.
        unsafe { finish(acc, tail) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate(codes: __m128i, x: &[f32], acc: &mut [__m256]) {
        // SAFETY: `x` holds 16 values; AVX2 and FMA are enabled.
        unsafe {
            let low = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
            let high = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)));
            acc[0] = _mm256_fmadd_ps(low, _mm256_loadu_ps(x.as_ptr()), acc[0]);
            acc[1] = _mm256_fmadd_ps(high, _mm256_loadu_ps(x.as_ptr().add(8)), acc[1]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn finish(acc: [__m256; 4], tail: f32) -> f32 {
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(one) + tail
    }

    /// `Σ wᵢ·xᵢ` for f16 weights, widened eight at a time in registers (sixteen with
    /// AVX-512).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16_dot(w: &[half::f16], x: &[f32]) -> f32 {
        if has_avx512() {
            // SAFETY: AVX-512 F and BW checked.
            return unsafe { wide::f16_dot(w, x) };
        }
        let n = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: 8 weights and 8 inputs from i + 8k lie inside both slices.
                unsafe {
                    let w8 = _mm_loadu_si128(w.as_ptr().add(i + 8 * k) as *const __m128i);
                    let x8 = _mm256_loadu_ps(x.as_ptr().add(i + 8 * k));
                    *acc = _mm256_fmadd_ps(_mm256_cvtph_ps(w8), x8, *acc);
                }
            }
            i += 32;
        }
        let tail: f32 = (i..n).map(|j| w[j].to_f32() * x[j]).sum();
        // SAFETY: AVX2 is enabled.
        unsafe { finish(acc, tail) }
    }

    /// `Σ codeᵢ·xᵢ` for int4 codes (two a byte, low nibble first) starting at `bytes[0]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn int4_dot(bytes: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mask = _mm_set1_epi8(0x0F);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: 16 bytes hold codes i..i+32, all inside the row.
            unsafe {
                let b = _mm_loadu_si128(bytes.as_ptr().add(i / 2) as *const __m128i);
                let lo = _mm_and_si128(b, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                accumulate(_mm_unpacklo_epi8(lo, hi), &x[i..i + 16], &mut acc[..2]);
                accumulate(_mm_unpackhi_epi8(lo, hi), &x[i + 16..i + 32], &mut acc[2..]);
            }
            i += 32;
        }
        let tail: f32 = (i..n)
            .map(|j| f32::from((bytes[j / 2] >> (4 * (j % 2))) & 15) * x[j])
            .sum();
        // SAFETY: AVX2 is enabled.
        unsafe { finish(acc, tail) }
    }

    /// `Σ codeᵢ·xᵢ` for int2 codes (four a byte, lowest bits first) starting at `bytes[0]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn int2_dot(bytes: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mask = _mm_set1_epi8(0x03);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: 8 bytes hold codes i..i+32, all inside the row.
            unsafe {
                let b = _mm_loadl_epi64(bytes.as_ptr().add(i / 4) as *const __m128i);
                let p0 = _mm_and_si128(b, mask);
                let p1 = _mm_and_si128(_mm_srli_epi16(b, 2), mask);
                let p2 = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                let p3 = _mm_and_si128(_mm_srli_epi16(b, 6), mask);
                let q01 = _mm_unpacklo_epi8(p0, p1);
                let q23 = _mm_unpacklo_epi8(p2, p3);
                accumulate(_mm_unpacklo_epi16(q01, q23), &x[i..i + 16], &mut acc[..2]);
                accumulate(
                    _mm_unpackhi_epi16(q01, q23),
                    &x[i + 16..i + 32],
                    &mut acc[2..],
                );
            }
            i += 32;
        }
        let tail: f32 = (i..n)
            .map(|j| f32::from((bytes[j / 4] >> (2 * (j % 4))) & 3) * x[j])
            .sum();
        // SAFETY: AVX2 is enabled.
        unsafe { finish(acc, tail) }
    }

    /// The int4, int1, one-code-a-byte and f16 products on AVX-512: sixteen lanes a
    /// multiply-add and one widening a sixteen codes (int1: one masked add), half the
    /// instructions of the AVX2 forms, which are bound by their widening shuffles. The packed forms take a whole row (groups of whole
    /// units of 32 codes) and keep each group's sum in registers, where the AVX2 forms sum
    /// each group horizontally and return it.
    pub(super) mod wide {
        use std::arch::x86_64::*;

        use super::super::{Groups, Int8Task, Offsets, Tiles};
        use crate::int8_inputs::Int8Inputs;

        /// `acc + codes·x` for sixteen codes (bytes) and sixteen inputs.
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn accumulate(codes: __m128i, x: *const f32, acc: __m512) -> __m512 {
            // SAFETY: `x` points at 16 inputs; AVX-512 is enabled.
            unsafe {
                let codes = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes));
                _mm512_fmadd_ps(codes, _mm512_loadu_ps(x), acc)
            }
        }

        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn sum(acc: [__m512; 4]) -> f32 {
            let pairs = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            _mm512_reduce_add_ps(pairs)
        }

        /// `Σ_g scale_g · Σ_{i∈g} codeᵢ·xᵢ` over a row of int4 codes in groups of `group`
        /// (a multiple of 32, as the row is): 32 codes a step into two of four accumulators,
        /// each group's sum scaled into the row's in registers, one horizontal sum a row.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(in super::super) unsafe fn int4_row(
            bytes: &[u8],
            x: &[f32],
            group: usize,
            scales: &[f32],
        ) -> f32 {
            let mask = _mm_set1_epi8(0x0F);
            // SAFETY (both): 16 bytes hold codes i..i+32 and 32 inputs from i lie inside `x`
            // for every unit start i of the row (whole units of 32).
            let unit = |i: usize, (a, b): (__m512, __m512)| unsafe {
                let packed = _mm_loadu_si128(bytes.as_ptr().add(i / 2) as *const __m128i);
                let lo = _mm_and_si128(packed, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                let x = x.as_ptr().add(i);
                (
                    accumulate(_mm_unpacklo_epi8(lo, hi), x, a),
                    accumulate(_mm_unpackhi_epi8(lo, hi), x.add(16), b),
                )
            };
            // SAFETY: AVX-512 is enabled.
            unsafe { scaled_units(x.len(), group, scales, unit) }
        }

        /// [`int4_row`] for one code a byte.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(in super::super) unsafe fn bytes_row(
            bytes: &[u8],
            x: &[f32],
            group: usize,
            scales: &[f32],
        ) -> f32 {
            // SAFETY (both): 32 codes and 32 inputs from i lie inside both slices for every
            // unit start i of the row.
            let unit = |i: usize, (a, b): (__m512, __m512)| unsafe {
                let first = _mm_loadu_si128(bytes.as_ptr().add(i) as *const __m128i);
                let second = _mm_loadu_si128(bytes.as_ptr().add(i + 16) as *const __m128i);
                let x = x.as_ptr().add(i);
                (accumulate(first, x, a), accumulate(second, x.add(16), b))
            };
            // SAFETY: AVX-512 is enabled.
            unsafe { scaled_units(x.len(), group, scales, unit) }
        }

        /// [`int4_row`] for int1 codes: each 16 bits are a lane mask selecting the inputs to add.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(in super::super) unsafe fn int1_row(
            bytes: &[u8],
            x: &[f32],
            group: usize,
            scales: &[f32],
        ) -> f32 {
            // SAFETY (both): 4 bytes hold codes i..i+32 (lowest bit first, so bit k of the
            // little-endian word is code i+k) and 32 inputs from i lie inside `x` for every
            // unit start i of the row.
            let unit = |i: usize, (a, b): (__m512, __m512)| unsafe {
                let bits = u32::from_le((bytes.as_ptr().add(i / 8) as *const u32).read_unaligned());
                let x = x.as_ptr().add(i);
                (
                    _mm512_mask_add_ps(a, bits as __mmask16, a, _mm512_loadu_ps(x)),
                    _mm512_mask_add_ps(b, (bits >> 16) as __mmask16, b, _mm512_loadu_ps(x.add(16))),
                )
            };
            // SAFETY: AVX-512 is enabled.
            unsafe { scaled_units(x.len(), group, scales, unit) }
        }

        /// `Σ_g scale_g · (the sum of group g's units)`: `unit(i, acc)` adds the 32 codes from
        /// `i` into a pair of accumulators. Two pairs alternate (named, so they stay in
        /// registers), a group's four are summed and scaled into the row's, and the row is
        /// summed horizontally once.
        #[inline(always)]
        unsafe fn scaled_units(
            len: usize,
            group: usize,
            scales: &[f32],
            unit: impl Fn(usize, (__m512, __m512)) -> (__m512, __m512),
        ) -> f32 {
            // SAFETY: only called from functions with AVX-512 F enabled.
            unsafe {
                let zero = _mm512_setzero_ps();
                let mut row = zero;
                for (g, &scale) in scales.iter().enumerate() {
                    let (mut even, mut odd) = ((zero, zero), (zero, zero));
                    let (mut i, end) = (g * group, ((g + 1) * group).min(len));
                    while i + 64 <= end {
                        even = unit(i, even);
                        odd = unit(i + 32, odd);
                        i += 64;
                    }
                    if i < end {
                        even = unit(i, even);
                    }
                    let sum =
                        _mm512_add_ps(_mm512_add_ps(even.0, even.1), _mm512_add_ps(odd.0, odd.1));
                    row = _mm512_fmadd_ps(_mm512_set1_ps(scale), sum, row);
                }
                _mm512_reduce_add_ps(row)
            }
        }

        /// The integer products (`crate::int8_inputs`) of `task`'s rows with its vectors
        /// into `out` (`[rows, vectors]`), by the kernel of their layout: rows in [`Tiles`]
        /// sixteen rows and up to four vectors a pass; others one vector four
        /// rows a pass where `task.four_rows` (each block of the rounded input loaded once
        /// for the four), else one; several vectors up to four a pass against one row (a
        /// row's planes made once for them). Two or three vectors take one pass of their
        /// own, not a pass each: a speculative block shorter than four is verified at
        /// little more than one vector's cost. A task's rows take one
        /// call and one choice of kernel, where a call a row put 15–20% of a profile's
        /// samples around the kernel (37–46% in it).
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        pub(in super::super) unsafe fn int8_task(task: &Int8Task<'_>, out: &mut [f32]) {
            let layout = task.inputs[0].layout;
            // SAFETY (all): the caller's promise; each kernel takes its own layout.
            unsafe {
                match (8 / layout.codes_per_byte, layout.block) {
                    (8, 128) => task_rows::<8, 128>(task, out),
                    (8, _) => task_rows::<8, 64>(task, out),
                    (4, 128) => task_rows::<4, 128>(task, out),
                    (4, _) => task_rows::<4, 64>(task, out),
                    (2, 128) => task_rows::<2, 128>(task, out),
                    (2, _) => task_rows::<2, 64>(task, out),
                    (1, 128) => task_rows::<1, 128>(task, out),
                    _ => task_rows::<1, 64>(task, out),
                }
            }
        }

        /// [`int8_task`] for one layout.
        #[inline(always)]
        unsafe fn task_rows<const BITS: usize, const B: usize>(
            task: &Int8Task<'_>,
            out: &mut [f32],
        ) {
            let Int8Task {
                packed,
                first,
                inputs,
                sums,
                four_rows,
            } = *task;
            let count = inputs.len();
            if let (128, Some(tiles)) = (B, &packed.tiles) {
                let mut m = 0;
                while m < count {
                    // SAFETY (all): the caller's promise.
                    m += unsafe {
                        match count - m {
                            1 => tiles_into::<BITS, 1>(task, tiles, m, out),
                            2 => tiles_into::<BITS, 2>(task, tiles, m, out),
                            3 => tiles_into::<BITS, 3>(task, tiles, m, out),
                            _ => tiles_into::<BITS, 4>(task, tiles, m, out),
                        }
                    };
                }
                return;
            }
            let passes = if four_rows && count == 1 {
                out.len() / 4
            } else {
                0
            };
            let (fours, ones) = out.split_at_mut(4 * passes);
            for (pass, out) in fours.chunks_exact_mut(4).enumerate() {
                let rows = std::array::from_fn(|k| packed.row(first + 4 * pass + k));
                // SAFETY: the caller's promise.
                unsafe { tile_into::<BITS, B, 4, 1>(&rows, inputs, 0, sums, out) };
            }
            for (i, out) in ones.chunks_exact_mut(count).enumerate() {
                let rows = [packed.row(first + 4 * passes + i)];
                let mut m = 0;
                while m < count {
                    // SAFETY (all): the caller's promise.
                    m += unsafe {
                        match count - m {
                            1 => tile_into::<BITS, B, 1, 1>(&rows, inputs, m, sums, out),
                            2 => tile_into::<BITS, B, 1, 2>(&rows, inputs, m, sums, out),
                            3 => tile_into::<BITS, B, 1, 3>(&rows, inputs, m, sums, out),
                            _ => tile_into::<BITS, B, 1, 4>(&rows, inputs, m, sums, out),
                        }
                    };
                }
            }
        }

        /// One plane of a chunk of codes `v` (shifted right by `SHIFT`, masked to one code a
        /// byte) against the four inputs at `slot` of each of the `M` vectors, into integer
        /// sums `PARITY` (planes alternate between two, by a constant index so the sums stay
        /// in registers: an index known only at run time put them on the stack, and int4 in
        /// cache ran at about half the speed, 20 against 40 GB/s).
        #[inline(always)]
        unsafe fn plane_step<const M: usize, const SHIFT: u32, const PARITY: usize>(
            v: __m512i,
            mask: __m512i,
            q: &[&Int8Inputs; M],
            slot: usize,
            sums: &mut [[__m512i; 2]; M],
        ) {
            // SAFETY: AVX-512 F, BW and VNNI where this is inlined; `tiles_into` asserted
            // the inputs hold `slot + 4`.
            unsafe {
                let codes = _mm512_and_si512(_mm512_srli_epi16::<SHIFT>(v), mask);
                for (x, sums) in q.iter().zip(sums.iter_mut()) {
                    let x = x.codes.as_ptr().add(slot).cast();
                    sums[PARITY] = dot_broadcast(sums[PARITY], codes, x);
                }
            }
        }

        /// `sums` plus, in each 32-bit lane, the products of its four bytes of `codes`
        /// (unsigned) with the four signed bytes at `x`, broadcast to every lane: one
        /// `vpdpbusd` with the broadcast as its memory operand. Assembly, because LLVM, given
        /// the broadcast as a value, loaded a block's broadcasts ahead of their products and
        /// spilled them to the stack (a store and a reload each).
        #[target_feature(enable = "avx512f,avx512vnni")]
        #[inline]
        unsafe fn dot_broadcast(sums: __m512i, codes: __m512i, x: *const u8) -> __m512i {
            let mut sums = sums;
            // SAFETY: the caller's promise that `x` holds four readable bytes.
            unsafe {
                std::arch::asm!(
                    "vpdpbusd {sums}, {codes}, dword ptr [{x}]{{1to16}}",
                    sums = inout(zmm_reg) sums,
                    codes = in(zmm_reg) codes,
                    x = in(reg) x,
                    options(pure, readonly, nostack, preserves_flags),
                );
            }
            sums
        }

        /// Chunk of codes at `at` (64 bytes: four of each of sixteen rows) against the `M`
        /// vectors, whose inputs for its first plane start at `slot`: each plane's code of
        /// every byte meets its four inputs, which lie side by side in the plane-by-plane
        /// layout. The planes are written out (shifts by immediates) and alternate between
        /// the two sums of `sums`.
        #[inline(always)]
        unsafe fn chunk_step<const BITS: usize, const M: usize>(
            at: *const u8,
            mask: __m512i,
            q: &[&Int8Inputs; M],
            slot: usize,
            sums: &mut [[__m512i; 2]; M],
        ) {
            // SAFETY (all): AVX-512 F, BW and VNNI where this is inlined; `tiles_into`
            // asserted the chunk and its inputs, the prefetch may point past them.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES) as *const i8);
                let v = _mm512_loadu_si512(at as *const _);
                // Inputs a plane of a block: 128 over 8 / BITS planes.
                let step = 16 * BITS;
                match BITS {
                    8 => plane_step::<M, 0, 0>(v, mask, q, slot, sums),
                    4 => {
                        plane_step::<M, 0, 0>(v, mask, q, slot, sums);
                        plane_step::<M, 4, 1>(v, mask, q, slot + step, sums);
                    }
                    2 => {
                        plane_step::<M, 0, 0>(v, mask, q, slot, sums);
                        plane_step::<M, 2, 1>(v, mask, q, slot + step, sums);
                        plane_step::<M, 4, 0>(v, mask, q, slot + 2 * step, sums);
                        plane_step::<M, 6, 1>(v, mask, q, slot + 3 * step, sums);
                    }
                    1 => {
                        plane_step::<M, 0, 0>(v, mask, q, slot, sums);
                        plane_step::<M, 1, 1>(v, mask, q, slot + step, sums);
                        plane_step::<M, 2, 0>(v, mask, q, slot + 2 * step, sums);
                        plane_step::<M, 3, 1>(v, mask, q, slot + 3 * step, sums);
                        plane_step::<M, 4, 0>(v, mask, q, slot + 4 * step, sums);
                        plane_step::<M, 5, 1>(v, mask, q, slot + 5 * step, sums);
                        plane_step::<M, 6, 0>(v, mask, q, slot + 6 * step, sums);
                        plane_step::<M, 7, 1>(v, mask, q, slot + 7 * step, sums);
                    }
                    _ => unreachable!("whole bits a code"),
                }
            }
        }

        /// The group of a block: a shift where a group is a power of two of blocks (groups of
        /// 64 or 128 inputs), a division where not (a row's one group per channel: 3072 inputs
        /// are 24 blocks of 128).
        #[derive(Clone, Copy)]
        struct GroupOf {
            blocks: usize,
            shift: Option<u32>,
        }

        impl GroupOf {
            fn new(blocks: usize) -> Self {
                let shift = blocks.is_power_of_two().then(|| blocks.trailing_zeros());
                Self { blocks, shift }
            }

            #[inline(always)]
            fn block(self, b: usize) -> usize {
                match self.shift {
                    Some(shift) => b >> shift,
                    None => b / self.blocks,
                }
            }
        }

        /// The products of `task`'s rows (whole tiles, its codes in `tiles`' order) with its
        /// vectors `m..m + M` into `out` (`[rows, vectors]`); returns `M`.
        #[inline(always)]
        unsafe fn tiles_into<const BITS: usize, const M: usize>(
            task: &Int8Task<'_>,
            tiles: &Tiles,
            m: usize,
            out: &mut [f32],
        ) -> usize {
            let Int8Task {
                packed,
                first,
                inputs,
                sums,
                ..
            } = *task;
            let (codes, groups, count) = (&packed.bytes, packed.groups, inputs.len());
            let blocks = inputs[0].scales.len();
            let group_of = GroupOf::new(blocks / groups);
            let rows = out.len() / count;
            assert!(first.is_multiple_of(16) && rows.is_multiple_of(16));
            let first_tile = first / 16;
            // A tile's bytes, and a block's chunks of four bytes a row.
            let (tile_bytes, chunks) = (blocks * 256 * BITS, 4 * BITS);
            assert!(codes.len() >= (first_tile + rows / 16) * tile_bytes);
            assert!(tiles.scales.len() >= (first_tile + rows / 16) * groups * 16);
            let q: [&Int8Inputs; M] = std::array::from_fn(|k| &inputs[m + k]);
            assert!(q.iter().all(|x| x.codes.len() >= blocks * 128));
            // SAFETY (all): AVX-512 F, BW and VNNI where this is inlined; the reads are
            // inside the tiles and the inputs (asserted), the prefetch may point past them.
            unsafe {
                let mask = _mm512_set1_epi8(((1u32 << BITS) - 1) as i8);
                for tile in 0..rows / 16 {
                    let t = first_tile + tile;
                    let codes = codes.as_ptr().add(t * tile_bytes);
                    let mut acc = [_mm512_setzero_ps(); M];
                    for b in 0..blocks {
                        let mut even = [[_mm512_setzero_si512(); 2]; M];
                        let mut odd = [[_mm512_setzero_si512(); 2]; M];
                        // Chunks in pairs, each of a pair into sums of its own: four
                        // `vpdpbusd` chains a vector where a chunk has two planes or more,
                        // two for int8's one (int2 in cache ran 1.22–1.24× faster on one
                        // thread of an AMD EPYC than with one chain a plane parity).
                        for c in (0..chunks).step_by(2) {
                            let at = |c: usize| codes.add((b * chunks + c) * 64);
                            let slot = |c: usize| b * 128 + 4 * c;
                            chunk_step::<BITS, M>(at(c), mask, &q, slot(c), &mut even);
                            chunk_step::<BITS, M>(at(c + 1), mask, &q, slot(c + 1), &mut odd);
                        }
                        let scales = _mm512_loadu_ps(
                            tiles
                                .scales
                                .as_ptr()
                                .add((t * groups + group_of.block(b)) * 16),
                        );
                        for k in 0..M {
                            let total = _mm512_add_epi32(
                                _mm512_add_epi32(even[k][0], even[k][1]),
                                _mm512_add_epi32(odd[k][0], odd[k][1]),
                            );
                            let factor = _mm512_mul_ps(scales, _mm512_set1_ps(q[k].scales[b]));
                            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), factor, acc[k]);
                        }
                    }
                    for g in 0..groups {
                        let at = (t * groups + g) * 16;
                        let offsets = match &tiles.offsets {
                            Offsets::OneZero(zero) => _mm512_mul_ps(
                                _mm512_loadu_ps(tiles.scales.as_ptr().add(at)),
                                _mm512_set1_ps(*zero),
                            ),
                            Offsets::PerGroup(offsets) => _mm512_loadu_ps(offsets.as_ptr().add(at)),
                        };
                        for k in 0..M {
                            let sum = _mm512_set1_ps(sums[(m + k) * groups + g]);
                            acc[k] = _mm512_fnmadd_ps(offsets, sum, acc[k]);
                        }
                    }
                    for (k, acc) in acc.iter().enumerate() {
                        let mut lanes = [0f32; 16];
                        _mm512_storeu_ps(lanes.as_mut_ptr(), *acc);
                        for (lane, value) in lanes.iter().enumerate() {
                            out[(tile * 16 + lane) * count + m + k] = *value;
                        }
                    }
                }
            }
            M
        }

        /// [`int8_tile`] of `R` rows with vectors `m..m + M` of `inputs`, less each row's
        /// zero points' term, into `out` (`[R, inputs.len()]`); returns `M`.
        #[inline(always)]
        unsafe fn tile_into<const BITS: usize, const B: usize, const R: usize, const M: usize>(
            rows: &[(&[u8], Groups<'_>); R],
            inputs: &[Int8Inputs],
            m: usize,
            sums: &[f32],
            out: &mut [f32],
        ) -> usize {
            let count = inputs.len();
            // SAFETY: the caller's promise.
            let products = unsafe { int8_tile::<BITS, B, R, M>(rows, &inputs[m..m + M]) };
            for ((products, (_, row)), out) in products.iter().zip(rows).zip(out.chunks_mut(count))
            {
                let groups = row.scales.len();
                for (k, product) in products.iter().enumerate() {
                    let sums = &sums[(m + k) * groups..(m + k + 1) * groups];
                    out[m + k] = product - row.zero_points_term(sums);
                }
            }
            M
        }

        /// The integer products of `R` rows of `BITS`-bit codes (one grid of groups) with `M`
        /// vectors of inputs rounded in blocks of `B` (`Layout`): each 64 inputs of a block
        /// (one register, loaded once for the `R` rows) meet their planes of codes, made
        /// from the block's bytes repeated across the register (one copy for each plane the
        /// 64 inputs span), each copy shifted to its plane and masked to one code a byte, in
        /// one `vpdpbusd` a row and vector (64 byte products summed into sixteen 32-bit
        /// lanes); a row's planes are made once for the `M` vectors. A block's integer sums
        /// are widened and scaled by the group's and the block's scales into one of two
        /// alternating accumulators a row and vector, and each product is summed
        /// horizontally once. Plain inlined functions: a first version passing each block as
        /// a closure to a shared loop ran 1.6× slower than the f32 kernel instead of 2.2×
        /// faster (not investigated further).
        #[inline(always)]
        unsafe fn int8_tile<const BITS: usize, const B: usize, const R: usize, const M: usize>(
            rows: &[(&[u8], Groups<'_>); R],
            inputs: &[Int8Inputs],
        ) -> [[f32; M]; R] {
            // SAFETY: only called from functions with AVX-512 F, BW and VNNI enabled; block
            // b's codes and rounded inputs lie inside the rows and the inputs for every
            // b < blocks (whole blocks).
            unsafe {
                let inputs: &[Int8Inputs; M] = inputs.try_into().expect("M vectors");
                let group_of = GroupOf::new(rows[0].1.group / B);
                let blocks = inputs[0].scales.len();
                let shifts = const { [plane_shifts(BITS, B, 0), plane_shifts(BITS, B, 1)] };
                let shifts = shifts.map(|s| _mm512_loadu_si512(s.as_ptr() as *const _));
                let zero = [[_mm512_setzero_ps(); M]; R];
                let (mut even, mut odd) = (zero, zero);
                let scales =
                    |b: usize| std::array::from_fn(|r| rows[r].1.scales[group_of.block(b)]);
                let mut b = 0;
                while b + 2 <= blocks {
                    scaled_block::<BITS, B, R, M>(rows, inputs, b, scales(b), &shifts, &mut even);
                    let next = scales(b + 1);
                    scaled_block::<BITS, B, R, M>(rows, inputs, b + 1, next, &shifts, &mut odd);
                    b += 2;
                }
                if b < blocks {
                    scaled_block::<BITS, B, R, M>(rows, inputs, b, scales(b), &shifts, &mut even);
                }
                std::array::from_fn(|r| {
                    std::array::from_fn(|m| {
                        _mm512_reduce_add_ps(_mm512_add_ps(even[r][m], odd[r][m]))
                    })
                })
            }
        }

        /// The right shift of each 16-bit lane that brings its copy of a block's bytes to the
        /// planes that inputs `64·half..` of a block of `block` span (`Layout`): the copies
        /// follow each other, each the block's `block·bits/8` bytes long.
        const fn plane_shifts(bits: usize, block: usize, half: usize) -> [i16; 32] {
            let planes_per_half = (8 / bits) / (block / 64);
            let lanes_per_copy = block * bits / 16;
            let mut shifts = [0i16; 32];
            let mut lane = 0;
            while bits < 8 && lane < 32 {
                shifts[lane] = (bits * (half * planes_per_half + lane / lanes_per_copy)) as i16;
                lane += 1;
            }
            shifts
        }

        /// `acc[r][m] + scale_r·d_b·(block b's integer sums of row r with vector m)` for each
        /// of the `R` rows and `M` vectors, inlined into [`int8_tile`].
        #[inline(always)]
        unsafe fn scaled_block<
            const BITS: usize,
            const B: usize,
            const R: usize,
            const M: usize,
        >(
            rows: &[(&[u8], Groups<'_>); R],
            inputs: &[Int8Inputs; M],
            b: usize,
            scales: [f32; R],
            shifts: &[__m512i; 2],
            acc: &mut [[__m512; M]; R],
        ) {
            // SAFETY: only called from `int8_tile`, which has the features and the bounds.
            unsafe {
                let mut sums = [[_mm512_setzero_si512(); M]; R];
                for (half, &shift) in shifts.iter().enumerate().take(B / 64) {
                    let q: [__m512i; M] = std::array::from_fn(|m| {
                        let q = inputs[m].codes.as_ptr().add(b * B + 64 * half);
                        _mm512_loadu_si512(q as *const _)
                    });
                    for ((bytes, _), sums) in rows.iter().zip(sums.iter_mut()) {
                        let codes = bytes.as_ptr().add(b * B * BITS / 8);
                        // The codes `PREFETCH_BYTES` on, a line for each 64 bytes read.
                        if half == 0 || BITS == 8 {
                            let ahead = PREFETCH_BYTES + if BITS == 8 { 64 * half } else { 0 };
                            _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add(ahead) as *const i8);
                        }
                        let planes = if BITS == 8 {
                            _mm512_loadu_si512(codes.add(64 * half) as *const _)
                        } else {
                            let copies = match B * BITS / 8 {
                                64 => _mm512_loadu_si512(codes as *const _),
                                32 => _mm512_broadcast_i64x4(_mm256_loadu_si256(codes as *const _)),
                                16 => _mm512_broadcast_i32x4(_mm_loadu_si128(codes as *const _)),
                                _ => _mm512_set1_epi64((codes as *const i64).read_unaligned()),
                            };
                            let mask = _mm512_set1_epi8(((1u32 << BITS) - 1) as i8);
                            _mm512_and_si512(_mm512_srlv_epi16(copies, shift), mask)
                        };
                        for (sum, q) in sums.iter_mut().zip(q) {
                            *sum = _mm512_dpbusd_epi32(*sum, planes, q);
                        }
                    }
                }
                for ((acc, sums), scale) in acc.iter_mut().zip(sums).zip(scales) {
                    for ((acc, sum), inputs) in acc.iter_mut().zip(sums).zip(inputs) {
                        let factor = _mm512_set1_ps(scale * inputs.scales[b]);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), factor, *acc);
                    }
                }
            }
        }

        /// How far ahead of the codes a product reads it asks the memory for them: the
        /// hardware's prefetchers alone left decoding's int4 rows at 7.2–7.5 GB/s a thread
        /// on an AMD EPYC, 2 KB ahead took them to 8.4–8.6 (1 and 4 KB: between), and the
        /// int8 table's rows with two threads from 24–25 to 28–29 GB/s.
        const PREFETCH_BYTES: usize = 2048;

        /// [`super::f16_dot`] 64 weights a step.
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
        pub(in super::super) unsafe fn f16_dot(w: &[half::f16], x: &[f32]) -> f32 {
            let n = x.len();
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: 16 weights and 16 inputs from i + 16k lie inside both slices.
                    unsafe {
                        let halves =
                            _mm256_loadu_si256(w.as_ptr().add(i + 16 * k) as *const __m256i);
                        let x16 = _mm512_loadu_ps(x.as_ptr().add(i + 16 * k));
                        *acc = _mm512_fmadd_ps(_mm512_cvtph_ps(halves), x16, *acc);
                    }
                }
                i += 64;
            }
            let tail: f32 = (i..n).map(|j| w[j].to_f32() * x[j]).sum();
            // SAFETY: AVX-512 is enabled.
            unsafe { sum(acc) + tail }
        }
    }
}

/// `Σ aᵢ·bᵢ` in sixteen independent lanes (vectorized by the compiler; fused multiply-adds
/// with `FMA`), then the tail.
#[inline(always)]
pub fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let (a_tail, b_tail) = (a16.remainder(), b16.remainder());
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            lanes[i] = if FMA {
                x[i].mul_add(y[i], lanes[i])
            } else {
                lanes[i] + x[i] * y[i]
            };
        }
    }
    let mut total = lanes.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        total += x * y;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use andes_quant::{QuantFormat, WeightShape, dequantize, quantize_rtn};

    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect()
    }

    /// Every format, per channel and per group, with a last group shorter than the others
    /// (200 inputs) and in whole units of 32 (256, the whole-row kernels): the packed product
    /// equals the product with the dequantized weights.
    #[test]
    fn every_format_multiplies_like_its_dequantized_weights() {
        for cols in [200, 256] {
            multiplies_like_its_dequantized_weights(37, cols);
        }
    }

    fn multiplies_like_its_dequantized_weights(rows: usize, cols: usize) {
        let w = weights(rows, cols);
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i % 17) as f32 - 8.0) / 9.0)
            .collect();
        for format in QuantFormat::all() {
            let q = quantize_rtn(&w, WeightShape::new(rows, cols), format).unwrap();
            let dense = dequantize(&q);
            let packed = PackedMatrix::from_quantized(&q);
            let y = packed.multiply(&x);
            let one = packed.multiply(&x[cols..2 * cols]);
            for m in 0..3 {
                for r in 0..rows {
                    let expected: f64 = (0..cols)
                        .map(|c| dense[r * cols + c] as f64 * x[m * cols + c] as f64)
                        .sum();
                    let found = y[m * rows + r] as f64;
                    assert!(
                        (found - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                        "{format}: row {r} vector {m}: {found} vs {expected}"
                    );
                }
            }
            assert_eq!(&one[..], &y[rows..2 * rows], "{format}: one vector alone");
        }
    }

    /// Matrices multiplied together in one pass (different formats and group sizes, some with
    /// int8 activations, float and half tables among them, so inputs are prepared both shared
    /// and apart) give each matrix's own product, bit for bit, one vector or three.
    #[test]
    fn matrices_multiplied_together_give_their_own_products() {
        let (rows, cols) = (45, 256);
        let w = weights(rows, cols);
        let mut matrices: Vec<PackedMatrix> = QuantFormat::all()
            .into_iter()
            .map(|format| {
                let q = quantize_rtn(&w, WeightShape::new(rows, cols), format).unwrap();
                PackedMatrix::from_quantized(&q)
            })
            .collect();
        for matrix in matrices.iter_mut().step_by(2) {
            matrix.set_int8_activations(true);
        }
        matrices.push(PackedMatrix::from_f32(rows, cols, w.clone()));
        let halves = w.iter().map(|&v| f16::from_f32(v)).collect();
        matrices.push(PackedMatrix::from_f16(rows, cols, halves));
        let refs: Vec<&PackedMatrix> = matrices.iter().collect();
        for count in [1, 3] {
            let x: Vec<f32> = (0..count * cols)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let together = PackedMatrix::multiply_each(&refs, &x);
            for (i, (matrix, y)) in matrices.iter().zip(&together).enumerate() {
                assert_eq!(y, &matrix.multiply(&x), "matrix {i}, {count} vectors");
            }
        }
    }

    /// With int8 activations, every format of one to eight bits and ternary whose groups are
    /// whole blocks of 64 or 128 multiplies as the integer products are defined
    /// (`Int8Inputs::reference_product`, exact integer sums), and lands within the rounding's
    /// bound of the f32 product, five vectors at once (four together, then one); the other
    /// formats, and every format on a CPU without VNNI, keep the f32 products.
    #[test]
    fn int8_activations_give_the_integer_products_within_the_roundings_bound() {
        // Rows that are no whole tile of sixteen, then whole tiles with groups per channel
        // of three blocks.
        for (rows, cols) in [(37, 256), (48, 384)] {
            integer_products_within_the_roundings_bound(rows, cols);
        }
    }

    fn integer_products_within_the_roundings_bound(rows: usize, cols: usize) {
        let w = weights(rows, cols);
        let x: Vec<f32> = (0..5 * cols)
            .map(|i| ((i * 31 % 23) as f32 - 11.0) / (3.0 + (i % 7) as f32))
            .collect();
        let mut integer_formats = 0;
        for format in QuantFormat::all() {
            let q = quantize_rtn(&w, WeightShape::new(rows, cols), format).unwrap();
            let dense = dequantize(&q);
            let plain = PackedMatrix::from_quantized(&q);
            let mut packed = plain.clone();
            packed.set_int8_activations(true);
            let y = packed.multiply(&x);
            let Some(layout) = packed.int8_layout() else {
                assert_eq!(y, plain.multiply(&x), "{format}: the f32 products");
                continue;
            };
            integer_formats += 1;
            let Weights::Packed(p) = &packed.weights else {
                unreachable!("int8 products are for packed codes")
            };
            // Batches of two and three (one pass of their own) give what the batch of five
            // (four and one) gave.
            let batches: Vec<Vec<f32>> = [2, 3]
                .iter()
                .map(|&count| packed.multiply(&x[..count * cols]))
                .collect();
            for m in 0..5 {
                let input = &x[m * cols..(m + 1) * cols];
                let inputs = Int8Inputs::new(input, layout);
                // One vector alone, as decoding multiplies (rows four at a time, then the
                // rest, or one at a time), gives what the batch gave.
                let four = PackedMatrix::products(&[&packed], input, true).remove(0);
                let one = PackedMatrix::products(&[&packed], input, false).remove(0);
                for r in 0..rows {
                    for (alone, pass) in [(&four, "four rows a pass"), (&one, "a row a pass")] {
                        assert_eq!(
                            alone[r],
                            y[m * rows + r],
                            "{format}: row {r} vector {m} alone, {pass}"
                        );
                    }
                    for (count, batch) in (2..).zip(&batches).filter(|(count, _)| m < *count) {
                        assert_eq!(
                            batch[m * rows + r],
                            y[m * rows + r],
                            "{format}: row {r} vector {m} of a batch of {count}"
                        );
                    }
                    let (bytes, groups) = (p.row_codes(r), p.groups_of(r));
                    let mut decoded = vec![0.0f32; cols + 8];
                    p.codes.decode(&bytes, &mut decoded);
                    let codes: Vec<u8> = decoded[..cols].iter().map(|&c| c as u8).collect();
                    let group_of = |i: usize| i / groups.group;
                    let zeros_x: f64 = (0..cols)
                        .map(|i| {
                            let g = group_of(i);
                            f64::from(groups.scales[g] * groups.zeros[g] * input[i])
                        })
                        .sum();
                    let defined =
                        inputs.reference_product(&codes, groups.group, groups.scales) - zeros_x;
                    let found = f64::from(y[m * rows + r]);
                    assert!(
                        (found - defined).abs() <= 1e-4 * (1.0 + defined.abs()),
                        "{format}: row {r} vector {m}: {found} vs the integer products' {defined}"
                    );
                    let exact: f64 = (0..cols)
                        .map(|c| f64::from(dense[r * cols + c]) * f64::from(input[c]))
                        .sum();
                    let bound: f64 = (0..cols)
                        .map(|i| {
                            let step = inputs.scales[i / layout.block];
                            f64::from(
                                (groups.scales[group_of(i)] * f32::from(codes[i])).abs() * step
                                    / 2.0,
                            )
                        })
                        .sum();
                    assert!(
                        (found - exact).abs() <= bound + 1e-4 * (1.0 + exact.abs()),
                        "{format}: row {r} vector {m}: {found} vs {exact}, bound {bound}"
                    );
                }
            }
        }
        if has_int8_kernels() {
            // Every width but int3, per channel and in groups of 64 and 128 (not 32).
            let expected = QuantFormat::all()
                .into_iter()
                .filter(|f| f.bits() != Bits::Int3)
                .filter(|f| f.granularity().group_len(cols).is_multiple_of(64))
                .count();
            assert!(expected >= 12, "{expected} formats in groups of 64 or more");
            assert_eq!(
                integer_formats, expected,
                "formats that ran the integer kernels"
            );
        }
    }

    /// f16 tables (rows long enough for the wide kernel, and a tail) multiply like their f32
    /// values, and a packed table's rows are its dequantized rows.
    #[test]
    fn tables_multiply_and_embed_like_their_values() {
        let (rows, cols) = (9, 200);
        let w = weights(rows, cols);
        let x: Vec<f32> = (0..cols).map(|i| ((i % 13) as f32 - 6.0) / 7.0).collect();
        let halves: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let y = PackedMatrix::from_f16(rows, cols, halves.clone()).multiply(&x);
        for (r, &found) in y.iter().enumerate() {
            let expected: f64 = (0..cols)
                .map(|c| halves[r * cols + c].to_f64() * x[c] as f64)
                .sum();
            assert!((found as f64 - expected).abs() <= 1e-4 * (1.0 + expected.abs()));
        }
        for format in QuantFormat::all() {
            let q = quantize_rtn(&w, WeightShape::new(rows, cols), format).unwrap();
            let dense = dequantize(&q);
            let packed = PackedMatrix::from_quantized(&q);
            for r in 0..rows {
                assert_eq!(
                    packed.row(r),
                    dense[r * cols..(r + 1) * cols],
                    "{format} row {r}"
                );
            }
        }
    }
}
