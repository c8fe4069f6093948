//! Causal attention's flash kernels (`flash.cu`) on CUDA: compiled by NVRTC once per context
//! and head size, launched on the stream CubeCL orders its kernels on, reading CubeCL's
//! tensors through their strides (the model's `q` is a transposed view; nothing is copied).
//!
//! They serve bf16 operands with heads of 64 or 128 and keys that end where the queries do
//! (`seq_k = start + seq_q`, a prompt or a training window after `start` cached positions);
//! [`forward`] and [`backward`] answer `None` for anything else, and the caller runs the
//! composed form.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::{CudaServer, GpuResource};
use cudarc::driver::sys as driver;
use cudarc::nvrtc::result as nvrtc;

const SOURCE: &str = include_str!("flash.cu");
/// Rows of a block's tile (queries or keys); `flash.cu`'s `TILE`.
const TILE: usize = 64;
/// Threads of a block: four warps; `flash.cu`'s `THREADS`.
const THREADS: u32 = 128;

/// The kernels' compile-time choices (`flash.cu`'s `M_TILES`, `KEYS` and `PIPELINE`).
#[derive(Clone, Copy, Debug)]
struct Config {
    /// The forward pass's m16 row tiles a warp: its block has 64 times as many query rows.
    m_tiles: usize,
    /// The forward pass's keys a step.
    keys: usize,
    /// Whether the backward kernels fetch the next block's tiles while computing.
    pipeline: bool,
}

impl Config {
    /// What ships: of the four configurations timed on an H100 (BENCHMARKS.md, "Flash
    /// attention…"), the one `andes train` ran fastest with; they were at most 12% apart in
    /// the kernels alone and 1% in the training step.
    const SHIPPED: Config = Config {
        m_tiles: 1,
        keys: 64,
        pipeline: true,
    };

    /// The shipped choices, or `ANDES_FLASH=M_TILES-KEYS-PIPELINE` (`2-32-1`), so one build
    /// times another configuration of the kernels (`scripts/gpu/flash_check.py --variants`
    /// times them alone).
    fn current() -> Config {
        static CURRENT: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
        *CURRENT.get_or_init(|| {
            let Ok(spec) = std::env::var("ANDES_FLASH") else {
                return Config::SHIPPED;
            };
            let fields: Vec<usize> = spec
                .split('-')
                .filter_map(|f| f.trim().parse().ok())
                .collect();
            match fields[..] {
                [m_tiles @ (1 | 2), keys @ (32 | 64), pipeline @ (0 | 1)] => Config {
                    m_tiles,
                    keys,
                    pipeline: pipeline == 1,
                },
                _ => {
                    eprintln!("warning: ANDES_FLASH={spec} is not 1|2-32|64-0|1; shipped kernels");
                    Config::SHIPPED
                }
            }
        })
    }

    /// The forward pass's query rows a block.
    fn query_rows(self) -> usize {
        64 * self.m_tiles
    }

    fn stages(self) -> usize {
        if self.pipeline { 2 } else { 1 }
    }
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Turns the flash kernels on for this process when NVRTC loads (called when a CUDA device
/// is opened); answers whether it did. `ANDES_ATTENTION=composed` or `materialized` keeps
/// them off, so one build times the forms side by side.
pub fn install() -> bool {
    let wanted = !matches!(
        std::env::var("ANDES_ATTENTION").as_deref(),
        Ok("composed" | "materialized")
    );
    // SAFETY: probing a dynamic library by name has no other effect.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    INSTALLED.store(wanted && present, Ordering::Relaxed);
    present
}

/// Whether causal attention over operands of `dtype` with heads of `head_dim` runs the flash
/// kernels in this process.
pub fn serves(dtype: DType, head_dim: usize) -> bool {
    INSTALLED.load(Ordering::Relaxed) && dtype == DType::BF16 && matches!(head_dim, 64 | 128)
}

/// A `[batch, heads, rows, head_dim]` operand's strides, in elements (`flash.cu`'s `Layout`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Layout {
    batch: i64,
    head: i64,
    row: i64,
}

/// `flash.cu`'s `Problem`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Problem {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    d_o: u64,
    out: u64,
    lse: u64,
    delta: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    q_l: Layout,
    k_l: Layout,
    v_l: Layout,
    o_l: Layout,
    do_l: Layout,
    out_l: Layout,
    dq_l: Layout,
    dk_l: Layout,
    dv_l: Layout,
    batch: i32,
    seq_q: i32,
    seq_k: i32,
    start: i32,
    group: i32,
    heads: i32,
    scale_log2: f32,
    scale: f32,
}

impl Problem {
    /// `[batch, query heads, query rows]`.
    fn queries(&self) -> [usize; 3] {
        [self.batch, self.heads, self.seq_q].map(|x| x as usize)
    }
}

