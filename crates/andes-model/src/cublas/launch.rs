//! The launch of a product through cuBLASLt, on the stream CubeCL launches its kernels on.

use burn::tensor::DType;
use burn_cubecl::kernel::matmul::MATMUL_OVERRIDE;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::{CudaServer, GpuResource};
use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys as driver;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use super::layout::{Dtypes, Matrix, Operand, Product};

/// Installs cuBLASLt as the CUDA backend's matrix product, when the library loads; answers
/// whether it did. Called when a CUDA device is opened; installing twice is harmless.
pub fn install() -> bool {
    // SAFETY: probing dynamic libraries by name has no other effect.
    let present = unsafe { sys::is_culib_present() };
    if present {
        let _ = MATMUL_OVERRIDE.set(matmul);
    }
    present
}

/// What `ANDES_MATMUL` asks: `cubecl` leaves every product to CubeCL (the comparison runs),
/// `trace` reports on stderr, once per distinct product, where it ran and why.
fn mode() -> &'static str {
    static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MODE.get_or_init(|| std::env::var("ANDES_MATMUL").unwrap_or_default())
}

/// The routine installed in `burn-cubecl`: computes `out = lhs · rhs` through cuBLASLt and
/// answers true, or answers false without touching anything.
fn matmul(lhs: &CubeTensor, rhs: &CubeTensor, out: &CubeTensor) -> bool {
    if mode() == "cubecl" {
        return false;
    }
    let outcome = try_matmul(lhs, rhs, out);
    if mode() == "trace" {
        trace(lhs, rhs, out, &outcome);
    }
    outcome.is_ok()
}

fn try_matmul(lhs: &CubeTensor, rhs: &CubeTensor, out: &CubeTensor) -> Result<(), String> {
    let readable = |tensor: &CubeTensor| tensor.qparams.is_none() && !tensor.meta.is_tiled();
    if ![lhs, rhs, out].into_iter().all(readable) {
        return Err("a quantized or tiled operand".into());
    }
    let product = Product::of(matrix(lhs), matrix(rhs), matrix(out))
        .ok_or("a layout or dtype cuBLASLt does not read")?;
    let client = &out.client;
    let resource = |tensor: &CubeTensor| {
        client
            .get_resource::<CudaServer>(tensor.handle.clone())
            .map_err(|e| format!("no device pointer: {e:?}"))
    };
    let (lhs, rhs, out) = (resource(lhs)?, resource(rhs)?, resource(out)?);
    let mut libraries = LIBRARIES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: the three resources are live device allocations of the sizes their tensors'
    // metadata describe (held by the bindings above until the call is enqueued), and the work
    // is enqueued on the stream that orders every other use of them.
    unsafe { libraries.launch(&product, lhs.resource(), rhs.resource(), out.resource()) }
}

/// A tensor as the layout arithmetic reads it.
fn matrix(tensor: &CubeTensor) -> Matrix<'_> {
    Matrix {
        dtype: tensor.dtype,
        shape: tensor.meta.shape().as_slice(),
        strides: &tensor.meta.strides()[..],
    }
}

/// Reports a product's shapes, strides and dtypes with where it ran, the first time each is seen.
fn trace(lhs: &CubeTensor, rhs: &CubeTensor, out: &CubeTensor, outcome: &Result<(), String>) {
    static SEEN: Mutex<Option<std::collections::HashSet<String>>> = Mutex::new(None);
    let describe = |t: &CubeTensor| {
        format!(
            "{:?}{:?}/{:?}",
            t.dtype,
            t.meta.shape().as_slice(),
            &t.meta.strides()[..]
        )
    };
    let line = format!(
        "{} · {} → {}: {}",
        describe(lhs),
        describe(rhs),
        describe(out),
        match outcome {
            Ok(()) => "cuBLASLt".to_string(),
            Err(reason) => format!("CubeCL ({reason})"),
        }
    );
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if seen
        .get_or_insert_with(Default::default)
        .insert(line.clone())
    {
        eprintln!("matmul: {line}");
    }
}

impl Dtypes {
    /// cuBLASLt's name of an element type.
    fn cuda(dtype: DType) -> sys::cudaDataType {
        match dtype {
            DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
            DType::F16 => sys::cudaDataType::CUDA_R_16F,
            _ => sys::cudaDataType::CUDA_R_32F,
        }
    }

    fn compute(self) -> sys::cublasComputeType_t {
        match self.operands {
            DType::F32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            _ => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        }
    }
}

/// The cuBLASLt handle and workspace of each CUDA context, and the descriptors and chosen
/// algorithm of each product seen, built once per shape (a training step repeats a few dozen).
struct Libraries {
    contexts: HashMap<usize, Library>,
}

