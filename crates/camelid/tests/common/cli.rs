//! Running the `camelid` command line in tests, and reading the files it writes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The MT-bench questions, judge prompts and reference answers (`../shared/data/mt_bench`,
/// kept outside the repository).
pub fn mt_bench_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mt_bench")
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
