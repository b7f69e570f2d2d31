//! After the forward pass: [`sampling`] (penalties, temperature, top-k/p, min-p, seeds,
//! logprobs), [`decoder`] (what one sequence does with its logits each step) and
//! [`generate`] (the single-sequence loop of the CLI and tests).

pub mod decoder;
pub mod generate;
pub mod sampling;

/// Grammars live in [`crate::constraint`] (the loader builds a model's compiler, and
/// [`generate`] reads loaded models); re-exported so `decode::constraint::…` names them too.
pub use crate::constraint;
pub use decoder::{FinishReason, GenerationParams, SequenceDecoder, StepOutput, StopReason};
pub use generate::{generate, Generation};
