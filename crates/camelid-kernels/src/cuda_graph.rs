//! CUDA graphs over candle: a closure's kernels captured once on a device's stream and
//! replayed with one launch, and what replays need from outside the graph: host values
//! written into tensors the graph reads, and cuBLAS given a workspace of its own.
//!
//! A decode step issues ~15 small kernels a layer; launched one by one from the host they
//! cost ~0.2 ms a layer on an H200 whatever the batch (benches/gpu/RESULTS.md, 2026-12-04).
//! A graph replays all of them in one launch. Kernel arguments (pointers, shapes, scalars)
//! are fixed at capture, so everything a replay varies must live in device memory the
//! graph was captured reading: callers keep such tensors and [`write_host`] into them.
//!
//! candle 0.11 is made for this: under its htod cache guard the layout parameters its
//! strided kernels upload are uploaded once (in the eager warm-up run) and reused by the
//! captured run, and its copies refuse to run while a stream captures.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys as cublas_sys;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaGraph, CudaStream, DevicePtr, DeviceRepr, DriverError,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, InplaceOp1, Layout, Result, Tensor, WithDType,
};
use std::collections::HashSet;
use std::sync::Mutex;

/// Whether graphs can be captured on `dev`: its stream is one of its own (the legacy and the
/// per-thread default streams cannot be captured, or not safely with other threads' work) and
/// cudarc orders nothing with events (a captured wait on an event recorded before the
/// capture is an error). `camelid serve` makes such devices (`parse_device`).
pub fn capturable(dev: &CudaDevice) -> bool {
    let stream = dev.cuda_stream();
    let raw = stream.cu_stream() as usize;
    // 0: the legacy default stream; 1 and 2: CU_STREAM_LEGACY and CU_STREAM_PER_THREAD.
    raw > 2 && !stream.context().is_managing_stream_synchronization()
}

/// A captured, instantiated graph on one device's stream.
pub struct Graph {
    graph: CudaGraph,
}

// SAFETY: a `CudaGraph` is a pair of driver handles and an `Arc` of its stream; the driver
// asks that calls on one graph be serialized, which `&mut self` on `launch` and the owner's
// lock (the model's graph cache) give.
unsafe impl Send for Graph {}

impl Graph {
    /// Runs `f` twice under candle's htod cache: once as usual (it loads the kernels' modules,
    /// makes cuBLAS choose its algorithms and caches every layout parameter candle uploads),
    /// then captured. `f` must allocate nothing that outlives it: what a replay produces it
    /// writes into tensors made before (a captured allocation is the graph's own memory).
    /// The eager run's effects stay (this step's results); a replay repeats them. Inputs are
    /// made before: a `Tensor::new` inside `f` would take a buffer from candle's htod cache
    /// (shared by equal uploads, freed with the thread), not one the caller owns.
    pub fn capture<E: From<candle_core::Error>>(
        dev: &CudaDevice,
        mut f: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        if !capturable(dev) {
            return Err(msg("the device's stream cannot be captured").into());
        }
        let _cache = dev.enable_cuda_graph_htod_cache();
        f()?;
        let stream = dev.cuda_stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .w()?;
        // Ended however `f` leaves (an error, a panic), so the stream is usable after.
        let mut capturing = EndCapture(Some(stream.clone()));
        let captured = f();
        let ended = capturing.end();
        captured?;
        let Some(graph) = ended.w()? else {
            return Err(msg("the capture recorded no work").into());
        };
        graph.upload().w()?;
        Ok(Self { graph })
    }

    /// Enqueues one replay on the stream it was captured on.
    pub fn launch(&mut self) -> Result<()> {
        self.graph.launch().w()
    }
}

fn msg(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA graphs: {what}"))
}

/// Ends a stream's capture once: by [`EndCapture::end`], or on drop (a panic in the captured
/// closure), discarding the graph.
struct EndCapture(Option<std::sync::Arc<CudaStream>>);

impl EndCapture {
    fn end(&mut self) -> std::result::Result<Option<CudaGraph>, DriverError> {
        let Some(s) = self.0.take() else {
            return Ok(None);
        };
        // An error the context recorded during the capture (a free that an invalidated
        // capture refused) would make `end_capture` return before it ends the capture,
        // leaving the stream capturing and every later call on it failing: taken first, and
        // returned once the capture is over.
        let recorded = s.context().check_err();
        let ended = s.end_capture(sys::CUgraphInstantiate_flags(0));
        recorded?;
        ended
    }
}

impl Drop for EndCapture {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Gives cuBLAS on `dev` a workspace of its own, once per device: a captured GEMM must not
/// allocate one. 32 MiB, NVIDIA's advice for Hopper. The buffer is never freed: cuBLAS holds
/// its pointer for as long as the device's handle lives.
pub fn set_cublas_workspace(dev: &CudaDevice) -> Result<()> {
    static DONE: Mutex<Option<HashSet<candle_core::cuda_backend::DeviceId>>> = Mutex::new(None);
    const BYTES: usize = 32 << 20;
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !done.get_or_insert_with(HashSet::new).insert(dev.id()) {
        return Ok(());
    }
    let buf = dev.alloc_zeros::<u8>(BYTES)?;
    let stream = dev.cuda_stream();
    let (ptr, _sync) = buf.device_ptr(&stream);
    let blas = dev.cublas_handle();
    // SAFETY: `ptr` is BYTES of device memory that is leaked below, so it outlives the handle.
    unsafe { cublas_sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, BYTES) }
        .result()
        .map_err(|e| candle_core::Error::Msg(format!("cublasSetWorkspace: {e:?}")))?;
    drop(_sync);
    std::mem::forget(buf);
    Ok(())
}

/// Copies `src` into `dst` (contiguous, on CUDA, `src.len()` values of `dst`'s dtype) on the
/// device's stream, after the work enqueued before it. Not while capturing: the values are
/// read at once from pageable memory.
pub fn write_host<T: CudaDType + WithDType + DeviceRepr>(dst: &Tensor, src: &[T]) -> Result<()> {
    if dst.dtype() != T::DTYPE {
        bail!(
            "write_host: {:?} values into a {:?} tensor",
            T::DTYPE,
            dst.dtype()
        );
    }
    dst.inplace_op1(&HostWrite(src))
}

struct HostWrite<'a, T>(&'a [T]);

impl<T: CudaDType + WithDType + DeviceRepr> InplaceOp1 for HostWrite<'_, T> {
    fn name(&self) -> &'static str {
        "camelid-write-host"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("write_host writes CUDA tensors")
    }
    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("write_host: the tensor must be contiguous")
        };
        if b - a != self.0.len() {
            bail!("write_host: {} values into {}", self.0.len(), b - a);
        }
        let stream = s.device().cuda_stream();
        let mut dst = s.as_cuda_slice_mut::<T>()?.slice_mut(a..b);
        stream.memcpy_htod(self.0, &mut dst).w()
    }
}
