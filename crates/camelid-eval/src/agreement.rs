//! `camelid mtbench agreement`: how often two judges — LLMs or humans — give the same verdict
//! on the same pair of answers, counted as FastChat's `compute_agreement.py` counts it.
//!
//! Setup S1 counts every pair of votes (a tie agrees with a tie; random agreement 1/3), S2
//! only pairs where neither vote is a tie (random agreement 1/2). Two judges' votes on one
//! `(question, turn, pair of models)` are compared each with each; a judge's several votes
//! on one pair (the human experts of `mt_bench_human_judgments`) are also compared among
//! themselves.

use crate::data::{JudgeId, PairJudgment, SingleJudgment};
use crate::judge::combine;
use crate::ratings::read_records;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// A verdict on a pair of models, the first named `model_a`. Both of FastChat's ties
/// (`tie`, `tie (bothbad)`) are one tie, as its `equalvote` has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Winner {
    ModelA,
    ModelB,
    Tie,
    /// Any other verdict (a judge's `error`): FastChat counts it, agreeing only with itself.
    Other,
}

impl Winner {
    fn swapped(self) -> Self {
        match self {
            Winner::ModelA => Winner::ModelB,
            Winner::ModelB => Winner::ModelA,
            Winner::Tie => Winner::Tie,
            Winner::Other => Winner::Other,
        }
    }
}

/// One judge's vote on `(question, turn, model_a, model_b)`, with `model_a < model_b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub question_id: u64,
    pub turn: u8,
    pub model_a: String,
    pub model_b: String,
    pub winner: Winner,
    /// The judge's name: a file's label, else `MODEL-pair` / `MODEL-single` for judgment
    /// files, `human` for FastChat's `expert_*` voters, `author` for `author_*`.
    pub judge: String,
    /// A model judge's (a judgment file's, a record whose `judge` is `[model, prompt]`): one
    /// vote a pair of answers, as FastChat asserts. A name several voters share (`human`)
    /// may have many.
    pub one_voter: bool,
}

impl Vote {
    fn new(
        question_id: u64,
        turn: u8,
        (a, b): (&str, &str),
        winner: Winner,
        judge: String,
        one_voter: bool,
    ) -> Self {
        let (model_a, model_b, winner) = if a < b {
            (a, b, winner)
        } else {
            (b, a, winner.swapped())
        };
        Vote {
            question_id,
            turn,
            model_a: model_a.into(),
            model_b: model_b.into(),
            winner,
            judge,
            one_voter,
        }
    }
}

/// FastChat's `get_judge_name`, widened to any judge.
fn judge_name(judge: &serde_json::Value) -> String {
    match judge {
        serde_json::Value::String(s) if s.starts_with("expert") => "human".into(),
        serde_json::Value::String(s) if s.starts_with("author") => "author".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(v) => {
            let model = v.first().and_then(|m| m.as_str()).unwrap_or("judge");
            let prompt = v.get(1).and_then(|p| p.as_str()).unwrap_or("");
            model_judge_name(&(model.into(), prompt.into()))
        }
        other => other.to_string(),
    }
}

fn model_judge_name(judge: &JudgeId) -> String {
    let kind = if judge.1.starts_with("single") {
        "single"
    } else {
        "pair"
    };
    format!("{}-{kind}", judge.0)
}

/// Scores this close are a tie when single judgments are turned pairwise (FastChat's
/// `TIE_DELTA` in `play_a_match_pair`): 7.5 against 7.6 is no win.
const TIE_DELTA: f64 = 0.1;

