//! A quantized weight matrix: GGUF's row-major blocks, or repacked into interleaved groups of
//! rows for the SIMD kernels (GGML's "repack").

use super::krepack;
use super::reference::f16_at;
use super::{simd_available, QKind, BLOCK};
use half::f16;

/// A `(rows, cols)` weight matrix: GGUF's row-major blocks, or (where the AVX2 kernel runs)
/// interleaved by groups of eight rows, see [`Layout`].
#[derive(Debug, Clone)]
pub struct QWeight {
    pub kind: QKind,
    pub rows: usize,
    pub cols: usize,
    pub(super) layout: Layout,
}

/// How a [`QWeight`]'s blocks are laid out in memory.
///
/// `Interleaved` is GGML's "repack" idea: rows `G·i..G·i+G` (G = 8 for AVX2, 16 for AVX-512's
/// wider registers) are stored together, block by block, so that one 4G-byte load holds four
/// consecutive values of each of the G rows. A broadcast of four activation bytes then
/// multiplies all G rows at once and the G sums land in the lanes of one register, with the
/// G row scales in one vector: no horizontal sums, one scale multiply per block for G rows.
/// Per group and 32-value block:
/// - Q4_0 / Q4_1: `d[G]` f16, `m[G]` f16 (Q4_0: `m = −8d`), then 4 × 4G bytes: bytes
///   `4r..4r+4` of vector `g` are row `r`'s `qs[4g..4g+4]` (low nibbles: values `4g..4g+4`,
///   high nibbles: values `16+4g..16+4g+4`) — 20G bytes, as many as G GGUF blocks;
/// - Q5_0 / Q5_1: `d[G]`, `m[G]` f16 (Q5_0: `m = −16d`), `hb[G]` (4 bytes a row: byte `g` holds
///   the fifth bits of vector `g`'s values, low nibbles' in bits 0–3, high nibbles' in 4–7),
///   then the nibbles as for Q4 — 24G bytes;
/// - Q8_0: `d[G]` f16, then 8 × 4G bytes: row `r`'s values `4g..4g+4` at `4r` of vector `g`
///   — 34G bytes.
/// - The K formats: per 256-value super-block, see [`krepack`]; their last group may be
///   padded with zero rows.
#[derive(Debug, Clone)]
pub(super) enum Layout {
    Rows(Vec<u8>),
    Interleaved { group: usize, data: Vec<u8> },
}

impl QKind {
    /// Bytes of one 32-value block of an interleaved group of `g` rows.
    pub(super) fn group_block_bytes(self, g: usize) -> usize {
        match self {
            QKind::Q4_0 | QKind::Q4_1 => 20 * g,
            QKind::Q8_0 => 34 * g,
            QKind::Q5_0 | QKind::Q5_1 => 24 * g,
            _ => unreachable!("K formats go by super-block: krepack"),
        }
    }
}

/// Rows per interleaved group on this CPU (16 where AVX-512BW runs the kernels, else 8).
pub(super) fn group_rows() -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_features::avx512() {
        return 16;
    }
    8
}

impl QWeight {
    /// Weights in GGUF's layout (`data`: `rows` rows of `cols / 32` blocks). The matrix is
    /// interleaved for the SIMD kernel when this CPU has it and the shape allows.
    pub fn new(kind: QKind, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        let w = Self::new_rows(kind, rows, cols, data)?;
        Some(if simd_available() { w.interleaved() } else { w })
    }

    /// Weights kept in GGUF's row-major layout (the scalar reference reads this one).
    pub fn new_rows(kind: QKind, rows: usize, cols: usize, data: Vec<u8>) -> Option<Self> {
        let bv = kind.block_values();
        let ok = cols.is_multiple_of(bv) && data.len() == rows * (cols / bv) * kind.block_bytes();
        ok.then_some(Self {
            kind,
            rows,
            cols,
            layout: Layout::Rows(data),
        })
    }

    /// The same matrix interleaved by groups of [`group_rows`] (or of 8, if that does not
    /// divide `rows`), when `rows` is a multiple of eight (and, for Q4_0, every `−8d` fits an
    /// f16); otherwise unchanged. K formats are always interleaved (a padded last group).
    fn interleaved(self) -> Self {
        let mut g = group_rows();
        if !self.rows.is_multiple_of(g) && !self.kind.is_k() {
            g = 8;
        }
        self.interleaved_by(g)
    }