/// The kernels of `flash.cu`, in the order of [`Kernel::ALL`] (their index in a [`Module`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kernel {
    Forward = 0,
    Delta = 1,
    KeysValues = 2,
    Queries = 3,
}

impl Kernel {
    const ALL: [Kernel; 4] = [
        Kernel::Forward,
        Kernel::Delta,
        Kernel::KeysValues,
        Kernel::Queries,
    ];

    fn name(self) -> &'static str {
        match self {
            Kernel::Forward => "flash_forward",
            Kernel::Delta => "flash_backward_delta",
            Kernel::KeysValues => "flash_backward_dkdv",
            Kernel::Queries => "flash_backward_dq",
        }
    }

    /// Dynamic shared memory: padded bf16 rows (the forward pass's queries, keys and values;
    /// the backward kernels' two resident tiles and one or two stages of two streamed ones),
    /// and the dK/dV kernel's log-sum-exps and deltas a stage.
    fn shared_bytes(self, head_dim: usize) -> usize {
        let config = Config::current();
        let (row, stages) = ((head_dim + 8) * 2, config.stages());
        match self {
            Kernel::Forward => (config.query_rows() + 2 * config.keys) * row,
            Kernel::Delta => 0,
            Kernel::KeysValues => (2 + 2 * stages) * TILE * row + 2 * stages * TILE * 4,
            Kernel::Queries => (2 + 2 * stages) * TILE * row,
        }
    }
}

/// The loaded kernels of each (CUDA context, head size).
static MODULES: Mutex<Option<HashMap<(usize, usize), Module>>> = Mutex::new(None);

#[derive(Clone, Copy)]
struct Module {
    functions: [driver::CUfunction; 4],
}

// SAFETY: a CUfunction is a handle the driver lets any thread launch.
unsafe impl Send for Module {}

trait Checked {
    fn checked(self, what: &str) -> Result<(), String>;
}

impl Checked for driver::CUresult {
    fn checked(self, what: &str) -> Result<(), String> {
        match self {
            driver::CUresult::CUDA_SUCCESS => Ok(()),
            error => Err(format!("{what}: {error:?}")),
        }
    }
}

impl Module {
    /// Compiles `flash.cu` for the current context's device with heads of `head_dim`.
    fn compile(head_dim: usize) -> Result<Self, String> {
        let (mut device, mut major, mut minor) = (0, 0, 0);
        // SAFETY: queries of the current context's device.
        unsafe {
            driver::cuCtxGetDevice(&mut device).checked("cuCtxGetDevice")?;
            let attribute =
                driver::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR;
            driver::cuDeviceGetAttribute(&mut major, attribute, device).checked("major")?;
            let attribute =
                driver::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR;
            driver::cuDeviceGetAttribute(&mut minor, attribute, device).checked("minor")?;
        }
        if major < 8 {
            return Err(format!("sm_{major}{minor} has no bf16 tensor cores"));
        }
        let suffix = if major >= 9 { "a" } else { "" };
        let config = Config::current();
        let options = [
            format!("--gpu-architecture=sm_{major}{minor}{suffix}"),
            format!("-DHEAD_DIM={head_dim}"),
            format!("-DM_TILES={}", config.m_tiles),
            format!("-DKEYS={}", config.keys),
            format!("-DPIPELINE={}", u8::from(config.pipeline)),
        ];
        let source = CString::new(SOURCE).map_err(|e| e.to_string())?;
        let program = nvrtc::create_program(&source, None).map_err(|e| e.to_string())?;
        // SAFETY: the program was just created and is destroyed only at the end of this block.
        let ptx = unsafe {
            let compiled = nvrtc::compile_program(program, &options);
            let result = match compiled {
                Ok(()) => nvrtc::get_ptx(program).map_err(|e| e.to_string()),
                Err(error) => {
                    let log = nvrtc::get_program_log(program).unwrap_or_default();
                    let log = CStr::from_ptr(log.as_ptr()).to_string_lossy();
                    Err(format!("NVRTC refused flash.cu ({error}): {log}"))
                }
            };
            let _ = nvrtc::destroy_program(program);
            result?
        };
        let mut functions = [std::ptr::null_mut(); 4];
        // SAFETY: `ptx` is NVRTC's null-terminated output; each name is an entry point of it.
        unsafe {
            let module = cudarc::driver::result::module::load_data(ptx.as_ptr().cast())
                .map_err(|e| format!("cuModuleLoadData: {e}"))?;
            for (slot, kernel) in functions.iter_mut().zip(Kernel::ALL) {
                let name = CString::new(kernel.name()).expect("no NUL");
                *slot = cudarc::driver::result::module::get_function(module, name)
                    .map_err(|e| format!("{}: {e}", kernel.name()))?;
                let bytes = kernel.shared_bytes(head_dim) as i32;
                let attribute =
                    driver::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                driver::cuFuncSetAttribute(*slot, attribute, bytes).checked("shared memory")?;
            }
        }
        Ok(Self { functions })
    }