/// One context's cuBLASLt handle, its workspace, and the plans made in it.
struct Library {
    handle: sys::cublasLtHandle_t,
    workspace: driver::CUdeviceptr,
    plans: HashMap<(Product, [u32; 3]), Plan>,
}

/// A product's descriptors and algorithm, reusable for every call of the same shape,
/// strides, dtypes and operand alignments.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the handles are opaque host objects used only under the `LIBRARIES` lock.
unsafe impl Send for Libraries {}

static LIBRARIES: std::sync::LazyLock<Mutex<Libraries>> = std::sync::LazyLock::new(|| {
    Mutex::new(Libraries {
        contexts: HashMap::new(),
    })
});

/// cuBLASLt's workspace for its split-k and stream-k algorithms; PyTorch uses 32 MiB on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

/// Runs a cuBLAS or CUDA call, mapping its failure to a message.
trait Checked {
    fn checked(self) -> Result<(), String>;
}

impl Checked for Result<(), lt::CublasError> {
    fn checked(self) -> Result<(), String> {
        self.map_err(|e| format!("cuBLASLt: {e}"))
    }
}

impl Checked for driver::CUresult {
    fn checked(self) -> Result<(), String> {
        match self {
            driver::CUresult::CUDA_SUCCESS => Ok(()),
            error => Err(format!("CUDA: {error:?}")),
        }
    }
}

impl Libraries {
    /// Enqueues the product on the output's stream.
    ///
    /// # Safety
    /// The resources must be live allocations large enough for `product`'s layouts.
    unsafe fn launch(
        &mut self,
        product: &Product,
        lhs: &GpuResource,
        rhs: &GpuResource,
        out: &GpuResource,
    ) -> Result<(), String> {
        let stream = out.stream;
        let mut context = std::ptr::null_mut();
        // SAFETY: the stream is CubeCL's, live for the device's lifetime; making its context
        // current on this thread is what CubeCL's own device thread does before each command.
        unsafe {
            driver::cuStreamGetCtx(stream, &mut context).checked()?;
            driver::cuCtxSetCurrent(context).checked()?;
        }
        let library = match self.contexts.entry(context as usize) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // Allocating the workspace is not allowed while the stream records a graph
                // (a replayed decode); the products of such a first call stay with CubeCL.
                let mut capture = driver::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
                // SAFETY: a query of a live stream.
                unsafe { driver::cuStreamIsCapturing(stream, &mut capture).checked()? };
                if capture != driver::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                    return Err("first product inside a graph capture".into());
                }
                entry.insert(Library::new()?)
            }
        };
        let operand_bytes = product.dtypes.operands.size() as u64;
        let out_bytes = product.dtypes.out.size() as u64;
        // Every matrix a call reads starts at its pointer plus whole strides: its alignment is
        // the largest power of two (up to 256 bytes) dividing all of them.
        let alignment = |ptr: u64, operand: &Operand, bytes: u64| {
            let starts =
                ptr | (operand.call_stride as u64 * bytes) | (operand.batch_stride as u64 * bytes);
            1u32 << starts.trailing_zeros().min(8)
        };
        let alignments = [
            alignment(rhs.ptr, &product.a, operand_bytes),
            alignment(lhs.ptr, &product.b, operand_bytes),
            alignment(out.ptr, &product.d, out_bytes),
        ];
        let key = (*product, alignments);
        if !library.plans.contains_key(&key) {
            let plan = library.plan(product, alignments)?;
            library.plans.insert(key, plan);
        }
        let plan = &library.plans[&key];
        let (alpha, beta) = (1.0f32, 0.0f32);
        for call in 0..product.calls as u64 {
            let at = |ptr: u64, operand: &Operand, bytes: u64| {
                ptr + call * operand.call_stride as u64 * bytes
            };
            let out_ptr = at(out.ptr, &product.d, out_bytes);
            // SAFETY: the plan's layouts describe the resources (the caller's contract), the
            // workspace is this context's, and the stream orders the call among CubeCL's kernels.
            unsafe {
                lt::matmul(
                    library.handle,
                    plan.desc,
                    (&alpha as *const f32).cast(),
                    (&beta as *const f32).cast(),
                    at(rhs.ptr, &product.a, operand_bytes) as *const c_void,
                    plan.a,
                    at(lhs.ptr, &product.b, operand_bytes) as *const c_void,
                    plan.b,
                    out_ptr as *const c_void,
                    plan.d,
                    out_ptr as *mut c_void,
                    plan.d,
                    &plan.algo,
                    library.workspace as *mut c_void,
                    WORKSPACE_BYTES,
                    stream as sys::cudaStream_t,
                )
                .checked()?;
            }
        }
        Ok(())
    }
}

