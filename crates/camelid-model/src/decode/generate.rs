//! Generation for one prompt with a private KV cache (CLI, tests): the forward pass and a
//! [`SequenceDecoder`] in a loop.

use super::decoder::{FinishReason, GenerationParams, SequenceDecoder};
use super::sampling::TokenLogprob;
use crate::batch::{ForwardBatch, LogitsWanted};
use crate::error::{Error, Result};
use crate::kv::ContiguousKv;
use crate::load::LoadedModel;

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_tokens: usize,
}

/// Generates for one prompt with a private KV cache; `on_text` sees text as it streams.
pub fn generate(
    lm: &LoadedModel,
    prompt: &[u32],
    params: GenerationParams,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Invalid("empty prompt".into()));
    }
    if prompt.len() >= lm.context_length {
        return Err(Error::Invalid(format!(
            "prompt has {} tokens, the context length is {}",
            prompt.len(),
            lm.context_length
        )));
    }
    let mut kv = ContiguousKv::new();
    let mut dec = SequenceDecoder::new(prompt.to_vec(), params, lm.context_length);
    let mut batch = ForwardBatch::single(0, 0, prompt, LogitsWanted::Last);
    let (mut text, mut logprobs) = (String::new(), vec![]);
    loop {
        let logits = lm
            .model
            .forward(&batch, &mut kv)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let out = dec.step(&lm.tokenizer, &logits)?;
        on_text(&out.text);
        text += &out.text;
        logprobs.extend(out.logprob);
        if let Some(reason) = out.finished {
            return Ok(Generation {
                text,
                tokens: dec.output().to_vec(),
                finish_reason: reason,
                logprobs,
                prompt_tokens: prompt.len(),
            });
        }
        let pos = prompt.len() + dec.output().len() - 1;
        batch = ForwardBatch::single(0, pos, &[out.token], LogitsWanted::Last);
    }
}