/// The votes in one file, named `label` when given. The file is any of: FastChat's human
/// judgments (`question_id, model_a, model_b, winner, judge, turn`; a JSON array or lines),
/// `mtbench judge` pairwise judgments (a swapped pair is one vote, inconsistent verdicts a
/// tie, unparsable ones left out), or single-score judgments (turned pairwise as FastChat
/// does: on each question and turn, the higher score of two models wins, scores within 0.1 tie;
/// unparsed scores left out).
pub fn read_votes(text: &str, label: Option<&str>) -> Result<Vec<Vote>> {
    let read = read_records(text)?;
    let name = |default: String| label.map(String::from).unwrap_or(default);
    let mut votes = vec![];
    // (judge, question, turn) -> [(model, score)]
    let mut scores: BTreeMap<(String, u64, u8), Vec<(String, f64)>> = BTreeMap::new();
    for (i, v) in read.records.into_iter().enumerate() {
        let at = || format!("record {}", i + 1);
        if v.get("g1_winner").is_some() {
            let j: PairJudgment = serde_json::from_value(v).with_context(at)?;
            let winner = match combine(&j.g1_winner, &j.g2_winner) {
                "model_1" => Winner::ModelA,
                "model_2" => Winner::ModelB,
                "tie" => Winner::Tie,
                _ => continue,
            };
            votes.push(Vote::new(
                j.question_id,
                j.turn,
                (&j.model_1, &j.model_2),
                winner,
                name(model_judge_name(&j.judge)),
                true,
            ));
        } else if v.get("score").is_some() {
            let j: SingleJudgment = serde_json::from_value(v).with_context(at)?;
            if j.score != -1.0 {
                scores
                    .entry((name(model_judge_name(&j.judge)), j.question_id, j.turn))
                    .or_default()
                    .push((j.model, j.score));
            }
        } else {
            let field = |k: &str| v.get(k).with_context(|| format!("{}: no `{k}`", at()));
            let text = |k: &str| -> Result<&str> {
                field(k)?
                    .as_str()
                    .with_context(|| format!("{}: `{k}` is not a string", at()))
            };
            let winner = match text("winner")? {
                "model_a" => Winner::ModelA,
                "model_b" => Winner::ModelB,
                w if w.contains("tie") => Winner::Tie,
                _ => Winner::Other,
            };
            let number = |k: &str| -> Result<u64> {
                field(k)?
                    .as_u64()
                    .with_context(|| format!("{}: `{k}` is not a whole number", at()))
            };
            votes.push(Vote::new(
                number("question_id")?,
                u8::try_from(number("turn")?).with_context(at)?,
                (text("model_a")?, text("model_b")?),
                winner,
                name(judge_name(field("judge")?)),
                field("judge")?.is_array(),
            ));
        }
    }
    for ((judge, question_id, turn), by_model) in scores {
        for (i, (a, sa)) in by_model.iter().enumerate() {
            for (b, sb) in &by_model[i + 1..] {
                if a == b {
                    continue;
                }
                let winner = if (sa - sb).abs() <= TIE_DELTA {
                    Winner::Tie
                } else if sa > sb {
                    Winner::ModelA
                } else {
                    Winner::ModelB
                };
                votes.push(Vote::new(
                    question_id,
                    turn,
                    (a, b),
                    winner,
                    judge.clone(),
                    true,
                ));
            }
        }
    }
    Ok(votes)
}

/// Agreeing pairs of votes out of all pairs compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub agree: usize,
    pub votes: usize,
}

impl Cell {
    fn add(&mut self, x: Winner, y: Winner) {
        self.votes += 1;
        self.agree += usize::from(x == y);
    }

    pub fn ratio(&self) -> Option<f64> {
        (self.votes > 0).then(|| self.agree as f64 / self.votes as f64)
    }
}

/// Agreement of two judges (the same name twice: a judge's voters among themselves).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgreementRow {
    pub judge_1: String,
    pub judge_2: String,
    /// 1 or 2; `None`: all turns.
    pub turn: Option<u8>,
    /// S1: all votes, ties count.
    pub with_ties: Cell,
    /// S2: votes that are not ties.
    pub without_ties: Cell,
}

