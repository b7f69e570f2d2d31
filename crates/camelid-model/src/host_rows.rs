//! A forward's output rows on the host in one flat row-major buffer. From a CUDA device the
//! rows cross once into page-locked memory kept from step to step (candle's pageable
//! `to_vec2` was the larger part of a batched decode step's time on an H200; rows past the
//! pinned buffer's cap still go that way); from the CPU they are copied once.

use crate::error::Result;
use candle_core::{DType, Tensor};

#[derive(Default)]
pub struct HostRows {
    rows: usize,
    width: usize,
    /// The rows, unless they are in `pinned`.
    vec: Vec<f32>,
    #[cfg(feature = "cuda")]
    pinned: camelid_kernels::cuda::PinnedHost,
    #[cfg(feature = "cuda")]
    on_pinned: bool,
}

impl HostRows {
    /// Takes `t`'s rows (`(rows, width)`, converted to f32), replacing the previous ones.
    pub fn load(&mut self, t: &Tensor) -> Result<()> {
        let (rows, width) = t.dims2()?;
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        (self.rows, self.width) = (rows, width);
        #[cfg(feature = "cuda")]
        {
            // Through pageable memory where the pinned buffer cannot take these rows.
            self.on_pinned = t.device().is_cuda()
                && self.pinned.copy_from(&t).is_ok()
                && self.pinned.values().len() == rows * width;
            if self.on_pinned {
                self.vec.clear();
                return Ok(());
            }
        }
        self.vec = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    }

    /// Every value, row after row.
    pub fn all(&self) -> &[f32] {
        #[cfg(feature = "cuda")]
        if self.on_pinned {
            return self.pinned.values();
        }
        &self.vec
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Forgets the rows, keeping their width (tests: a read-back that failed).
    #[doc(hidden)]
    pub fn drop_rows(&mut self) {
        self.rows = 0;
        self.vec.clear();
        #[cfg(feature = "cuda")]
        {
            self.on_pinned = false;
        }
    }

    /// Rows `from..from + n`, row after row (empty where they are not all here).
    pub fn range(&self, from: usize, n: usize) -> &[f32] {
        self.all()
            .get(from * self.width..(from + n) * self.width)
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_come_back_in_order_and_a_new_load_replaces_them() {
        let mut h = HostRows::default();
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        h.load(&t).unwrap();
        assert_eq!((h.rows(), h.width()), (3, 4));
        assert_eq!(h.range(1, 2), &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        // bf16 and a non-contiguous layout come back as f32 rows.
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 2))
            .unwrap()
            .t()
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        h.load(&t).unwrap();
        assert_eq!((h.rows(), h.width()), (2, 3));
        assert_eq!(h.all(), &[0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        h.load(&Tensor::zeros((0, 5), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!((h.rows(), h.all().len()), (0, 0));
    }
}
