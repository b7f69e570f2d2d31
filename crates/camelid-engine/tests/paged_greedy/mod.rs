//! Greedy decoding of several prompts side by side over a paged host cache, through the
//! model's own forward (the CPU serving path): what the weight-format tests compare.

use camelid_engine::paged::PagedKv;
use camelid_model::{ForwardBatch, KvDtype, LogitsWanted};

/// Greedy decoding of `prompts` side by side over a paged host cache: the logits of every
/// step (the prompts' last positions, then `steps` decodes of all sequences at once).
pub fn greedy(
    lm: &camelid_model::LoadedModel,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<Vec<f32>>> {
    let c = lm.model.config().clone();
    let mut kv = PagedKv::new(
        c.num_layers,
        c.num_kv_heads,
        c.head_dim,
        256,
        16,
        lm.model.dtype(),
        KvDtype::F32,
        lm.model.device(),
    )
    .unwrap();
    let mut pos: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    let mut batch = ForwardBatch::default();
    for (s, p) in prompts.iter().enumerate() {
        kv.start(s as u64, &p[..0], None, p.len());
        assert!(kv.reserve(s as u64, p.len() + steps + 1));
        batch.push(s as u64, 0, p, LogitsWanted::Last);
    }
    let mut out = vec![];
    for _ in 0..=steps {
        let logits: Vec<Vec<f32>> = lm
            .model
            .forward(&batch, &mut kv)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert!(kv.in_host_memory(), "the CPU serving path");
        batch = ForwardBatch::default();
        for (s, row) in logits.iter().enumerate() {
            let next = argmax(row) as u32;
            batch.push(s as u64, pos[s], &[next], LogitsWanted::Last);
            pos[s] += 1;
        }
        out.push(logits);
    }
    out
}

pub fn argmax(r: &[f32]) -> usize {
    (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b })
}
