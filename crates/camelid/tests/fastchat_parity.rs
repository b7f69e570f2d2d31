//! camelid against FastChat's own code (fschat 0.2.36, run by `tests/fastchat/parity.py` in
//! the test venv) on the same files: `elo_analysis` (online Elo, Bradley–Terry, seeded
//! bootstrap) on a battle log that went through `camelid arena import` / `export`,
//! `compute_agreement`, and `show_result`.
//!
//! Needs `CAMELID_TEST_PYTHON` with FastChat, pandas and scikit-learn (`tests/run.sh` makes
//! it); without them the tests fail, unless `CAMELID_SKIP_FASTCHAT=1` says to skip them.

mod common;
use camelid_eval::ratings::NumpyRandom;
use common::cli::camelid;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// The venv's Python, or `None` when `CAMELID_SKIP_FASTCHAT=1`.
fn python() -> Option<String> {
    if std::env::var("CAMELID_SKIP_FASTCHAT").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CAMELID_SKIP_FASTCHAT=1");
        return None;
    }
    let python = std::env::var("CAMELID_TEST_PYTHON").expect(
        "CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the \
         venv with FastChat), or set CAMELID_SKIP_FASTCHAT=1 to skip these tests",
    );
    let probe = Command::new(&python)
        .args(["-c", "import fastchat, pandas, sklearn, plotly, pytz"])
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        probe.status.success(),
        "{python} lacks FastChat or its analysis packages (tests/run.sh installs them; \
         CAMELID_SKIP_FASTCHAT=1 skips these tests):\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    Some(python)
}

fn fastchat(python: &str, args: &[&str]) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fastchat/parity.py"
    );
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parity.py {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_string(v).unwrap()).unwrap();
}

