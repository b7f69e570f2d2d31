//! How long a step takes, learned from the steps already run, and how many prefill tokens a
//! step that also decodes may carry.
//!
//! Every running stream waits for the whole step, so a prefill chunk in a step with decodes
//! lengthens their inter-token gap by its own cost. A fixed token cap gets that wrong by
//! model size and device (64 tokens of a 135M model on 2 cores take ~90 ms; of a 7B model,
//! seconds). Instead the scheduler may bound the *time*: a step with `d` decodes may take at
//! most `stretch ×` what `d` decodes alone take (Sarathi-Serve's budget, in time rather than
//! tokens). Two running averages give the prediction: the duration of decode-only steps by
//! their number of decodes, and the cost of one prefill token in mixed steps.

/// Weight of the newest observation in the running averages: recent enough to follow the
/// context growing and the machine's load, smooth enough to ride out one noisy step.
const ALPHA: f64 = 0.2;

#[derive(Debug, Default)]
pub struct StepCost {
    /// `decode_ms[d]`: average duration of a step of `d` decodes and no prefill.
    decode_ms: Vec<Option<f64>>,
    /// Average cost of one prefill token: from prefill-only steps, and from mixed steps less
    /// their decodes' predicted share.
    prefill_token_ms: Option<f64>,
}

fn blend(avg: &mut Option<f64>, v: f64) {
    *avg = Some(match *avg {
        Some(a) => a + ALPHA * (v - a),
        None => v,
    });
}

impl StepCost {
    /// Records a step of `decodes` decode rows and `prefill` prefill tokens that took `ms`.
    pub fn observe(&mut self, decodes: usize, prefill: usize, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        if prefill == 0 {
            if decodes > 0 {
                if self.decode_ms.len() <= decodes {
                    self.decode_ms.resize(decodes + 1, None);
                }
                blend(&mut self.decode_ms[decodes], ms);
            }
            return;
        }
        let decode_share = if decodes == 0 {
            Some(0.0)
        } else {
            self.decode_step_ms(decodes)
        };
        if let Some(share) = decode_share {
            blend(
                &mut self.prefill_token_ms,
                (ms - share).max(0.0) / prefill as f64,
            );
        }
    }

    /// Duration of a decode-only step of `decodes` rows, from the steps seen. Fewer decodes
    /// never take longer than more, so a count seen stands for the least average seen for it
    /// or a larger count (a rare count, seen only in a step slowed by something else, such as
    /// a new request's tokenization on the same cores, must not stand for it). A count not
    /// seen lies on the line between the nearest counts seen below and above it; with none
    /// below, the one above; with none above, the one below (an underestimate: a prefill token
    /// is charged a little more). Counts that only ever run beside prompt tokens are never
    /// seen alone: charging them a larger count's whole step left such a step no time for
    /// prompts (three streams beside five new prompts on a 1B model: a token a step).
    pub fn decode_step_ms(&self, decodes: usize) -> Option<f64> {
        let seen = |d: usize| self.decode_ms.get(d).copied().flatten();
        let at_least = |d: usize| {
            (d..self.decode_ms.len())
                .filter_map(seen)
                .min_by(f64::total_cmp)
        };
        if seen(decodes).is_some() {
            return at_least(decodes);
        }
        let below = (1..decodes).rev().find(|&d| seen(d).is_some());
        let above = (decodes + 1..self.decode_ms.len()).find(|&d| seen(d).is_some());
        match (below, above) {
            (Some(l), Some(u)) => {
                let (a, b) = (at_least(l)?, at_least(u)?);
                Some(a + (b - a) * (decodes - l) as f64 / (u - l) as f64)
            }
            (None, Some(u)) => at_least(u),
            (Some(l), None) => at_least(l),
            (None, None) => None,
        }
    }

    /// [`Self::decode_step_ms`] for budgeting, where a count larger than any seen is the
    /// largest seen plus a prefill token's cost per extra row (a row of the matmuls either
    /// way). Without it the budget would feed on itself: while prompts are in flight there are
    /// few decode-only steps of many rows, and a batch predicted as cheap as the few rows
    /// seen leaves the prompts so little time that many rows never decode together.
    fn predicted_decode_ms(&self, decodes: usize) -> Option<f64> {
        let largest = (1..self.decode_ms.len())
            .rev()
            .find(|&d| self.decode_ms[d].is_some());
        match (largest, self.prefill_token_ms) {
            (Some(m), Some(per_row)) if decodes > m => {
                Some(self.decode_ms[m]? + (decodes - m) as f64 * per_row)
            }
            _ => self.decode_step_ms(decodes),
        }
    }

