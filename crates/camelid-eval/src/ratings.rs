//! Arena ratings from pairwise battles, as Chatbot Arena computes them: FastChat's online Elo
//! (`compute_elo`) and the Bradley–Terry maximum-likelihood fit its leaderboard reports
//! (`compute_mle_elo`), with bootstrap confidence intervals.
//!
//! Both put ratings on the Elo scale: `P(a beats b) = 1 / (1 + 10^((R_b − R_a) / 400))`.
//! A tie counts half a win for each side. The Bradley–Terry fit is order-free (the online Elo
//! depends on the order of the battles and on K). Two conventions for it ([`BtConvention`]):
//! FastChat's (scikit-learn's default L2 penalty, `llama-13b` at 800) and the plain MLE centred
//! on 1000. Battles are selected and ordered as FastChat's `elo_analysis` does
//! ([`select_battles`]), and the bootstrap draws numpy's legacy random stream ([`NumpyRandom`]),
//! so a seed gives FastChat's resamples.

use crate::data::PairJudgment;
use crate::judge::combine;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) const SCALE: f64 = 400.0;
pub(crate) const BASE: f64 = 10.0;
pub(crate) const INIT: f64 = 1000.0;
/// FastChat pins this model's rating when it is among the rated ones: its plain fit
/// (`compute_elo_mle_with_tie`) `llama-13b` at 800.
pub(crate) const ANCHOR: (&str, f64) = ("llama-13b", 800.0);
/// Its style-controlled fit (`fit_mle_elo` with style, `scale_and_offset`) pins
/// `mixtral-8x7b-instruct-v0.1` at 1114 instead.
pub(crate) const STYLE_ANCHOR: (&str, f64) = ("mixtral-8x7b-instruct-v0.1", 1114.0);

/// How the Bradley–Terry ratings are fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BtConvention {
    /// FastChat's `compute_elo_mle_with_tie`: scikit-learn's `LogisticRegression` with its
    /// default L2 penalty (C = 1 on coefficients in units of 400 rating points, each battle
    /// counted twice, a tie as one win and one loss), solved to the optimum; ratings
    /// `1000 + 400·w`, then shifted so `llama-13b` is at 800 when it is rated.
    #[default]
    FastChat,
    /// The plain maximum-likelihood fit, centred on 1000.
    Mle,
}

impl BtConvention {
    /// Each battle's weight in the log-likelihood, and the penalty on the natural-log
    /// strengths (½·ridge·θ²): `Mle`'s is a vanishing one that keeps a model that never
    /// lost or never won finite; `FastChat`'s is scikit-learn's ½‖w‖² with `w = θ / ln 10`.
    pub(crate) fn weight_and_ridge(self) -> (f64, f64) {
        match self {
            BtConvention::Mle => (1.0, 1e-6),
            BtConvention::FastChat => (2.0, 1.0 / (BASE.ln() * BASE.ln())),
        }
    }
}

/// One battle, in FastChat's `clean_battle` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Battle {
    pub model_a: String,
    pub model_b: String,
    pub winner: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "model_a")]
    ModelA,
    #[serde(rename = "model_b")]
    ModelB,
    #[serde(rename = "tie")]
    Tie,
    #[serde(rename = "tie (bothbad)")]
    TieBothBad,
}

impl Outcome {
    /// model_a's score: 1 for a win, 0 for a loss, ½ for either tie.
    pub fn score_a(self) -> f64 {
        match self {
            Outcome::ModelA => 1.0,
            Outcome::ModelB => 0.0,
            Outcome::Tie | Outcome::TieBothBad => 0.5,
        }
    }
}

/// MT-bench pairwise judgments as battles: each swapped pair of games is one battle (an
/// inconsistent pair is a tie, as `mtbench show` counts it); failed judgments are left out.
pub fn battles_from_pairwise(js: &[PairJudgment]) -> Vec<Battle> {
    js.iter()
        .filter_map(|j| {
            let winner = match combine(&j.g1_winner, &j.g2_winner) {
                "model_1" => Outcome::ModelA,
                "model_2" => Outcome::ModelB,
                "tie" => Outcome::Tie,
                _ => return None,
            };
            Some(Battle {
                model_a: j.model_1.clone(),
                model_b: j.model_2.clone(),
                winner,
            })
        })
        .collect()
}

/// The JSON records of a battle file, and the number of a last line cut short.
pub struct Records {
    pub records: Vec<serde_json::Value>,
    /// A last line that is not JSON and ends the file without a newline: a write cut short
    /// (a process killed mid-line), left out rather than refusing the whole file.
    pub torn_last_line: Option<usize>,
}

/// The records of a JSON array or of JSON lines.
pub fn read_records(text: &str) -> Result<Records> {
    if let Ok(serde_json::Value::Array(records)) = serde_json::from_str(text) {
        return Ok(Records {
            records,
            torn_last_line: None,
        });
    }
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut records = vec![];
    let mut torn_last_line = None;
    for (k, &(i, l)) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => records.push(v),
            Err(_) if k + 1 == lines.len() && !text.ends_with('\n') => torn_last_line = Some(i + 1),
            Err(e) => bail!("line {}: {e}", i + 1),
        }
    }
    Ok(Records {
        records,
        torn_last_line,
    })
}

