//! MT-bench logic against FastChat's behaviour, on the real data in ../shared/data/mt_bench.

use camelid_eval::client::ChatClient;
use camelid_eval::data::*;
use camelid_eval::judge::*;
use camelid_eval::show::*;
use std::path::{Path, PathBuf};

/// `../shared/data/mt_bench` beside the repository, or `CAMELID_MT_BENCH_DATA`.
fn data() -> PathBuf {
    let d = std::env::var_os("CAMELID_MT_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mt_bench")
        });
    assert!(
        d.join("question.jsonl").is_file(),
        "no MT-bench data at {} (FastChat's llm_judge/data/mt_bench: question.jsonl, \
         judge_prompts.jsonl, reference_answer/gpt-4.jsonl): `bash tests/fetch-mt-bench.sh` \
         fetches them, then set CAMELID_MT_BENCH_DATA to the folder it prints",
        d.display()
    );
    d
}

fn judge() -> Judge {
    let refs = read_jsonl::<Answer>(&data().join("reference_answer/gpt-4.jsonl")).unwrap();
    let mut client = ChatClient::new("http://127.0.0.1:9", "judge-model", None).unwrap();
    // Nothing listens there: fail at once, not after a few minutes of retries.
    client.retries = 0;
    Judge {
        client,
        prompts: load_judge_prompts(&data().join("judge_prompts.jsonl")).unwrap(),
        references: refs.into_iter().map(|a| (a.question_id, a)).collect(),
        max_tokens: 16,
        constrain: false,
    }
}

fn q(id: u64) -> Question {
    load_questions(&data().join("question.jsonl"))
        .unwrap()
        .into_iter()
        .find(|q| q.question_id == id)
        .unwrap()
}

fn ans(model: &str, id: u64, t1: &str, t2: &str) -> Answer {
    Answer {
        question_id: id,
        answer_id: "x".into(),
        model_id: model.into(),
        choices: vec![Choice {
            index: 0,
            turns: vec![t1.into(), t2.into()],
        }],
        tstamp: 0.0,
        error: None,
    }
}