/// A synthetic arena: six models (llama-13b among them) of known strengths, 2 400
/// anonymous battles with both kinds of tie plus 300 where the voter saw the names (which
/// favour one model), written out of time order.
fn battle_log() -> Value {
    let models = ["alpha", "beta", "gamma", "delta", "llama-13b", "omega"];
    let strength = [1.1f64, 0.6, 0.2, -0.1, -0.7, -0.2];
    let mut rng = NumpyRandom::new(2024);
    let mut unit = || rng.below(1 << 30) as f64 / (1u64 << 30) as f64;
    let mut battles = vec![];
    for k in 0..2700usize {
        let i = (unit() * 6.0) as usize;
        let j = (i + 1 + (unit() * 5.0) as usize) % 6;
        let named = k % 9 == 0;
        let p = 1.0 / (1.0 + (strength[j] - strength[i]).exp());
        let u = unit();
        let winner = if named {
            if models[i] == "omega" {
                "model_a"
            } else {
                "model_b"
            }
        } else if u < 0.08 {
            "tie"
        } else if u < 0.12 {
            "tie (bothbad)"
        } else if unit() < p {
            "model_a"
        } else {
            "model_b"
        };
        // Stamps out of file order: the online Elo must follow them.
        let tstamp = 1.7e9 + ((k * 7919) % 2700) as f64 * 13.0 + 0.25;
        battles.push(json!({
            "question_id": format!("b{k}"), "model_a": models[i], "model_b": models[j],
            "winner": winner, "judge": format!("arena_user_{k}"), "anony": !named,
            "tstamp": tstamp, "turn": 1,
            "conversation_a": [], "conversation_b": [],
        }));
    }
    Value::Array(battles)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// `camelid arena ratings` on the arena's own export gives FastChat's `elo_analysis`
/// numbers on that export: online Elo, ratings and bootstrap quantiles within 1e-6, once
/// scikit-learn solves FastChat's objective to its optimum. With scikit-learn's default
/// tolerance FastChat's ratings stop short of it by a fraction of a point (README).
#[test]
fn arena_ratings_match_fastchat_elo_analysis_on_the_export() {
    let Some(py) = python() else { return };
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let log = dir.join("log.json");
    write(&log, &battle_log());
    let db = format!("sqlite:{}", s(&dir.join("arena.db")));
    camelid(&["arena", "import", "--arena-db", &db, "--battles", s(&log)]);
    let export = dir.join("export.json");
    camelid(&["arena", "export", "--arena-db", &db, "--out", s(&export)]);

    let rounds = "20";
    let theirs = fastchat(&py, &["elo", s(&export), rounds]);
    let ours: Vec<Value> = serde_json::from_str(&camelid(&[
        "arena",
        "ratings",
        "--battles",
        s(&export),
        "--bootstrap",
        rounds,
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(ours.len(), 6);
    for row in &ours {
        let m = row["model"].as_str().unwrap();
        let f = |k: &str| row[k].as_f64().unwrap();
        let t = |k: &str| theirs[k][m].as_f64().unwrap();
        assert!(
            close(f("online_elo"), t("online"), 1e-9),
            "{m} online: {row} vs {}",
            t("online")
        );
        assert!(
            close(f("rating"), t("rating"), 1e-6),
            "{m} rating: {row} vs {}",
            t("rating")
        );
        assert!(
            close(f("ci_low"), t("q025"), 1e-6),
            "{m} q025: {row} vs {}",
            t("q025")
        );
        assert!(
            close(f("ci_high"), t("q975"), 1e-6),
            "{m} q975: {row} vs {}",
            t("q975")
        );
        assert_eq!(row["battles"], theirs["num_battles"][m], "{m}");
        // FastChat as it runs (lbfgs at tol 1e-4): near, not at, the optimum.
        let default = theirs["bt_default_solver"][m].as_f64().unwrap();
        assert!(close(f("rating"), default, 0.5), "{m}: {row} vs {default}");
    }
    let llama = ours.iter().find(|r| r["model"] == "llama-13b").unwrap();
    assert_eq!(llama["rating"].as_f64().unwrap(), 800.0);

    // The named battles and the time order matter: with the named ones, or with the plain
    // fit, the table is not FastChat's.
    let named: Vec<Value> = serde_json::from_str(&camelid(&[
        "arena",
        "ratings",
        "--battles",
        s(&export),
        "--bootstrap",
        "0",
        "--format",
        "json",
        "--include-named",
    ]))
    .unwrap();
    let omega = |rows: &[Value], k: &str| {
        rows.iter().find(|r| r["model"] == "omega").unwrap()[k]
            .as_f64()
            .unwrap()
    };
    assert!(omega(&named, "rating") > omega(&ours, "rating") + 20.0);
    let mle: Vec<Value> = serde_json::from_str(&camelid(&[
        "arena",
        "ratings",
        "--battles",
        s(&export),
        "--bootstrap",
        "0",
        "--format",
        "json",
        "--bt",
        "mle",
    ]))
    .unwrap();
    let mean = mle
        .iter()
        .map(|r| r["rating"].as_f64().unwrap())
        .sum::<f64>()
        / 6.0;
    assert!(close(mean, 1000.0, 1e-6), "{mean}");
    // The export in file order (shuffled stamps) rates as the log does.
    let from_log: Vec<Value> = serde_json::from_str(&camelid(&[
        "arena",
        "ratings",
        "--battles",
        s(&log),
        "--bootstrap",
        "0",
        "--format",
        "json",
    ]))
    .unwrap();
    assert!(close(
        omega(&from_log, "online_elo"),
        omega(&ours, "online_elo"),
        1e-9
    ));
}

/// `camelid mtbench agreement` counts what FastChat's `compute_agreement` counts, for an
/// LLM judge against human experts and the experts among themselves, per turn and setup.
#[test]
fn agreement_matches_fastchat_compute_agreement() {
    let Some(py) = python() else { return };
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let models = ["gpt-3.5", "llama", "vicuna", "alpaca"];
    let winners = ["model_a", "model_b", "tie", "tie (bothbad)"];
    let mut rng = NumpyRandom::new(5);
    let (mut human, mut gpt4) = (vec![], vec![]);
    for q in 81..121u64 {
        for turn in [1, 2] {
            let i = rng.below(4);
            let j = (i + 1 + rng.below(3)) % 4;
            let truth = rng.below(3);
            for e in 0..1 + rng.below(3) {
                // Experts mostly agree with the truth; some write the pair the other way round.
                let w = if rng.below(4) == 0 {
                    rng.below(4)
                } else {
                    truth
                };
                let (a, b, w) = if rng.below(2) == 0 {
                    (models[i], models[j], winners[w])
                } else {
                    (
                        models[j],
                        models[i],
                        ["model_b", "model_a", "tie", "tie (bothbad)"][w],
                    )
                };
                human.push(
                    json!({"question_id": q, "model_a": a, "model_b": b, "winner": w,
                    "judge": format!("expert_{e}"), "turn": turn}),
                );
            }
            let w = if rng.below(3) == 0 {
                rng.below(3)
            } else {
                truth
            };
            gpt4.push(
                json!({"question_id": q, "model_a": models[i], "model_b": models[j],
                "winner": winners[w], "judge": ["gpt-4", "pair-v2"], "turn": turn}),
            );
        }
    }
    let (hp, gp) = (dir.join("human.json"), dir.join("gpt4.json"));
    write(&hp, &Value::Array(human));
    write(&gp, &Value::Array(gpt4));
    let theirs = fastchat(&py, &["agreement", s(&hp), s(&gp)]);
    let ours: Vec<Value> = serde_json::from_str(&camelid(&[
        "mtbench",
        "agreement",
        "--votes",
        s(&hp),
        "--votes",
        s(&gp),
        "--format",
        "json",
    ]))
    .unwrap();
    let mut compared = 0;
    for (j1, j2, fj) in [
        ("human", "gpt-4-pair", "gpt4-pair/human"),
        ("human", "human", "human/human"),
    ] {
        for turn in [1u64, 2] {
            let row = ours
                .iter()
                .find(|r| r["judge_1"] == j1 && r["judge_2"] == j2 && r["turn"] == turn)
                .unwrap_or_else(|| panic!("no {j1}/{j2} turn {turn} in {ours:?}"));
            for setup in ["with_ties", "without_ties"] {
                let t = &theirs[format!("{fj}/{turn}/{setup}")];
                assert!(t[1].as_u64().unwrap() > 10, "{t}");
                assert_eq!(
                    (&row[setup]["agree"], &row[setup]["votes"]),
                    (&t[0], &t[1]),
                    "{j1}/{j2} turn {turn} {setup}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 8);
}

/// `camelid mtbench show` gives `show_result`'s numbers on camelid's judgment files.
#[test]
fn show_matches_fastchat_show_result() {
    let Some(py) = python() else { return };
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let models = ["m1", "m2", "m3"];
    let mut rng = NumpyRandom::new(11);
    let (mut single, mut pair) = (String::new(), String::new());
    for q in 81..101u64 {
        for turn in [1u8, 2] {
            for m in models {
                // Some scores unparsed (-1), which both leave out.
                let score = if rng.below(10) == 0 {
                    -1.0
                } else {
                    1.0 + rng.below(10) as f64
                };
                single += &json!({"question_id": q, "model": m, "judge": ["judge", "single-v1"],
                    "user_prompt": "", "judgment": "", "score": score, "turn": turn,
                    "tstamp": 1.0})
                .to_string();
                single.push('\n');
            }
            for (a, b) in [("m1", "m2"), ("m1", "m3"), ("m2", "m3")] {
                let v = ["model_1", "model_2", "tie", "error"];
                let (g1, g2) = (v[rng.below(4)], v[rng.below(4)]);
                pair += &json!({"question_id": q, "model_1": a, "model_2": b,
                    "g1_winner": g1, "g2_winner": g2, "judge": ["judge", "pair-v2"],
                    "g1_user_prompt": "", "g1_judgment": "", "g2_user_prompt": "",
                    "g2_judgment": "", "turn": turn, "tstamp": 1.0})
                .to_string();
                pair.push('\n');
            }
        }
    }
    let (sp, pp) = (dir.join("single.jsonl"), dir.join("pair.jsonl"));
    std::fs::write(&sp, single).unwrap();
    std::fs::write(&pp, pair).unwrap();

    let theirs = fastchat(&py, &["show", "single", s(&sp)]);
    let ours: Vec<Value> = serde_json::from_str(&camelid(&[
        "mtbench",
        "show",
        "--judgments",
        s(&sp),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(ours.len(), 3);
    for row in &ours {
        let m = row["model"].as_str().unwrap();
        for k in ["turn1", "turn2", "overall"] {
            let (a, b) = (row[k].as_f64().unwrap(), theirs[k][m].as_f64().unwrap());
            assert!(close(a, b, 1e-12), "{m} {k}: {a} vs {b}");
        }
    }

    let theirs = fastchat(&py, &["show", "pairwise-all", s(&pp)]);
    let ours: Vec<Value> = serde_json::from_str(&camelid(&[
        "mtbench",
        "show",
        "--judgments",
        s(&pp),
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(ours.len(), 3);
    for row in &ours {
        let m = row["model"].as_str().unwrap();
        for k in [
            "win",
            "loss",
            "tie",
            "win_rate",
            "loss_rate",
            "win_rate_adjusted",
        ] {
            let (a, b) = (row[k].as_f64().unwrap(), theirs[m][k].as_f64().unwrap());
            assert!(close(a, b, 1e-12), "{m} {k}: {a} vs {b}");
        }
    }
}