/// The judge models of the `mtbench judge` pairwise judgments in a battle file (none for
/// FastChat battles): rated together, several judges' verdicts on the same pairs would count
/// each pair once a judge, as if more battles had been fought.
pub fn judges_of(text: &str) -> Result<std::collections::BTreeSet<String>> {
    Ok(read_records(text)?
        .records
        .iter()
        .filter(|v| v.get("g1_winner").is_some())
        .filter_map(|v| {
            v.pointer("/judge/0")
                .and_then(|j| j.as_str())
                .map(String::from)
        })
        .collect())
}

/// Refuses `mtbench judge` pairwise judgments of the same question, turn and pair of models
/// given twice (`files`: each file's name and text): the rename experiment's file beside the
/// original's, or a `pairwise-baseline` file beside a `pairwise-all` one, would count each
/// such match twice and narrow the intervals as if more battles had been fought.
pub fn refuse_repeated_judgments(files: &[(String, &str)]) -> Result<()> {
    let mut seen: std::collections::HashMap<(u64, u8, String, String), &str> =
        std::collections::HashMap::new();
    for (name, text) in files {
        for v in read_records(text)?.records {
            if v.get("g1_winner").is_none() {
                continue;
            }
            let Ok(j) = serde_json::from_value::<PairJudgment>(v) else {
                continue; // read_battle_records names a malformed judgment
            };
            let (a, b) = if j.model_1 <= j.model_2 {
                (j.model_1, j.model_2)
            } else {
                (j.model_2, j.model_1)
            };
            let key = (j.question_id, j.turn, a, b);
            if let Some(first) = seen.get(&key) {
                bail!(
                    "question {} turn {}, {} against {}, is judged in {first} and again in \
                     {name}: rated together it would count twice (rate one judgment of each \
                     match)",
                    key.0,
                    key.1,
                    key.2,
                    key.3
                );
            }
            seen.insert(key, name);
        }
    }
    Ok(())
}

/// A battle with what FastChat's `elo_analysis` selects and orders by.
#[derive(Debug, Clone, PartialEq)]
pub struct BattleRecord {
    pub battle: Battle,
    /// `anony`: false when the voter saw the models' names (`None`: the record has no field).
    pub anony: Option<bool>,
    pub tstamp: Option<f64>,
    /// The record as read (its conversations, FastChat's `conv_metadata`); null for judgments.
    pub raw: serde_json::Value,
}

/// Reads battle records from a file: a JSON array or JSON lines of FastChat battles
/// (`model_a`, `model_b`, `winner`, optional `anony` and `tstamp`), or `mtbench judge`
/// pairwise judgments (one battle per swapped pair, at the judgment's `tstamp`).
pub fn read_battle_records(text: &str) -> Result<Vec<BattleRecord>> {
    let read = read_records(text)?;
    if let Some(line) = read.torn_last_line {
        tracing::warn!("line {line}, the last, is cut short: skipped");
    }
    let mut out = vec![];
    for (i, v) in read.records.into_iter().enumerate() {
        if v.get("g1_winner").is_some() {
            let j = serde_json::from_value::<PairJudgment>(v)
                .with_context(|| format!("judgment {}", i + 1))?;
            out.extend(
                battles_from_pairwise(std::slice::from_ref(&j))
                    .into_iter()
                    .map(|battle| BattleRecord {
                        battle,
                        anony: None,
                        tstamp: Some(j.tstamp),
                        raw: serde_json::Value::Null,
                    }),
            );
        } else {
            let anony = v.get("anony").and_then(|a| a.as_bool());
            let tstamp = v.get("tstamp").and_then(|t| t.as_f64());
            let battle = serde_json::from_value::<Battle>(v.clone())
                .with_context(|| format!("battle {}", i + 1))?;
            out.push(BattleRecord {
                battle,
                anony,
                tstamp,
                raw: v,
            });
        }
    }
    Ok(out)
}

/// The battles FastChat's `elo_analysis` rates, in its order: those marked `"anony": false`
/// left out unless `include_named` (records without the field are kept), sorted by `tstamp`
/// when every record has one (a stable sort: equal stamps keep file order), else in file
/// order.
pub fn select_records(mut records: Vec<BattleRecord>, include_named: bool) -> Vec<BattleRecord> {
    if !include_named {
        records.retain(|r| r.anony != Some(false));
    }
    let stamped = records.iter().filter(|r| r.tstamp.is_some()).count();
    if stamped == records.len() {
        records.sort_by(|a, b| a.tstamp.unwrap().total_cmp(&b.tstamp.unwrap()));
    } else if stamped > 0 {
        tracing::warn!(
            "{stamped} of {} battles have a tstamp: rated in file order",
            records.len()
        );
    }
    records
}

/// The battles of [`select_records`].
pub fn select_battles(records: Vec<BattleRecord>, include_named: bool) -> Vec<Battle> {
    select_records(records, include_named)
        .into_iter()
        .map(|r| r.battle)
        .collect()
}

/// The battles of a file FastChat's leaderboard rates ([`read_battle_records`], then
/// [`select_battles`] without the named ones).
pub fn read_battles(text: &str) -> Result<Vec<Battle>> {
    Ok(select_battles(read_battle_records(text)?, false))
}

