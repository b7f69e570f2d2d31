//! FastChat's own `gen_api_answer.py` (fschat 0.2.36, run unchanged by
//! `tests/fastchat/gen_api_answer.py` with the openai 0.28 client it was written for) against
//! `camelid serve` on the default model, on the first two MT-bench questions; the answer file
//! it writes is then judged by `camelid mtbench judge`, camelid as the judge.
//!
//! Needs `CAMELID_TEST_PYTHON` with FastChat and `CAMELID_FASTCHAT_OPENAI_V0` (a folder with
//! openai 0.28; `tests/run.sh` makes both); without them the test fails, unless
//! `CAMELID_SKIP_FASTCHAT=1` says to skip it.

mod common;
use common::cli::{camelid, jsonl, mt_bench_data};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn fastchats_gen_api_answer_against_camelid_then_judged_by_camelid() {
    if std::env::var("CAMELID_SKIP_FASTCHAT").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CAMELID_SKIP_FASTCHAT=1");
        return;
    }
    let python = std::env::var("CAMELID_TEST_PYTHON").expect(
        "CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the \
         venv with FastChat), or set CAMELID_SKIP_FASTCHAT=1 to skip this test",
    );
    let openai_v0 = std::env::var("CAMELID_FASTCHAT_OPENAI_V0").unwrap_or_else(|_| {
        format!(
            "{}/.cache/camelid/fastchat-openai-v0",
            std::env::var("HOME").unwrap()
        )
    });
    assert!(
        Path::new(&openai_v0).join("openai").is_dir(),
        "no openai 0.28 in {openai_v0}: tests/run.sh installs it \
         (tests/fastchat/requirements-gen-api.txt); CAMELID_SKIP_FASTCHAT=1 skips this test"
    );
    let s = common::serve(&["--model", "smol=smollm2-135m-instruct"]);
    // gen_api_answer reads data/mt_bench/question.jsonl under its working directory.
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    std::fs::create_dir_all(dir.join("data/mt_bench")).unwrap();
    let questions = mt_bench_data().join("question.jsonl");
    std::os::unix::fs::symlink(&questions, dir.join("data/mt_bench/question.jsonl")).unwrap();
    let answers = dir.join("model_answer");
    let answer_file = answers.join("smol.jsonl");
    let log = dir.join("gen_api_answer.log");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fastchat/gen_api_answer.py"
    );
    let mut child = Command::new(&python)
        .arg(script)
        .arg(&openai_v0)
        .args(["--model", "smol", "--openai-api-base"])
        .arg(format!("{}/v1", s.base))
        .args([
            "--question-begin",
            "0",
            "--question-end",
            "2",
            "--max-tokens",
            "16",
            "--parallel",
            "2",
            "--answer-file",
        ])
        .arg(&answer_file)
        .current_dir(dir)
        // openai 0.28 refuses to send a request without a key; the server has none.
        .env("OPENAI_API_KEY", "unused")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    // FastChat retries a failed call 16 times, 10 s apart: a failure shows as a long run.
    let status = common::exits_within(&mut child, Duration::from_secs(240), "gen_api_answer");
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "gen_api_answer failed:\n{output}");
    let written = jsonl(&answer_file);
    let first_two: Vec<u64> = jsonl(&questions)
        .iter()
        .take(2)
        .map(|q| q["question_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        written
            .iter()
            .map(|a| a["question_id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        first_two,
        "{output}"
    );
    for a in &written {
        assert_eq!(a["model_id"], "smol");
        let turns = a["choices"][0]["turns"].as_array().unwrap();
        assert_eq!(turns.len(), 2, "both turns answered: {a}");
        for t in turns {
            let t = t.as_str().unwrap();
            // FastChat writes `$ERROR$` for a call that failed every retry.
            assert!(!t.trim().is_empty() && t != "$ERROR$", "{a}\n{output}");
        }
    }
    // camelid judges FastChat's answer file, camelid as the judge.
    let judgments = dir.join("single.jsonl");
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
        "--questions",
        questions.to_str().unwrap(),
        "--first-n",
        "2",
        "--judge-prompts",
        mt_bench_data()
            .join("judge_prompts.jsonl")
            .to_str()
            .unwrap(),
        "--out",
        judgments.to_str().unwrap(),
        "--judge-max-tokens",
        "16",
        "--parallel",
        "2",
    ]);
    let js = jsonl(&judgments);
    assert_eq!(js.len(), 4, "2 questions x 2 turns");
    for j in &js {
        assert_eq!(j["model"], "smol");
        assert!(
            j["score"].is_number() && (j["turn"] == 1 || j["turn"] == 2),
            "{j}"
        );
        // The judge saw the answer FastChat's script wrote for that question and turn.
        let a = written
            .iter()
            .find(|a| a["question_id"] == j["question_id"])
            .unwrap();
        let turn = j["turn"].as_u64().unwrap() as usize;
        let answer = a["choices"][0]["turns"][turn - 1].as_str().unwrap();
        assert!(
            j["user_prompt"].as_str().unwrap().contains(answer),
            "{j}\n{answer}"
        );
    }
    let table = camelid(&[
        "mtbench",
        "show",
        "--judgments",
        judgments.to_str().unwrap(),
    ]);
    assert!(
        table.contains("smol") && table.contains("turn 1"),
        "{table}"
    );
}
