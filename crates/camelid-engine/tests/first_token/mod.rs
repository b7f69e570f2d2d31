//! The first token's log-probabilities of a chat prompt after one prefill over the engine's
//! paged host cache: what the KV-precision tests compare between cache types and attention
//! paths.

use camelid_engine::paged::PagedKv;
use camelid_model::{ForwardBatch, KvDtype, LoadedModel, LogitsWanted};

/// The first token's log-probabilities of `prompt` (one user message, the model's own
/// template) after one prefill over a paged host cache of element type `kv`.
pub fn first_token_logprobs(lm: &LoadedModel, prompt: &str, kv: KvDtype) -> Vec<f32> {
    let text = lm
        .template
        .render(&[camelid_model::Message::new("user", prompt)], true)
        .unwrap();
    let ids = lm.tokenizer.encode(&text, true).unwrap();
    let c = lm.model.config();
    let bs = 16;
    let mut paged = PagedKv::new(
        c.num_layers,
        c.num_kv_heads,
        c.head_dim,
        ids.len().div_ceil(bs),
        bs,
        lm.model.dtype(),
        kv,
        lm.model.device(),
    )
    .unwrap();
    assert!(paged.in_host_memory());
    assert_eq!(paged.start(1, &ids[..0], None, ids.len()), 0);
    assert!(paged.reserve(1, ids.len()));
    let mut batch = ForwardBatch::default();
    batch.push(1, 0, &ids, LogitsWanted::Last);
    let logits: Vec<Vec<f32>> = lm
        .model
        .forward(&batch, &mut paged)
        .unwrap()
        .to_vec2()
        .unwrap();
    camelid_model::decode::sampling::log_softmax(&logits[0])
}

/// The largest move of a log-probability of `reference`'s top 5 tokens in `got`.
pub fn top5_shift(reference: &[f32], got: &[f32]) -> f32 {
    camelid_model::decode::sampling::top_k_indices(reference, 5)
        .into_iter()
        .map(|t| (got[t] - reference[t]).abs())
        .fold(0f32, f32::max)
}
