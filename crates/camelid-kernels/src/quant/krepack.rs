//! The K formats (Q4_K, Q5_K, Q6_K) repacked into interleaved groups of `G` rows (8 for the
//! AVX2 kernels, 16 for AVX-512), super-block by super-block: GGML's `q4_K` 8×8 repack idea,
//! with the 6-bit packed scales and mins unpacked to one byte each once, at load.
//!
//! One loaded vector holds four bytes of each of the `G` rows (row `r` at bytes `4r..4r+4`), so
//! a broadcast of four activation bytes multiplies all `G` rows at once and the `G` sums land in
//! the lanes of one register. Per super-block of a group (offsets in units of `G` bytes):
//!
//! - Q4_K (148 G): `d[G]` f16 at 0, `dmin[G]` f16 at 2, `sc[8][G]` u8 at 4, `m[8][G]` u8 at
//!   12, then at 20 the 32 nibble vectors `(c, g)` (c = 0..4, g = 0..8) of 4 G bytes: row
//!   `r`'s `qs[32c + 4g..][..4]`. Low nibbles are values `64c + 4g..` (sub-block `2c`), high
//!   nibbles values `64c + 32 + 4g..` (sub-block `2c + 1`).
//! - Q5_K (180 G): Q4_K's first 20, then at 20 the eight fifth-bit vectors `g`: row `r`'s
//!   `qh[4g..][..4]` (bit `j` belongs to sub-block `j`), then at 52 Q4_K's nibble vectors.
//! - Q6_K (210 G): `d[G]` f16 at 0, `sc[16][G]` i8 at 2, then at 18, for each half `n` (0..2)
//!   and `g` (0..8), three vectors: row `r`'s `ql[64n + 4g..]`, `ql[64n + 32 + 4g..]` and
//!   `qh[32n + 4g..]` (four bytes each), which hold values `128n + 32k + 4g..` for k = 0..4.
//!
//! A matrix whose rows are not a multiple of `G` gets a last group padded with zero rows (scale
//! 0: they add nothing, and the kernels' outputs for them are dropped).

use super::reference::{k4_scale_min, QK_K};
use super::QKind;

/// Bytes of one super-block of an interleaved group of `g` rows.
pub(super) fn group_superblock_bytes(kind: QKind, g: usize) -> usize {
    match kind {
        QKind::Q4K => 148 * g,
        QKind::Q5K => 180 * g,
        QKind::Q6K => 210 * g,
        _ => unreachable!("not a K format: {kind:?}"),
    }
}

/// GGUF's row-major super-blocks (`rows` × `cols / 256`) → interleaved groups of `g` rows.
pub(super) fn repack(kind: QKind, rows: usize, cols: usize, data: &[u8], g: usize) -> Vec<u8> {
    let (nsb, bb) = (cols / QK_K, kind.block_bytes());
    let sbb = group_superblock_bytes(kind, g);
    let mut out = vec![0u8; rows.div_ceil(g) * nsb * sbb];
    crate::advise_huge_pages(&mut out);
    for (gi, dst_group) in out.chunks_exact_mut(nsb * sbb).enumerate() {
        for (b, dst) in dst_group.chunks_exact_mut(sbb).enumerate() {
            for r in 0..g.min(rows - gi * g) {
                let src = &data[((gi * g + r) * nsb + b) * bb..][..bb];
                match kind {
                    QKind::Q4K | QKind::Q5K => {
                        put_k4_header(src, dst, g, r);
                        let (qh, qs, qs_at) = match kind {
                            QKind::Q5K => (Some(&src[16..48]), &src[48..176], 52 * g),
                            _ => (None, &src[16..144], 20 * g),
                        };
                        if let Some(qh) = qh {
                            put_fours(qh, &mut dst[20 * g..], g, r, 1);
                        }
                        put_fours(qs, &mut dst[qs_at..], g, r, 1);
                    }
                    QKind::Q6K => {
                        dst[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
                        for s in 0..16 {
                            dst[2 * g + s * g + r] = src[192 + s];
                        }
                        let vectors = &mut dst[18 * g..];
                        for n in 0..2 {
                            let (ql, qh) = (&src[64 * n..64 * n + 64], &src[128 + 32 * n..][..32]);
                            let half = &mut vectors[n * 8 * 3 * 4 * g..];
                            put_fours(&ql[..32], half, g, r, 3);
                            put_fours(&ql[32..], &mut half[4 * g..], g, r, 3);
                            put_fours(qh, &mut half[8 * g..], g, r, 3);
                        }
                    }
                    _ => unreachable!("not a K format: {kind:?}"),
                }
            }
        }
    }
    out
}

/// Q4_K/Q5_K's `d`, `dmin` and the eight unpacked scales and mins of row `r`.
fn put_k4_header(src: &[u8], dst: &mut [u8], g: usize, r: usize) {
    dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
    dst[2 * g + 2 * r..2 * g + 2 * r + 2].copy_from_slice(&src[2..4]);
    for j in 0..8 {
        let (sc, m) = k4_scale_min(&src[4..16], j);
        dst[4 * g + j * g + r] = sc;
        dst[12 * g + j * g + r] = m;
    }
}

/// Row `r`'s bytes `src[4v..4v + 4]` into vector `v` (vectors `stride` apart, each `4g` bytes).
fn put_fours(src: &[u8], dst: &mut [u8], g: usize, r: usize, stride: usize) {
    for (v, four) in src.chunks_exact(4).enumerate() {
        let at = v * stride * 4 * g + 4 * r;
        dst[at..at + 4].copy_from_slice(four);
    }
}
