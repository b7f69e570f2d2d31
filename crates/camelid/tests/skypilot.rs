//! `deploy/skypilot/{camelid,serve}.yaml` through SkyPilot's own loader and the task's `run`
//! command started here on the CPU (`tests/deploy/test_skypilot.py`). SkyPilot lives in its
//! own venv (`tests/run.sh` makes it: `CAMELID_SKY_PYTHON`); no cloud is reached.
//!
//! Without that Python the test FAILS, unless `CAMELID_SKIP_SKYPILOT=1` says to skip it.

use std::process::Command;

#[test]
fn skypilot_loads_the_deploy_files_and_their_run_command_serves() {
    let python = match std::env::var("CAMELID_SKY_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var("CAMELID_SKIP_SKYPILOT").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: CAMELID_SKY_PYTHON unset (CAMELID_SKIP_SKYPILOT=1)");
            return;
        }
        Err(_) => panic!(
            "CAMELID_SKY_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes \
             the venv with skypilot), or set CAMELID_SKIP_SKYPILOT=1 to skip this test"
        ),
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/deploy/test_skypilot.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_camelid"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test_skypilot.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ok   the task's run command serves /health"),
        "{stdout}"
    );
}