/// FastChat's online Elo: battles in order, each moving both ratings by `k × (score −
/// expected)`, from 1000.
pub fn online_elo(battles: &[Battle], k: f64) -> BTreeMap<String, f64> {
    let mut r: BTreeMap<String, f64> = BTreeMap::new();
    for b in battles {
        let ra = *r.entry(b.model_a.clone()).or_insert(INIT);
        let rb = *r.entry(b.model_b.clone()).or_insert(INIT);
        let ea = 1.0 / (1.0 + BASE.powf((rb - ra) / SCALE));
        let delta = k * (b.winner.score_a() - ea);
        *r.get_mut(&b.model_a).unwrap() += delta;
        *r.get_mut(&b.model_b).unwrap() -= delta;
    }
    r
}

/// The Bradley–Terry ratings: those under which every model's expected score over its
/// battles equals its actual score (with `Mle`; FastChat's penalty pulls them slightly
/// towards the mean).
pub fn bradley_terry(battles: &[Battle], convention: BtConvention) -> BTreeMap<String, f64> {
    let models = Models::of(battles);
    let ratings = models.fit(battles.iter(), convention);
    models
        .names
        .into_iter()
        .zip(ratings)
        .filter_map(|(m, r)| r.map(|r| (m, r)))
        .collect()
}

/// Models that won every battle they fought, or lost every one (no tie either): the data
/// bound no maximum-likelihood rating of theirs (it goes to ±∞; `Mle`'s vanishing ridge
/// alone sets where it stops).
pub fn unbounded_models(battles: &[Battle]) -> Vec<String> {
    let mut scores: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for b in battles.iter().filter(|b| b.model_a != b.model_b) {
        let s = b.winner.score_a();
        for (m, got) in [(&b.model_a, s), (&b.model_b, 1.0 - s)] {
            let e = scores.entry(m).or_default();
            e.0 += got;
            e.1 += 1.0;
        }
    }
    scores
        .into_iter()
        .filter(|(_, (got, of))| *got == 0.0 || got == of)
        .map(|(m, _)| m.to_string())
        .collect()
}

/// The models of a set of battles, numbered.
struct Models {
    names: Vec<String>,
    index: BTreeMap<String, usize>,
}

impl Models {
    fn of(battles: &[Battle]) -> Self {
        let names: Vec<String> = battles
            .iter()
            .flat_map(|b| [b.model_a.clone(), b.model_b.clone()])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        Self { names, index }
    }

    /// Fits `battles` (all between these models) by Newton's method on the log-likelihood of
    /// the battles grouped by pair. `Mle`: a vanishing ridge (1e-6 per model, in natural-log
    /// units) keeps the fit finite for a model that never lost or never won, ratings centred
    /// on 1000 over the models that fought. `FastChat`: each battle counts twice and the
    /// penalty is ½‖w‖² with `w = θ / ln 10`, the objective scikit-learn minimises for
    /// FastChat (its solver stops near, not at, this optimum). `None` for models that did not
    /// fight.
    fn fit<'a>(
        &self,
        battles: impl Iterator<Item = &'a Battle>,
        convention: BtConvention,
    ) -> Vec<Option<f64>> {
        let n = self.names.len();
        // (i, j) with i < j -> (battles, i's score)
        let mut pairs: BTreeMap<(usize, usize), (f64, f64)> = BTreeMap::new();
        let mut fought = vec![false; n];
        for b in battles {
            let (a, c) = (self.index[&b.model_a], self.index[&b.model_b]);
            if a == c {
                continue;
            }
            let (key, s) = if a < c {
                ((a, c), b.winner.score_a())
            } else {
                ((c, a), 1.0 - b.winner.score_a())
            };
            let e = pairs.entry(key).or_default();
            e.0 += 1.0;
            e.1 += s;
            fought[a] = true;
            fought[c] = true;
        }
        let (weight, ridge) = convention.weight_and_ridge();
        // Natural-log strengths: P(i beats j) = σ(θ_i − θ_j).
        let mut theta = vec![0.0f64; n];
        for _ in 0..100 {
            let mut grad: Vec<f64> = theta.iter().map(|t| -ridge * t).collect();
            let mut hess = vec![vec![0.0f64; n]; n];
            for (i, row) in hess.iter_mut().enumerate() {
                row[i] = ridge;
            }
            for (&(i, j), &(count, score)) in &pairs {
                let p = 1.0 / (1.0 + (theta[j] - theta[i]).exp());
                let g = weight * (score - count * p);
                grad[i] += g;
                grad[j] -= g;
                let w = weight * count * p * (1.0 - p);
                hess[i][i] += w;
                hess[j][j] += w;
                hess[i][j] -= w;
                hess[j][i] -= w;
            }
            // Newton step: (−∇²L) Δ = ∇L.
            let step = solve(hess, grad);
            let size = step.iter().fold(0.0f64, |m, s| m.max(s.abs()));
            for (t, s) in theta.iter_mut().zip(&step) {
                *t += s;
            }
            if size < 1e-12 {
                break;
            }
        }
        to_ratings(&self.names, &theta, &fought, convention, ANCHOR)
    }
}