    pub(super) fn interleaved_by(self, group: usize) -> Self {
        let Layout::Rows(data) = &self.layout else {
            return self;
        };
        if self.kind.is_k() {
            let data = krepack::repack(self.kind, self.rows, self.cols, data, group);
            return Self {
                layout: Layout::Interleaved { group, data },
                ..self
            };
        }
        if !self.rows.is_multiple_of(group) {
            return self;
        }
        let (kind, nb, bb) = (self.kind, self.cols / BLOCK, self.kind.block_bytes());
        let gbb = kind.group_block_bytes(group);
        let row_bytes = nb * bb;
        // Offsets inside one group block: scales d, offsets m (Q4), the quant vectors.
        let qs_at = match kind {
            QKind::Q8_0 => 2,
            QKind::Q5_0 | QKind::Q5_1 => 8,
            _ => 4,
        } * group;
        let (m_at, hb_at) = (2 * group, 4 * group);
        let mut out = vec![0u8; self.rows / group * nb * gbb];
        crate::advise_huge_pages(&mut out);
        for (gi, dst_group) in out.chunks_exact_mut(nb * gbb).enumerate() {
            for (b, dst) in dst_group.chunks_exact_mut(gbb).enumerate() {
                for r in 0..group {
                    let src = &data[(gi * group + r) * row_bytes + b * bb..][..bb];
                    dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                    let qs = match kind {
                        QKind::Q4_1 => {
                            dst[m_at + 2 * r..m_at + 2 * r + 2].copy_from_slice(&src[2..4]);
                            &src[4..20]
                        }
                        QKind::Q4_0 => {
                            let m = f16::from_f32(-8.0 * f16_at(src, 0));
                            if !m.is_finite() {
                                return self;
                            }
                            dst[m_at + 2 * r..m_at + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
                            &src[2..18]
                        }
                        QKind::Q8_0 => &src[2..34],
                        QKind::Q5_0 | QKind::Q5_1 => {
                            let (qh, qs) = if kind == QKind::Q5_0 {
                                let m = f16::from_f32(-16.0 * f16_at(src, 0));
                                if !m.is_finite() {
                                    return self;
                                }
                                dst[m_at + 2 * r..m_at + 2 * r + 2]
                                    .copy_from_slice(&m.to_le_bytes());
                                (&src[2..6], &src[6..22])
                            } else {
                                dst[m_at + 2 * r..m_at + 2 * r + 2].copy_from_slice(&src[2..4]);
                                (&src[4..8], &src[8..24])
                            };
                            let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
                            for g in 0..4 {
                                let lo = (qh >> (4 * g)) & 0xF;
                                let hi = (qh >> (16 + 4 * g)) & 0xF;
                                dst[hb_at + 4 * r + g] = (lo | hi << 4) as u8;
                            }
                            qs
                        }
                        _ => unreachable!("K formats are repacked by krepack"),
                    };
                    for (g, four) in qs.chunks_exact(4).enumerate() {
                        let at = qs_at + 4 * group * g + 4 * r;
                        dst[at..at + 4].copy_from_slice(four);
                    }
                }
            }
        }
        Self {
            layout: Layout::Interleaved { group, data: out },
            ..self
        }
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.kind.block_values() * self.kind.block_bytes()
    }

    /// Row `r` in GGUF's layout (row-major matrices only).
    pub(super) fn row(&self, r: usize) -> &[u8] {
        let Layout::Rows(data) = &self.layout else {
            unreachable!("row access on an interleaved matrix")
        };
        let n = self.row_bytes();
        &data[r * n..(r + 1) * n]
    }

    fn bytes(&self) -> &[u8] {
        match &self.layout {
            Layout::Rows(d) | Layout::Interleaved { data: d, .. } => d,
        }
    }

    /// Stacks weights with the same format, width and layout (fused QKV, gate+up): one
    /// matmul, one activation quantization, instead of several. Both layouts stack by plain
    /// concatenation (interleaved groups never straddle two parts). `None` when formats or
    /// layouts differ, or a K part's last group is padded (the caller then keeps separate
    /// matmuls).
    pub fn concat_rows(parts: &[&QWeight]) -> Option<QWeight> {
        let first = parts.first()?;
        let same_layout = |p: &&QWeight| match (&p.layout, &first.layout) {
            (Layout::Rows(_), Layout::Rows(_)) => true,
            (Layout::Interleaved { group: a, .. }, Layout::Interleaved { group: b, .. }) => a == b,
            _ => false,
        };
        let padded = |p: &&QWeight| match p.layout {
            Layout::Interleaved { group, .. } => !p.rows.is_multiple_of(group),
            Layout::Rows(_) => false,
        };
        if parts
            .iter()
            .any(|p| p.kind != first.kind || p.cols != first.cols || !same_layout(p) || padded(p))
        {
            return None;
        }
        let data: Vec<u8> = parts
            .iter()
            .flat_map(|p| p.bytes().iter().copied())
            .collect();
        let layout = match first.layout {
            Layout::Rows(_) => Layout::Rows(data),
            Layout::Interleaved { group, .. } => Layout::Interleaved { group, data },
        };
        Some(QWeight {
            kind: first.kind,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            layout,
        })
    }
}
