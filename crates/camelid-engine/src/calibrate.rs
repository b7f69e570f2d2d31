//! Timed steps before the first request, so that the step budget ([`crate::step_cost`]) knows
//! what a step of 1 to 64 rows costs from the start.
//!
//! The budget learns a step's cost per count of rows from the steps run, and between the
//! counts seen it draws straight lines. A step's cost is far from a line where the matmuls
//! change kernels (the K formats move from VNNI passes to AMX tiles at 10 rows; when that was
//! 16, on a 1B Q5_K_M file 14 rows took ~80 ms and 16 ~70), and serving alone rarely runs the
//! counts past such a change while prompts wait beside busy streams: the line from the last
//! count seen to a whole prompt's step put 19 rows at ~90 ms, over the bound, when they took
//! ~75. So the engine times a ladder of row counts once, with throwaway sequences, before it
//! serves; the steps served then keep each count's average current.

use crate::paged::PagedKv;
use crate::step_cost::StepCost;
use camelid_model::{ForwardBatch, LoadedModel, LogitsWanted};
use std::time::Instant;

/// Row counts timed, in order; the ladder stops past [`STOP_AT_LONE`] lone steps.
const LADDER: [usize; 10] = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64];

/// The step budget never lets a step that decodes take more than a few lone steps (the CPU's
/// bounds: stretch 1 of the whole batch, 2.5 lone steps), so larger counts are not timed.
const STOP_AT_LONE: f64 = 4.0;

/// Rows of the untimed first step: enough for the prompt kernels (AMX tiles from 12 rows, the
/// 32-value formats' from 16), few enough not to keep a large model from serving for long.
const WARM_UP: usize = 16;

/// Rows of a ladder step that are decodes (one token of a sequence of its own, with its
/// logits), as in a step of busy streams; the rest is one prompt chunk.
const DECODES: usize = 8;

/// First sequence id of the throwaway sequences (requests' ids count up from 0).
const FIRST_ID: u64 = u64::MAX - DECODES as u64 - 1;

/// Times each count of [`LADDER`] (up to `max_rows`) into `cost`, after one untimed step of
/// [`WARM_UP`] rows (the first forward pays for the thread pool, the buffers and the AMX
/// grant). Stops at the first step the KV pool cannot hold or the model fails (serving will
/// say why).
pub(crate) fn calibrate(lm: &LoadedModel, kv: &mut PagedKv, cost: &mut StepCost, max_rows: usize) {
    let vocab = lm.model.config().vocab_size.max(1);
    let started = Instant::now();
    let timed = climb(cost, max_rows, |rows| time_step(lm, kv, rows, vocab));
    if !timed.is_empty() {
        tracing::info!(
            "step costs timed in {:.1} s (rows: ms): {}",
            started.elapsed().as_secs_f64(),
            timed.join(", ")
        );
    }
}

/// The ladder over `step` (the ms of a step of that many rows, `None` to stop): the warm-up,
/// then each count up to `max_rows` in order into `cost`, until one costs more than
/// [`STOP_AT_LONE`] lone steps. What was timed, as `rows: ms`.
fn climb(
    cost: &mut StepCost,
    max_rows: usize,
    mut step: impl FnMut(usize) -> Option<f64>,
) -> Vec<String> {
    let counts: Vec<usize> = LADDER.into_iter().filter(|&r| r <= max_rows).collect();
    let Some(&largest) = counts.last() else {
        return vec![];
    };
    let mut lone = None;
    let mut timed = vec![];
    for (i, rows) in std::iter::once(WARM_UP.min(largest))
        .chain(counts)
        .enumerate()
    {
        let Some(ms) = step(rows) else {
            break;
        };
        if i == 0 {
            continue; // the warm-up
        }
        cost.observe(rows, ms);
        timed.push(format!("{rows}: {ms:.1}"));
        let lone = *lone.get_or_insert(ms);
        if ms > STOP_AT_LONE * lone {
            break;
        }
    }
    timed
}

