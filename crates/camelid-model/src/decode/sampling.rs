//! Turning logits into the next token: penalties, temperature, top-k / top-p / min-p, a
//! per-request seeded RNG (so a seed gives the same tokens whatever else runs), and
//! log-probabilities of the model's own distribution.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::borrow::Cow;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables; >1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: HashMap<u32, f32>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: HashMap::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// Log-probability of one token and its best alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// (token, logprob), best first.
    pub top: Vec<(u32, f32)>,
}

/// `ln Σ exp(l)`, shifted by the max (each exponent in f64).
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// Natural-log softmax of raw logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| l - lse).collect()
}

/// Up to this many, the best values are kept in one pass instead of selected.
const SMALL_K: usize = 64;

/// `f32::total_cmp`'s order as integers (the same transform it makes).
#[inline(always)]
fn total_order_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// The index of the largest value by `f32::total_cmp`, the first of equals. Greedy decoding
/// runs it on every row of every step: a fold that carries the index does not vectorise (~1 ns
/// a value: 0.13 ms for a 128k vocabulary, per sequence per step); here one pass finds the
/// largest key in 16 lanes, a second the first block of 64 that holds it.
fn argmax(values: &[f32]) -> usize {
    let mut lanes = [i32::MIN; 16];
    let mut chunks = values.chunks_exact(16);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = (*m).max(total_order_key(x));
        }
    }
    let best = chunks
        .remainder()
        .iter()
        .map(|&x| total_order_key(x))
        .chain(lanes)
        .max()
        .unwrap_or(i32::MIN);
    let mut at = 0;
    for block in values.chunks(64) {
        if block
            .iter()
            .fold(false, |a, &x| a | (total_order_key(x) == best))
        {
            return at
                + block
                    .iter()
                    .position(|&x| total_order_key(x) == best)
                    .expect("the block holds it");
        }
        at += block.len();
    }
    0
}

