//! camelid-model: everything about LLaMA-family weights and math, nothing about HTTP.
//!
//! - [`load`]: one entry point ([`load::load`]) over GGUF, HF folders (safetensors, PyTorch
//!   `.bin`), hub ids and the registry of known models; [`load::convert`] writes HF folders.
//! - [`text`]: tokenizers, chat templates, incremental detokenization and stop strings.
//! - [`models`]: the architectures, one file each (their weights, nothing about where they run).
//! - [`runtime`]: the forward pass — CPU serving, CUDA serving or the tensor reference, picked
//!   once per forward; [`batch`] is its input, [`kv`] where it keeps keys and values.
//! - [`decode`]: sampling, the per-sequence decoder and single-sequence generation;
//!   [`constraint`]: structured output (grammars compiled for a vocabulary, per-sequence
//!   matchers whose masks the decoder applies); [`sampling_ranges`]: the values each sampling
//!   field takes, for every caller that checks one.
//! - [`lora`]: LoRA adapters, applied per sequence at run time over the shared base weights.
//! - [`config`], [`linear`] (dense and quantized matmuls), [`embedding`] (the token table, dense
//!   or quantized), [`rope`] (rotary tables).
//!
//! Compute kernels live in `camelid-kernels`, which knows no model.

pub mod batch;
pub mod config;
pub mod constraint;
pub mod decode;
pub mod embedding;
pub mod error;
pub mod host_rows;
pub mod kv;
pub mod linear;
pub mod load;
pub mod lora;
pub mod models;
pub mod rope;
pub mod runtime;
pub mod sampling_ranges;
pub mod text;

pub use batch::{EmbeddingGaps, ForwardBatch, ForwardOutput, LogitsWanted, Pooling, SeqChunk};
pub use constraint::{Constraint, GrammarCompiler, TopLevelGrammar};
pub use decode::sampling::{Sampler, SamplingParams};
pub use error::{Error, Result};
pub use host_rows::HostRows;
pub use kv::KvDtype;
pub use load::loader::SamplingDefaults;
pub use load::{load, LoadOptions, LoadedModel};
pub use lora::{LoraAdapter, SharedLora};
pub use models::Llama;
pub use text::template::{ChatTemplate, Message};