#[test]
fn data_files_load() {
    let qs = load_questions(&data().join("question.jsonl")).unwrap();
    assert_eq!(qs.len(), 80);
    let one_each = select_questions(qs.clone(), None, Some(1));
    assert_eq!(one_each.len(), 8);
    assert_eq!(select_questions(qs, Some(3), None).len(), 3);
    assert_eq!(
        load_judge_prompts(&data().join("judge_prompts.jsonl"))
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn single_prompt_general_turn1_is_fastchats() {
    let j = judge();
    let q = q(81); // writing
    let (name, system, user) = j
        .single_prompt(&q, &ans("m", 81, "ANSWER ONE", "ANSWER TWO"), 1)
        .unwrap();
    assert_eq!(name, "single-v1");
    assert_eq!(system, "You are a helpful assistant.");
    let expected = format!(
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n{}\n\n[The Start of Assistant's Answer]\nANSWER ONE\n[The End of Assistant's Answer]",
        q.turns[0]
    );
    assert_eq!(user, expected);
}

#[test]
fn single_prompt_math_multi_turn_uses_references() {
    let j = judge();
    let q = q(111); // math, has a reference
    let r = &j.references[&111].choices[0].turns;
    let (name, _, user) = j.single_prompt(&q, &ans("m", 111, "A1", "A2"), 2).unwrap();
    assert_eq!(name, "single-math-v1-multi-turn");
    let expected = format!(
        "<|The Start of Reference Answer|>\n\n### User:\n{q1}\n\n### Reference answer:\n{r1}\n\n### User:\n{q2}\n\n### Reference answer:\n{r2}\n\n<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{q1}\n\n### Assistant A:\nA1\n\n### User:\n{q2}\n\n### Assistant A:\nA2\n\n<|The End of Assistant A's Conversation with User|>",
        q1 = q.turns[0], q2 = q.turns[1], r1 = r[0], r2 = r[1]
    );
    assert_eq!(user, expected);
}

#[test]
fn pair_prompts_general_and_math_reference() {
    let j = judge();
    let q1 = q(91); // roleplay
    let (name, system, user) = j
        .pair_prompt(
            &q1,
            &ans("a", 91, "AA", "AA2"),
            &ans("b", 91, "BB", "BB2"),
            1,
        )
        .unwrap();
    assert_eq!(name, "pair-v2");
    assert!(system.starts_with("Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants"));
    assert_eq!(user, format!("[User Question]\n{}\n\n[The Start of Assistant A's Answer]\nAA\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\nBB\n[The End of Assistant B's Answer]", q1.turns[0]));
    let q2 = q(101); // reasoning, reference
    let (name, _, user) = j
        .pair_prompt(
            &q2,
            &ans("a", 101, "AA", "AA2"),
            &ans("b", 101, "BB", "BB2"),
            1,
        )
        .unwrap();
    assert_eq!(name, "pair-math-v1");
    let r1 = &j.references[&101].choices[0].turns[0];
    assert_eq!(user, format!("[User Question]\n{}\n\n[The Start of Reference Answer]\n{r1}\n[The End of Reference Answer]\n\n[The Start of Assistant A's Answer]\nAA\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\nBB\n[The End of Assistant B's Answer]", q2.turns[0]));
    let (name, _, user) = j
        .pair_prompt(
            &q1,
            &ans("a", 91, "AA", "AA2"),
            &ans("b", 91, "BB", "BB2"),
            2,
        )
        .unwrap();
    assert_eq!(name, "pair-v2-multi-turn");
    assert!(user.contains("### Assistant A:\nAA2\n\n<|The End of Assistant A's Conversation with User|>\n\n\n<|The Start of Assistant B's Conversation with User|>"));
    // Braces in answers are data, not placeholders.
    let (_, _, user) = j
        .pair_prompt(
            &q1,
            &ans("a", 91, "{answer_b}", "x"),
            &ans("b", 91, "fn f() {}", "y"),
            1,
        )
        .unwrap();
    assert!(user.contains("\n{answer_b}\n") && user.contains("fn f() {}"));
}

#[test]
fn score_parsing_edge_cases() {
    assert_eq!(parse_score("Rating: [[7]]"), 7.0);
    assert_eq!(parse_score("Rating: [[8.5]] and later [[2]]"), 8.5);
    assert_eq!(parse_score("no double brackets but [6]"), 6.0);
    assert_eq!(parse_score("[[x]] then [[3]]"), 3.0);
    assert_eq!(parse_score("Rating: 9/10"), -1.0);
    assert_eq!(parse_score(""), -1.0);
    assert_eq!(parse_score("[[10]]"), 10.0);
    assert_eq!(parse_verdict("so [[B]]"), "B");
    assert_eq!(parse_verdict("[[A]] vs [[B]]"), "A");
    assert_eq!(parse_verdict("[[C]]"), "tie");
    assert_eq!(parse_verdict("A is better"), "error");
}

#[test]
fn swapped_games_combine_like_fastchat() {
    assert_eq!(game_winners("A", "B"), ("model_1".into(), "model_1".into()));
    assert_eq!(game_winners("B", "A"), ("model_2".into(), "model_2".into()));
    assert_eq!(combine("model_1", "model_1"), "model_1");
    assert_eq!(combine("model_1", "model_2"), "tie"); // inconsistent → tie
    assert_eq!(combine("tie", "model_1"), "tie");
    assert_eq!(combine("error", "model_1"), "error");
    let pj = |g1: &str, g2: &str| PairJudgment {
        question_id: 1,
        model_1: "a".into(),
        model_2: "b".into(),
        g1_winner: g1.into(),
        g2_winner: g2.into(),
        judge: ("j".into(), "pair-v2".into()),
        g1_user_prompt: String::new(),
        g1_judgment: String::new(),
        g2_user_prompt: String::new(),
        g2_judgment: String::new(),
        turn: 1,
        tstamp: 0.0,
    };
    let mut games = vec![
        pj("model_1", "model_1"),
        pj("model_1", "model_2"),
        pj("model_2", "model_2"),
        pj("error", "tie"),
        pj("model_1", "model_1"),
    ];
    let rows = pair_table(&games, None);
    let a = rows.iter().find(|r| r.model == "a").unwrap();
    assert_eq!((a.win, a.loss, a.tie, a.errors), (2, 1, 1, 1));
    assert!((a.win_rate_adjusted - 2.5 / 4.0).abs() < 1e-9);
    let b = rows.iter().find(|r| r.model == "b").unwrap();
    assert_eq!((b.win, b.loss, b.tie), (1, 2, 1));
    // Against a baseline (FastChat's --baseline-model): only its games count, and it has
    // no row. A game of a against c (c won) is left out.
    let mut other = pj("model_2", "model_2");
    other.model_2 = "c".into();
    games.push(other);
    let all = pair_table(&games, None);
    assert_eq!(all.iter().find(|r| r.model == "a").unwrap().loss, 2);
    let vs_b = pair_table(&games, Some("b"));
    assert_eq!(vs_b.len(), 1, "{vs_b:?}");
    assert_eq!(
        (vs_b[0].model.as_str(), vs_b[0].win, vs_b[0].loss),
        ("a", 2, 1)
    );
    // A file two judges wrote to is shown for one of them, named.
    let mut by_k = pj("model_1", "model_1");
    by_k.judge.0 = "k".into();
    games.push(by_k);
    let judge_of = |j: &PairJudgment| j.judge.0.clone();
    let err = one_judge(games.clone(), |j| j.judge.0.as_str(), None).unwrap_err();
    assert!(err.to_string().contains("--judge-model"), "{err}");
    let only_k = one_judge(games.clone(), |j| j.judge.0.as_str(), Some("k")).unwrap();
    assert_eq!(only_k.iter().map(judge_of).collect::<Vec<_>>(), ["k"]);
    // A judge not in the file is an error naming the judges that are, not an empty table.
    let err = one_judge(games.clone(), |j| j.judge.0.as_str(), Some("gpt-4"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"gpt-4\"") && err.contains("j, k"), "{err}");
    let none: Vec<PairJudgment> = vec![];
    assert!(one_judge(none, |j| j.judge.0.as_str(), Some("k")).is_err());
}

#[test]
fn single_table_means_skip_unparsed() {
    let sj = |m: &str, qid: u64, t: u8, s: f64| SingleJudgment {
        question_id: qid,
        model: m.into(),
        judge: ("j".into(), "single-v1".into()),
        user_prompt: String::new(),
        judgment: String::new(),
        score: s,
        turn: t,
        tstamp: 0.0,
    };
    let qs = load_questions(&data().join("question.jsonl")).unwrap();
    let rows = single_table(
        &[
            sj("m", 81, 1, 8.0),
            sj("m", 81, 2, 6.0),
            sj("m", 91, 1, -1.0),
            sj("m", 91, 2, 4.0),
        ],
        &qs,
    );
    let r = &rows[0];
    assert_eq!(r.turn1, Some(8.0));
    assert_eq!(r.turn2, Some(5.0));
    assert_eq!(r.overall, Some(6.0));
    assert_eq!(r.unparsed, 1);
    assert_eq!(r.by_category["writing"], 7.0);
    assert_eq!(r.by_category["roleplay"], 4.0);
    assert!(render_single(&rows, true).contains("| m "));
}

#[test]
fn outputs_are_resumable_jsonl_in_fastchat_shape() {
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let p = dir.join("answers.jsonl");
    append_jsonl(&p, &ans("m", 81, "a", "b")).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"torn\":"))
        .unwrap();
    let back: Vec<Answer> = read_existing(&p);
    assert_eq!(back.len(), 1);
    let v: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&p).unwrap().lines().next().unwrap()).unwrap();
    for k in ["question_id", "answer_id", "model_id", "choices", "tstamp"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    assert!(v["choices"][0]["turns"].is_array() && v["choices"][0]["index"] == 0);
    assert!(v.get("error").is_none(), "no error field on good answers");
}

