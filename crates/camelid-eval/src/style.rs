//! Style control, the Chatbot Arena's default view since 2024: Bradley–Terry with the answers'
//! style as covariates — length, Markdown headers, list items, bold spans — so that a rating is
//! not bought with style. FastChat's construction: per element the difference of the two
//! sides over their sum plus one, standardised over the battles; a model's rating is its own
//! coefficient, the style coefficients fitted beside the ratings under the same convention
//! (FastChat's then pins `mixtral-8x7b-instruct-v0.1` at 1114, where its plain fit pins
//! `llama-13b` at 800).

use crate::ratings::{
    model_names, solve, table, to_ratings, Battle, BattleRecord, Rating, RatingOptions,
    STYLE_ANCHOR,
};
use anyhow::{bail, Result};
use serde_json::Value;
use std::sync::OnceLock;

/// The style elements, in the order of their coefficients.
pub const ELEMENTS: [&str; 4] = ["length", "headers", "lists", "bold"];

/// An answer's style: FastChat's `count_markdown_elements` (headers `#`…`######`, ordered
/// and unordered list items, `**bold**` and `__bold__`) on the text with its code blocks
/// removed, as `add_markdown_info.py` counts (a `# comment` or `__init__` in code is no
/// Markdown), and the length in words of the whole text, code included (whitespace-separated;
/// FastChat counts tiktoken tokens of the whole answer).
pub fn count(text: &str) -> [f64; 4] {
    static RES: OnceLock<[regex::Regex; 5]> = OnceLock::new();
    let [header, ordered, unordered, bold_star, bold_under] = RES.get_or_init(|| {
        [
            r"(?m)^#{1,6}\s",
            r"(?m)^\s*\d+\.\s",
            r"(?m)^\s*[-*+]\s",
            r"\*\*[^*\n]+\*\*",
            r"__[^_\n]+__",
        ]
        .map(|r| regex::Regex::new(r).unwrap())
    });
    let markdown = without_code(text);
    let n = |r: &regex::Regex| r.find_iter(&markdown).count() as f64;
    [
        text.split_whitespace().count() as f64,
        n(header),
        n(ordered) + n(unordered),
        n(bold_star) + n(bold_under),
    ]
}

/// FastChat's `remove_pattern(answer, re.compile("```([^`]*)```"))`, quirks kept: the
/// pattern's group is what `findall` returns, so each block's inside (language tag and code)
/// is removed but its fences stay, and `str.replace` removes every occurrence of that inside
/// anywhere in the text. A block with a backtick inside is not matched, so not removed.
fn without_code(text: &str) -> String {
    static CODE: OnceLock<regex::Regex> = OnceLock::new();
    let code = CODE.get_or_init(|| regex::Regex::new(r"```([^`]*)```").unwrap());
    let blocks: Vec<&str> = code
        .captures_iter(text)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let mut out = text.to_string();
    // An empty inside: Python's `replace("", "")` changes nothing.
    for b in blocks.into_iter().filter(|b| !b.is_empty()) {
        out = out.replace(b, "");
    }
    out
}

/// One side's style from a battle record: FastChat's `conv_metadata` when present
/// (`sum_assistant_a_tokens`, `header_count_a`, … as numbers or per-kind counts), else
/// counted on the side's assistant messages.
fn side(raw: &Value, s: char) -> Option<[f64; 4]> {
    if let Some(meta) = raw.get("conv_metadata") {
        let total = |k: String| match meta.get(&k)? {
            Value::Object(o) => Some(o.values().filter_map(Value::as_f64).sum()),
            v => v.as_f64(),
        };
        return Some([
            total(format!("sum_assistant_{s}_tokens"))?,
            total(format!("header_count_{s}"))?,
            total(format!("list_count_{s}"))?,
            total(format!("bold_count_{s}"))?,
        ]);
    }
    let turns = raw.get(format!("conversation_{s}"))?.as_array()?;
    // FastChat's `get_element_counts` joins the side's assistant messages with newlines and
    // counts once: a code block's fences may lie in two messages.
    let answers: Vec<&str> = turns
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"].as_str().unwrap_or(""))
        .collect();
    (!answers.is_empty()).then(|| count(&answers.join("\n")))
}