impl Library {
    /// The handle and workspace of the current context.
    fn new() -> Result<Self, String> {
        let handle = lt::create_handle().checked_value()?;
        // SAFETY: a plain allocation in the current context, kept for the process's lifetime.
        let workspace = unsafe { cudarc::driver::result::malloc_sync(WORKSPACE_BYTES) }
            .map_err(|e| format!("CUDA: {e:?}"))?;
        Ok(Self {
            handle,
            workspace,
            plans: HashMap::new(),
        })
    }

    /// Builds the descriptors of `product` and asks cuBLASLt's heuristic for its best
    /// algorithm under the operands' actual alignments (its default assumes 256 bytes).
    fn plan(&self, product: &Product, alignments: [u32; 3]) -> Result<Plan, String> {
        let operands = Dtypes::cuda(product.dtypes.operands);
        let out = Dtypes::cuda(product.dtypes.out);
        let layout = |kind, rows, cols, ld, stride: i64| -> Result<_, String> {
            let layout = lt::create_matrix_layout(kind, rows, cols, ld).checked_value()?;
            if product.batch > 1 {
                // SAFETY: attributes of a layout just created, with values of the documented types.
                unsafe {
                    set(
                        layout,
                        sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        &product.batch,
                    )?;
                    set(layout, sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride)?;
                }
            }
            Ok(layout)
        };
        let (a, b, d) = (product.a, product.b, product.d);
        let a_layout = layout(operands, a.rows, a.cols, a.ld, a.batch_stride)?;
        let b_layout = layout(operands, b.rows, b.cols, b.ld, b.batch_stride)?;
        let d_layout = layout(out, d.rows, d.cols, d.ld, d.batch_stride)?;
        let desc = lt::create_matmul_desc(product.dtypes.compute(), sys::cudaDataType::CUDA_R_32F)
            .checked_value()?;
        // cublasOperation_t, an int32 attribute: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let op = |transposed: bool| -> i32 { transposed.into() };
        let preference = lt::create_matmul_pref().checked_value()?;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: attributes of descriptors just created, with values of the documented types;
        // the preference is destroyed once the heuristic has answered.
        let algo = unsafe {
            use sys::cublasLtMatmulDescAttributes_t as Desc;
            use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
            lt::set_matmul_desc_attribute(
                desc,
                Desc::CUBLASLT_MATMUL_DESC_TRANSA,
                (&op(a.transposed) as *const i32).cast(),
                size_of::<i32>(),
            )
            .checked()?;
            lt::set_matmul_desc_attribute(
                desc,
                Desc::CUBLASLT_MATMUL_DESC_TRANSB,
                (&op(b.transposed) as *const i32).cast(),
                size_of::<i32>(),
            )
            .checked()?;
            lt::set_matmul_pref_attribute(
                preference,
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const u64).cast(),
                size_of::<u64>(),
            )
            .checked()?;
            let [align_a, align_b, align_d] = alignments;
            for (attribute, bytes) in [
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d),
            ] {
                lt::set_matmul_pref_attribute(
                    preference,
                    attribute,
                    (&bytes as *const u32).cast(),
                    size_of::<u32>(),
                )
                .checked()?;
            }
            let heuristic = lt::get_matmul_algo_heuristic(
                self.handle,
                desc,
                a_layout,
                b_layout,
                d_layout,
                d_layout,
                preference,
            );
            lt::destroy_matmul_pref(preference).checked()?;
            heuristic.checked_value()?.algo
        };
        Ok(Plan {
            desc,
            a: a_layout,
            b: b_layout,
            d: d_layout,
            algo,
        })
    }
}

/// Sets one attribute of a matrix layout.
///
/// # Safety
/// `layout` must be live and `T` the attribute's documented type.
unsafe fn set<T>(
    layout: sys::cublasLtMatrixLayout_t,
    attribute: sys::cublasLtMatrixLayoutAttribute_t,
    value: &T,
) -> Result<(), String> {
    // SAFETY: the caller's contract.
    unsafe {
        lt::set_matrix_layout_attribute(
            layout,
            attribute,
            (value as *const T).cast(),
            size_of::<T>(),
        )
    }
    .checked()
}

/// A cuBLAS call's value, its failure mapped to a message.
trait CheckedValue<T> {
    fn checked_value(self) -> Result<T, String>;
}

impl<T> CheckedValue<T> for Result<T, lt::CublasError> {
    fn checked_value(self) -> Result<T, String> {
        self.map_err(|e| format!("cuBLASLt: {e}"))
    }
}