#[test]
fn multi_turn_general_single_and_math_pair_prompts_are_fastchats() {
    let j = judge();
    let qw = q(81);
    let (name, system, user) = j.single_prompt(&qw, &ans("m", 81, "A1", "A2"), 2).unwrap();
    assert_eq!(name, "single-v1-multi-turn");
    assert!(system.ends_with("\"Rating: [[5]]\".\n\n"), "{system:?}");
    assert_eq!(
        user,
        format!(
            "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{}\n\n### Assistant A:\nA1\n\n### User:\n{}\n\n### Assistant A:\nA2\n\n<|The End of Assistant A's Conversation with User|>",
            qw.turns[0], qw.turns[1]
        )
    );
    let q = q(121); // coding, reference
    let r = &j.references[&121].choices[0].turns;
    let (name, _, user) = j
        .pair_prompt(
            &q,
            &ans("a", 121, "a1", "a2"),
            &ans("b", 121, "b1", "b2"),
            2,
        )
        .unwrap();
    assert_eq!(name, "pair-math-v1-multi-turn");
    let expected = format!(
        "<|The Start of Reference Answer|>\n\n### User:\n{q1}\n\n### Reference answer:\n{r1}\n\n### User:\n{q2}\n\n### Reference answer:\n{r2}\n\n<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{q1}\n\n### Assistant A:\na1\n\n### User:\n{q2}\n\n### Assistant A:\na2\n\n<|The End of Assistant A's Conversation with User|>\n\n\n<|The Start of Assistant B's Conversation with User|>\n\n### User:\n{q1}\n\n### Assistant B:\nb1\n\n### User:\n{q2}\n\n### Assistant B:\nb2\n\n<|The End of Assistant B's Conversation with User|>",
        q1 = q.turns[0], q2 = q.turns[1], r1 = r[0], r2 = r[1]
    );
    assert_eq!(user, expected);
    // single-math-v1, turn 1.
    let (name, _, user) = j.single_prompt(&q, &ans("m", 121, "X", "Y"), 1).unwrap();
    assert_eq!(name, "single-math-v1");
    assert!(user.ends_with(&format!("[Question]\n{}\n\n[The Start of Reference Answer]\n{}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\nX\n[The End of Assistant's Answer]", q.turns[0], r[0])));
}

