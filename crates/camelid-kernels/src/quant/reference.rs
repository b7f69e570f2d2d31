//! The scalar reference of the quantized matmul: the SIMD kernels must give its bytes and
//! (to float rounding) its sums.

use super::{ActRow, QKind, BLOCK};
use half::f16;

pub(crate) fn quantize_blocks_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, (xb, qb)) in x
        .chunks_exact(BLOCK)
        .zip(qs.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let db = amax / 127.0;
        let id = if db > 0.0 { 1.0 / db } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        d[b] = db;
        s[b] = db * sum as f32;
    }
}

pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Reference dot products of one weight row with `acts.len()` activation rows.
pub(crate) fn dot_rows_scalar(kind: QKind, wrow: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let bb = kind.block_bytes();
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let mut sum = 0f32;
        for (b, blk) in wrow.chunks_exact(bb).enumerate() {
            let aq = &a.qs[b * BLOCK..(b + 1) * BLOCK];
            let nibble_dot = |qs: &[u8]| -> i32 {
                (0..16)
                    .map(|j| {
                        (qs[j] & 0xF) as i32 * aq[j] as i32
                            + (qs[j] >> 4) as i32 * aq[j + 16] as i32
                    })
                    .sum()
            };
            sum += match kind {
                QKind::Q4_0 => {
                    f16_at(blk, 0) * (a.d[b] * nibble_dot(&blk[2..18]) as f32 - 8.0 * a.s[b])
                }
                QKind::Q4_1 => {
                    f16_at(blk, 0) * a.d[b] * nibble_dot(&blk[4..20]) as f32
                        + f16_at(blk, 2) * a.s[b]
                }
                QKind::Q8_0 => {
                    let isum: i32 = (0..BLOCK)
                        .map(|j| blk[2 + j] as i8 as i32 * aq[j] as i32)
                        .sum();
                    f16_at(blk, 0) * a.d[b] * isum as f32
                }
            };
        }
        *o = sum;
    }
}