    /// Prefill tokens a step of `decodes` decodes may carry while `running` sequences (those
    /// decodes and the prompts in flight) share the batch: the step may take `stretch ×` a
    /// decode step of all `running`, the gap the streams will see once those prompts decode
    /// too. Measured against the decodes alone, one stream decoding beside seven new prompts
    /// would hold all seven to a trickle to keep its own gap near a lone stream's; against the
    /// whole batch, the prompts get the time their own decodes will take, and the decodes wait
    /// no longer than they soon will anyway. `None` until both averages exist.
    pub fn prefill_tokens(&self, decodes: usize, running: usize, stretch: f64) -> Option<usize> {
        let own = self.predicted_decode_ms(decodes)?;
        let whole = self.predicted_decode_ms(running.max(decodes))?.max(own);
        let per_token = self.prefill_token_ms?;
        let spare = (stretch.max(1.0) * whole - own).max(0.0);
        Some(if per_token > 0.0 {
            (spare / per_token).floor().min(usize::MAX as f64) as usize
        } else {
            usize::MAX
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_predicted_before_both_kinds_of_step_ran() {
        let mut c = StepCost::default();
        assert_eq!(c.prefill_tokens(4, 4, 2.0), None);
        c.observe(4, 0, 20.0);
        assert_eq!(c.prefill_tokens(4, 4, 2.0), None);
        c.observe(0, 100, 150.0);
        // 20 ms of decodes, stretch 2: 20 ms to spare at 1.5 ms a token.
        assert_eq!(c.prefill_tokens(4, 4, 2.0), Some(13));
        assert_eq!(c.prefill_tokens(4, 4, 1.0), Some(0));
    }

    #[test]
    fn mixed_steps_charge_prefill_only_what_the_decodes_did_not_take() {
        let mut c = StepCost::default();
        c.observe(8, 0, 24.0);
        c.observe(8, 32, 24.0 + 32.0 * 2.0);
        assert_eq!(c.prefill_token_ms, Some(2.0));
        // Budget for stretch 3 at 8 decodes: 48 ms spare / 2 ms.
        assert_eq!(c.prefill_tokens(8, 8, 3.0), Some(24));
        // A mixed step before its decode count was ever seen alone is not charged a guess.
        let mut d = StepCost::default();
        d.observe(8, 32, 90.0);
        assert_eq!(d.prefill_token_ms, None);
    }

    #[test]
    fn decode_predictions_grow_with_the_count_of_decodes() {
        let mut c = StepCost::default();
        c.observe(2, 0, 10.0);
        c.observe(6, 0, 20.0);
        assert_eq!(c.decode_step_ms(2), Some(10.0));
        assert_eq!(c.decode_step_ms(1), Some(10.0)); // no slower than 2
        assert_eq!(c.decode_step_ms(4), Some(15.0)); // between 2 and 6
        assert_eq!(c.decode_step_ms(5), Some(17.5));
        assert_eq!(c.decode_step_ms(9), Some(20.0)); // only smaller counts seen
        assert_eq!(StepCost::default().decode_step_ms(3), None);
        // A count seen once in a slow step does not stand above a larger count's average.
        c.observe(5, 0, 60.0);
        assert_eq!(c.decode_step_ms(5), Some(20.0));
        // Between 2 and 5, at 5 what stands for it (6's 20 ms): 10 + 10 · 2/3.
        assert!((c.decode_step_ms(4).unwrap() - (10.0 + 20.0 / 3.0)).abs() < 1e-9);
    }

    #[test]
    fn streams_beside_new_prompts_leave_them_time_by_an_interpolated_own_step() {
        // Seen alone: one stream (75 ms) and eight (135 ms); a prompt token costs 11 ms.
        // Three streams beside five new prompts never decode alone, so their own step is
        // interpolated (~92 ms), not taken as eight's 135 (which left the prompts nothing).
        let mut c = StepCost::default();
        c.observe(1, 0, 75.0);
        c.observe(8, 0, 135.0);
        c.observe(0, 100, 1100.0);
        assert_eq!(c.prefill_tokens(3, 8, 1.0), Some(3));
        assert_eq!(c.prefill_tokens(1, 8, 1.0), Some(5));
    }

    #[test]
    fn averages_follow_new_observations_smoothly() {
        let mut c = StepCost::default();
        c.observe(1, 0, 10.0);
        c.observe(1, 0, 20.0);
        assert!((c.decode_step_ms(1).unwrap() - 12.0).abs() < 1e-9);
        for _ in 0..100 {
            c.observe(1, 0, 20.0);
        }
        assert!((c.decode_step_ms(1).unwrap() - 20.0).abs() < 1e-6);
        // Nonsense durations are ignored.
        c.observe(1, 0, f64::NAN);
        c.observe(1, 0, -1.0);
        assert!((c.decode_step_ms(1).unwrap() - 20.0).abs() < 1e-6);
    }

    #[test]
    fn prompts_in_flight_get_the_time_their_decodes_will_take() {
        let mut c = StepCost::default();
        c.observe(1, 0, 8.0);
        c.observe(8, 0, 24.0);
        c.observe(0, 100, 125.0); // 1.25 ms a prompt token

        // One stream decoding beside seven prompts: the step may take what 8 decodes take
        // (stretch 1), i.e. 16 ms beyond its own 8 ms.
        assert_eq!(c.prefill_tokens(1, 8, 1.0), Some(12));
        // Stretch 2 of the whole batch: 48 ms, 40 of them for prompts.
        assert_eq!(c.prefill_tokens(1, 8, 2.0), Some(32));
        // With every running sequence decoding it is the stretch of their own step.
        assert_eq!(c.prefill_tokens(8, 8, 1.0), Some(0));
        assert_eq!(c.prefill_tokens(8, 8, 2.0), Some(19));
        // A batch larger than any step seen yet: the largest seen plus a prompt token's cost
        // per extra row (24 + 4 × 1.25 ms).
        assert_eq!(c.prefill_tokens(1, 12, 1.0), Some(16));
        assert_eq!(c.prefill_tokens(10, 12, 1.0), Some(2));
        // A stretch below 1 would starve the prompts behind the decodes; it counts as 1.
        assert_eq!(c.prefill_tokens(1, 8, 0.5), Some(12));
    }
}
