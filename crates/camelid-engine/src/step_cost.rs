//! How long a step takes, learned from the steps already run, and how many prefill tokens a
//! step that also decodes may carry.
//!
//! Every running stream waits for the whole step, so a prefill chunk in a step with decodes
//! lengthens their inter-token gap by its own cost. A fixed token cap gets that wrong by
//! model size and device (64 tokens of a 135M model on 2 cores take ~90 ms; of a 7B model,
//! seconds). Instead the scheduler may bound the *time*: a step with `d` decodes may take at
//! most `stretch ×` what a decode step of every running sequence takes (Sarathi-Serve's
//! budget, in time rather than tokens), or a multiple of a lone stream's step if that is
//! longer.
//!
//! The prediction is one running average per count of rows in a step (decodes, draft tokens
//! and prompt tokens alike: each is a row of every matmul). Not a cost per decode plus a cost
//! per prompt token: a step's cost is not linear in its rows. On the CPU each step reads the
//! weights once (a 1B model: ~31 ms for one row, 53 for eight), and the K formats' matmuls
//! switch from VNNI passes to AMX tiles at 10 rows (~3 ms a row below, ~2 above), so eight
//! decodes and a 17-token chunk (81 ms) cost little more than eight decodes alone, while the
//! old per-token average, learned from chunks of every size, held such prompts to a token or
//! two a step.

/// Weight of the newest observation in a count's average: recent enough to follow the
/// context growing, smooth enough to ride out one noisy step.
const ALPHA: f64 = 0.1;

/// Exponent of the newest step's ratio to its count's average in the machine's pace (a
/// geometric running average): larger than [`ALPHA`], so that a change of speed that every
/// count shares (a VM's neighbours, the load) goes mostly into the pace, and reaches the
/// counts that are not running now.
const PACE_ALPHA: f64 = 0.3;

#[derive(Debug)]
pub struct StepCost {
    /// `row_ms[r]`: average duration of a step of `r` rows, at the pace of the first steps.
    row_ms: Vec<Option<f64>>,
    /// How much slower than those first steps the machine runs now (1: as fast). Without
    /// it, a count seen in a slow phase kept its slow average after the phase, while the
    /// counts that ran on got faster: the budget then never went back to it (on a VM whose
    /// speed swings 1.5× within seconds, a 16-row step stayed "90 ms" while it took 70).
    pace: f64,
}

impl Default for StepCost {
    fn default() -> Self {
        Self {
            row_ms: Vec::new(),
            pace: 1.0,
        }
    }
}

impl StepCost {
    /// Records a step of `rows` rows (decodes, drafts and prompt tokens) that took `ms`.
    pub fn observe(&mut self, rows: usize, ms: f64) {
        if !ms.is_finite() || ms <= 0.0 || rows == 0 {
            return;
        }
        if self.row_ms.len() <= rows {
            self.row_ms.resize(rows + 1, None);
        }
        let avg = &mut self.row_ms[rows];
        *avg = Some(match *avg {
            Some(a) => {
                self.pace *= (ms / self.pace / a).powf(PACE_ALPHA);
                a + ALPHA * (ms / self.pace - a)
            }
            None => ms / self.pace,
        });
    }

    /// The average of `rows` at the current pace, if a step of that many rows ran.
    fn seen(&self, rows: usize) -> Option<f64> {
        self.row_ms
            .get(rows)
            .copied()
            .flatten()
            .map(|a| a * self.pace)
    }

    /// The counts of rows a step has run with, in order.
    #[cfg(test)]
    pub(crate) fn counts_seen(&self) -> Vec<usize> {
        (0..self.row_ms.len())
            .filter(|&r| self.seen(r).is_some())
            .collect()
    }

    /// The least average seen for `rows` or more: more rows never take less time (a count
    /// seen only in a step slowed by something else, such as a new request's tokenization on
    /// the same cores, must not stand above a larger count's average).
    fn at_least(&self, rows: usize) -> Option<f64> {
        (rows..self.row_ms.len())
            .filter_map(|r| self.seen(r))
            .min_by(f64::total_cmp)
    }