/// Runs `judge::run` (its judge unreachable: a match it tries is an error, not a verdict).
fn run_judge(
    j: &Judge,
    qs: &[Question],
    answers: &std::collections::BTreeMap<String, std::collections::BTreeMap<u64, Answer>>,
    mode: Mode,
    out: &Path,
) -> anyhow::Result<(usize, usize)> {
    let opts = JudgeOptions {
        mode,
        baseline: Some("base".into()),
        out: out.to_path_buf(),
        parallel: 2,
        models: None,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(j, qs, answers, &opts))
}

fn answers_of(
    models: &[&str],
    ids: &[u64],
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<u64, Answer>> {
    models
        .iter()
        .map(|m| {
            let per_q = ids.iter().map(|&id| (id, ans(m, id, "x", "y"))).collect();
            (m.to_string(), per_q)
        })
        .collect()
}

#[test]
fn judging_refuses_what_fastchat_check_data_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("j.jsonl");
    // 111 is a math question, 81 a writing one.
    let qs = vec![q(81), q(111)];
    // No reference for the math question: refused before any call, not judged with the
    // general prompt.
    let mut j = judge();
    j.references.remove(&111);
    let err = run_judge(
        &j,
        &qs,
        &answers_of(&["m1"], &[81, 111]),
        Mode::Single,
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("reference") && err.contains("111"), "{err}");
    let j = judge();
    // A model without an answer to every question.
    let mut partial = answers_of(&["m1", "m2"], &[81, 111]);
    partial.get_mut("m2").unwrap().remove(&81);
    let err = run_judge(&j, &qs, &partial, Mode::PairwiseAll, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"m2\"") && err.contains("81"), "{err}");
    // A baseline with no answers at all.
    let err = run_judge(
        &j,
        &qs,
        &answers_of(&["m1"], &[81, 111]),
        Mode::PairwiseBaseline,
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"base\""), "{err}");
    // A prompts file without a prompt the run needs (here the multi-turn ones): refused
    // before any match, not judged as a table of first turns.
    for (mode, missing) in [
        (Mode::Single, "single-v1-multi-turn"),
        (Mode::PairwiseAll, "pair-math-v1-multi-turn"),
    ] {
        let mut j = judge();
        j.prompts.remove(missing);
        let err = run_judge(&j, &qs, &answers_of(&["m1", "m2"], &[81, 111]), mode, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains(missing), "{err}");
    }
    // No answers at all (an empty --answers folder): an error, not "judged 0 matches".
    let err = run_judge(&judge(), &qs, &Default::default(), Mode::PairwiseAll, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no answers"), "{err}");
    assert!(!out.exists(), "nothing judged");
}

/// A run whose `n` matches all failed is an error.
fn assert_all_failed(r: anyhow::Result<(usize, usize)>, n: usize) {
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains(&format!("every one of the {n} matches failed")),
        "{err}"
    );
}