    /// Enqueues `kernel` over `grid` blocks on `stream`.
    ///
    /// # Safety
    /// Every pointer of `problem` the kernel reads or writes must be a live allocation the
    /// sizes and layouts of `problem` describe, ordered by `stream`.
    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: [usize; 3],
        head_dim: usize,
        problem: &Problem,
        stream: driver::CUstream,
    ) -> Result<(), String> {
        let mut argument = (problem as *const Problem).cast_mut().cast::<c_void>();
        // SAFETY: the caller's contract; the one argument is the struct by value.
        unsafe {
            driver::cuLaunchKernel(
                self.functions[kernel as usize],
                grid[0] as u32,
                grid[1] as u32,
                grid[2] as u32,
                THREADS,
                1,
                1,
                kernel.shared_bytes(head_dim) as u32,
                stream,
                &mut argument,
                std::ptr::null_mut(),
            )
            .checked(kernel.name())
        }
    }
}

/// The module of the stream's context for heads of `head_dim`, compiled on first use; made
/// current on this thread, as CubeCL's device thread does before each command.
fn module(stream: driver::CUstream, head_dim: usize) -> Result<Module, String> {
    let mut context = std::ptr::null_mut();
    // SAFETY: the stream is CubeCL's, live for the device's lifetime.
    unsafe {
        driver::cuStreamGetCtx(stream, &mut context).checked("cuStreamGetCtx")?;
        driver::cuCtxSetCurrent(context).checked("cuCtxSetCurrent")?;
    }
    let mut modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    let modules = modules.get_or_insert_with(HashMap::new);
    if let Some(module) = modules.get(&(context as usize, head_dim)) {
        return Ok(*module);
    }
    let module = Module::compile(head_dim)?;
    modules.insert((context as usize, head_dim), module);
    Ok(module)
}

/// A tensor's device pointer and the stream that orders its work.
struct Operand {
    ptr: u64,
    stream: driver::CUstream,
    layout: Layout,
}

/// A tensor's device address and stream (the allocation stays the tensor's, which the caller
/// holds until the kernels are enqueued).
fn address(tensor: &CubeTensor) -> Option<(u64, driver::CUstream)> {
    let binding = tensor
        .client
        .get_resource::<CudaServer>(tensor.handle.clone())
        .ok()?;
    let resource: &GpuResource = binding.resource();
    Some((resource.ptr, resource.stream))
}

/// A 4-d bf16 operand, if the kernels can read it: contiguous along the head, rows and
/// pointer aligned to 16 bytes (`cp.async` moves 16 bytes).
fn operand(tensor: &CubeTensor) -> Option<Operand> {
    let strides = &tensor.meta.strides()[..];
    if tensor.dtype != DType::BF16
        || tensor.qparams.is_some()
        || strides.len() != 4
        || strides[3] != 1
        || strides[..3].iter().any(|s| s % 8 != 0)
    {
        return None;
    }
    let (ptr, stream) = address(tensor)?;
    let layout = Layout {
        batch: strides[0] as i64,
        head: strides[1] as i64,
        row: strides[2] as i64,
    };
    (ptr % 16 == 0).then_some(Operand {
        ptr,
        stream,
        layout,
    })
}

/// A contiguous tensor on `like`'s device: the kernels index the log-sum-exps and deltas
/// `[b, h, n]` as contiguous.
fn empty(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}

/// The problem's sizes and the head dimension, if the kernels serve them: `q` `[b, h, n, d]`,
/// `k` and `v` `[b, hk, start + n, d]` with `hk` dividing `h`.
fn sizes(
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    start: usize,
    scale: f64,
) -> Option<(Problem, usize)> {
    let [b, h, n, d] = <[usize; 4]>::try_from(q.meta.shape().as_slice()).ok()?;
    let [kb, hk, nk, kd] = <[usize; 4]>::try_from(k.meta.shape().as_slice()).ok()?;
    if !matches!(d, 64 | 128) || kb != b || kd != d || hk == 0 || h % hk != 0 || nk != start + n {
        return None;
    }
    if v.meta.shape() != k.meta.shape() {
        return None;
    }
    let int = |x: usize| i32::try_from(x).ok();
    let problem = Problem {
        batch: int(b)?,
        seq_q: int(n)?,
        seq_k: int(nk)?,
        start: int(start)?,
        group: int(h / hk)?,
        heads: int(h)?,
        scale_log2: (scale * std::f64::consts::LOG2_E) as f32,
        scale: scale as f32,
        ..Problem::default()
    };
    Some((problem, d))
}

