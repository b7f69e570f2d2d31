//! The scalar reference of the quantized matmul: the SIMD kernels must give its bytes and
//! (to float rounding) its sums.

use super::{ActRow, QKind, SumBoundsMut, BLOCK};
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
            // 5-bit values: nibble j (low: value j, high: value j + 16) plus bit j of `qh`.
            let five_dot = |qh: &[u8], qs: &[u8]| -> i32 {
                let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
                (0..16)
                    .map(|j| {
                        let lo = (qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
                        let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                        lo as i32 * aq[j] as i32 + hi as i32 * aq[j + 16] as i32
                    })
                    .sum()
            };
            sum += match kind {
                QKind::Q5_0 => {
                    f16_at(blk, 0)
                        * (a.d[b] * five_dot(&blk[2..6], &blk[6..22]) as f32 - 16.0 * a.s[b])
                }
                QKind::Q5_1 => {
                    f16_at(blk, 0) * a.d[b] * five_dot(&blk[4..8], &blk[8..24]) as f32
                        + f16_at(blk, 2) * a.s[b]
                }
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
                _ => unreachable!("K formats: dot_rows_k_scalar"),
            };
        }
        *o = sum;
    }
}

/// Values per K-quant super-block (GGML's `QK_K`), also the Q8_K activation block.
pub(crate) const QK_K: usize = 256;

/// Activations for the K formats (GGML's Q8_K idea): per 256 values one scale `d` (`x ≈ d·q`,
/// rounding ties to even) and the integer sum of each 16 values (`bsums`), which carries the
/// weights' per-sub-block offsets (Q4_K/Q5_K mins, Q6_K's −32) without touching the values;
/// `sums8` the sum of each 8 (the −32 of Q6_K's VNNI passes over half sub-blocks).
pub(crate) fn quantize_q8k_scalar(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    sums8: &mut [i16],
    bounds: SumBoundsMut,
) {
    for (b, (xb, qb)) in x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let db = amax / 127.0;
        let id = if db > 0.0 { 1.0 / db } else { 0.0 };
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
        d[b] = db;
        for (j, sixteen) in qb.chunks_exact(16).enumerate() {
            bsums[b * 16 + j] = sixteen.iter().map(|&q| q as i16).sum();
        }
        bounds.abs16[b] = qb
            .chunks_exact(16)
            .map(|sixteen| {
                sixteen
                    .iter()
                    .map(|&q| (q as i16).unsigned_abs())
                    .sum::<u16>()
            })
            .max()
            .unwrap();
        bounds.sign32[b] = qb
            .chunks_exact(32)
            .map(|sub| {
                let pos: u16 = sub.iter().map(|&q| q.max(0) as u16).sum();
                let neg: u16 = sub.iter().map(|&q| (q as i16).min(0).unsigned_abs()).sum();
                pos.max(neg)
            })
            .max()
            .unwrap();
        for (j, eight) in qb.chunks_exact(8).enumerate() {
            sums8[b * 32 + j] = eight.iter().map(|&q| q as i16).sum();
        }
    }
}

/// Sub-block `j` (0..8) scale and min of a Q4_K/Q5_K super-block's 12 packed 6-bit bytes
/// (GGML's `get_scale_min_k4`).
pub(crate) fn k4_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Q6_K's value `l + 32k` (0..128) of one 128-value half, from its `ql` (64 bytes) and `qh`
/// (32 bytes): 0..63, the stored value is this minus 32.
pub(crate) fn q6k_value(ql: &[u8], qh: &[u8], k: usize, l: usize) -> i32 {
    let low = match k {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    (low | (((qh[l] >> (2 * k)) & 3) << 4)) as i32
}

/// Reference dot products of one K-quant weight row (GGUF's super-blocks) with Q8_K rows,
/// straight from the format's definition: no offsets folded into `bsums`.
pub(crate) fn dot_rows_k_scalar(kind: QKind, wrow: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let bb = kind.block_bytes();
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let mut sum = 0f32;
        for (b, blk) in wrow.chunks_exact(bb).enumerate() {
            let aq = &a.qs[b * QK_K..(b + 1) * QK_K];
            let value_sum = |from: usize, q: &dyn Fn(usize) -> i32| -> i32 {
                (0..32).map(|l| q(l) * aq[from + l] as i32).sum()
            };
            let act_sum =
                |from: usize| -> i32 { aq[from..from + 32].iter().map(|&v| v as i32).sum() };
            sum += a.d[b]
                * match kind {
                    QKind::Q4K | QKind::Q5K => {
                        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                        let scales = &blk[4..16];
                        let (qh, qs) = if kind == QKind::Q5K {
                            (&blk[16..48], &blk[48..176])
                        } else {
                            (&[][..], &blk[16..144])
                        };
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for j in 0..8 {
                            let (sc, m) = k4_scale_min(scales, j);
                            let (c, high) = (j / 2, j % 2 == 1);
                            let q = |l: usize| {
                                let byte = qs[32 * c + l];
                                let nib = if high { byte >> 4 } else { byte & 0xF } as i32;
                                let top = if qh.is_empty() { 0 } else { (qh[l] >> j) & 1 };
                                nib | (top as i32) << 4
                            };
                            isum += sc as i32 * value_sum(32 * j, &q);
                            msum += m as i32 * act_sum(32 * j);
                        }
                        d * isum as f32 - dmin * msum as f32
                    }
                    QKind::Q6K => {
                        let d = f16_at(blk, 208);
                        let mut isum = 0i32;
                        for n in 0..2 {
                            let (ql, qh) =
                                (&blk[64 * n..64 * n + 64], &blk[128 + 32 * n..160 + 32 * n]);
                            for k in 0..4 {
                                for h in 0..2 {
                                    let sc = blk[192 + 8 * n + 2 * k + h] as i8 as i32;
                                    let from = 128 * n + 32 * k + 16 * h;
                                    let part: i32 = (0..16)
                                        .map(|l| {
                                            (q6k_value(ql, qh, k, 16 * h + l) - 32)
                                                * aq[from + l] as i32
                                        })
                                        .sum();
                                    isum += sc * part;
                                }
                            }
                        }
                        d * isum as f32
                    }
                    _ => unreachable!("not a K format: {kind:?}"),
                };
        }
        *o = sum;
    }
}