/// Every pair of judges with votes on a common pair of answers, and every judge with
/// several votes on one, per turn and over all turns; judges in order of first appearance.
pub fn agreement(votes: &[Vote]) -> Result<Vec<AgreementRow>> {
    // A model judge votes once a pair of answers: twice is two runs read as one judge (two
    // unlabelled files of one judge model), whose votes would be multiplied by each other.
    let mut seen = std::collections::BTreeSet::new();
    for v in votes.iter().filter(|v| v.one_voter) {
        if !seen.insert((&v.judge, v.turn, v.question_id, &v.model_a, &v.model_b)) {
            bail!(
                "judge {} votes twice on question {} turn {} ({} vs {}): two runs of one judge \
                 read as one? Label each file (NAME=FILE); a model judge has one vote a pair, \
                 as FastChat asserts",
                v.judge,
                v.question_id,
                v.turn,
                v.model_a,
                v.model_b
            );
        }
    }
    let mut judges: Vec<&str> = vec![];
    for v in votes {
        if !judges.contains(&v.judge.as_str()) {
            judges.push(&v.judge);
        }
    }
    // (turn, question, model_a, model_b) -> judge -> winners
    type Key<'a> = (u8, u64, &'a str, &'a str);
    let mut by_key: BTreeMap<Key, BTreeMap<&str, Vec<Winner>>> = BTreeMap::new();
    for v in votes {
        by_key
            .entry((v.turn, v.question_id, &v.model_a, &v.model_b))
            .or_default()
            .entry(&v.judge)
            .or_default()
            .push(v.winner);
    }
    let turns: Vec<u8> = {
        let mut t: Vec<u8> = by_key.keys().map(|k| k.0).collect();
        t.dedup();
        t
    };
    let mut rows = vec![];
    for (i, &j1) in judges.iter().enumerate() {
        for &j2 in &judges[i..] {
            let mut cells: BTreeMap<u8, (Cell, Cell)> = BTreeMap::new();
            for (key, by_judge) in &by_key {
                let (Some(x), Some(y)) = (by_judge.get(j1), by_judge.get(j2)) else {
                    continue;
                };
                let (s1, s2) = cells.entry(key.0).or_default();
                let mut pair = |a: Winner, b: Winner| {
                    s1.add(a, b);
                    if a != Winner::Tie && b != Winner::Tie {
                        s2.add(a, b);
                    }
                };
                if j1 == j2 {
                    for (k, &a) in x.iter().enumerate() {
                        for &b in &x[k + 1..] {
                            pair(a, b);
                        }
                    }
                } else {
                    for &a in x {
                        for &b in y {
                            pair(a, b);
                        }
                    }
                }
            }
            if cells.values().all(|(s1, _)| s1.votes == 0) {
                continue;
            }
            let mut all = (Cell::default(), Cell::default());
            for &t in &turns {
                let (s1, s2) = cells.get(&t).copied().unwrap_or_default();
                all.0.agree += s1.agree;
                all.0.votes += s1.votes;
                all.1.agree += s2.agree;
                all.1.votes += s2.votes;
                rows.push(AgreementRow {
                    judge_1: j1.into(),
                    judge_2: j2.into(),
                    turn: Some(t),
                    with_ties: s1,
                    without_ties: s2,
                });
            }
            rows.push(AgreementRow {
                judge_1: j1.into(),
                judge_2: j2.into(),
                turn: None,
                with_ties: all.0,
                without_ties: all.1,
            });
        }
    }
    Ok(rows)
}

