//! MT-bench end to end: `camelid serve` answers one question per category with the default
//! model, then judges the answers with itself (single and pairwise-all), and `show` prints
//! the tables. The tiny model is a poor judge: unparsable verdicts must be handled.

mod common;
use common::cli::{camelid, jsonl, mt_bench_data};

#[test]
fn answer_judge_show_with_camelid_as_contestant_and_judge() {
    let s = common::serve(&["--model", "smol=smollm2-135m-instruct"]);
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let q = mt_bench_data().join("question.jsonl");
    let (q, prompts, refs) = (
        q.to_str().unwrap(),
        mt_bench_data().join("judge_prompts.jsonl"),
        mt_bench_data().join("reference_answer/gpt-4.jsonl"),
    );
    let answers = dir.join("model_answer");
    for (id, temp) in [("smol-a", None), ("smol-b", Some("1.0"))] {
        let out = answers.join(format!("{id}.jsonl"));
        let mut args = vec![
            "mtbench",
            "answer",
            "--endpoint",
            &s.base,
            "--model",
            "smol",
            "--model-id",
            id,
            "--questions",
            q,
            "--out",
            out.to_str().unwrap(),
            "--per-category",
            "1",
            "--max-tokens",
            "12",
            "--parallel",
            "4",
        ];
        if let Some(t) = temp {
            args.extend(["--force-temperature", t]);
        }
        camelid(&args);
        let a = jsonl(&out);
        assert_eq!(a.len(), 8, "one answer per category");
        for l in &a {
            assert!(
                l["question_id"].is_u64()
                    && l["answer_id"].is_string()
                    && l["model_id"] == id
                    && l["tstamp"].is_f64()
            );
            let turns = l["choices"][0]["turns"].as_array().unwrap();
            assert_eq!(turns.len(), 2, "both turns answered");
            assert!(
                turns
                    .iter()
                    .all(|t| t.as_str().is_some_and(|t| !t.trim().is_empty())),
                "an empty answer: {l}"
            );
        }
        // Resumable: a second run leaves the file as it is, byte for byte.
        let full = std::fs::read(&out).unwrap();
        camelid(&args);
        let again = std::fs::read(&out).unwrap();
        assert!(
            again == full,
            "a second run changed the answers:\n{}\nbecame\n{}",
            String::from_utf8_lossy(&full),
            String::from_utf8_lossy(&again)
        );
        // With the last three answers gone, a run keeps the five left byte for byte and
        // appends the three missing questions' answers.
        let text = String::from_utf8(full.clone()).unwrap();
        let kept: String = text.split_inclusive('\n').take(5).collect();
        std::fs::write(&out, &kept).unwrap();
        camelid(&args);
        let resumed = std::fs::read_to_string(&out).unwrap();
        assert!(
            resumed.starts_with(&kept),
            "the resumed run rewrote the existing answers"
        );
        let ids = |t: &str| -> std::collections::BTreeSet<u64> {
            t.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["question_id"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(jsonl(&out).len(), 8, "{resumed}");
        assert_eq!(ids(&resumed), ids(&text), "the same eight questions");
        assert!(
            ids(&resumed[kept.len()..]).is_disjoint(&ids(&kept)),
            "answered a question twice"
        );
    }
    let single = dir.join("single.jsonl");
    camelid(&[
        "mtbench",
        "judge",
        "--judge-endpoint",
        &s.base,
        "--judge-model",
        "smol",
        "--answers",
        answers.to_str().unwrap(),
        "--mode",
        "single",
        "--models",
        "smol-a",
        "--questions",
        q,
        "--per-category",
        "1",
        "--judge-prompts",
        prompts.to_str().unwrap(),
        "--references",
        refs.to_str().unwrap(),
        "--out",
        single.to_str().unwrap(),
        "--judge-max-tokens",
        "24",
        "--parallel",
        "4",
    ]);
    let sj = jsonl(&single);
    assert_eq!(sj.len(), 16, "8 questions x 2 turns");
    for j in &sj {
        assert!(j["score"].is_number() && (j["turn"] == 1 || j["turn"] == 2));
        assert_eq!(j["judge"][0], "smol");
        assert!(j["judge"][1].as_str().unwrap().starts_with("single-"));
        assert!(
            j["user_prompt"].is_string() && j["judgment"].is_string() && j["model"] == "smol-a"
        );
    }
    // Math/reasoning/coding questions were judged against the reference.
    assert!(sj.iter().any(|j| j["judge"][1] == "single-math-v1"
        && j["user_prompt"]
            .as_str()
            .unwrap()
            .contains("[The Start of Reference Answer]")));
    let table = camelid(&[
        "mtbench",
        "show",
        "--judgments",
        single.to_str().unwrap(),
        "--questions",
        q,
    ]);
    assert!(
        table.contains("smol-a") && table.contains("turn 1") && table.contains("overall"),
        "{table}"
    );

    let pair = dir.join("pair.jsonl");
    camelid(&[
        "mtbench",
        "judge",
        "--judge-endpoint",
        &s.base,
        "--judge-model",
        "smol",
        "--answers",
        answers.to_str().unwrap(),
        "--mode",
        "pairwise-all",
        "--questions",
        q,
        "--per-category",
        "1",
        "--judge-prompts",
        prompts.to_str().unwrap(),
        "--references",
        refs.to_str().unwrap(),
        "--out",
        pair.to_str().unwrap(),
        "--judge-max-tokens",
        "24",
        "--parallel",
        "4",
    ]);
    let pj = jsonl(&pair);
    assert_eq!(pj.len(), 16);
    for j in &pj {
        for k in ["g1_winner", "g2_winner"] {
            assert!(
                ["model_1", "model_2", "tie", "error"].contains(&j[k].as_str().unwrap()),
                "{j}"
            );
        }
    }
    // Game 2 shows the answers swapped (identical only where both answers are identical).
    assert!(
        pj.iter()
            .any(|j| j["g1_user_prompt"] != j["g2_user_prompt"]),
        "game 2 never swapped the answers"
    );
    let table = camelid(&[
        "mtbench",
        "show",
        "--judgments",
        pair.to_str().unwrap(),
        "--format",
        "markdown",
    ]);
    assert!(
        table.contains("| model")
            && table.contains("adjusted win rate")
            && table.contains("smol-a"),
        "{table}"
    );
    // The same judgment records as arena battles: one per swapped pair of games, errors left
    // out, inconsistent pairs tied; with two models the ratings order as their score rates.
    // A 135M judge rarely writes a verdict, so the verdicts are set here, in every pattern.
    let verdicts = [
        ("model_1", "model_1"),
        ("model_2", "model_2"),
        ("model_1", "model_2"),
        ("model_1", "model_1"),
        ("tie", "model_1"),
        ("error", "model_2"),
    ];
    let pj: Vec<serde_json::Value> = pj
        .into_iter()
        .zip(verdicts.iter().cycle())
        .map(|(mut j, (g1, g2))| {
            j["g1_winner"] = (*g1).into();
            j["g2_winner"] = (*g2).into();
            j
        })
        .collect();
    let verdict_file = dir.join("pair-verdicts.jsonl");
    std::fs::write(
        &verdict_file,
        pj.iter().map(|j| format!("{j}\n")).collect::<String>(),
    )
    .unwrap();
    let mut score: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for j in &pj {
        let (g1, g2) = (
            j["g1_winner"].as_str().unwrap(),
            j["g2_winner"].as_str().unwrap(),
        );
        if g1 == "error" || g2 == "error" {
            continue;
        }
        let s1 = if g1 == "tie" || g1 != g2 {
            0.5
        } else if g1 == "model_1" {
            1.0
        } else {
            0.0
        };
        for (m, s) in [("model_1", s1), ("model_2", 1.0 - s1)] {
            let e = score.entry(j[m].as_str().unwrap().to_string()).or_default();
            e.0 += s;
            e.1 += 1;
        }
    }
    let board: Vec<serde_json::Value> = serde_json::from_str(&camelid(&[
        "arena",
        "ratings",
        "--battles",
        verdict_file.to_str().unwrap(),
        "--bootstrap",
        "20",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(board.len(), score.len(), "{board:?}");
    for row in &board {
        let (s, n) = score[row["model"].as_str().unwrap()];
        assert_eq!(row["battles"].as_u64().unwrap() as usize, n, "{row}");
        assert!((row["score_rate"].as_f64().unwrap() - s / n as f64).abs() < 1e-9);
        let (lo, r, hi) = (
            row["ci_low"].as_f64().unwrap(),
            row["rating"].as_f64().unwrap(),
            row["ci_high"].as_f64().unwrap(),
        );
        assert!(lo <= r + 1e-9 && r <= hi + 1e-9, "{row}");
    }
    let rate = |i: usize| board[i]["score_rate"].as_f64().unwrap();
    let rating = |i: usize| board[i]["rating"].as_f64().unwrap();
    assert!(rate(0) >= rate(1) && (rating(0) - rating(1) > 1e-6) == (rate(0) > rate(1)));
}

/// `mtbench bias` and `mtbench agreement` from the command line, on hand-made judgments whose
/// counts are known.
#[test]
fn bias_and_agreement_tables_from_the_command_line() {
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let pair = |q: u64, turn: u8, g1: &str, g2: &str| {
        serde_json::json!({"question_id": q, "model_1": "a", "model_2": "b", "g1_winner": g1,
            "g2_winner": g2, "judge": ["j", "pair-v2"], "g1_user_prompt": "", "g1_judgment": "",
            "g2_user_prompt": "", "g2_judgment": "", "turn": turn, "tstamp": 1.0})
        .to_string()
    };
    let file = dir.join("pair.jsonl");
    std::fs::write(
        &file,
        [
            pair(81, 1, "model_1", "model_1"), // consistent: a
            pair(81, 2, "model_1", "model_2"), // biased toward first
            pair(91, 1, "model_2", "model_1"), // biased toward second
            pair(91, 2, "tie", "model_1"),     // a tie, then the second-shown won: second
        ]
        .join("\n"),
    )
    .unwrap();
    let q = mt_bench_data().join("question.jsonl");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&camelid(&[
        "mtbench",
        "bias",
        "--judgments",
        &format!("default={}", file.display()),
        "--questions",
        q.to_str().unwrap(),
        "--format",
        "json",
    ]))
    .unwrap();
    let all = rows.iter().find(|r| r["by"] == "all").unwrap();
    assert_eq!(all["judge"], "default");
    let c = &all["counts"];
    assert_eq!(
        [
            &c["judged"],
            &c["consistent"],
            &c["biased_first"],
            &c["biased_second"],
            &c["error"]
        ],
        [4, 1, 1, 2, 0]
    );
    let writing = rows.iter().find(|r| r["group"] == "writing").unwrap();
    assert_eq!(writing["counts"]["judged"], 2);
    // Agreement of the file with a human who voted `a` on every pair: of the four votes (one
    // `a`, three ties from inconsistent games), one agrees; without ties 1 of 1.
    let humans = dir.join("human.json");
    let vote = |q: u64, t: u8| {
        serde_json::json!({"question_id": q, "model_a": "a", "model_b": "b", "winner": "model_a",
            "judge": "expert_0", "turn": t})
    };
    std::fs::write(
        &humans,
        serde_json::json!([vote(81, 1), vote(81, 2), vote(91, 1), vote(91, 2)]).to_string(),
    )
    .unwrap();
    let table = camelid(&[
        "mtbench",
        "agreement",
        "--votes",
        humans.to_str().unwrap(),
        "--votes",
        file.to_str().unwrap(),
    ]);
    assert!(
        table.contains("| human | j-pair | all | 25.0 % (1 of 4) | 100.0 % (1 of 1) |"),
        "{table}"
    );
}

/// A judge that always prefers the answer with `GOOD` in it, whatever the assistants are
/// called: it answers `[[L]]` with L the name (`Assistant L`) under which that answer was
/// shown. An OpenAI chat endpoint on a loopback port (std only: one thread per connection).
/// Returns its base URL and the user prompts it was sent.
fn preferring_judge() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return; // the client closed the connection
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let user = req["messages"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .rfind(|m| m["role"] == "user")
                        .unwrap()["content"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    let before = &user[..user.find("GOOD").expect("a GOOD answer shown")];
                    let name = &before[before.rfind("Assistant ").unwrap() + "Assistant ".len()..];
                    let label: String = name.chars().take_while(|c| c.is_alphanumeric()).collect();
                    log.lock().unwrap().push(user);
                    let reply = serde_json::json!({"choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": format!("The better one. [[{label}]]")}}]})
                    .to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        reply.len()
                    );
                    if conn.write_all((head + &reply).as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, seen)
}

/// The paper's "rename" experiment: `mtbench rename-prompts` calls the pairwise prompts'
/// assistants X and Y, `mtbench judge` with that file parses the judge's `[[X]]`/`[[Y]]`
/// verdicts (a judge that always picks the better answer is consistent under both orders),
/// and `mtbench bias` counts them.
#[test]
fn renamed_assistants_are_judged_by_their_new_names() {
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let renamed = dir.join("renamed_prompts.jsonl");
    camelid(&[
        "mtbench",
        "rename-prompts",
        "--judge-prompts",
        mt_bench_data()
            .join("judge_prompts.jsonl")
            .to_str()
            .unwrap(),
        "--names",
        "X,Y",
        "--out",
        renamed.to_str().unwrap(),
    ]);
    let prompts = jsonl(&renamed);
    assert_eq!(prompts.len(), 8);
    for p in prompts.iter().filter(|p| p["type"] == "pairwise") {
        let all = format!("{} {}", p["system_prompt"], p["prompt_template"]);
        assert!(
            all.contains("Assistant X") && all.contains("Assistant Y"),
            "{p}"
        );
        assert!(
            !all.contains("Assistant A") && !all.contains("[[A]]"),
            "{p}"
        );
        assert_eq!(p["verdict_labels"], serde_json::json!(["X", "Y", "C"]));
    }
    // Two models' answers to the first two questions (both turns): `good`'s say GOOD.
    let questions: Vec<serde_json::Value> = jsonl(&mt_bench_data().join("question.jsonl"))
        .into_iter()
        .take(2)
        .collect();
    let answers = dir.join("model_answer");
    std::fs::create_dir_all(&answers).unwrap();
    for (model, text) in [("good", "GOOD answer"), ("meh", "an answer")] {
        let rows: String = questions
            .iter()
            .map(|q| {
                serde_json::json!({"question_id": q["question_id"], "answer_id": "x",
                    "model_id": model, "tstamp": 1.0,
                    "choices": [{"index": 0, "turns": [text, text]}]})
                .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(answers.join(format!("{model}.jsonl")), rows).unwrap();
    }
    let (judge, seen) = preferring_judge();
    let out = dir.join("pair-renamed.jsonl");
    camelid(&[
        "mtbench",
        "judge",
        "--judge-endpoint",
        &judge,
        "--judge-model",
        "judge",
        "--answers",
        answers.to_str().unwrap(),
        "--mode",
        "pairwise-all",
        "--questions",
        mt_bench_data().join("question.jsonl").to_str().unwrap(),
        "--first-n",
        "2",
        "--judge-prompts",
        renamed.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 8, "2 questions x 2 turns x 2 orders");
    assert!(seen
        .iter()
        .all(|p| p.contains("Assistant X") && !p.contains("Assistant A")));
    let js = jsonl(&out);
    assert_eq!(js.len(), 4);
    for j in &js {
        assert_eq!(
            (&j["model_1"], &j["model_2"]),
            (&"good".into(), &"meh".into())
        );
        // Game 1 shows `good` as X, game 2 as Y: both verdicts name it.
        assert!(j["g1_judgment"].as_str().unwrap().ends_with("[[X]]"), "{j}");
        assert!(j["g2_judgment"].as_str().unwrap().ends_with("[[Y]]"), "{j}");
        assert_eq!(
            (&j["g1_winner"], &j["g2_winner"]),
            (&"model_1".into(), &"model_1".into()),
            "{j}"
        );
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&camelid(&[
        "mtbench",
        "bias",
        "--judgments",
        &format!("rename={}", out.display()),
        "--format",
        "json",
    ]))
    .unwrap();
    let all = rows.iter().find(|r| r["by"] == "all").unwrap();
    assert_eq!(all["judge"], "rename");
    assert_eq!(
        (&all["counts"]["judged"], &all["counts"]["consistent"]),
        (&4.into(), &4.into()),
        "{all}"
    );
}