/// Natural-log strengths to ratings by the convention: centred on 1000 (`Mle`), or
/// `1000 + 400·w` with `llama-13b` moved to 800 when it fought (`FastChat`).
pub(crate) fn to_ratings(
    names: &[String],
    theta: &[f64],
    fought: &[bool],
    convention: BtConvention,
    (anchor_model, anchor_rating): (&str, f64),
) -> Vec<Option<f64>> {
    let rating = |t: f64| SCALE * t / BASE.ln();
    let shift = match convention {
        BtConvention::Mle => {
            let present = fought.iter().filter(|&&f| f).count().max(1);
            let mean = theta
                .iter()
                .zip(fought)
                .filter(|(_, &f)| f)
                .map(|(t, _)| t)
                .sum::<f64>()
                / present as f64;
            INIT - rating(mean)
        }
        BtConvention::FastChat => match names.iter().position(|m| m == anchor_model) {
            Some(k) if fought[k] => anchor_rating - rating(theta[k]),
            _ => INIT,
        },
    };
    theta
        .iter()
        .zip(fought)
        .map(|(&t, &f)| f.then(|| shift + rating(t)))
        .collect()
}

/// numpy's legacy `RandomState` stream (MT19937 seeded as `np.random.seed(seed)`), for the
/// draws FastChat's bootstrap makes: `DataFrame.sample(frac=1.0, replace=True)` is
/// `randint(0, n, size=n)`, each a masked 32-bit draw retried while above `n − 1`.
pub struct NumpyRandom(rand_mt::Mt);

impl NumpyRandom {
    pub fn new(seed: u32) -> Self {
        Self(rand_mt::Mt::new(seed))
    }

    /// `randint(0, n)` for one value (numpy draws nothing when `n` is 1).
    pub fn below(&mut self, n: usize) -> usize {
        let max = (n as u64).saturating_sub(1);
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        loop {
            let v = if max <= u32::MAX as u64 {
                (self.0.next_u32() as u64) & mask
            } else {
                (((self.0.next_u32() as u64) << 32) | self.0.next_u32() as u64) & mask
            };
            if v <= max {
                return v as usize;
            }
        }
    }
}

/// Solves `a x = b` for a symmetric positive definite `a` (Gaussian elimination with partial
/// pivoting; the systems are one row per model).
pub(crate) fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
            .unwrap();
        a.swap(c, p);
        b.swap(c, p);
        let (top, below) = a.split_at_mut(c + 1);
        let pivot = &top[c];
        for (r, row) in below.iter_mut().enumerate() {
            let f = row[c] / pivot[c];
            if f != 0.0 {
                for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * p;
                }
                b[c + 1 + r] -= f * b[c];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

/// One leaderboard row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rating {
    pub model: String,
    /// Bradley–Terry rating (the Arena leaderboard's "Elo").
    pub rating: f64,
    /// 95 % bootstrap interval of `rating` (equal to it without bootstrap rounds).
    pub ci_low: f64,
    pub ci_high: f64,
    /// FastChat's online Elo (K = 4, battles in `tstamp` order when they all have one).
    pub online_elo: f64,
    pub battles: usize,
    /// Wins plus half the ties, over battles.
    pub score_rate: f64,
}

/// The bootstrap's seed by default, FastChat's `elo_analysis` one: the server's leaderboard and
/// `camelid arena ratings` on its export give the same intervals.
pub const FASTCHAT_SEED: u32 = 42;

/// How a leaderboard is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatingOptions {
    pub convention: BtConvention,
    /// Bootstrap resamples of the battles (0: no intervals).
    pub rounds: usize,
    /// numpy's seed: FastChat's `elo_analysis` seeds 42.
    pub seed: u32,
}

/// The leaderboard with FastChat's conventions ([`leaderboard_with`]).
pub fn leaderboard(battles: &[Battle], rounds: usize, seed: u32) -> Vec<Rating> {
    leaderboard_with(
        battles,
        &RatingOptions {
            convention: BtConvention::default(),
            rounds,
            seed,
        },
    )
}

/// The leaderboard: Bradley–Terry ratings with bootstrap intervals (FastChat's resamples for
/// the same seed), online Elo, battle counts; best first.
pub fn leaderboard_with(battles: &[Battle], opts: &RatingOptions) -> Vec<Rating> {
    let models = Models::of(battles);
    table(battles, opts, |picks| match picks {
        None => models.fit(battles.iter(), opts.convention),
        Some(p) => models.fit(p.iter().map(|&i| &battles[i]), opts.convention),
    })
}

/// The models of `battles`, sorted: the order of the ratings a fit returns.
pub(crate) fn model_names(battles: &[Battle]) -> Vec<String> {
    Models::of(battles).names
}