/// `(softmax(q·kᵀ·scale, causal)·v, lse)` with `lse` `[b, h, n]` in f32, each row's
/// log₂-sum-exp₂ of `q·kᵀ·scale·log₂e` (what [`backward`] reads); `None` where the kernels do
/// not serve the operands.
pub fn forward(
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    start: usize,
    scale: f64,
) -> Option<(CubeTensor, CubeTensor)> {
    let (mut problem, d) = sizes(q, k, v, start, scale)?;
    let [b, h, n] = problem.queries();
    let (qo, ko, vo) = (operand(q)?, operand(k)?, operand(v)?);
    let out = empty(q, q.meta.shape().clone(), DType::BF16);
    let lse = empty(q, Shape::new([b, h, n]), DType::F32);
    let outo = operand(&out)?;
    (problem.q, problem.q_l) = (qo.ptr, qo.layout);
    (problem.k, problem.k_l) = (ko.ptr, ko.layout);
    (problem.v, problem.v_l) = (vo.ptr, vo.layout);
    (problem.out, problem.out_l) = (outo.ptr, outo.layout);
    problem.lse = address(&lse)?.0;
    let stream = outo.stream;
    let launched = module(stream, d).and_then(|module| {
        // SAFETY: every pointer is a live CubeCL allocation of the shape and strides given,
        // held by the tensors until the kernel is enqueued on their stream.
        unsafe {
            module.launch(
                Kernel::Forward,
                [n.div_ceil(Config::current().query_rows()), h, b],
                d,
                &problem,
                stream,
            )
        }
    });
    report(launched).then_some((out, lse))
}

/// `(dq, dk, dv)` of [`forward`]'s attention from its output `o`, its `lse` and the output's
/// gradient `d_o`; `dk` and `dv` summed over the query heads each key/value head serves.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    o: &CubeTensor,
    lse: &CubeTensor,
    d_o: &CubeTensor,
    start: usize,
    scale: f64,
) -> Option<(CubeTensor, CubeTensor, CubeTensor)> {
    let (mut problem, d) = sizes(q, k, v, start, scale)?;
    let [b, h, n] = problem.queries();
    let (hk, nk) = (h / problem.group as usize, problem.seq_k as usize);
    if o.meta.shape() != q.meta.shape() || d_o.meta.shape() != q.meta.shape() {
        return None;
    }
    if lse.dtype != DType::F32 || !lse.is_contiguous() {
        return None;
    }
    let (qo, ko, vo) = (operand(q)?, operand(k)?, operand(v)?);
    let (oo, doo) = (operand(o)?, operand(d_o)?);
    let delta = empty(q, Shape::new([b, h, n]), DType::F32);
    let dq = empty(q, q.meta.shape().clone(), DType::BF16);
    let dk = empty(k, k.meta.shape().clone(), DType::BF16);
    let dv = empty(k, k.meta.shape().clone(), DType::BF16);
    let (dqo, dko, dvo) = (operand(&dq)?, operand(&dk)?, operand(&dv)?);
    (problem.q, problem.q_l) = (qo.ptr, qo.layout);
    (problem.k, problem.k_l) = (ko.ptr, ko.layout);
    (problem.v, problem.v_l) = (vo.ptr, vo.layout);
    (problem.o, problem.o_l) = (oo.ptr, oo.layout);
    (problem.d_o, problem.do_l) = (doo.ptr, doo.layout);
    (problem.dq, problem.dq_l) = (dqo.ptr, dqo.layout);
    (problem.dk, problem.dk_l) = (dko.ptr, dko.layout);
    (problem.dv, problem.dv_l) = (dvo.ptr, dvo.layout);
    problem.lse = address(lse)?.0;
    problem.delta = address(&delta)?.0;
    let stream = dqo.stream;
    let launched = module(stream, d).and_then(|module| {
        let rows = b * h * n;
        // SAFETY: as in `forward`: live allocations of the shapes and strides given, ordered
        // by their stream; the delta kernel runs before the two that read it.
        unsafe {
            let warps = THREADS as usize / 32; // a row each
            module.launch(
                Kernel::Delta,
                [rows.div_ceil(warps), 1, 1],
                d,
                &problem,
                stream,
            )?;
            module.launch(
                Kernel::KeysValues,
                [nk.div_ceil(TILE), hk, b],
                d,
                &problem,
                stream,
            )?;
            module.launch(
                Kernel::Queries,
                [n.div_ceil(TILE), h, b],
                d,
                &problem,
                stream,
            )
        }
    });
    report(launched).then_some((dq, dk, dv))
}

/// Whether a launch went through; a failure is reported once on stderr and turns the kernels
/// off for the process (the composed form runs from then on).
fn report(launched: Result<(), String>) -> bool {
    match launched {
        Ok(()) => true,
        Err(error) => {
            if INSTALLED.swap(false, Ordering::Relaxed) {
                eprintln!("warning: flash attention off ({error}); attention runs composed");
            }
            false
        }
    }
}