/// Whether a battle record carries both sides' style (FastChat's `conv_metadata`, or an
/// assistant message in each conversation): the records [`style_controlled`] can rate.
pub fn has_answers(raw: &Value) -> bool {
    side(raw, 'a').is_some() && side(raw, 'b').is_some()
}

/// A battle's style as FastChat's `conv_metadata` (what [`features`] reads), or `None`
/// when a side has no answer: a few numbers to keep for a battle instead of its
/// conversations.
pub fn summary(raw: &Value) -> Option<Value> {
    let (a, b) = (side(raw, 'a')?, side(raw, 'b')?);
    let mut meta = serde_json::Map::new();
    for (s, v) in [('a', a), ('b', b)] {
        meta.insert(format!("sum_assistant_{s}_tokens"), v[0].into());
        meta.insert(format!("header_count_{s}"), v[1].into());
        meta.insert(format!("list_count_{s}"), v[2].into());
        meta.insert(format!("bold_count_{s}"), v[3].into());
    }
    Some(serde_json::json!({ "conv_metadata": meta }))
}

/// The standardised style covariates of each battle (a's style against b's).
pub fn features(records: &[BattleRecord]) -> Result<Vec<[f64; 4]>> {
    let mut raw = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let (Some(a), Some(b)) = (side(&r.raw, 'a'), side(&r.raw, 'b')) else {
            bail!(
                "battle {} has neither conv_metadata nor assistant messages in \
                 conversation_a/conversation_b: style control needs the answers",
                i + 1
            );
        };
        raw.push(std::array::from_fn(|k| (a[k] - b[k]) / (a[k] + b[k] + 1.0)));
    }
    let n = raw.len().max(1) as f64;
    for k in 0..4 {
        let mean = raw.iter().map(|x: &[f64; 4]| x[k]).sum::<f64>() / n;
        let std = (raw.iter().map(|x| (x[k] - mean).powi(2)).sum::<f64>() / n).sqrt();
        for x in raw.iter_mut() {
            // An element no battle differs in carries no information.
            x[k] = if std > 0.0 { (x[k] - mean) / std } else { 0.0 };
        }
    }
    Ok(raw)
}

/// Ratings with the style held equal, and the style coefficients (log-odds per standard
/// deviation of each element, in [`ELEMENTS`] order).
pub fn style_controlled(
    records: &[BattleRecord],
    opts: &RatingOptions,
) -> Result<(Vec<Rating>, [f64; 4])> {
    let x = features(records)?;
    let battles: Vec<Battle> = records.iter().map(|r| r.battle.clone()).collect();
    let names = model_names(&battles);
    let all: Vec<usize> = (0..battles.len()).collect();
    let (_, coefficients) = fit(&battles, &x, &names, &all, opts);
    let rows = table(&battles, opts, |picks| {
        fit(&battles, &x, &names, picks.unwrap_or(&all), opts).0
    });
    Ok((rows, coefficients))
}

