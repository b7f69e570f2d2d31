//! Model architectures, one file each. Today: [`llama`]. What differs between architectures
//! (biases, norms, activation, attention window, soft-capping) is to be data the runtimes'
//! layer loops read, never a layer loop per architecture.

pub mod llama;

pub use llama::Llama;
