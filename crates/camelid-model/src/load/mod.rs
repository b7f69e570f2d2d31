//! From a model spec to a ready model. [`loader`] is the one entry point (a registry name, a
//! GGUF file, an HF folder or a hub id → weights, tokenizer, template, stop tokens); the formats
//! are [`gguf`] and [`hf_folder`] (safetensors, PyTorch `.bin`), with [`gguf_check`] and
//! [`pth_check`] refusing untrusted files before candle's readers see them; [`weights`] builds the model
//! from either, [`hub`] and [`registry`] fetch files, [`lora`] reads LoRA adapters, [`convert`] writes GGUF as an HF folder;
//! [`host_memory`] refuses a CPU model the machine cannot hold before it is read.

pub mod convert;
pub mod gguf;
pub mod gguf_check;
pub mod gguf_tokenizer;
pub mod hf_folder;
pub mod host_memory;
pub mod hub;
pub mod loader;
pub mod lora;
pub mod pth_check;
pub mod registry;
pub mod weights;

pub use loader::{
    load, load_gguf, load_hf_folder, parse_dtype, parse_quantize, resolve, LoadOptions, LoadedModel,
};
