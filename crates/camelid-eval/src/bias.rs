//! `camelid mtbench bias`: the paper's position-bias table from pairwise judgments made in
//! both orders — how often a judge's verdict survives swapping the answers, and which
//! position it favours when it does not.

use crate::data::PairJudgment;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a swapped pair of games says about the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// The same verdict in both orders (the same model, or a tie twice).
    Consistent,
    /// Inconsistent, favouring the answer shown first: it won in both orders, or in one
    /// with a tie in the other.
    BiasedFirst,
    /// The same for the answer shown second.
    BiasedSecond,
    /// A verdict could not be parsed: the paper's "error" (wrong output format).
    Unparsable,
}

/// Game 1 shows model_1 first, game 2 model_2 first (`mtbench judge`'s `g1_winner`,
/// `g2_winner` are in model terms).
pub fn classify(g1_winner: &str, g2_winner: &str) -> Swap {
    #[derive(PartialEq)]
    enum Pos {
        First,
        Second,
        Tie,
    }
    let pos = |w: &str, first: &str, second: &str| match w {
        _ if w == first => Some(Pos::First),
        _ if w == second => Some(Pos::Second),
        "tie" => Some(Pos::Tie),
        _ => None,
    };
    match (
        pos(g1_winner, "model_1", "model_2"),
        pos(g2_winner, "model_2", "model_1"),
    ) {
        (None, _) | (_, None) => Swap::Unparsable,
        (Some(Pos::Tie), Some(Pos::Tie))
        | (Some(Pos::First), Some(Pos::Second))
        | (Some(Pos::Second), Some(Pos::First)) => Swap::Consistent,
        // The paper's table splits every inconsistent pair between the two biases (its rows
        // add up to 100 % with "error" for the wrong output format only): a tie in one order
        // and a winner in the other favours the winner's position.
        (Some(Pos::First), _) | (_, Some(Pos::First)) => Swap::BiasedFirst,
        (Some(Pos::Second), _) | (_, Some(Pos::Second)) => Swap::BiasedSecond,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BiasCounts {
    pub judged: usize,
    pub consistent: usize,
    pub biased_first: usize,
    pub biased_second: usize,
    /// A verdict that could not be parsed: the paper's "error" (wrong output format).
    pub error: usize,
}

impl BiasCounts {
    fn add(&mut self, s: Swap) {
        self.judged += 1;
        match s {
            Swap::Consistent => self.consistent += 1,
            Swap::BiasedFirst => self.biased_first += 1,
            Swap::BiasedSecond => self.biased_second += 1,
            Swap::Unparsable => self.error += 1,
        }
    }
}

/// One row: a judge's counts over all its judgments, or over one category or turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BiasRow {
    pub judge: String,
    /// `all`, `category` or `turn`.
    pub by: String,
    pub group: String,
    pub counts: BiasCounts,
}

/// Per judge (a file's label, else the judge model) in order of appearance: all its
/// judgments, then per category (of `categories`, by question id) and per turn.
pub fn position_bias(
    judged: &[(String, Vec<PairJudgment>)],
    categories: &BTreeMap<u64, String>,
) -> Vec<BiasRow> {
    let mut judges: Vec<(&str, Vec<&PairJudgment>)> = vec![];
    for (label, js) in judged {
        for j in js {
            let name = if label.is_empty() { &j.judge.0 } else { label };
            match judges.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(j),
                None => judges.push((name, vec![j])),
            }
        }
    }
    let mut rows = vec![];
    for (judge, js) in judges {
        let mut groups: Vec<(String, BTreeMap<String, BiasCounts>)> = vec![
            ("all".into(), BTreeMap::new()),
            ("category".into(), BTreeMap::new()),
            ("turn".into(), BTreeMap::new()),
        ];
        for j in js {
            let s = classify(&j.g1_winner, &j.g2_winner);
            groups[0].1.entry("all".into()).or_default().add(s);
            if let Some(c) = categories.get(&j.question_id) {
                groups[1].1.entry(c.clone()).or_default().add(s);
            }
            groups[2].1.entry(j.turn.to_string()).or_default().add(s);
        }
        for (by, g) in groups {
            for (group, counts) in g {
                rows.push(BiasRow {
                    judge: judge.into(),
                    by: by.clone(),
                    group,
                    counts,
                });
            }
        }
    }
    rows
}

