//! Ratings per category, as Chatbot Arena's leaderboard shows them: the battles a category
//! tags, rated on their own. A battle's categories come from its record: a `category`
//! (a name or a list of names, as some FastChat dumps carry it) and the true flags of
//! FastChat's `category_tag`, named by their path (`{"math_v0.1": {"math": true}}` is
//! `math_v0.1.math`).

use crate::ratings::{BattleRecord, Rating};
use serde_json::Value;
use std::collections::BTreeSet;

/// The category of every battle: the leaderboard over all of them.
pub const FULL: &str = "full";

/// The categories a battle record is tagged with.
pub fn categories(raw: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match raw.get("category") {
        Some(Value::String(c)) => {
            out.insert(c.clone());
        }
        Some(Value::Array(cs)) => out.extend(cs.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    if let Some(tags) = raw.get("category_tag") {
        flags(tags, String::new(), &mut out);
    }
    out
}

/// The paths of the `true` leaves under `v`.
fn flags(v: &Value, path: String, out: &mut BTreeSet<String>) {
    match v {
        Value::Bool(true) if !path.is_empty() => {
            out.insert(path);
        }
        Value::Object(o) => {
            for (k, child) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flags(child, p, out);
            }
        }
        _ => {}
    }
}

/// The records in category `name` ([`FULL`]: all of them).
pub fn in_category(records: &[BattleRecord], name: &str) -> Vec<BattleRecord> {
    records
        .iter()
        .filter(|r| name == FULL || categories(&r.raw).contains(name))
        .cloned()
        .collect()
}

/// Every category the records carry, in name order, after [`FULL`].
pub fn all_categories(records: &[BattleRecord]) -> Vec<String> {
    let found: BTreeSet<String> = records.iter().flat_map(|r| categories(&r.raw)).collect();
    std::iter::once(FULL.to_string()).chain(found).collect()
}

/// One table of a model's rating in each category: `model | full | cat… ` with the rating
/// and the battles it rests on (`-`: no battle of that category), models in the order of
/// the first table. Markdown or aligned text.
pub fn render_by_category(tables: &[(String, Vec<Rating>)], markdown: bool) -> String {
    let mut header = vec!["model".to_string()];
    header.extend(tables.iter().map(|(c, _)| c.clone()));
    let models: Vec<&str> = tables
        .first()
        .map(|(_, rows)| rows.iter().map(|r| r.model.as_str()).collect())
        .unwrap_or_default();
    let cells: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            std::iter::once(m.to_string())
                .chain(tables.iter().map(|(_, rows)| {
                    rows.iter()
                        .find(|r| r.model == *m)
                        .map_or("-".to_string(), |r| {
                            format!("{:.1} ({})", r.rating, r.battles)
                        })
                }))
                .collect()
        })
        .collect();
    let mut out = String::new();
    if markdown {
        out += &format!("| {} |\n", header.join(" | "));
        out += &format!("|{}\n", "---|".repeat(header.len()));
        for c in &cells {
            out += &format!("| {} |\n", c.join(" | "));
        }
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|k| {
            cells
                .iter()
                .map(|c| c[k].chars().count())
                .chain([header[k].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratings::{leaderboard_with, Battle, BtConvention, Outcome, RatingOptions};
    use serde_json::json;

    #[test]
    fn categories_come_from_category_and_category_tag() {
        let raw = json!({
            "category": ["coding", "hard"],
            "category_tag": {"math_v0.1": {"math": true}, "if_v0.1": {"if": false, "score": 4},
                             "criteria_v0.1": {"specificity": true, "domain_knowledge": false}},
        });
        let want: BTreeSet<String> = [
            "coding",
            "hard",
            "math_v0.1.math",
            "criteria_v0.1.specificity",
        ]
        .map(String::from)
        .into();
        assert_eq!(categories(&raw), want);
        assert_eq!(categories(&json!({"category": "writing"})).len(), 1);
        assert!(categories(&json!({"category": 3, "category_tag": true})).is_empty());
    }

    fn rec(a: &str, b: &str, winner: Outcome, category: &str) -> BattleRecord {
        BattleRecord {
            battle: Battle {
                model_a: a.into(),
                model_b: b.into(),
                winner,
            },
            anony: Some(true),
            tstamp: None,
            raw: json!({"category": category}),
        }
    }

    /// `coder` wins 9 of 10 coding battles against `poet` and loses 9 of 10 writing ones:
    /// per category the order flips, overall they are even; each category's table is the
    /// leaderboard of its battles alone.
    #[test]
    fn each_category_is_rated_on_its_own_battles() {
        let mut rs = vec![];
        for k in 0..10 {
            let (c, w) = if k == 0 {
                (Outcome::ModelB, Outcome::ModelA)
            } else {
                (Outcome::ModelA, Outcome::ModelB)
            };
            rs.push(rec("coder", "poet", c, "coding"));
            rs.push(rec("coder", "poet", w, "writing"));
        }
        rs.push(rec("poet", "third", Outcome::Tie, "chat"));
        assert_eq!(all_categories(&rs), ["full", "chat", "coding", "writing"]);
        let opts = RatingOptions {
            convention: BtConvention::Mle,
            rounds: 0,
            seed: 42,
        };
        let rate = |c: &str| {
            let battles: Vec<Battle> = in_category(&rs, c).into_iter().map(|r| r.battle).collect();
            leaderboard_with(&battles, &opts)
        };
        let gap = |rows: &[Rating]| {
            let r = |m: &str| rows.iter().find(|r| r.model == m).unwrap().rating;
            r("coder") - r("poet")
        };
        // 9 : 1 is 400 · log10(9) points.
        let nine = 400.0 * 9f64.log10();
        assert!(
            (gap(&rate("coding")) - nine).abs() < 1e-3,
            "{:?}",
            rate("coding")
        );
        assert!((gap(&rate("writing")) + nine).abs() < 1e-3);
        assert!(gap(&rate(FULL)).abs() < 1e-3);
        assert_eq!(rate("coding").iter().map(|r| r.battles).sum::<usize>(), 20);
        assert_eq!(rate("chat").len(), 2);
        assert!(rate("nothing").is_empty());
        let tables: Vec<(String, Vec<Rating>)> = all_categories(&rs)
            .into_iter()
            .map(|c| (c.clone(), rate(&c)))
            .collect();
        let md = render_by_category(&tables, true);
        assert!(
            md.starts_with("| model | full | chat | coding | writing |\n"),
            "{md}"
        );
        // `third` fought only in chat: no rating elsewhere.
        let third = md.lines().find(|l| l.starts_with("| third")).unwrap();
        assert_eq!(third.matches(" - ").count(), 2, "{md}");
    }
}
