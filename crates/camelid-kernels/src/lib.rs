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
//! - `cuda_graph` (feature `cuda`): capture and replay of CUDA graphs over candle ops.

pub mod attention;
pub mod cpu_features;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_graph;
pub mod cuda_shapes;
pub mod f16gemm;
pub mod quant;
#[cfg(target_arch = "x86_64")]
mod tiles;
pub mod vecmath;

/// Asks Linux to back `buf` (at least its whole 2 MiB-aligned pages) with huge pages, before
/// it is first written: a decode streams every weight once a token, and with 4 KiB pages a
/// 1B model's weights span ~170 000 TLB entries' worth of pages. Does nothing elsewhere or
/// for small buffers.
pub(crate) fn advise_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (buf.as_mut_ptr() as usize, std::mem::size_of_val(buf));
        let first = start.next_multiple_of(HUGE);
        let end = (start + len) / HUGE * HUGE;
        if end > first {
            // Safety: the range lies within `buf`; the advice changes no contents.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// One cache line, the unit of the buffers AMX tiles load from: a tile row that straddles two
/// lines loads ~6× slower (benches/README, Session 31).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

impl Line {
    /// Lines enough for `n` 16-bit values, zeroed (a call's scratch).
    pub(crate) fn for_u16s(n: usize) -> Vec<Line> {
        vec![Line([0; 64]); n.div_ceil(32)]
    }

    /// Lines for `n` 16-bit values kept for the model's life, on huge pages where Linux gives
    /// them, written on every thread: `fill(i, c)` writes chunk `i` (`c`, `chunk` values, the
    /// last one shorter, zeroed first). The advice is given before any page is touched, and
    /// these writes are the only pass over the memory (a zeroing pass before them, which
    /// `vec!` or an aligned `alloc_zeroed` makes, took a quarter of loading an F16 model).
    pub(crate) fn u16s_on_huge_pages(
        n: usize,
        chunk: usize,
        fill: impl Fn(usize, &mut [u16]) + Sync,
    ) -> Vec<Line> {
        use rayon::prelude::*;
        use std::mem::MaybeUninit;
        let lines = n.div_ceil(32);
        let mut v: Vec<Line> = Vec::with_capacity(lines);
        advise_huge_pages(v.spare_capacity_mut());
        let spare = &mut v.spare_capacity_mut()[..lines];
        // Safety: a line is 32 u16s, aligned past u16's needs; still uninitialised.
        let values: &mut [MaybeUninit<u16>] = unsafe {
            std::slice::from_raw_parts_mut(spare.as_mut_ptr() as *mut MaybeUninit<u16>, lines * 32)
        };
        values
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| {
                c.fill(MaybeUninit::new(0));
                // Safety: every value of `c` was just written.
                let c = unsafe { &mut *(c as *mut [MaybeUninit<u16>] as *mut [u16]) };
                fill(i, c);
            });
        // Safety: every line's values were written above.
        unsafe { v.set_len(lines) };
        v
    }

    /// The lines' bytes as 16-bit values (32 a line).
    pub(crate) fn u16s(lines: &[Line]) -> &[u16] {
        // Safety: 64 plain bytes a line, aligned past u16's needs; the length is in values.
        unsafe { std::slice::from_raw_parts(lines.as_ptr() as *const u16, lines.len() * 32) }
    }

    /// As [`Line::u16s`], writable.
    pub(crate) fn u16s_mut(lines: &mut [Line]) -> &mut [u16] {
        // Safety: as `u16s`, with the lines borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u16, lines.len() * 32) }
    }
}

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