/// One step of `rows` rows (up to [`DECODES`] one-token sequences, the rest one prompt
/// chunk) over throwaway sequences; its duration in ms, or `None` if the pool is short or
/// the forward failed. The sequences' blocks go back to the pool.
fn time_step(lm: &LoadedModel, kv: &mut PagedKv, rows: usize, vocab: usize) -> Option<f64> {
    let token = |i: usize| ((i * 7919 + 13) % vocab) as u32;
    let decodes = rows.min(DECODES);
    let prompt = rows - decodes;
    let mut batch = ForwardBatch::default();
    let mut ids = vec![];
    let mut fits = true;
    for (j, len) in std::iter::repeat_n(1, decodes)
        .chain((prompt > 0).then_some(prompt))
        .enumerate()
    {
        let id = FIRST_ID + j as u64;
        kv.start(id, &[], None, len);
        ids.push(id);
        if !kv.reserve(id, len) {
            fits = false;
            break;
        }
        let tokens: Vec<u32> = (0..len).map(|k| token(j * 31 + k)).collect();
        batch.push(id, 0, &tokens, LogitsWanted::Last);
    }
    let mut ms = None;
    if fits {
        let started = Instant::now();
        if lm.model.forward_output(&batch, kv).is_ok() {
            ms = Some(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    for id in ids {
        kv.free(id);
    }
    ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use camelid_model::{KvDtype, LoadOptions};

    fn tiny() -> LoadedModel {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-llama");
        camelid_model::load(Some(p.to_str().unwrap()), &LoadOptions::default()).unwrap()
    }

    fn pool(lm: &LoadedModel, blocks: usize) -> PagedKv {
        let c = lm.model.config();
        PagedKv::new(
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            blocks,
            4,
            lm.model.dtype(),
            KvDtype::F16,
            lm.model.device(),
        )
        .unwrap()
    }

    /// The ladder's counts within the step's tokens are timed in order, none skipped, until
    /// one costs more than four lone steps or a step cannot run (timings made up here: the
    /// machine's would make the stop depend on its load).
    #[test]
    fn the_ladder_climbs_in_order_and_stops_past_four_lone_steps() {
        let seen = |max_rows: usize, ms: fn(usize) -> Option<f64>| {
            let mut cost = StepCost::default();
            let mut warm_up = None;
            climb(&mut cost, max_rows, |rows| {
                warm_up.get_or_insert(rows);
                ms(rows)
            });
            assert_eq!(warm_up, Some(WARM_UP.min(max_rows)));
            cost.counts_seen()
        };
        assert_eq!(seen(32, |_| Some(5.0)), [1, 2, 4, 8, 12, 16, 24, 32]);
        assert_eq!(seen(64, |r| Some(r as f64)), [1, 2, 4, 8]);
        assert_eq!(seen(64, |r| (r != 12).then_some(1.0)), [1, 2, 4, 8]);
        assert_eq!(
            seen(64, |r| (r != WARM_UP).then_some(1.0)),
            Vec::<usize>::new()
        );
    }

    /// On a real model the steps run, the first count is timed, and the pool gets every block
    /// back.
    #[test]
    fn the_ladder_runs_the_model_and_its_blocks_come_back() {
        let lm = tiny();
        let mut kv = pool(&lm, 256);
        let free = kv.free_blocks();
        let mut cost = StepCost::default();
        calibrate(&lm, &mut kv, &mut cost, 32);
        assert_eq!(kv.free_blocks(), free);
        let seen = cost.counts_seen();
        assert_eq!(seen.first(), Some(&1), "{seen:?}");
        assert_eq!(seen, LADDER[..seen.len()].to_vec());
    }

    /// A pool too small for the ladder's steps stops it, without a panic or a lost block.
    #[test]
    fn a_short_pool_stops_the_ladder() {
        let lm = tiny();
        let mut kv = pool(&lm, 3);
        let mut cost = StepCost::default();
        calibrate(&lm, &mut kv, &mut cost, 512);
        assert_eq!(kv.free_blocks(), 3);
        assert!(cost.counts_seen().is_empty());
    }
}
