//! `camelid mtbench show`: FastChat's `show_result.py` tables.

use crate::data::{PairJudgment, Question, SingleJudgment};
use crate::judge::combine;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SingleRow {
    pub model: String,
    pub turn1: Option<f64>,
    pub turn2: Option<f64>,
    pub overall: Option<f64>,
    pub judged: usize,
    /// Judgments whose score could not be parsed (-1), left out of the means.
    pub unparsed: usize,
    pub by_category: BTreeMap<String, f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn single_table(js: &[SingleJudgment], questions: &[Question]) -> Vec<SingleRow> {
    let cat: BTreeMap<u64, &str> = questions
        .iter()
        .map(|q| (q.question_id, q.category.as_str()))
        .collect();
    let mut by_model: BTreeMap<&str, Vec<&SingleJudgment>> = BTreeMap::new();
    for j in js {
        by_model.entry(&j.model).or_default().push(j);
    }
    let mut rows: Vec<SingleRow> = by_model
        .into_iter()
        .map(|(m, v)| {
            let valid: Vec<&&SingleJudgment> = v.iter().filter(|j| j.score != -1.0).collect();
            let scores = |t: Option<u8>| -> Vec<f64> {
                valid
                    .iter()
                    .filter(|j| t.is_none_or(|t| j.turn == t))
                    .map(|j| j.score)
                    .collect()
            };
            let mut cats: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for j in &valid {
                if let Some(c) = cat.get(&j.question_id) {
                    cats.entry(c.to_string()).or_default().push(j.score);
                }
            }
            SingleRow {
                model: m.to_string(),
                turn1: mean(&scores(Some(1))),
                turn2: mean(&scores(Some(2))),
                overall: mean(&scores(None)),
                judged: v.len(),
                unparsed: v.len() - valid.len(),
                by_category: cats
                    .into_iter()
                    .filter_map(|(c, s)| mean(&s).map(|m| (c, m)))
                    .collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.overall
            .unwrap_or(-1.0)
            .total_cmp(&a.overall.unwrap_or(-1.0))
    });
    rows
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PairRow {
    pub model: String,
    pub win: usize,
    pub loss: usize,
    pub tie: usize,
    pub win_rate: f64,
    pub loss_rate: f64,
    pub win_rate_adjusted: f64,
    /// Games where a verdict could not be parsed, left out.
    pub errors: usize,
}

/// The judgments of one judge model: `wanted`, or the only one there is (a file that
/// several judges wrote to would count a match once per judge).
pub fn one_judge<T>(
    js: Vec<T>,
    judge_of: impl Fn(&T) -> &str,
    wanted: Option<&str>,
) -> anyhow::Result<Vec<T>> {
    let judges: std::collections::BTreeSet<&str> = js.iter().map(&judge_of).collect();
    let names = || judges.iter().copied().collect::<Vec<_>>().join(", ");
    if let Some(w) = wanted {
        // A judge not in the file (a typo, another file) is an error, not an empty table.
        if !judges.contains(w) {
            if judges.is_empty() {
                anyhow::bail!("no judgments of judge model {w:?}: there are no judgments");
            }
            anyhow::bail!(
                "no judgments of judge model {w:?}; the judgments are of: {}",
                names()
            );
        }
        return Ok(js.into_iter().filter(|j| judge_of(j) == w).collect());
    }
    if judges.len() > 1 {
        anyhow::bail!(
            "judgments of several judge models ({}): pick one with --judge-model",
            names()
        );
    }
    Ok(js)
}

/// Wins, losses and ties per model; inconsistent swapped verdicts are ties. With a
/// `baseline` (FastChat's `--baseline-model`), only games against it count and it has no
/// row of its own.
pub fn pair_table(js: &[PairJudgment], baseline: Option<&str>) -> Vec<PairRow> {
    let mut t: BTreeMap<&str, [usize; 4]> = BTreeMap::new(); // win, loss, tie, error
    let against_baseline =
        |j: &PairJudgment| baseline.is_none_or(|b| j.model_1 == b || j.model_2 == b);
    for j in js.iter().filter(|j| against_baseline(j)) {
        let outcome = combine(&j.g1_winner, &j.g2_winner);
        let (a, b) = (j.model_1.as_str(), j.model_2.as_str());
        let idx = |o: &str, me: &str| match o {
            "error" => 3,
            "tie" => 2,
            "model_1" if me == "1" => 0,
            "model_2" if me == "2" => 0,
            _ => 1,
        };
        t.entry(a).or_default()[idx(outcome, "1")] += 1;
        t.entry(b).or_default()[idx(outcome, "2")] += 1;
    }
    let mut rows: Vec<PairRow> = t
        .into_iter()
        .filter(|(m, _)| Some(*m) != baseline)
        .map(|(m, [w, l, ti, e])| {
            let n = (w + l + ti).max(1) as f64;
            PairRow {
                model: m.to_string(),
                win: w,
                loss: l,
                tie: ti,
                win_rate: w as f64 / n,
                loss_rate: l as f64 / n,
                win_rate_adjusted: (w as f64 + 0.5 * ti as f64) / n,
                errors: e,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.win_rate_adjusted.total_cmp(&a.win_rate_adjusted));
    rows
}

fn f(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

pub fn render_single(rows: &[SingleRow], markdown: bool) -> String {
    let mut out = String::new();
    let cats: Vec<String> = {
        let mut c: Vec<String> = rows
            .iter()
            .flat_map(|r| r.by_category.keys().cloned())
            .collect();
        c.sort();
        c.dedup();
        c
    };
    let mut header = vec![
        "model".to_string(),
        "turn 1".into(),
        "turn 2".into(),
        "overall".into(),
        "judged".into(),
        "unparsed".into(),
    ];
    header.extend(cats.iter().cloned());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![
                r.model.clone(),
                f(r.turn1),
                f(r.turn2),
                f(r.overall),
                r.judged.to_string(),
                r.unparsed.to_string(),
            ];
            v.extend(cats.iter().map(|c| f(r.by_category.get(c).copied())));
            v
        })
        .collect();
    table(&mut out, &header, &body, markdown);
    out
}

pub fn render_pair(rows: &[PairRow], markdown: bool) -> String {
    let mut out = String::new();
    let header: Vec<String> = [
        "model",
        "win",
        "loss",
        "tie",
        "win rate",
        "loss rate",
        "adjusted win rate",
        "errors",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                r.win.to_string(),
                r.loss.to_string(),
                r.tie.to_string(),
                format!("{:.3}", r.win_rate),
                format!("{:.3}", r.loss_rate),
                format!("{:.3}", r.win_rate_adjusted),
                r.errors.to_string(),
            ]
        })
        .collect();
    table(&mut out, &header, &body, markdown);
    out
}

fn table(out: &mut String, header: &[String], body: &[Vec<String>], markdown: bool) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            body.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        if markdown {
            format!("| {} |\n", padded.join(" | "))
        } else {
            format!("{}\n", padded.join("  "))
        }
    };
    out.push_str(&line(header));
    if markdown {
        let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&sep));
    }
    for r in body {
        out.push_str(&line(r));
    }
}