/// A leaderboard from a fit: `fit(None)` rates all battles, `fit(Some(picks))` a resample
/// (battle indices), each one rating per [`model_names`] (`None`: not rated).
pub(crate) fn table(
    battles: &[Battle],
    opts: &RatingOptions,
    fit: impl Fn(Option<&[usize]>) -> Vec<Option<f64>>,
) -> Vec<Rating> {
    let names = model_names(battles);
    let point: BTreeMap<&str, f64> = names
        .iter()
        .map(String::as_str)
        .zip(fit(None))
        .filter_map(|(m, r)| r.map(|r| (m, r)))
        .collect();
    let elo = online_elo(battles, 4.0);
    // A model missing from a resample has no rating in it (as in FastChat's bootstrap).
    let mut samples: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut rng = NumpyRandom::new(opts.seed);
    for _ in 0..opts.rounds {
        let picks: Vec<usize> = (0..battles.len())
            .map(|_| rng.below(battles.len()))
            .collect();
        for (s, r) in samples.iter_mut().zip(fit(Some(&picks))) {
            s.extend(r);
        }
    }
    let mut samples: BTreeMap<&str, Vec<f64>> =
        names.iter().map(String::as_str).zip(samples).collect();
    let mut rows: Vec<Rating> = point
        .iter()
        .map(|(&m, &r)| {
            let mut s = samples.remove(m).unwrap_or_default();
            s.sort_by(f64::total_cmp);
            let (ci_low, ci_high) = if s.is_empty() {
                (r, r)
            } else {
                (quantile(&s, 0.025), quantile(&s, 0.975))
            };
            let (n, score) = battles.iter().fold((0usize, 0.0f64), |(n, sc), b| {
                if b.model_a == m {
                    (n + 1, sc + b.winner.score_a())
                } else if b.model_b == m {
                    (n + 1, sc + 1.0 - b.winner.score_a())
                } else {
                    (n, sc)
                }
            });
            Rating {
                model: m.to_string(),
                rating: r,
                ci_low,
                ci_high,
                online_elo: elo[m],
                battles: n,
                score_rate: score / n.max(1) as f64,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.rating.total_cmp(&a.rating));
    rows
}

/// Linear-interpolated quantile of sorted values (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub fn render_leaderboard(rows: &[Rating], markdown: bool) -> String {
    let header = [
        "rank",
        "model",
        "rating",
        "95% CI",
        "online Elo",
        "battles",
        "score",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            [
                (i + 1).to_string(),
                r.model.clone(),
                format!("{:.1}", r.rating),
                if r.ci_low == r.ci_high {
                    "-".to_string() // no bootstrap
                } else {
                    format!("{:+.1} / {:+.1}", r.ci_high - r.rating, r.ci_low - r.rating)
                },
                format!("{:.1}", r.online_elo),
                r.battles.to_string(),
                format!("{:.3}", r.score_rate),
            ]
        })
        .collect();
    let mut out = String::new();
    if markdown {
        out += &format!("| {} |\n", header.join(" | "));
        out += &format!("|{}\n", "---|".repeat(header.len()));
        for c in &cells {
            out += &format!("| {} |\n", c.join(" | "));
        }
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|k| {
                cells
                    .iter()
                    .map(|c| c[k].chars().count())
                    .chain([header[k].len()])
                    .max()
                    .unwrap()
            })
            .collect();
        let line = |c: &[String]| {
            c.iter()
                .zip(&widths)
                .map(|(s, w)| format!("{s:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
                + "\n"
        };
        out += &line(&header.map(String::from));
        for c in &cells {
            out += &line(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn battle(a: &str, b: &str, w: Outcome) -> Battle {
        Battle {
            model_a: a.into(),
            model_b: b.into(),
            winner: w,
        }
    }

    fn repeat(a: &str, b: &str, w: Outcome, n: usize) -> Vec<Battle> {
        vec![battle(a, b, w); n]
    }

    #[test]
    fn two_models_rate_by_the_odds_of_their_games() {
        // 30 wins, 10 losses: odds 3, so the gap is 400 · log10(3) = 190.85 points.
        let mut bs = repeat("a", "b", Outcome::ModelA, 30);
        bs.extend(repeat("a", "b", Outcome::ModelB, 10));
        let r = bradley_terry(&bs, BtConvention::Mle);
        assert!(
            (r["a"] - r["b"] - SCALE * 3f64.log10()).abs() < 1e-3,
            "{r:?}"
        );
        assert!((r["a"] + r["b"] - 2.0 * INIT).abs() < 1e-9);
        // Ties count half a win each: 20 wins, 20 ties, 10 losses = 30 : 20.
        let mut bs = repeat("a", "b", Outcome::ModelA, 20);
        bs.extend(repeat("b", "a", Outcome::Tie, 10));
        bs.extend(repeat("a", "b", Outcome::TieBothBad, 10));
        bs.extend(repeat("b", "a", Outcome::ModelA, 10));
        let r = bradley_terry(&bs, BtConvention::Mle);
        assert!(
            (r["a"] - r["b"] - SCALE * 1.5f64.log10()).abs() < 1e-3,
            "{r:?}"
        );
    }

    /// The fit satisfies the likelihood equations, checked directly: each model's expected
    /// score over its battles equals its actual score.
    #[test]
    fn every_model_is_expected_to_score_what_it_scored() {
        let names = ["w", "x", "y", "z"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let strength = [1.0f64, 0.3, -0.2, -0.8];
        let mut bs = vec![];
        for _ in 0..2000 {
            let (i, j) = (rng.random_range(0..4), rng.random_range(0..4));
            if i == j {
                continue;
            }
            let p = 1.0 / (1.0 + (strength[j] - strength[i]).exp());
            let u: f64 = rng.random();
            let w = if u < 0.1 {
                Outcome::Tie
            } else if u < 0.1 + 0.9 * p {
                Outcome::ModelA
            } else {
                Outcome::ModelB
            };
            bs.push(battle(names[i], names[j], w));
        }
        let r = bradley_terry(&bs, BtConvention::Mle);
        for m in names {
            let (actual, expected) = actual_and_expected(&bs, &r, m);
            // The ridge moves the optimum by ~1e-6 · θ per model.
            assert!(
                (actual - expected).abs() < 1e-3,
                "{m}: {actual} vs {expected}"
            );
        }
        // And the order follows the strengths the battles were drawn from.
        assert!(
            r["w"] > r["x"] && r["x"] > r["y"] && r["y"] > r["z"],
            "{r:?}"
        );
    }

    #[test]
    fn sides_and_order_do_not_matter_to_the_fit() {
        let bs = vec![
            battle("a", "b", Outcome::ModelA),
            battle("b", "c", Outcome::ModelA),
            battle("c", "a", Outcome::Tie),
            battle("a", "c", Outcome::ModelB),
            battle("b", "a", Outcome::ModelB),
        ];
        let flipped: Vec<Battle> = bs
            .iter()
            .rev()
            .map(|b| Battle {
                model_a: b.model_b.clone(),
                model_b: b.model_a.clone(),
                winner: match b.winner {
                    Outcome::ModelA => Outcome::ModelB,
                    Outcome::ModelB => Outcome::ModelA,
                    t => t,
                },
            })
            .collect();
        let (r1, r2) = (
            bradley_terry(&bs, BtConvention::Mle),
            bradley_terry(&flipped, BtConvention::Mle),
        );
        for m in ["a", "b", "c"] {
            assert!((r1[m] - r2[m]).abs() < 1e-6);
        }
    }

    #[test]
    fn a_model_that_never_lost_gets_a_finite_top_rating() {
        let mut bs = repeat("a", "b", Outcome::ModelA, 5);
        bs.extend(repeat("b", "c", Outcome::ModelA, 3));
        bs.extend(repeat("b", "c", Outcome::ModelB, 3));
        let r = bradley_terry(&bs, BtConvention::Mle);
        assert!(r.values().all(|v| v.is_finite()), "{r:?}");
        assert!(r["a"] > r["b"] + 500.0, "{r:?}");
    }

    #[test]
    fn online_elo_moves_by_k_times_the_surprise() {
        let bs = vec![
            battle("a", "b", Outcome::ModelA),
            battle("a", "b", Outcome::Tie),
        ];
        let r = online_elo(&bs[..1], 4.0);
        assert_eq!((r["a"], r["b"]), (1002.0, 998.0));
        // Then a tie from 1002 vs 998: a was expected to score 1 / (1 + 10^(−4/400)).
        let ea = 1.0 / (1.0 + 10f64.powf(-0.01));
        let r = online_elo(&bs, 4.0);
        assert!((r["a"] - (1002.0 + 4.0 * (0.5 - ea))).abs() < 1e-9);
        assert!((r["a"] + r["b"] - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn bootstrap_intervals_hold_the_fit_and_narrow_with_more_battles() {
        let few = {
            let mut bs = repeat("a", "b", Outcome::ModelA, 6);
            bs.extend(repeat("a", "b", Outcome::ModelB, 4));
            bs
        };
        let many: Vec<Battle> = few.iter().cycle().take(1000).cloned().collect();
        let width = |rows: &[Rating]| rows[0].ci_high - rows[0].ci_low;
        let f = leaderboard(&few, 200, 1);
        let m = leaderboard(&many, 200, 1);
        for row in f.iter().chain(&m) {
            assert!(
                row.ci_low <= row.rating && row.rating <= row.ci_high,
                "{row:?}"
            );
        }
        assert!(
            width(&m) < width(&f) / 3.0,
            "{} vs {}",
            width(&m),
            width(&f)
        );
        // Seeded: the same table twice.
        assert_eq!(leaderboard(&few, 50, 9), leaderboard(&few, 50, 9));
        assert_eq!(f[0].model, "a");
        assert_eq!((f[0].battles, f[0].score_rate), (10, 0.6));
    }

    #[test]
    fn no_battles_make_an_empty_board() {
        assert!(leaderboard(&[], 10, 0).is_empty());
        assert!(bradley_terry(&[], BtConvention::Mle).is_empty());
    }

    #[test]
    fn battles_read_from_fastchat_logs_and_pairwise_judgments() {
        let array = r#"[{"model_a": "x", "model_b": "y", "winner": "tie (bothbad)", "judge": "arena_user_1"},
                        {"model_a": "y", "model_b": "x", "winner": "model_b"}]"#;
        let bs = read_battles(array).unwrap();
        assert_eq!(bs[0].winner, Outcome::TieBothBad);
        assert_eq!(bs[1], battle("y", "x", Outcome::ModelB));
        let pair = |g1: &str, g2: &str| {
            format!(
                r#"{{"question_id": 81, "model_1": "p", "model_2": "q", "g1_winner": "{g1}", "g2_winner": "{g2}", "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "", "g2_judgment": "", "turn": 1, "tstamp": 0.0}}"#
            )
        };
        let lines = [
            pair("model_1", "model_1"),
            pair("model_2", "model_1"),
            pair("error", "model_1"),
        ]
        .join("\n");
        let bs = read_battles(&lines).unwrap();
        assert_eq!(
            bs,
            vec![
                battle("p", "q", Outcome::ModelA),
                battle("p", "q", Outcome::Tie)
            ]
        );
        assert!(read_battles(r#"{"model_a": "x", "model_b": "y", "winner": "draw"}"#).is_err());
    }

    /// A log whose writer was killed mid-line still reads (without that line); battles whose
    /// answers named a model (`"anony": false`) are not rated.
    #[test]
    fn a_torn_last_line_is_skipped_and_non_anonymous_battles_left_out() {
        let good = r#"{"model_a": "x", "model_b": "y", "winner": "model_a", "anony": true}"#;
        let named = r#"{"model_a": "x", "model_b": "y", "winner": "model_b", "anony": false}"#;
        let torn = format!("{good}\n{named}\n{}", &good[..20]);
        let read = read_records(&torn).unwrap();
        assert_eq!((read.records.len(), read.torn_last_line), (2, Some(3)));
        assert_eq!(
            read_battles(&torn).unwrap(),
            vec![battle("x", "y", Outcome::ModelA)]
        );
        // A bad line that is not the last, or one the writer finished, is an error.
        assert!(read_records(&format!("{}\n{good}\n", &good[..20])).is_err());
        assert!(read_records(&format!("{good}\n{}\n", &good[..20])).is_err());
    }

    /// numpy's `np.random.seed(s); np.random.randint(0, n, size=k)`, values from numpy 2.4.
    #[test]
    fn numpy_random_draws_numpys_randint() {
        let mut r = NumpyRandom::new(42);
        let v: Vec<usize> = (0..8).map(|_| r.below(10)).collect();
        assert_eq!(v, [6, 3, 7, 4, 6, 9, 2, 6]);
        let mut r = NumpyRandom::new(42);
        let v: Vec<usize> = (0..5).map(|_| r.below(3000)).collect();
        assert_eq!(v, [860, 1294, 1130, 1095, 1638]);
        // randint(0, 1) draws nothing from the stream.
        let mut r = NumpyRandom::new(7);
        assert_eq!([r.below(1), r.below(1), r.below(1)], [0, 0, 0]);
        let v: Vec<usize> = (0..4).map(|_| r.below(5)).collect();
        assert_eq!(v, [4, 1, 3, 3]);
    }

    /// FastChat's fit is the optimum of 2·log-likelihood − ½‖w‖² (w = (R − 1000) / 400):
    /// checked by its stationarity, model by model; `llama-13b` moves the scale to 800.
    /// Model `m`'s score over `bs` and the score ratings `r` expect of it.
    fn actual_and_expected(bs: &[Battle], r: &BTreeMap<String, f64>, m: &str) -> (f64, f64) {
        let (mut actual, mut expected) = (0.0, 0.0);
        for b in bs {
            let ea = 1.0 / (1.0 + BASE.powf((r[&b.model_b] - r[&b.model_a]) / SCALE));
            if b.model_a == m {
                actual += b.winner.score_a();
                expected += ea;
            } else if b.model_b == m {
                actual += 1.0 - b.winner.score_a();
                expected += 1.0 - ea;
            }
        }
        (actual, expected)
    }

    #[test]
    fn fastchat_convention_is_the_penalised_optimum_anchored_at_llama_13b() {
        let mut bs = repeat("a", "b", Outcome::ModelA, 7);
        bs.extend(repeat("b", "c", Outcome::ModelA, 4));
        bs.extend(repeat("c", "a", Outcome::Tie, 3));
        bs.extend(repeat("a", "c", Outcome::ModelB, 2));
        let r = bradley_terry(&bs, BtConvention::FastChat);
        for m in ["a", "b", "c"] {
            let (actual, expected) = actual_and_expected(&bs, &r, m);
            let w = (r[m] - INIT) / SCALE;
            let grad = 2.0 * BASE.ln() * (actual - expected) - w;
            assert!(grad.abs() < 1e-9, "{m}: {grad}");
        }
        // The penalty shrinks the gaps of the plain fit, and centres the ratings itself.
        let mle = bradley_terry(&bs, BtConvention::Mle);
        assert!((r["a"] - r["b"]).abs() < (mle["a"] - mle["b"]).abs());
        assert!((r.values().sum::<f64>() - 3.0 * INIT).abs() < 1e-9);
        // The same battles with b called llama-13b: the same gaps, llama-13b at 800.
        let renamed: Vec<Battle> = bs
            .iter()
            .map(|b| {
                let n = |m: &str| {
                    if m == "b" {
                        ANCHOR.0.into()
                    } else {
                        m.to_string()
                    }
                };
                battle(&n(&b.model_a), &n(&b.model_b), b.winner)
            })
            .collect();
        let a = bradley_terry(&renamed, BtConvention::FastChat);
        assert!((a[ANCHOR.0] - ANCHOR.1).abs() < 1e-9, "{a:?}");
        assert!(((a["a"] - a[ANCHOR.0]) - (r["a"] - r["b"])).abs() < 1e-9);
        // The plain fit ignores the anchor.
        let m = bradley_terry(&renamed, BtConvention::Mle);
        assert!((m.values().sum::<f64>() - 3.0 * INIT).abs() < 1e-6, "{m:?}");
    }

    fn record(a: &str, b: &str, w: Outcome, anony: Option<bool>, t: Option<f64>) -> BattleRecord {
        BattleRecord {
            battle: battle(a, b, w),
            anony,
            tstamp: t,
            raw: serde_json::Value::Null,
        }
    }

    /// As FastChat: named battles out unless asked for, and the online Elo in time order
    /// whatever the file order.
    #[test]
    fn battles_are_selected_and_ordered_as_fastchat_does() {
        let rs = vec![
            record("x", "y", Outcome::ModelA, Some(true), Some(3.0)),
            record("x", "y", Outcome::ModelB, Some(false), Some(1.0)),
            record("y", "x", Outcome::Tie, Some(true), Some(2.0)),
            record("y", "x", Outcome::ModelA, None, Some(2.5)),
        ];
        assert_eq!(
            select_battles(rs.clone(), false),
            vec![
                battle("y", "x", Outcome::Tie),
                battle("y", "x", Outcome::ModelA),
                battle("x", "y", Outcome::ModelA)
            ]
        );
        assert_eq!(select_battles(rs.clone(), true).len(), 4);
        assert_eq!(
            select_battles(rs.clone(), true)[0],
            battle("x", "y", Outcome::ModelB)
        );
        let mut shuffled = rs.clone();
        shuffled.reverse();
        assert_eq!(
            online_elo(&select_battles(shuffled, false), 4.0),
            online_elo(&select_battles(rs.clone(), false), 4.0)
        );
        // Without a stamp on every battle: file order.
        let mut partly = rs;
        partly[0].tstamp = None;
        assert_eq!(
            select_battles(partly, true)[0],
            battle("x", "y", Outcome::ModelA)
        );
        // From a file: the fields are read.
        let text = r#"[{"model_a": "x", "model_b": "y", "winner": "model_a", "anony": false, "tstamp": 5.5},
                       {"model_a": "x", "model_b": "y", "winner": "tie"}]"#;
        let read: Vec<BattleRecord> = read_battle_records(text)
            .unwrap()
            .into_iter()
            .map(|r| BattleRecord {
                raw: serde_json::Value::Null,
                ..r
            })
            .collect();
        assert_eq!(
            read,
            vec![
                record("x", "y", Outcome::ModelA, Some(false), Some(5.5)),
                record("x", "y", Outcome::Tie, None, None)
            ]
        );
    }

    /// The same match judged in two files (the order of its models swapped, as a rename or
    /// baseline run may write it) is refused; other matches and FastChat battles pass.
    #[test]
    fn a_match_judged_twice_is_refused() {
        let judged = |q: u64, m1: &str, m2: &str, turn: u8| {
            format!(
                r#"{{"question_id": {q}, "model_1": "{m1}", "model_2": "{m2}", "g1_winner": "model_1", "g2_winner": "model_1", "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "", "g2_judgment": "", "turn": {turn}, "tstamp": 0.0}}"#
            ) + "\n"
        };
        let a = judged(81, "p", "q", 1) + &judged(82, "p", "q", 1);
        let b = judged(81, "p", "q", 2)
            + &judged(81, "p", "r", 1)
            + r#"{"model_a": "p", "model_b": "q", "winner": "model_a"}"#;
        let files = |x: &str, y: &str| {
            vec![
                ("a.jsonl".to_string(), x.to_string()),
                ("b.jsonl".into(), y.to_string()),
            ]
        };
        let check = |f: Vec<(String, String)>| {
            let f: Vec<(String, &str)> = f.iter().map(|(n, t)| (n.clone(), t.as_str())).collect();
            refuse_repeated_judgments(&f)
        };
        check(files(&a, &b)).unwrap();
        let again = judged(82, "q", "p", 1);
        let e = check(files(&a, &again)).unwrap_err().to_string();
        assert!(
            e.contains("question 82 turn 1") && e.contains("a.jsonl") && e.contains("b.jsonl"),
            "{e}"
        );
    }

    /// A model that won all or lost all is named; one with a tie or a loss is not.
    #[test]
    fn models_that_won_or_lost_everything_are_unbounded() {
        let b = |a: &str, c: &str, w: Outcome| Battle {
            model_a: a.into(),
            model_b: c.into(),
            winner: w,
        };
        let battles = [
            b("a", "b", Outcome::ModelA),
            b("c", "a", Outcome::ModelB),
            b("b", "c", Outcome::Tie),
            b("d", "b", Outcome::ModelA),
            b("b", "d", Outcome::ModelA),
        ];
        assert_eq!(unbounded_models(&battles), ["a"]);
        assert_eq!(
            unbounded_models(&[b("x", "y", Outcome::ModelA)]),
            ["x", "y"]
        );
    }
}
