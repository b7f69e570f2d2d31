//! The `camelid` binary itself: `serve` with the official openai Python client, SIGTERM
//! draining, and CLI errors.

mod common;
use common::serve;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn openai_python_client_works_against_serve() {
    let python = std::env::var("CAMELID_TEST_PYTHON")
        .expect("CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the venv with openai)");
    let s = serve(&[
        "--api-key",
        "sk-test",
        "--model",
        "smol=smollm2-135m-instruct",
    ]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/openai/test_client.py"
    );
    let out = Command::new(python)
        .args([script, &s.base, "smol"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
}

fn http(base: &str, path: &str, body: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn sigterm_lets_streams_finish_then_exits() {
    let mut s = serve(&[]);
    let base = s.base.clone();
    let stream = std::thread::spawn(move || {
        http(
            &base,
            "/v1/chat/completions",
            r#"{"model":"default","messages":[{"role":"user","content":"Hi"}],"max_tokens":24,"ignore_eos":true,"stream":true}"#,
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let body = stream
        .join()
        .unwrap()
        .expect("the in-flight stream completes");
    assert!(body.contains("data: [DONE]"), "stream was cut: {body}");
    let t = Instant::now();
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        http(&s.base, "/health", "").is_err(),
        "still accepting after exit"
    );
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args([
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--prompt",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("/no/such/model.gguf"),
        "{err}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--model",
        "--template",
        "--host",
        "--port",
        "--api-key",
        "--max-model-len",
        "--max-concurrent",
        "--dtype",
        "--device",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
}

/// `camelid score --paged` (the engine's paged cache, the prompt in two chunks: the CPU
/// attention kernel here, camelid's kernels on CUDA) gives the contiguous path's logits.
#[test]
fn score_paged_matches_contiguous() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-llama"
    );
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path();
    let ids = "1,15,27,3,49,42,7,64,5,18,33,2,71,40,11,9,23,57,6,70,12,38,4,60";
    let read = |name: &str, paged: bool| -> Vec<f32> {
        let out = dir.join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_camelid"));
        cmd.args([
            "score", "--model", model, "--dtype", "f32", "--ids", ids, "--out",
        ])
        .arg(&out);
        if paged {
            cmd.arg("--paged");
        }
        let r = cmd.output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        std::fs::read(&out)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (plain, paged) = (read("plain.f32", false), read("paged.f32", true));
    assert_eq!(plain.len(), paged.len());
    assert!(plain.len() >= 24 * 2, "one row per position");
    let diff = plain
        .iter()
        .zip(&paged)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-4, "paged vs contiguous logits differ by {diff}");
}