    /// Duration of a step of `rows` rows, from the steps seen. A count not seen lies on the
    /// line between the nearest counts seen below and above it; with none below, the one
    /// above (an overestimate); with none above, the largest seen scaled by the rows
    /// (`t · rows / largest`, an overestimate too: part of a step's time is per step, not per
    /// row). `None` before any step.
    pub fn step_ms(&self, rows: usize) -> Option<f64> {
        if self.seen(rows).is_some() {
            return self.at_least(rows);
        }
        let below = (1..rows.min(self.row_ms.len()))
            .rev()
            .find(|&r| self.seen(r).is_some());
        let above = (rows + 1..self.row_ms.len()).find(|&r| self.seen(r).is_some());
        match (below, above) {
            (Some(l), Some(u)) => {
                let (a, b) = (self.at_least(l)?, self.at_least(u)?);
                Some(a + (b - a) * (rows - l) as f64 / (u - l) as f64)
            }
            (None, Some(u)) => self.at_least(u),
            (Some(l), None) => Some(self.at_least(l)? * rows as f64 / l as f64),
            (None, None) => None,
        }
    }

    /// Prefill tokens (at most `cap`) a step of `decodes` decode rows may carry while
    /// `running` sequences (those decodes and the prompts in flight) share the batch: the
    /// step may take `stretch ×` a decode step of all `running`, the gap the streams will see
    /// once those prompts decode too, or `lone_gaps ×` a lone stream's step if that is longer. Measured against the decodes alone, one stream decoding beside seven new
    /// prompts would hold all seven to a trickle to keep its own gap near a lone stream's;
    /// against the whole batch, the prompts get the time their own decodes will take, and
    /// the decodes wait no longer than they soon will anyway. `None` before any step.
    pub fn prefill_tokens(
        &self,
        decodes: usize,
        running: usize,
        stretch: f64,
        lone_gaps: f64,
        cap: usize,
    ) -> Option<usize> {
        let whole = self.step_ms(running.max(decodes).max(1))?;
        // Only a lone step actually seen: a larger count standing in for it would overstate it.
        let lone = self.seen(1).unwrap_or(0.0);
        let bound = (stretch.max(1.0) * whole).max(lone_gaps * lone);
        let fits = |p: usize| self.step_ms(decodes + p).is_some_and(|t| t <= bound);
        // `step_ms` never falls as rows grow: the largest fitting count by bisection.
        let (mut lo, mut hi) = (0, cap);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_predicted_before_a_step_ran() {
        let c = StepCost::default();
        assert_eq!(c.step_ms(4), None);
        assert_eq!(c.prefill_tokens(4, 4, 2.0, 0.0, 64), None);
    }

    #[test]
    fn predictions_never_fall_as_rows_grow() {
        let mut c = StepCost::default();
        c.observe(2, 10.0);
        c.observe(6, 20.0);
        assert_eq!(c.step_ms(2), Some(10.0));
        assert_eq!(c.step_ms(1), Some(10.0)); // no slower than 2
        assert_eq!(c.step_ms(4), Some(15.0)); // between 2 and 6
        assert_eq!(c.step_ms(5), Some(17.5));
        assert_eq!(c.step_ms(9), Some(30.0)); // 6's 20 ms scaled by 9/6
                                              // A count seen once in a slow step does not stand above a larger count's average.
        c.observe(5, 60.0);
        assert_eq!(c.step_ms(5), Some(20.0));
        // Between 2 and 5, at 5 what stands for it (6's 20 ms): 10 + 10 · 2/3.
        assert!((c.step_ms(4).unwrap() - (10.0 + 20.0 / 3.0)).abs() < 1e-9);
        // A larger count cheaper than a smaller one (a faster kernel from 16 rows) stands
        // for the smaller: a step can always be filled up to it.
        let mut k = StepCost::default();
        k.observe(12, 70.0);
        k.observe(16, 60.0);
        assert_eq!(k.step_ms(12), Some(60.0));
        for r in 1..40 {
            assert!(k.step_ms(r) <= k.step_ms(r + 1), "{r}");
        }
    }

    #[test]
    fn averages_follow_new_observations_smoothly() {
        let mut c = StepCost::default();
        c.observe(1, 10.0);
        c.observe(1, 20.0);
        // Part of the way: one slow step moves the prediction, it does not replace it.
        let after_one = c.step_ms(1).unwrap();
        assert!(after_one > 10.5 && after_one < 15.0, "{after_one}");
        for _ in 0..100 {
            c.observe(1, 20.0);
        }
        assert!((c.step_ms(1).unwrap() - 20.0).abs() < 1e-3);
        // Nonsense durations and empty steps are ignored.
        c.observe(1, f64::NAN);
        c.observe(1, -1.0);
        c.observe(1, 0.0);
        c.observe(0, 5.0);
        assert!((c.step_ms(1).unwrap() - 20.0).abs() < 1e-3);
    }

    /// The machine's speed changes every count alike: a count that ran in a slow phase is
    /// predicted fast again once the counts still running are (and slow beside them before).
    #[test]
    fn a_change_of_pace_reaches_the_counts_not_running() {
        let mut c = StepCost::default();
        c.observe(1, 30.0);
        c.observe(16, 70.0);
        // A slow phase: both counts run 1.4× slower for a while.
        for _ in 0..10 {
            c.observe(16, 98.0);
            c.observe(1, 42.0);
        }
        let slow = c.step_ms(16).unwrap();
        assert!(slow > 85.0, "16 rows in the slow phase: {slow}");
        // Then only lone steps run, at the old speed: 16 rows come back near their 70 ms.
        for _ in 0..20 {
            c.observe(1, 30.0);
        }
        let back = c.step_ms(16).unwrap();
        assert!(back < 75.0, "16 rows after the slow phase: {back}");
        // The same while only 16-row steps run: a lone step is predicted slow, then fast.
        let mut d = StepCost::default();
        d.observe(1, 30.0);
        d.observe(16, 70.0);
        for _ in 0..20 {
            d.observe(16, 98.0);
        }
        assert!(d.step_ms(1).unwrap() > 38.0, "{:?}", d.step_ms(1));
    }

    /// The steps of a 1B Q4_K_M model on 2 cores (a step trace of 8 clients, session 30):
    /// one row 31 ms, eight 53 (VNNI passes), 25 rows 81, 65 rows 161 (AMX tiles).
    fn one_b_model() -> StepCost {
        let mut c = StepCost::default();
        for (rows, ms) in [(1, 31.0), (8, 53.0), (25, 81.0), (65, 161.0), (317, 702.0)] {
            c.observe(rows, ms);
        }
        c
    }

    #[test]
    fn prompts_in_flight_get_the_time_their_decodes_will_take() {
        let mut c = StepCost::default();
        c.observe(1, 8.0);
        c.observe(8, 24.0);
        c.observe(108, 149.0); // 1.25 ms a row past eight
                               // One stream decoding beside seven prompts: the step may take what 8 decodes take
                               // (stretch 1), 24 ms: 7 prompt tokens.
        assert_eq!(c.prefill_tokens(1, 8, 1.0, 0.0, 512), Some(7));
        // Stretch 2 of the whole batch: 48 ms, 8 rows and (48 − 24) / 1.25 more.
        assert_eq!(c.prefill_tokens(1, 8, 2.0, 0.0, 512), Some(26));
        // With every running sequence decoding it is the stretch of their own step.
        assert_eq!(c.prefill_tokens(8, 8, 1.0, 0.0, 512), Some(0));
        assert_eq!(c.prefill_tokens(8, 8, 2.0, 0.0, 512), Some(19));
        // Within the cap.
        assert_eq!(c.prefill_tokens(8, 8, 2.0, 0.0, 16), Some(16));
        // A stretch below 1 would starve the prompts behind the decodes; it counts as 1.
        assert_eq!(c.prefill_tokens(1, 8, 0.5, 0.0, 512), Some(7));
    }

    #[test]
    fn busy_streams_of_a_large_model_leave_prompts_a_chunk() {
        let c = one_b_model();
        // Seven streams decoding, an eighth prompt: stretch 1 of eight rows (53 ms) would
        // leave it one row a step; a lone stream's 31 ms × 2.5 = 77.5 ms leaves it the rows
        // up to 22 (53 + 28 · 14/17 ≈ 76.1 ms; 23 rows ≈ 77.7).
        assert_eq!(c.prefill_tokens(7, 8, 1.0, 0.0, 64), Some(1));
        assert_eq!(c.prefill_tokens(7, 8, 1.0, 2.5, 64), Some(15));
        // Without a lone step seen, only the stretch bounds it.
        let mut no_lone = StepCost::default();
        for (rows, ms) in [(8, 53.0), (25, 81.0)] {
            no_lone.observe(rows, ms);
        }
        assert_eq!(no_lone.prefill_tokens(7, 8, 1.0, 2.5, 64), Some(1));
        // The stretch still rules where it is the longer bound.
        assert_eq!(c.prefill_tokens(7, 8, 2.0, 2.5, 64), Some(30)); // 106 ms: 37 rows
    }
}
