//! camelid-kernels: compute on slices and device buffers. Nothing here knows a model
//! configuration, a request or a tensor of weights by name: callers pass shapes and buffers.
//!
//! - [`cpu_features`]: the one probe of the CPU's vector extensions.
//! - [`f16gemm`]: the matmul for 16-bit (f16, bf16) weights × f32 activations.
//! - [`quant`]: the quantized matmul (GGML block formats × 8-bit activations): formats, the
//!   scalar reference, repacking, and the AVX2 / AVX-512 kernels.
//! - [`vecmath`]: f32 vector primitives (dot, axpy, `exp`, SiLU·mul, f16/Q8 widening).
//! - [`attention`]: the host paged KV cache and attention over it (decode and prompt kernels).
//! - `cuda` (feature `cuda`): camelid's CUDA kernels (`kernels/*.cu`) as candle ops.

pub mod attention;
pub mod cpu_features;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod f16gemm;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod tiles;
pub mod vecmath;

/// Raw output pointer shared by threads that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the Send wrapper and not the raw field.
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        // Safety: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(i) }
    }
}
