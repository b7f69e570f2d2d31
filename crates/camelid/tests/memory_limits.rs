//! A model or KV cache larger than the memory left is refused at start with a message (or a
//! default KV cache shrunk to fit), not killed by the kernel partway through. The server runs
//! in a memory cgroup of its own with a small limit, as in a container: this needs root and a
//! writable cgroup hierarchy (v1 or v2); `CAMELID_SKIP_CGROUP=1` skips these tests.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A memory cgroup made for one test, removed when dropped.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A new cgroup whose processes may use `limit` bytes; `None` where the tests are skipped.
    fn with_limit(limit: u64) -> Option<Self> {
        if std::env::var("CAMELID_SKIP_CGROUP").is_ok_and(|v| v == "1") {
            eprintln!("skipped: CAMELID_SKIP_CGROUP=1");
            return None;
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "camelid-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, limit_file) = if v2 {
            (PathBuf::from("/sys/fs/cgroup").join(name), "memory.max")
        } else {
            (
                PathBuf::from("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
            )
        };
        let made = std::fs::create_dir(&dir)
            .and_then(|_| std::fs::write(dir.join(limit_file), limit.to_string()));
        if let Err(e) = made {
            let _ = std::fs::remove_dir(&dir);
            panic!(
                "cannot make a memory cgroup at {} ({e}): these tests need root and a \
                 writable cgroup hierarchy; CAMELID_SKIP_CGROUP=1 skips them",
                dir.display()
            );
        }
        Some(Self { dir })
    }

    /// `camelid serve --port 0 ARGS` inside this cgroup.
    fn serve(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.dir)
            .arg(env!("CARGO_BIN_EXE_camelid"))
            .args(["serve", "--port", "0"])
            .args(args)
            .env_remove("CAMELID_DEVICE")
            .env_remove("CAMELID_SKIP_MEMORY_CHECK")
            .env("NO_COLOR", "1");
        c
    }

    /// Runs `camelid serve ARGS` here to its end, which must come within two minutes.
    fn serve_output(&self, args: &[&str]) -> Output {
        let mut child = self
            .serve(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s).unwrap();
            s
        });
        let status = common::exits_within(&mut child, Duration::from_secs(120), "at start");
        Output {
            status,
            stdout: vec![],
            stderr: reader.join().unwrap().into_bytes(),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Whatever still runs in it (a test that failed midway), then the group.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Exited on its own (a code), not killed by a signal (the kernel's out-of-memory killer).
fn refused(out: &Output, says: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "killed by a signal, not refused:\n{err}"
    );
    assert!(!out.status.success(), "started:\n{err}");
    for s in says {
        assert!(err.contains(s), "no {s:?} in:\n{err}");
    }
}

/// The default model's weights (its 93 MiB file, and its 28 MiB Q8_0 embedding table read
/// again as the tied head: 121 MiB) cannot fit in 60 MiB: the load stops before reading
/// them, saying how much they take, how much is left, and how to load anyway.
#[test]
fn a_model_larger_than_the_memory_left_is_refused_at_start() {
    let Some(cg) = Cgroup::with_limit(60 << 20) else {
        return;
    };
    let out = cg.serve_output(&[]);
    refused(
        &out,
        &[
            "not enough memory",
            "its weights take at least 121 MiB",
            "cgroup",
            "CAMELID_SKIP_MEMORY_CHECK=1",
        ],
    );
}

/// An HF folder (the default model converted to f16 safetensors: 135 M parameters, kept
/// 16-bit on the CPU) cannot fit in 60 MiB either: refused from its shape before a tensor is
/// read, with what `--quantize q4_k` would keep.
#[test]
fn an_hf_folder_larger_than_the_memory_left_is_refused_at_start() {
    let Some(cg) = Cgroup::with_limit(60 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("smol-f16");
    common::cli::camelid(&[
        "convert",
        "--out",
        folder.to_str().unwrap(),
        "--dtype",
        "f16",
    ]);
    let out = cg.serve_output(&["--model", folder.to_str().unwrap()]);
    refused(
        &out,
        &[
            "not enough memory",
            "its weights take at least",
            "`--quantize q4_k` would keep about",
        ],
    );
}

/// In 450 MiB the default model loads (about 230 MiB at start) but its default KV cache
/// (512 MiB, zeroed when made) does not fit: the server starts with a smaller one, says so,
/// serves the context that cache holds, and answers.
#[test]
fn a_default_kv_cache_shrinks_to_the_memory_left() {
    let Some(cg) = Cgroup::with_limit(450 << 20) else {
        return;
    };
    let mut child = cg
        .serve(&[])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Killed with the test, whatever it asserts.
    let mut served = common::Served {
        child,
        base: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut warned = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            warned |= line.contains("the default KV cache (512 MiB) is more than");
            if let Some(rest) = line.split("ready on ").nth(1) {
                let base = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send((base, warned));
            }
        }
    });
    let (base, warned) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server starts in 450 MiB");
    served.base = base;
    assert!(warned, "no warning that the KV cache was made smaller");
    let models = common::http::request(&served.base, "GET", "/v1/models", &[], "")
        .unwrap()
        .1;
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let len = models["data"][0]["max_model_len"].as_u64().unwrap();
    // 512 MiB holds 23 296 positions, past the model's 8 192; what fits here holds fewer.
    assert!(len < 8192, "{models}");
    let (st, b) = common::http::post_json(
        &served.base,
        "/v1/chat/completions",
        r#"{"model": "default", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .unwrap();
    assert_eq!(st, 200, "{b}");
}

/// A KV cache the user sized past the memory left is refused, naming the flag.
#[test]
fn a_kv_cache_given_past_the_memory_left_is_refused() {
    let Some(cg) = Cgroup::with_limit(450 << 20) else {
        return;
    };
    let out = cg.serve_output(&["--kv-cache-mb", "2048"]);
    refused(
        &out,
        &[
            "--kv-cache-mb 2048: the KV cache would take 2.0 GiB",
            "CAMELID_SKIP_MEMORY_CHECK=1",
        ],
    );
}