/// Newton's method on the battles `picks` (repeats allowed): strengths θ (natural log) and
/// style coefficients β, `P(a wins) = σ(θ_a − θ_b + β·x)`, under the convention's weight and
/// penalty (FastChat's ½‖w‖² covers β too, as scikit-learn's does).
fn fit(
    battles: &[Battle],
    x: &[[f64; 4]],
    names: &[String],
    picks: &[usize],
    opts: &RatingOptions,
) -> (Vec<Option<f64>>, [f64; 4]) {
    let n = names.len();
    let dim = n + 4;
    let index = |m: &str| names.binary_search_by(|k| k.as_str().cmp(m)).unwrap();
    let (weight, ridge) = opts.convention.weight_and_ridge();
    let beta_ridge = match opts.convention {
        crate::ratings::BtConvention::FastChat => 1.0,
        crate::ratings::BtConvention::Mle => ridge,
    };
    let rows: Vec<(usize, usize, f64, &[f64; 4])> = picks
        .iter()
        .map(|&i| {
            let b = &battles[i];
            (
                index(&b.model_a),
                index(&b.model_b),
                b.winner.score_a(),
                &x[i],
            )
        })
        .filter(|(a, c, _, _)| a != c)
        .collect();
    let mut fought = vec![false; n];
    for &(a, c, _, _) in &rows {
        fought[a] = true;
        fought[c] = true;
    }
    let mut p = vec![0.0f64; dim];
    for _ in 0..100 {
        let mut grad: Vec<f64> = (0..dim)
            .map(|i| -(if i < n { ridge } else { beta_ridge }) * p[i])
            .collect();
        let mut hess = vec![vec![0.0f64; dim]; dim];
        for (i, row) in hess.iter_mut().enumerate() {
            row[i] = if i < n { ridge } else { beta_ridge };
        }
        for &(a, c, s, xs) in &rows {
            let z = p[a] - p[c] + (0..4).map(|k| p[n + k] * xs[k]).sum::<f64>();
            let q = 1.0 / (1.0 + (-z).exp());
            // The battle's design row: +1 at a, −1 at c, its style covariates.
            let mut d: Vec<(usize, f64)> = vec![(a, 1.0), (c, -1.0)];
            d.extend((0..4).map(|k| (n + k, xs[k])));
            let (g, h) = (weight * (s - q), weight * q * (1.0 - q));
            for &(i, di) in &d {
                grad[i] += g * di;
                for &(j, dj) in &d {
                    hess[i][j] += h * di * dj;
                }
            }
        }
        let step = solve(hess, grad);
        let size = step.iter().fold(0.0f64, |m, s| m.max(s.abs()));
        for (t, s) in p.iter_mut().zip(&step) {
            *t += s;
        }
        if size < 1e-12 {
            break;
        }
    }
    (
        to_ratings(names, &p[..n], &fought, opts.convention, STYLE_ANCHOR),
        std::array::from_fn(|k| p[n + k]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratings::{leaderboard_with, BtConvention, Outcome};
    use serde_json::json;

    #[test]
    fn markdown_is_counted_as_fastchat_counts_it() {
        let text = "# Title\n## Sub\n####### not a header\n\n1. one\n2. two\n- a\n  * b\n+c\n\
                    Some **bold** and __also__ but **not\nbold** here.";
        let [words, headers, lists, bold] = count(text);
        assert_eq!((headers, lists, bold), (2.0, 4.0, 2.0));
        assert_eq!(words, text.split_whitespace().count() as f64);
    }

    /// Code is not Markdown: FastChat removes code blocks before counting, not before the
    /// length. (Counts checked against FastChat's `add_markdown_info.py` functions.)
    #[test]
    fn markdown_inside_code_blocks_is_not_counted() {
        let code = "```python\n# comment\n- x\nclass A:\n    def __init__(self): pass\n```";
        let text = format!("Some **bold** words.\n{code}\n- a real item\n");
        let [words, headers, lists, bold] = count(&text);
        assert_eq!((headers, lists, bold), (0.0, 1.0, 1.0));
        // The length is the whole answer's, code included.
        assert_eq!(words, text.split_whitespace().count() as f64);
        assert_eq!(count(code)[1..], [0.0; 3]);
        // FastChat's pattern takes no block with a backtick inside: that one is counted.
        assert_eq!(count("```\n# kept: `x`\n```\n")[1], 1.0);
    }

    /// A side's assistant messages are joined before the code is removed, as FastChat joins
    /// them: a block opened in one message and closed in the next is code.
    #[test]
    fn a_code_block_across_two_messages_is_code() {
        let raw = json!({
            "conversation_a": [{"role": "assistant", "content": "```\n# a\n"},
                               {"role": "user", "content": "go on"},
                               {"role": "assistant", "content": "- b\n```"}],
        });
        assert_eq!(side(&raw, 'a'), Some([6.0, 0.0, 0.0, 0.0]));
    }

    fn rec(a: &str, b: &str, w: Outcome, len_a: usize, len_b: usize) -> BattleRecord {
        let answer = |n: usize| "word ".repeat(n);
        BattleRecord {
            battle: Battle {
                model_a: a.into(),
                model_b: b.into(),
                winner: w,
            },
            anony: Some(true),
            tstamp: None,
            raw: json!({
                "conversation_a": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer(len_a)}],
                "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer(len_b)}],
            }),
        }
    }

    /// Voters here pick the longer answer whoever wrote it, and `wordy` writes long ones:
    /// the plain fit credits `wordy`, style control credits length.
    #[test]
    fn a_rating_bought_with_length_is_taken_back() {
        let mut rs = vec![];
        for k in 0..200 {
            // Among the others, length decides too.
            let (la, lb) = if k % 2 == 0 { (300, 50) } else { (50, 300) };
            let w = if la > lb {
                Outcome::ModelA
            } else {
                Outcome::ModelB
            };
            rs.push(rec(["x", "y"][k % 2], "z", w, la, lb));
            // wordy is always long, and wins — except one loss in ten when not longer.
            let (lw, lo) = if k % 10 == 0 { (100, 100) } else { (400, 60) };
            let w = if k % 10 == 0 {
                Outcome::ModelB
            } else {
                Outcome::ModelA
            };
            rs.push(rec("wordy", ["x", "y", "z"][k % 3], w, lw, lo));
        }
        let opts = RatingOptions {
            convention: BtConvention::Mle,
            rounds: 0,
            seed: 42,
        };
        let battles: Vec<Battle> = rs.iter().map(|r| r.battle.clone()).collect();
        let plain = leaderboard_with(&battles, &opts);
        let (styled, coef) = style_controlled(&rs, &opts).unwrap();
        let r = |rows: &[Rating], m: &str| rows.iter().find(|r| r.model == m).unwrap().rating;
        assert_eq!(plain[0].model, "wordy");
        assert!(coef[0] > 1.0, "length pays: {coef:?}");
        assert!(
            r(&styled, "wordy") - r(&styled, "x") < r(&plain, "wordy") - r(&plain, "x") - 200.0,
            "{plain:?}\n{styled:?}"
        );
        // No Markdown anywhere: those coefficients stay at zero.
        assert!(coef[1..].iter().all(|c| c.abs() < 1e-9), "{coef:?}");
        // Battles without answers are refused, not rated without style.
        let mut bare = rs.clone();
        bare[3].raw = json!({});
        assert!(style_controlled(&bare, &opts).is_err());
        // A battle's summary stands for its conversations: the same fit, bit for bit.
        let mut summed = rs.clone();
        for r in summed.iter_mut() {
            r.raw = summary(&r.raw).unwrap();
        }
        assert_eq!(style_controlled(&summed, &opts).unwrap(), (styled, coef));
        assert_eq!(
            summary(&json!({"conversation_a": [{"role": "assistant", "content": "x"}]})),
            None
        );
    }

    /// FastChat's style-controlled ratings pin `mixtral-8x7b-instruct-v0.1` at 1114 (its plain
    /// ratings `llama-13b` at 800), the gaps as fitted.
    #[test]
    fn style_controlled_ratings_pin_mixtral_as_fastchat_does() {
        let mixtral = "mixtral-8x7b-instruct-v0.1";
        let mut rs = vec![];
        for k in 0..60 {
            let w = if k % 3 == 0 {
                Outcome::ModelB
            } else {
                Outcome::ModelA
            };
            rs.push(rec(mixtral, ["x", "llama-13b"][k % 2], w, 50 + k, 80));
        }
        let opts = RatingOptions {
            convention: BtConvention::FastChat,
            rounds: 0,
            seed: 42,
        };
        let (styled, _) = style_controlled(&rs, &opts).unwrap();
        let r = |rows: &[Rating], m: &str| rows.iter().find(|r| r.model == m).unwrap().rating;
        assert!((r(&styled, mixtral) - 1114.0).abs() < 1e-9, "{styled:?}");
        let battles: Vec<Battle> = rs.iter().map(|r| r.battle.clone()).collect();
        let plain = leaderboard_with(&battles, &opts);
        assert!((r(&plain, "llama-13b") - 800.0).abs() < 1e-9, "{plain:?}");
    }

    /// The summary counts every assistant message of each side, Markdown included.
    #[test]
    fn a_summary_keeps_each_sides_counts() {
        let raw = json!({
            "conversation_a": [{"role": "user", "content": "# q"}, {"role": "assistant", "content": "# T\n- a\n**b**"},
                               {"role": "user", "content": "more"}, {"role": "assistant", "content": "- c"}],
            "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "plain words here"}],
        });
        let meta = summary(&raw).unwrap();
        let m = &meta["conv_metadata"];
        assert_eq!(m["header_count_a"], 1.0);
        assert_eq!(m["list_count_a"], 2.0);
        assert_eq!(m["bold_count_a"], 1.0);
        assert_eq!(m["sum_assistant_b_tokens"], 3.0);
        assert_eq!(side(&meta, 'a'), side(&raw, 'a'));
        assert_eq!(side(&meta, 'b'), side(&raw, 'b'));
    }
}
