//! The token embedding table: a dense tensor gathered with `index_select`, or, for a quantized
//! GGUF on the CPU, the file's blocks kept as they are and dequantized a row per token (as
//! llama.cpp's `get_rows` does). Dequantized whole, a table is f32: Llama-3-8B's 128 256 × 4 096
//! is 2 GiB that way against ~280 MiB as Q4_K.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor};

pub enum Embeddings {
    Dense(Tensor),
    /// `rows × cols` in GGML's `dtype` blocks, row-major (blocks never straddle rows).
    Quantized {
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    },
}

impl Embeddings {
    /// The table as a tensor, where it is one.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Embeddings::Dense(t) => Some(t),
            Embeddings::Quantized { .. } => None,
        }
    }

    /// The rows of `ids`, `(ids.len(), cols)` on `device`: in the table's own dtype when dense,
    /// f32 when quantized (bit for bit what dequantizing the whole table gives).
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Embeddings::Dense(t) => t.index_select(&Tensor::new(ids, t.device())?, 0),
            Embeddings::Quantized {
                dtype,
                rows,
                cols,
                bytes,
            } => {
                // The wanted rows' blocks side by side, dequantized in one call.
                let row_bytes = cols / dtype.block_size() * dtype.type_size();
                let mut picked = Vec::with_capacity(ids.len() * row_bytes);
                for &id in ids {
                    let id = id as usize;
                    if id >= *rows {
                        candle_core::bail!("token id {id} is outside the {rows}-row embeddings");
                    }
                    picked.extend_from_slice(&bytes[id * row_bytes..(id + 1) * row_bytes]);
                }
                if ids.is_empty() {
                    return Tensor::zeros((0, *cols), DType::F32, device);
                }
                let dims = vec![ids.len(), *cols];
                let q = qtensor_from_ggml(*dtype, &picked, dims, &Device::Cpu)?;
                q.dequantize(&Device::Cpu)?.to_device(device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    #[test]
    fn quantized_rows_are_the_whole_tables_dequantized_rows() {
        let t = Tensor::randn(0f32, 1.0, (40, 512), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let whole = q.dequantize(&Device::Cpu).unwrap();
            let e = Embeddings::Quantized {
                dtype,
                rows: 40,
                cols: 512,
                bytes: q.data().unwrap().into_owned(),
            };
            let ids = [7u32, 0, 39, 7];
            let got = e
                .rows(&ids, &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let want = Embeddings::Dense(whole)
                .rows(&ids, &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got, want, "{dtype:?}");
            assert!(
                e.rows(&[40], &Device::Cpu).is_err(),
                "{dtype:?}: an id past the table"
            );
        }
    }
}
