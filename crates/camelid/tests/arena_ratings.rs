//! `camelid arena ratings` (and `mtbench show`'s pairwise table) from the command line, on
//! hand-made battles and judgments whose results are known (fschat 0.2.36's `elo_analysis`
//! has no categories to compare with).

mod common;
use common::cli::run;

/// `coder` wins 9 of 10 coding battles against `poet` (tagged by `category`) and loses 9 of
/// 10 writing ones (tagged by FastChat's `category_tag`): in each category the gap is
/// 400·log10(9) points one way or the other; over all battles they are even. Named battles
/// are left out per category too.
#[test]
fn ratings_per_category() {
    let mut battles = vec![];
    for k in 0..10 {
        let (coding, writing) = if k == 0 {
            ("model_b", "model_a")
        } else {
            ("model_a", "model_b")
        };
        battles.push(serde_json::json!({"model_a": "coder", "model_b": "poet",
            "winner": coding, "anony": true, "category": ["coding"]}));
        battles.push(serde_json::json!({"model_a": "coder", "model_b": "poet",
            "winner": writing, "anony": true,
            "category_tag": {"creative_writing_v0.1": {"creative_writing": true}}}));
    }
    // A named battle, left out as FastChat leaves it out.
    battles.push(serde_json::json!({"model_a": "poet", "model_b": "coder",
        "winner": "model_a", "anony": false, "category": "coding"}));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("battles.json");
    std::fs::write(&file, serde_json::Value::from(battles).to_string()).unwrap();
    let file = file.to_str().unwrap();
    let rate = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "arena",
            "ratings",
            "--battles",
            file,
            "--bt",
            "mle",
            "--bootstrap",
            "0",
            "--format",
            "json",
        ];
        args.extend(extra);
        let (ok, out, err) = run(&args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let gap = |rows: &serde_json::Value| {
        let r = |m: &str| {
            rows.as_array()
                .unwrap()
                .iter()
                .find(|r| r["model"] == m)
                .unwrap()["rating"]
                .as_f64()
                .unwrap()
        };
        r("coder") - r("poet")
    };
    let nine = 400.0 * 9f64.log10();
    let coding = rate(&["--category", "coding"]);
    assert!((gap(&coding) - nine).abs() < 1e-3, "{coding}");
    assert_eq!(coding[0]["battles"], 10, "the named battle is left out");
    let writing = rate(&["--category", "creative_writing_v0.1.creative_writing"]);
    assert!((gap(&writing) + nine).abs() < 1e-3, "{writing}");
    assert!(gap(&rate(&[])).abs() < 1e-3);
    // All categories at once: the same tables.
    let by = rate(&["--by-category"]);
    let mut keys: Vec<&String> = by.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["coding", "creative_writing_v0.1.creative_writing", "full"]
    );
    assert_eq!(by["coding"], coding);
    assert_eq!(by["creative_writing_v0.1.creative_writing"], writing);
    let (ok, table, err) = run(&[
        "arena",
        "ratings",
        "--battles",
        file,
        "--bt",
        "mle",
        "--bootstrap",
        "0",
        "--by-category",
        "--format",
        "markdown",
    ]);
    assert!(ok, "{err}");
    assert!(
        table.starts_with("| model | full | coding | creative_writing_v0.1.creative_writing |"),
        "{table}"
    );
    // An unknown category is an error that names the ones there are.
    let (ok, _, err) = run(&["arena", "ratings", "--battles", file, "--category", "math"]);
    assert!(!ok && err.contains("coding"), "{err}");
}

/// `mtbench judge` pairwise judgments by two judge models are not rated together (each pair
/// would count once a judge, the intervals too narrow): refused, naming the judges, whether
/// in one file or two; one judge's are rated.
#[test]
fn judgments_of_several_judges_are_not_rated_together() {
    let judgment = |judge: &str, q: u64| {
        serde_json::json!({"question_id": q, "model_1": "a", "model_2": "b",
            "g1_winner": "model_1", "g2_winner": "model_1", "judge": [judge, "pair-v2"],
            "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "", "g2_judgment": "",
            "turn": 1, "tstamp": q as f64})
        .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, lines: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p.to_str().unwrap().to_string()
    };
    let one = write("one.jsonl", &[judgment("gpt-4", 81), judgment("gpt-4", 82)]);
    let mixed = write(
        "mixed.jsonl",
        &[judgment("gpt-4", 81), judgment("camelid", 81)],
    );
    let other = write("other.jsonl", &[judgment("camelid", 81)]);
    let (ok, _, err) = run(&["arena", "ratings", "--battles", &one, "--bootstrap", "0"]);
    assert!(ok, "{err}");
    // `mtbench show --baseline` naming a model no game has (a misspelling) is an error, not
    // an empty table.
    let (ok, _, err) = run(&["mtbench", "show", "--judgments", &one, "--baseline", "bb"]);
    assert!(!ok && err.contains("\"bb\""), "{err}");
    let (ok, out, err) = run(&["mtbench", "show", "--judgments", &one, "--baseline", "b"]);
    assert!(ok && out.contains('a'), "{err}");
    for files in [vec![mixed.as_str()], vec![one.as_str(), other.as_str()]] {
        let mut args = vec!["arena", "ratings", "--bootstrap", "0"];
        for f in &files {
            args.extend(["--battles", f]);
        }
        let (ok, _, err) = run(&args);
        assert!(!ok, "{files:?}");
        assert!(err.contains("camelid") && err.contains("gpt-4"), "{err}");
    }
}