/// A question or answer without turns fails its own matches (no judge call), not the run.
#[test]
fn no_turns_is_an_error_for_the_match_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("j.jsonl");
    let j = judge();
    let empty = |m: &str| Answer {
        choices: vec![Choice {
            index: 0,
            turns: vec![],
        }],
        ..ans(m, 81, "", "")
    };
    // An answer without turns, judged alone (both turns) and against another's (both turns).
    let mut answers = answers_of(&["m1"], &[81]);
    answers.insert("m2".into(), [(81, empty("m2"))].into());
    let qs = vec![q(81)];
    let err = j.single_prompt(&qs[0], &answers["m2"][&81], 1).unwrap_err();
    assert!(err.to_string().contains("answer has no turns"), "{err}");
    let only_m2: std::collections::BTreeMap<_, _> =
        [("m2".to_string(), answers["m2"].clone())].into();
    // Every match failed: the run fails (after trying them all).
    assert_all_failed(run_judge(&j, &qs, &only_m2, Mode::Single, &out), 2);
    assert_all_failed(run_judge(&j, &qs, &answers, Mode::PairwiseAll, &out), 2);
    for a in [&answers["m1"][&81], &answers["m2"][&81]] {
        assert!(j.pair_prompt(&qs[0], a, &empty("m2"), 2).is_err());
    }
    // A question without turns: its one match is an error.
    let bare = Question {
        turns: vec![],
        ..q(81)
    };
    let err = j.single_prompt(&bare, &answers["m1"][&81], 1).unwrap_err();
    assert!(err.to_string().contains("question has no turns"), "{err}");
    let only_m1: std::collections::BTreeMap<_, _> =
        [("m1".to_string(), answers["m1"].clone())].into();
    assert_all_failed(run_judge(&j, &[bare], &only_m1, Mode::Single, &out), 1);
    assert!(!out.exists(), "nothing judged");
}

#[test]
fn resuming_counts_only_this_judges_verdicts_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pair.jsonl");
    let qs = vec![q(81)];
    let answers = answers_of(&["m1", "m2"], &[81]);
    let j = judge();
    // As a run writes it: the first game's prompt shows model_1's answer as A (a record
    // made from other prompts is refused, not counted done).
    let judged = |by: &str, m1: &str, m2: &str, turn: u8| PairJudgment {
        question_id: 81,
        model_1: m1.into(),
        model_2: m2.into(),
        g1_winner: "tie".into(),
        g2_winner: "tie".into(),
        judge: (by.into(), "pair-v2".into()),
        g1_user_prompt: j
            .pair_prompt(&qs[0], &answers[m1][&81], &answers[m2][&81], turn)
            .unwrap()
            .2,
        g1_judgment: String::new(),
        g2_user_prompt: String::new(),
        g2_judgment: String::new(),
        turn,
        tstamp: 0.0,
    };
    // Both turns judged by another judge: this judge still has both to do (two failed
    // calls to the unreachable judge).
    for t in [1, 2] {
        append_jsonl(&out, &judged("another-judge", "m1", "m2", t)).unwrap();
    }
    assert_all_failed(run_judge(&j, &qs, &answers, Mode::PairwiseAll, &out), 2);
    // Judged by this judge with the pair the other way round (a baseline run's order):
    // nothing left to do.
    for t in [1, 2] {
        append_jsonl(&out, &judged("judge-model", "m2", "m1", t)).unwrap();
    }
    assert_eq!(
        run_judge(&j, &qs, &answers, Mode::PairwiseAll, &out).unwrap(),
        (0, 0)
    );
}

#[test]
fn one_model_id_in_two_answer_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in [("run1.jsonl", "a"), ("run2.jsonl", "b")] {
        append_jsonl(&dir.path().join(file), &ans("vicuna", 81, text, text)).unwrap();
    }
    let err = load_answers(&[dir.path()]).unwrap_err().to_string();
    assert!(
        err.contains("run1.jsonl") && err.contains("run2.jsonl") && err.contains("vicuna"),
        "{err}"
    );
    // One file with the model's answers (a retried question appended twice) loads.
    append_jsonl(&dir.path().join("run1.jsonl"), &ans("vicuna", 82, "c", "c")).unwrap();
    std::fs::remove_file(dir.path().join("run2.jsonl")).unwrap();
    assert_eq!(load_answers(&[dir.path()]).unwrap()["vicuna"].len(), 2);
}