/// A Markdown table: agreement in percent with the number of vote pairs it rests on.
pub fn render_agreement(rows: &[AgreementRow]) -> String {
    let cell = |c: &Cell| match c.ratio() {
        Some(r) => format!("{:.1} % ({} of {})", 100.0 * r, c.agree, c.votes),
        None => "- (0)".into(),
    };
    let mut out = String::from(
        "| judge 1 | judge 2 | turn | S1: with ties (random 33 %) | S2: without ties (random 50 %) |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.judge_1,
            r.judge_2,
            r.turn.map_or("all".into(), |t| t.to_string()),
            cell(&r.with_ties),
            cell(&r.without_ties)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(q: u64, a: &str, b: &str, w: &str, judge: &str, turn: u8) -> String {
        format!(
            r#"{{"question_id": {q}, "model_a": "{a}", "model_b": "{b}", "winner": "{w}", "judge": "{judge}", "turn": {turn}}}"#
        )
    }

    /// Votes worked out by hand: two experts and an LLM on three pairs.
    #[test]
    fn agreement_counts_pairs_of_votes_as_fastchat() {
        let humans = [
            // q1: both experts say x (once written with the models the other way round).
            human(1, "x", "y", "model_a", "expert_1", 1),
            human(1, "y", "x", "model_b", "expert_2", 1),
            // q2: a tie and a y.
            human(2, "x", "y", "tie (bothbad)", "expert_1", 1),
            human(2, "x", "y", "model_b", "expert_2", 1),
            // q3, turn 2: one expert, x.
            human(3, "x", "y", "model_a", "expert_1", 2),
        ]
        .join("\n");
        let llm = [
            human(1, "x", "y", "model_a", "gpt", 1),
            human(2, "y", "x", "tie", "gpt", 1),
            human(3, "x", "y", "model_b", "gpt", 2),
        ]
        .join("\n");
        let mut votes = read_votes(&humans, None).unwrap();
        votes.extend(read_votes(&llm, Some("llm")).unwrap());
        assert!(votes[..5].iter().all(|v| v.judge == "human"));
        let rows = agreement(&votes).unwrap();
        let row = |a: &str, b: &str, t: Option<u8>| {
            rows.iter()
                .find(|r| r.judge_1 == a && r.judge_2 == b && r.turn == t)
                .unwrap()
                .clone()
        };
        let c = |agree, votes| Cell { agree, votes };
        // Experts among themselves: q1 agree; q2 tie vs y (S1 only).
        let hh = row("human", "human", Some(1));
        assert_eq!((hh.with_ties, hh.without_ties), (c(1, 2), c(1, 1)));
        // LLM vs experts, turn 1: q1 2 of 2; q2 tie agrees with the bothbad tie, not with y.
        let lh = row("human", "llm", Some(1));
        assert_eq!((lh.with_ties, lh.without_ties), (c(3, 4), c(2, 2)));
        // Turn 2: q3 disagrees.
        let lh2 = row("human", "llm", Some(2));
        assert_eq!((lh2.with_ties, lh2.without_ties), (c(0, 1), c(0, 1)));
        let all = row("human", "llm", None);
        assert_eq!((all.with_ties, all.without_ties), (c(3, 5), c(2, 3)));
        // The LLM has one vote per pair: no row with itself.
        assert!(!rows
            .iter()
            .any(|r| r.judge_1 == "llm" && r.judge_2 == "llm"));
        assert!(render_agreement(&rows)
            .contains("| human | llm | all | 60.0 % (3 of 5) | 66.7 % (2 of 3) |"));
    }

    /// FastChat's `get_mt_bench_agreement` counts any verdict string: an `error` disagrees
    /// with every other vote (in S2 too: it is no tie) and agrees with another `error`. A
    /// model judge votes once a pair (FastChat asserts it): two unlabelled runs of one judge
    /// are refused, labelled they are two judges.
    #[test]
    fn error_verdicts_count_and_a_model_judge_votes_once() {
        let judged = |w: &str| {
            format!(
                r#"{{"question_id": 1, "model_a": "x", "model_b": "y", "winner": "{w}", "judge": ["gpt-4", "pair-v2"], "turn": 1}}"#
            )
        };
        let mut votes = read_votes(&human(1, "x", "y", "model_a", "expert_1", 1), None).unwrap();
        votes.extend(read_votes(&judged("error"), None).unwrap());
        let rows = agreement(&votes).unwrap();
        let c = |agree, votes| Cell { agree, votes };
        let r = &rows[0];
        assert_eq!(
            (r.judge_1.as_str(), r.judge_2.as_str()),
            ("human", "gpt-4-pair")
        );
        assert_eq!((r.with_ties, r.without_ties), (c(0, 1), c(0, 1)));
        let twice = [
            read_votes(&judged("model_a"), None).unwrap(),
            read_votes(&judged("error"), None).unwrap(),
        ]
        .concat();
        let e = agreement(&twice).unwrap_err().to_string();
        assert!(
            e.contains("gpt-4-pair votes twice on question 1 turn 1"),
            "{e}"
        );
        let labelled = [
            read_votes(&judged("model_a"), Some("run1")).unwrap(),
            read_votes(&judged("error"), Some("run2")).unwrap(),
        ]
        .concat();
        let rows = agreement(&labelled).unwrap();
        assert_eq!(
            (rows[0].with_ties, rows[0].without_ties),
            (c(0, 1), c(0, 1))
        );
        // Experts share a name and may vote many times a pair.
        let experts = [
            human(1, "x", "y", "model_a", "expert_1", 1),
            human(1, "x", "y", "error", "expert_2", 1),
        ]
        .join("\n");
        let rows = agreement(&read_votes(&experts, None).unwrap()).unwrap();
        assert_eq!(
            (rows[0].with_ties, rows[0].without_ties),
            (c(0, 1), c(0, 1))
        );
    }

    /// Judgment files: single scores compared per question and turn, swapped pairwise games
    /// combined (inconsistent: tie; unparsable: no vote).
    #[test]
    fn judgment_files_become_votes() {
        let single = |m: &str, q: u64, t: u8, s: f64| {
            format!(
                r#"{{"question_id": {q}, "model": "{m}", "judge": ["j", "single-v1"], "user_prompt": "", "judgment": "", "score": {s}, "turn": {t}, "tstamp": 0}}"#
            )
        };
        let text = [
            single("y", 1, 1, 8.0),
            single("x", 1, 1, 6.0),
            single("z", 1, 1, 6.0),
            single("x", 1, 2, 7.0),
            single("y", 1, 2, -1.0),
            single("x", 2, 1, 7.5),
            single("y", 2, 1, 7.6),
            single("x", 3, 1, 7.5),
            single("y", 3, 1, 7.7),
        ]
        .join("\n");
        let mut votes = read_votes(&text, None).unwrap();
        votes.sort_by(|a, b| {
            (a.question_id, &a.model_a, &a.model_b).cmp(&(b.question_id, &b.model_a, &b.model_b))
        });
        let got: Vec<(u64, &str, &str, Winner, &str)> = votes
            .iter()
            .map(|v| (v.question_id, &*v.model_a, &*v.model_b, v.winner, &*v.judge))
            .collect();
        assert_eq!(
            got,
            [
                (1, "x", "y", Winner::ModelB, "j-single"),
                (1, "x", "z", Winner::Tie, "j-single"),
                (1, "y", "z", Winner::ModelA, "j-single"),
                // Within FastChat's TIE_DELTA a tie, past it a win.
                (2, "x", "y", Winner::Tie, "j-single"),
                (3, "x", "y", Winner::ModelB, "j-single"),
            ]
        );
        let pair = |g1: &str, g2: &str| {
            format!(
                r#"{{"question_id": 4, "model_1": "q", "model_2": "p", "g1_winner": "{g1}", "g2_winner": "{g2}", "judge": ["j", "pair-v2"], "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "", "g2_judgment": "", "turn": 1, "tstamp": 0}}"#
            )
        };
        let text = [
            pair("model_1", "model_1"),
            pair("model_1", "model_2"),
            pair("error", "model_2"),
        ]
        .join("\n");
        let votes = read_votes(&text, None).unwrap();
        // model_1 is q, named model_b once the pair is ordered.
        let got: Vec<(Winner, &str)> = votes.iter().map(|v| (v.winner, &*v.judge)).collect();
        assert_eq!(got, [(Winner::ModelB, "j-pair"), (Winner::Tie, "j-pair")]);
        // Another verdict is a vote of its own (FastChat counts it).
        let other = read_votes(r#"{"question_id": 1, "model_a": "x", "model_b": "y", "winner": "draw", "judge": "a", "turn": 1}"#, None).unwrap();
        assert_eq!(other[0].winner, Winner::Other);
    }
}
