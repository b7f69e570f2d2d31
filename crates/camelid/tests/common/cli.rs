//! Running the `camelid` command line in tests, and reading the files it writes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The MT-bench questions, judge prompts and reference answers (`../shared/data/mt_bench`,
/// kept outside the repository, or `CAMELID_MT_BENCH_DATA`).
pub fn mt_bench_data() -> PathBuf {
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

/// Runs `camelid ARGS`: (exited with success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `camelid ARGS`, which must succeed; its stdout.
pub fn camelid(args: &[&str]) -> String {
    let (ok, so, se) = run(args);
    assert!(ok, "camelid {args:?} failed:\n{so}\n{se}");
    so
}

/// The JSON values of a JSON-lines file, one a line.
pub fn jsonl(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