/// A Markdown table in percent of the judged pairs, as the paper's.
pub fn render_bias(rows: &[BiasRow]) -> String {
    let pct = |k: usize, n: usize| format!("{:.1} %", 100.0 * k as f64 / n.max(1) as f64);
    let mut out = String::from(
        "| judge | by | group | judged | consistent | biased toward first | biased toward second | error |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let c = &r.counts;
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.judge,
            r.by,
            r.group,
            c.judged,
            pct(c.consistent, c.judged),
            pct(c.biased_first, c.judged),
            pct(c.biased_second, c.judged),
            pct(c.error, c.judged),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pj(q: u64, turn: u8, g1: &str, g2: &str, judge: &str) -> PairJudgment {
        PairJudgment {
            question_id: q,
            model_1: "a".into(),
            model_2: "b".into(),
            g1_winner: g1.into(),
            g2_winner: g2.into(),
            judge: (judge.into(), "pair-v2".into()),
            g1_user_prompt: String::new(),
            g1_judgment: String::new(),
            g2_user_prompt: String::new(),
            g2_judgment: String::new(),
            turn,
            tstamp: 0.0,
        }
    }

    #[test]
    fn swapped_verdicts_classify_by_position() {
        // Game 1 shows model_1 as A; game 2 shows model_2 as A.
        assert_eq!(classify("model_1", "model_1"), Swap::Consistent);
        assert_eq!(classify("model_2", "model_2"), Swap::Consistent);
        assert_eq!(classify("tie", "tie"), Swap::Consistent);
        assert_eq!(classify("model_1", "model_2"), Swap::BiasedFirst);
        assert_eq!(classify("model_2", "model_1"), Swap::BiasedSecond);
        // A tie in one order, a winner in the other: biased toward the winner's position.
        assert_eq!(classify("tie", "model_1"), Swap::BiasedSecond);
        assert_eq!(classify("model_1", "tie"), Swap::BiasedFirst);
        assert_eq!(classify("model_2", "tie"), Swap::BiasedSecond);
        assert_eq!(classify("tie", "model_2"), Swap::BiasedFirst);
        assert_eq!(classify("error", "model_1"), Swap::Unparsable);
        assert_eq!(classify("model_1", "A"), Swap::Unparsable);
    }

    /// A hand-made judge: known counts per judge, category and turn.
    #[test]
    fn the_table_counts_each_judge_category_and_turn() {
        let js = vec![
            pj(81, 1, "model_1", "model_1", "j"), // writing: consistent
            pj(81, 2, "model_1", "model_2", "j"), // writing: first
            pj(91, 1, "model_1", "model_2", "j"), // roleplay: first
            pj(91, 2, "error", "tie", "j"),       // roleplay: error (unparsable)
            pj(91, 2, "tie", "model_2", "j"),     // roleplay: first (a tie, then first won)
            pj(91, 1, "model_2", "model_1", "k"), // another judge: second
        ];
        let cats: BTreeMap<u64, String> = [(81, "writing".into()), (91, "roleplay".into())].into();
        let rows = position_bias(&[(String::new(), js)], &cats);
        let get = |judge: &str, by: &str, group: &str| {
            rows.iter()
                .find(|r| r.judge == judge && r.by == by && r.group == group)
                .unwrap()
                .counts
        };
        let c = |judged, consistent, biased_first, biased_second, error| BiasCounts {
            judged,
            consistent,
            biased_first,
            biased_second,
            error,
        };
        assert_eq!(get("j", "all", "all"), c(5, 1, 3, 0, 1));
        assert_eq!(get("j", "category", "writing"), c(2, 1, 1, 0, 0));
        assert_eq!(get("j", "category", "roleplay"), c(3, 0, 2, 0, 1));
        assert_eq!(get("j", "turn", "2"), c(3, 0, 2, 0, 1));
        assert_eq!(get("k", "all", "all"), c(1, 0, 0, 1, 0));
        // Each row adds up to 100 %, as the paper's.
        assert!(
            render_bias(&rows).contains("| j | all | all | 5 | 20.0 % | 60.0 % | 0.0 % | 20.0 % |")
        );
        // A label names a file's judge: the renamed-prompt run beside the default one.
        let rows = position_bias(
            &[("renamed".into(), vec![pj(81, 1, "tie", "tie", "j")])],
            &cats,
        );
        assert_eq!(rows[0].judge, "renamed");
    }
}
