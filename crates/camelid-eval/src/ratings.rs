//! Arena ratings from pairwise battles, as Chatbot Arena computes them: FastChat's online Elo
//! (`compute_elo`) and the Bradley–Terry maximum-likelihood fit its leaderboard reports
//! (`compute_mle_elo`), with bootstrap confidence intervals.
//!
//! Both put ratings on the Elo scale: `P(a beats b) = 1 / (1 + 10^((R_b − R_a) / 400))`.
//! A tie counts half a win for each side. The Bradley–Terry fit is order-free (the online Elo
//! depends on the order of the battles and on K) and is centred on 1000.

use crate::data::PairJudgment;
use crate::judge::combine;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const SCALE: f64 = 400.0;
const BASE: f64 = 10.0;
const INIT: f64 = 1000.0;

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

/// Reads battles from a file: a JSON array or JSON lines of FastChat battles
/// (`model_a`, `model_b`, `winner`; those marked `"anony": false` are left out, as FastChat's
/// leaderboard leaves them), or `mtbench judge` pairwise judgments.
pub fn read_battles(text: &str) -> Result<Vec<Battle>> {
    let read = read_records(text)?;
    if let Some(line) = read.torn_last_line {
        tracing::warn!("line {line}, the last, is cut short: skipped");
    }
    let values: Vec<serde_json::Value> = read
        .records
        .into_iter()
        .filter(|v| v.get("anony").and_then(|a| a.as_bool()) != Some(false))
        .collect();
    let mut battles = vec![];
    let mut judgments = vec![];
    for (i, v) in values.into_iter().enumerate() {
        if v.get("g1_winner").is_some() {
            judgments.push(serde_json::from_value::<PairJudgment>(v)?);
        } else {
            match serde_json::from_value::<Battle>(v) {
                Ok(b) => battles.push(b),
                Err(e) => bail!("battle {}: {e}", i + 1),
            }
        }
    }
    battles.extend(battles_from_pairwise(&judgments));
    Ok(battles)
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

/// The Bradley–Terry maximum-likelihood ratings: the ratings under which every model's
/// expected score over its battles equals its actual score.
pub fn bradley_terry(battles: &[Battle]) -> BTreeMap<String, f64> {
    let models = Models::of(battles);
    let ratings = models.fit(battles.iter());
    models
        .names
        .into_iter()
        .zip(ratings)
        .filter_map(|(m, r)| r.map(|r| (m, r)))
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
    /// the battles grouped by pair, with a vanishing ridge (1e-6 per model, in natural-log
    /// units) that keeps the fit finite for a model that never lost or never won. Ratings are
    /// centred on 1000 over the models that fought; `None` for the others.
    fn fit<'a>(&self, battles: impl Iterator<Item = &'a Battle>) -> Vec<Option<f64>> {
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
        let ridge = 1e-6;
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
                let g = score - count * p;
                grad[i] += g;
                grad[j] -= g;
                let w = count * p * (1.0 - p);
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
        let present = fought.iter().filter(|&&f| f).count().max(1);
        let mean = (0..n).filter(|&i| fought[i]).map(|i| theta[i]).sum::<f64>() / present as f64;
        (0..n)
            .map(|i| fought[i].then(|| INIT + SCALE * (theta[i] - mean) / BASE.ln()))
            .collect()
    }
}

/// Solves `a x = b` for a symmetric positive definite `a` (Gaussian elimination with partial
/// pivoting; the systems are one row per model).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
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
    /// FastChat's online Elo (K = 4, battles in file order).
    pub online_elo: f64,
    pub battles: usize,
    /// Wins plus half the ties, over battles.
    pub score_rate: f64,
}

/// The leaderboard: Bradley–Terry ratings with `rounds` bootstrap resamples of the battles
/// (seeded, so a table can be reproduced), online Elo, battle counts; best first.
pub fn leaderboard(battles: &[Battle], rounds: usize, seed: u64) -> Vec<Rating> {
    let point = bradley_terry(battles);
    let elo = online_elo(battles, 4.0);
    let models = Models::of(battles);
    // A model missing from a resample has no rating in it (as in FastChat's bootstrap).
    let mut samples: Vec<Vec<f64>> = vec![vec![]; models.names.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..rounds {
        let resample = (0..battles.len()).map(|_| &battles[rng.random_range(0..battles.len())]);
        for (s, r) in samples.iter_mut().zip(models.fit(resample)) {
            s.extend(r);
        }
    }
    let mut samples: BTreeMap<&str, Vec<f64>> = models
        .names
        .iter()
        .map(String::as_str)
        .zip(samples)
        .collect();
    let mut rows: Vec<Rating> = point
        .iter()
        .map(|(m, &r)| {
            let mut s = samples.remove(m.as_str()).unwrap_or_default();
            s.sort_by(f64::total_cmp);
            let (ci_low, ci_high) = if s.is_empty() {
                (r, r)
            } else {
                (quantile(&s, 0.025), quantile(&s, 0.975))
            };
            let (n, score) = battles.iter().fold((0usize, 0.0f64), |(n, sc), b| {
                if &b.model_a == m {
                    (n + 1, sc + b.winner.score_a())
                } else if &b.model_b == m {
                    (n + 1, sc + 1.0 - b.winner.score_a())
                } else {
                    (n, sc)
                }
            });
            Rating {
                model: m.clone(),
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
        let r = bradley_terry(&bs);
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
        let r = bradley_terry(&bs);
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
        let r = bradley_terry(&bs);
        for m in names {
            let (mut actual, mut expected) = (0.0, 0.0);
            for b in &bs {
                let ea = 1.0 / (1.0 + BASE.powf((r[&b.model_b] - r[&b.model_a]) / SCALE));
                if b.model_a == m {
                    actual += b.winner.score_a();
                    expected += ea;
                } else if b.model_b == m {
                    actual += 1.0 - b.winner.score_a();
                    expected += 1.0 - ea;
                }
            }
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
        let (r1, r2) = (bradley_terry(&bs), bradley_terry(&flipped));
        for m in ["a", "b", "c"] {
            assert!((r1[m] - r2[m]).abs() < 1e-6);
        }
    }

    #[test]
    fn a_model_that_never_lost_gets_a_finite_top_rating() {
        let mut bs = repeat("a", "b", Outcome::ModelA, 5);
        bs.extend(repeat("b", "c", Outcome::ModelA, 3));
        bs.extend(repeat("b", "c", Outcome::ModelB, 3));
        let r = bradley_terry(&bs);
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
        assert!(bradley_terry(&[]).is_empty());
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
}
