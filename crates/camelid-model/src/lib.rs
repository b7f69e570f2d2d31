//! camelid-model: everything about LLaMA-family weights and math, nothing about HTTP.
//!
//! - loading: [`loader`] (one entry point), [`gguf`], [`hf_folder`] (safetensors, PyTorch
//!   `.bin`), [`hub`], [`registry`] (known models and the default-model fetch)
//! - text: [`tokenizer`], [`template`], [`stream`] (incremental detokenization, stop strings)
//! - math: [`config`], [`cpu_attention`] (paged attention over host memory, on [`vecmath`]), [`linear`] (over [`qgemm`], our own CPU quantized matmul), [`rope`], [`fused`] (SiLU·mul), [`model`] (varlen forward), [`kv`] (KV storage
//!   interface), [`sampling`]
//! - tools: [`generate`] (single-sequence generation for CLI and tests), [`convert`]

pub mod config;
pub mod convert;
pub mod cpu_attention;
mod cpu_forward;
#[cfg(feature = "cuda")]
pub mod cuda_forward;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod error;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod hf_folder;
pub mod hub;
pub mod kv;
pub mod linear;
pub mod loader;
pub mod model;
pub mod qgemm;
pub mod registry;
pub mod rope;
pub mod sampling;
pub mod stream;
pub mod template;
pub mod tokenizer;
pub mod vecmath;
pub mod weights;

pub use error::{Error, Result};
pub use loader::{load, LoadOptions, LoadedModel};
pub use model::{ForwardBatch, Llama, LogitsWanted, SeqChunk};
pub use sampling::{Sampler, SamplingParams};
pub use template::{ChatTemplate, Message};
