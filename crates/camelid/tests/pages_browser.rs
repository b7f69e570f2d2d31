//! The web pages in a real browser: `camelid serve` with two models and an API key, driven
//! by `tests/pages/test_pages.py` (Python Playwright on Debian's headless Chromium). It chats,
//! runs arena battles, votes, watches the leaderboard change, checks that markup in answers
//! runs nothing, and leaves screenshots of each page in `<target>/screenshots`.
//!
//! Without Chromium the test FAILS (`tests/run.sh` installs it), unless
//! `CAMELID_SKIP_BROWSER=1` says to skip it.

mod common;
use common::{run_test_script, serve};
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn pages_work_in_a_browser() {
    let chromium = std::env::var("CAMELID_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        if std::env::var("CAMELID_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no Chromium at {chromium} (CAMELID_SKIP_BROWSER=1)");
            return;
        }
        panic!(
            "no Chromium at {chromium}: install Debian's `chromium` (tests/run.sh does), point \
             CAMELID_CHROMIUM at one, or set CAMELID_SKIP_BROWSER=1 to skip this test"
        );
    }
    let python = std::env::var("CAMELID_TEST_PYTHON").expect(
        "CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the \
         venv with playwright)",
    );
    let key = "sk-pages-test";
    let s = serve(&[
        "--api-key",
        key,
        "--model",
        "alpha=smollm2-135m-instruct",
        "--model",
        "beta=smollm2-135m-instruct",
        "--kv-cache-mb",
        "64",
        "--arena-max-tokens",
        "400",
        "--arena-max-tokens-floor",
        "8",
        "--arena-max-input-chars",
        "3000",
        // Greedy battles: the answers (and the ratings the test checks) are reproducible.
        "--arena-min-temperature",
        "0",
    ]);
    let shots: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots");
    // An earlier run's screenshots must not stand in for this one's.
    let _ = std::fs::remove_dir_all(&shots);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/pages/test_pages.py"
    );
    let stdout = run_test_script(
        Command::new(python)
            .arg(script)
            .args([&s.base, key, "alpha", "beta"])
            .arg(&shots)
            .arg(&chromium),
        "browser test of the pages",
    );
    for page in ["chat", "arena", "leaderboard"] {
        for width in ["desktop", "phone"] {
            let png = shots.join(format!("{page}-{width}.png"));
            let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", png.display());
        }
    }
    println!("{}", stdout.trim_end());
}