/// Indices of the `k` largest values, best first (ties: lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    if k == 0 {
        return vec![];
    }
    if k == 1 {
        return vec![argmax(values)];
    }
    if k <= SMALL_K && k < values.len() {
        // One pass holding the best k so far, best first: most values lose to the k-th at
        // once (logprobs ask for at most 20 of a 50–150k vocabulary, at every position).
        let mut best: Vec<usize> = Vec::with_capacity(k + 1);
        for (i, v) in values.iter().enumerate() {
            if best.len() == k && !v.total_cmp(&values[best[k - 1]]).is_gt() {
                continue;
            }
            // After every entry at least as large: an earlier index wins a tie.
            let at = best.partition_point(|&j| values[j].total_cmp(v).is_ge());
            best.insert(at, i);
            best.truncate(k);
        }
        return best;
    }
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Logprob of `token` and the `top_n` most likely tokens under the model's distribution.
/// The same numbers as [`log_softmax`]'s, without a vocabulary-sized vector: this runs on
/// the engine thread for every scored position and every token of a `logprobs` request.
pub fn token_logprob(logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    // A token a grammar forbids has -inf, which JSON cannot carry: -9999, as vLLM writes it.
    let lp = |i: usize| (logits[i] - lse).max(-9999.0);
    // The order of the logits is the order of their log-probabilities.
    let top = top_k_indices(logits, top_n)
        .into_iter()
        .map(|i| (i as u32, lp(i)))
        .collect();
    TokenLogprob {
        token,
        logprob: lp(token as usize),
        top,
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Unnormalised probabilities of the last draw (a buffer kept between tokens).
    weights: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            weights: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether this sampler takes the row's best token, as it is: greedy (temperature 0 or
    /// top-k 1) with no bias or penalty. Its draws use no randomness.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        (p.temperature <= 0.0 || p.top_k == 1) && self.leaves_logits_alone()
    }

    /// Whether [`Self::apply_penalties`] leaves every logit as it is.
    fn leaves_logits_alone(&self) -> bool {
        let p = &self.params;
        p.logit_bias.is_empty()
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    /// Applies bias and penalties in place. `prompt` and `output` are the sequence so far.
    pub fn apply_penalties(&self, logits: &mut [f32], prompt: &[u32], output: &[u32]) {
        let p = &self.params;
        for (&t, &b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in prompt.iter().chain(output) {
                if let Some(s) = seen.get_mut(t as usize) {
                    if !*s {
                        *s = true;
                        let l = &mut logits[t as usize];
                        *l = if *l > 0.0 {
                            // Kept finite: a penalty near 0 (the range allows 1e-45) makes
                            // an infinite logit, and the softmax's ∞ − ∞ a NaN.
                            (*l / p.repetition_penalty).min(f32::MAX)
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in output {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Picks the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], output: &[u32]) -> u32 {
        // A copy of the row only when penalties or a bias change it.
        let l = if self.leaves_logits_alone() {
            Cow::Borrowed(logits)
        } else {
            let mut l = logits.to_vec();
            self.apply_penalties(&mut l, prompt, output);
            Cow::Owned(l)
        };
        let l = &*l;
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return top_k_indices(l, 1)[0] as u32;
        }
        let uncut = (p.top_k == 0 || p.top_k >= l.len()) && p.top_p >= 1.0 && p.min_p <= 0.0;
        let w = &mut self.weights;
        let total = softmax_weights(l, p.temperature, w);
        if uncut {
            // Nothing cuts the distribution: draw from it in index order, with no sort (a
            // vocabulary is 32–150k entries; sorting it took milliseconds per token).
            let mut r = self.rng.random::<f64>() * total;
            let mut last = 0;
            for (i, (&x, &wi)) in l.iter().zip(w.iter()).enumerate() {
                if x > f32::NEG_INFINITY {
                    last = i;
                    r -= wi as f64;
                    if r <= 0.0 {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        let (cand, probs) = kept_candidates(l, p, w, total);
        let mut r = self.rng.random::<f64>();
        for (&c, &x) in cand.iter().zip(&probs) {
            r -= x;
            if r <= 0.0 {
                return c as u32;
            }
        }
        // Rounding may leave `r` a hair above 0 past the last candidate; a row of NaN
        // logits (a broken weight file) may leave no candidate at all: its best stands.
        match cand.last() {
            Some(&c) => c as u32,
            None => top_k_indices(l, 1)[0] as u32,
        }
    }
}

/// `w[i] = exp((l[i] − max) / t)` for every logit (vectorised; −∞ logits give weights of
/// ~1e-38, which the draws skip); returns their sum, in f64: the kernel's f32 sum rounds (by
/// ~1e-3 over a flat 100k vocabulary), and draws against a total above the weights' own fell
/// past the last one, to the highest-index token whatever its probability, and below it
/// never reached the last tokens.
fn softmax_weights(l: &[f32], t: f32, w: &mut Vec<f32>) -> f64 {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Divided, not multiplied by 1/t: below t ≈ 3e-39 that is infinite, the best logit's
    // 0 · ∞ a NaN, and the draw garbage; divided, the best stays 0 and the rest fall to −∞.
    w.clear();
    w.extend(l.iter().map(|&x| (x - max) / t));
    camelid_kernels::vecmath::exp_shifted_sum(w, 0.0);
    // Eight running sums: one chain of f64 adds over a 128k vocabulary is ~150 µs a token.
    let mut acc = [0.0f64; 8];
    let chunks = w.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    acc.iter().sum::<f64>() + rest
}

/// The tokens top_k, min_p and top_p keep (in no particular order, the same for the same
/// logits), with their renormalised probabilities; `w` and `total` are [`softmax_weights`]'
/// output. The kept set is the textbook one (sort the vocabulary best first, ties to the
/// lower index; cut by top_k, then top_p over the mass top_k left and min_p, each a
/// best-first prefix: HF's and llama.cpp's order; vLLM takes top_p over what min_p left,
/// renormalised, which keeps fewer where both cut), found without sorting: a flat distribution
/// under a top_p near 1 keeps most of a 150k vocabulary, and a sort of it per token per
/// sequence (milliseconds on the engine thread) would slow every other stream.
fn kept_candidates(l: &[f32], p: &SamplingParams, w: &[f32], total: f64) -> (Vec<usize>, Vec<f64>) {
    let better = |a: &usize, b: &usize| l[*b].total_cmp(&l[*a]).then(a.cmp(b));
    // Tokens at −∞ (blocked stop tokens, a bias of −∞) are never drawn; if every token is,
    // the best of them stands alone.
    let mut cand: Vec<usize> = (0..l.len()).filter(|&i| l[i] > f32::NEG_INFINITY).collect();
    if cand.is_empty() {
        return (top_k_indices(l, 1), vec![1.0]);
    }
    // top_k: the k best, then the distribution over them.
    let mut total = total;
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, better);
        cand.truncate(p.top_k);
        total = cand.iter().map(|&i| w[i] as f64).sum();
    }
    // min_p: drop tokens less likely than min_p × the most likely one (weight 1, the max).
    if p.min_p > 0.0 {
        let best = cand.iter().map(|&i| w[i]).fold(0.0f32, f32::max) as f64;
        let floor = best / total * p.min_p as f64;
        cand.retain(|&i| w[i] as f64 / total >= floor);
    }
    // top_p: the smallest best-first prefix whose mass reaches top_p.
    if p.top_p < 1.0 {
        let n = mass_prefix(&mut cand, w, p.top_p as f64 * total, better);
        cand.truncate(n.max(1));
    }
    let mass: f64 = cand.iter().map(|&i| w[i] as f64).sum();
    let probs = cand.iter().map(|&i| w[i] as f64 / mass).collect();
    (cand, probs)
}

/// Reorders `cand` so that its first n entries are the best n (by `better`) and returns the
/// smallest such n whose weight reaches `target` (all of them if none does). A selection
/// that halves the range each round: expected O(len), no sort.
fn mass_prefix(
    cand: &mut [usize],
    w: &[f32],
    target: f64,
    better: impl Fn(&usize, &usize) -> std::cmp::Ordering + Copy,
) -> usize {
    // Invariant: cand[..lo] are the lo best and weigh less than `target` (short by `need`);
    // the answer lies in lo + 1 ..= hi, and cand[lo..hi] are the next best after cand[..lo].
    let (mut lo, mut hi, mut need) = (0, cand.len(), target);
    while lo < hi {
        // The best m + 1 of the range (at least one, at most just over half of it).
        let m = (hi - lo - 1) / 2;
        cand[lo..hi].select_nth_unstable_by(m, better);
        let upper: f64 = cand[lo..=lo + m].iter().map(|&i| w[i] as f64).sum();
        if upper >= need {
            if m == 0 {
                return lo + 1;
            }
            hi = lo + m + 1;
        } else {
            need -= upper;
            lo += m + 1;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fold `argmax` replaced: the largest by `total_cmp`, the first of equals.
    fn argmax_by_fold(values: &[f32]) -> usize {
        (1..values.len()).fold(0, |b, i| {
            if values[i].total_cmp(&values[b]).is_gt() {
                i
            } else {
                b
            }
        })
    }

    #[test]
    fn argmax_is_the_folds_answer_on_every_kind_of_row() {
        let mut rng = StdRng::seed_from_u64(3);
        let specials = [
            0.0f32,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        for n in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 49_152, 128_256] {
            for trial in 0..20 {
                let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-20.0f32..20.0)).collect();
                if n > 0 {
                    match trial % 5 {
                        // Ties: the largest value several times.
                        0 => {
                            let m = v.iter().copied().fold(f32::MIN, f32::max) + 1.0;
                            for _ in 0..3 {
                                let i = rng.random_range(0..n);
                                v[i] = m;
                            }
                        }
                        // Special values sprinkled in.
                        1 | 2 => {
                            for _ in 0..4 {
                                let i = rng.random_range(0..n);
                                v[i] = specials[rng.random_range(0..specials.len())];
                            }
                        }
                        // All equal (the first wins), or all −∞ (a fully masked row).
                        3 => v.iter_mut().for_each(|x| {
                            *x = if trial % 2 == 0 {
                                1.5
                            } else {
                                f32::NEG_INFINITY
                            }
                        }),
                        _ => {}
                    }
                }
                assert_eq!(argmax(&v), argmax_by_fold(&v), "n {n}, trial {trial}");
            }
        }
    }

    /// The log-softmax written out in f64 (`l − ln Σ e^l`, from the maximum): the reference
    /// the sampler's own f32 one is checked against.
    fn exact_log_softmax(l: &[f32]) -> Vec<f64> {
        let max = l.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
        let lse = max + l.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        l.iter().map(|&x| x as f64 - lse).collect()
    }

    fn logits() -> Vec<f32> {
        (0..50)
            .map(|i| ((i * 37 % 50) as f32) / 7.0 - 3.0)
            .collect()
    }

    /// A draw from the whole distribution never lands on the last token by rounding: its
    /// sum in f32 (100k weights of 0.77 ulp each, every add rounded up) comes out ~0.3 %
    /// above the exact one, and draws in that gap took the highest-index token, here one of
    /// probability ~1e-35 (~50 of 20 000 draws).
    #[test]
    fn a_rounded_up_sum_never_draws_the_last_token() {
        let mut l = vec![-16.2f32; 100_000];
        l[0] = 0.0;
        l[99_999] = -80.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(1),
            ..Default::default()
        });
        let (mut hits, mut tail) = (0, 0);
        for _ in 0..20_000 {
            let t = s.sample(&l, &[], &[]);
            hits += (t == 99_999) as usize;
            tail += (t >= 70_000) as usize;
        }
        assert_eq!(hits, 0, "the last token drawn {hits} times");
        // Nor is the gap spread over the tail (a redraw over the exact sum did that): its
        // 29 999 tokens hold 0.27 % of the mass, 55 ± 7 draws.
        assert!(
            (30..85).contains(&tail),
            "the last 30 000 tokens drawn {tail} times"
        );
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(p.clone());
            (0..20)
                .map(|_| s.sample(&logits(), &[], &[]))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let mut other = Sampler::new(SamplingParams {
            seed: Some(8),
            ..p.clone()
        });
        let b: Vec<_> = (0..20).map(|_| other.sample(&logits(), &[], &[])).collect();
        assert_ne!(a, b, "different seeds should give different draws");
    }

    #[test]
    fn greedy_scan_agrees_with_the_sorted_selection() {
        // Ties (the max appears twice) go to the lower index in both.
        let v = [0.5f32, 2.0, -1.0, 2.0, 1.5, f32::NEG_INFINITY];
        assert_eq!(top_k_indices(&v, 1), vec![1]);
        assert_eq!(top_k_indices(&v, 3), vec![1, 3, 4]);
        let l = logits();
        assert_eq!(top_k_indices(&l, 1)[0], top_k_indices(&l, 2)[0]);
    }

    /// The one-pass selection of a few equals the full sort's prefix, ties and −∞ included.
    #[test]
    fn small_selections_are_the_sorted_prefix() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [1usize, 5, 70, 3000] {
            let v: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    0 => f32::NEG_INFINITY,
                    k => (k % 4) as f32 + rng.random_range(0..3) as f32 * 0.5,
                })
                .collect();
            let mut sorted: Vec<usize> = (0..n).collect();
            sorted.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
            for k in [1, 2, 5, 20, 64, 65, n] {
                assert_eq!(top_k_indices(&v, k), sorted[..k.min(n)], "n {n}, k {k}");
            }
        }
        // A token's log-probability against one written out here in f64 (`l − ln Σ e^l`),
        // its top 20 against a full sort: not the functions it is made of.
        let logits = logits();
        let t = token_logprob(&logits, 9, 20);
        let exact = exact_log_softmax(&logits);
        let exact = |i: usize| exact[i];
        assert!(
            (t.logprob as f64 - exact(9)).abs() < 1e-5,
            "{} vs {}",
            t.logprob,
            exact(9)
        );
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        assert_eq!(t.top.len(), 20);
        for ((id, lp), want) in t.top.iter().zip(&order) {
            assert_eq!(*id as usize, *want);
            assert!((*lp as f64 - exact(*want)).abs() < 1e-5, "{id}: {lp}");
        }
    }

    #[test]
    fn a_vanishing_temperature_is_greedy() {
        let l = logits();
        let greedy = top_k_indices(&l, 1)[0] as u32;
        for t in [1e-30f32, 1e-39, f32::MIN_POSITIVE, 1e-45] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                seed: Some(3),
                ..Default::default()
            });
            for _ in 0..10 {
                assert_eq!(s.sample(&l, &[], &[]), greedy, "temperature {t:e}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let l = logits();
        let greedy = top_k_indices(&l, 1)[0] as u32;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.5,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..10 {
            assert_eq!(s.sample(&l, &[], &[]), greedy);
        }
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.sample(&l, &[], &[]), greedy);
    }

    #[test]
    fn top_p_and_min_p_restrict_support() {
        let mut l = vec![-10.0f32; 10];
        l[3] = 5.0;
        l[4] = 4.9;
        // A quarter as likely as the best: min_p 0.5 drops it, no cut draws it ~15 % of the time.
        l[5] = 5.0 - 4f32.ln();
        let draws = |p: SamplingParams| -> Vec<u32> {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&l, &[], &[])).collect()
        };
        let seeded = |top_p, min_p| SamplingParams {
            top_p,
            min_p,
            seed: Some(3),
            ..Default::default()
        };
        assert!(draws(seeded(0.4, 0.0)).iter().all(|&t| t == 3));
        let min_p = draws(seeded(1.0, 0.5));
        assert!(min_p.iter().all(|&t| [3, 4].contains(&t)), "{min_p:?}");
        assert!(
            min_p.contains(&3) && min_p.contains(&4),
            "both survivors are drawn"
        );
        // The control: without the cut, the same seed draws the third token too.
        let uncut = draws(seeded(1.0, 0.0));
        assert!(uncut.contains(&5), "{uncut:?}");
    }

    /// The kept tokens and their probabilities, by the textbook recipe: sort the whole
    /// vocabulary, cut by top_k, min_p, and top_p over the mass top_k left, renormalise.
    fn reference_support(l: &[f32], p: &SamplingParams) -> Vec<(usize, f64)> {
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        if p.top_k > 0 {
            idx.truncate(p.top_k);
        }
        let max = l[idx[0]] as f64;
        let w: Vec<f64> = idx
            .iter()
            .map(|&i| ((l[i] as f64 - max) / p.temperature as f64).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut kept: Vec<(usize, f64)> =
            idx.iter().zip(&w).map(|(&i, &x)| (i, x / total)).collect();
        // Blocked tokens (−∞) are never drawn.
        kept.retain(|&(i, _)| l[i] > f32::NEG_INFINITY);
        if p.min_p > 0.0 {
            let floor = kept[0].1 * p.min_p as f64;
            kept.retain(|&(_, x)| x >= floor);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let n = kept
                .iter()
                .position(|&(_, x)| {
                    acc += x;
                    acc >= p.top_p as f64
                })
                .map_or(kept.len(), |i| i + 1);
            kept.truncate(n);
        }
        let mass: f64 = kept.iter().map(|k| k.1).sum();
        kept.iter().map(|&(i, x)| (i, x / mass)).collect()
    }

    /// The kept candidates equal the full sort's: same tokens in the same order, same
    /// probabilities (a peaked and a flat vocabulary of 3 000, so the candidate prefix must
    /// widen past its first 256 in some cases and stop early in others).
    #[test]
    fn cuts_keep_what_a_full_sort_keeps() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let peaked: Vec<f32> = (0..3000)
            .map(|_| rng.random_range(-8.0f32..0.0))
            .chain([4.0, 3.5, 3.0])
            .collect();
        let flat: Vec<f32> = (0..3000).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        // Three values only (cuts fall inside runs of ties), a tenth of the vocabulary blocked.
        let tied: Vec<f32> = (0..3000)
            .map(|i| match i % 10 {
                0 => f32::NEG_INFINITY,
                k => (k % 3) as f32 * 0.25,
            })
            .collect();
        let params = |temperature, top_k, top_p, min_p| SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..Default::default()
        };
        let cases = [
            (params(0.7, 0, 0.9, 0.0), &peaked),
            (params(1.0, 0, 0.95, 0.0), &flat),
            (params(1.2, 0, 1.0, 0.05), &peaked),
            (params(1.0, 0, 1.0, 0.5), &flat),
            (params(1.0, 0, 1.0, 0.99), &flat),
            (params(1.0, 40, 0.8, 0.0), &flat),
            (params(0.9, 1000, 0.99, 0.1), &flat),
            (params(0.5, 2000, 1.0, 0.0), &flat),
            // A near-uniform nucleus of nearly the whole vocabulary.
            (params(2.0, 0, 0.999999, 0.0), &flat),
            (params(1.0, 0, 0.5, 0.0), &tied),
            (params(1.0, 2950, 0.7, 0.0), &tied),
            (params(1.0, 0, 0.9, 0.8), &tied),
            (params(1.0, 2500, 0.999, 0.0), &flat),
        ];
        for (n, (p, l)) in cases.into_iter().enumerate() {
            let want = reference_support(l, &p);
            let mut w = vec![];
            let total = softmax_weights(l, p.temperature, &mut w);
            let (cand, probs) = kept_candidates(l, &p, &w, total);
            assert_eq!(cand.len(), want.len(), "case {n}");
            assert!(cand.len() > 1 || n == 4, "case {n}: a real choice");
            // Kept in no particular order: compare best first.
            let mut got: Vec<(usize, f64)> = cand.into_iter().zip(probs).collect();
            got.sort_by(|a, b| l[b.0].total_cmp(&l[a.0]).then(a.0.cmp(&b.0)));
            for (j, &(c, x)) in got.iter().enumerate() {
                assert_eq!(c, want[j].0, "case {n}, rank {j}");
                // The exponent is formed in f32 (as the sampler does), the reference's in f64.
                assert!(
                    (x - want[j].1).abs() < 1e-6,
                    "case {n}, rank {j}: {x} vs {}",
                    want[j].1
                );
            }
        }
    }

    /// With nothing cut, draws (taken in index order, no sort) follow the softmax: every
    /// token's frequency within 5σ of its probability.
    #[test]
    fn uncut_draws_follow_the_softmax() {
        let mut l = logits();
        l[7] = f32::NEG_INFINITY; // a blocked token
        let p = SamplingParams {
            temperature: 0.8,
            seed: Some(5),
            ..Default::default()
        };
        let want = reference_support(&l, &p);
        assert_eq!(want.len(), l.len() - 1, "all but the blocked token");
        let mut s = Sampler::new(p);
        let draws = 50_000;
        let mut counts = vec![0usize; l.len()];
        for _ in 0..draws {
            counts[s.sample(&l, &[], &[]) as usize] += 1;
        }
        assert_eq!(counts[7], 0, "a token at -inf was drawn");
        let mut top3 = Sampler::new(SamplingParams {
            top_k: 5,
            seed: Some(6),
            ..Default::default()
        });
        let mut few = vec![f32::NEG_INFINITY; 20];
        few[3] = 1.0;
        few[11] = 0.5;
        for _ in 0..2000 {
            assert!(
                [3, 11].contains(&top3.sample(&few, &[], &[])),
                "top_k kept a -inf token"
            );
        }
        for (i, x) in want {
            let expected = draws as f64 * x;
            let sd = (expected * (1.0 - x)).sqrt();
            let dev = (counts[i] as f64 - expected).abs();
            assert!(
                dev <= 5.0 * sd + 1.0,
                "token {i}: {} draws, expected {expected:.1}",
                counts[i]
            );
        }
    }

    #[test]
    fn penalties_and_bias() {
        let s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            logit_bias: [(0u32, 10.0f32)].into(),
            ..Default::default()
        });
        let mut l = vec![1.0, 2.0, -2.0, 0.0];
        s.apply_penalties(&mut l, &[1], &[2, 2]);
        assert_eq!(l, vec![11.0, 1.0, -4.0 - 1.0 - 1.0, 0.0]);
    }

    /// The smallest repetition penalty the API takes (1e-45, an f32's least) makes a seen
    /// token's positive logit infinite; kept at f32's largest, that token is drawn every
    /// time (in an infinite row the softmax's ∞ − ∞ made every weight NaN: draws at random
    /// or, where a cut then kept nothing, an engine panic), with and without the cuts.
    #[test]
    fn a_vanishing_repetition_penalty_makes_the_seen_token_certain() {
        let l = vec![1.0, 3.0, 0.5, -1.0, 2.0, 0.0, -3.0, 1.5, 0.25];
        for (top_k, min_p) in [(0, 0.0), (0, 0.05), (4, 0.0), (4, 0.1)] {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k,
                min_p,
                repetition_penalty: 1e-45,
                seed: Some(7),
                ..Default::default()
            });
            for _ in 0..200 {
                assert_eq!(
                    s.sample(&l, &[0, 3], &[]),
                    0,
                    "top_k {top_k}, min_p {min_p}"
                );
            }
        }
    }

    #[test]
    fn logprobs_are_normalised() {
        let t = token_logprob(&logits(), 5, 5);
        assert_eq!(t.top.len(), 5);
        assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f64 = log_softmax(&logits())
            .iter()
            .map(|&x| (x as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        // Each value is the log-softmax, computed here in f64: logit − log Σ exp(logits).
        let l = logits();
        let exact = exact_log_softmax(&l);
        let want = |i: usize| exact[i];
        assert!(
            (t.logprob as f64 - want(5)).abs() < 1e-5,
            "{} vs {}",
            t.logprob,
            want(5)
        );
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        for (&(id, lp), &i) in t.top.iter().zip(&order) {
            assert_eq!(id as usize, i);
            assert!(
                (lp as f64 - want(i)).abs() < 1e-5,
                "token {i}: {lp} vs {}",
                want(i)
            );
        }
    }
}
