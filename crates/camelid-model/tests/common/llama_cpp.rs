//! llama.cpp b11434's tools for the tests that compare against it: where the binaries are
//! (`benches/build-llama-cpp.sh` builds them; `tests/run.sh` runs it and exports
//! `CAMELID_LLAMA_CPP_BIN`), and a `llama-server` run for one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to `1` to skip the comparisons with llama.cpp (a machine that cannot build it).
pub const SKIP_ENV: &str = "CAMELID_SKIP_LLAMA_CPP";

/// llama.cpp's binary `name` (`llama-server`, `llama-quantize`): in `CAMELID_LLAMA_CPP_BIN`,
/// else where the build script leaves it. `None` only where `CAMELID_SKIP_LLAMA_CPP=1` (the
/// caller skips, and says so); a missing binary otherwise fails the test, so a CI that lost
/// its llama.cpp build cannot pass by skipping.
pub fn binary(name: &str) -> Option<PathBuf> {
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("SKIPPED the comparison with llama.cpp's {name}: {SKIP_ENV}=1");
        return None;
    }
    let dir = std::env::var_os("CAMELID_LLAMA_CPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("CAMELID_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/camelid")
                });
            cache.join("llama.cpp/build/bin")
        });
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build llama.cpp with `bash benches/build-llama-cpp.sh` (tests/run.sh \
         does) or set CAMELID_LLAMA_CPP_BIN to its bin folder; {SKIP_ENV}=1 skips these tests",
        p.display()
    );
    Some(p)
}

/// A `llama-server` on a free loopback port, killed when dropped; its output in `log`.
pub struct LlamaServer {
    child: Child,
    pub base: String,
    log: PathBuf,
}

impl LlamaServer {
    /// Serves `model` on one thread with the arguments `args` added; waits until it is ready.
    pub fn start(bin: &Path, model: &Path, log: &Path, args: &[&str]) -> Self {
        // A port another process takes between our probe and the server's bind: try again.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(bin)
                .arg("-m")
                .arg(model)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["-t", "1", "-tb", "1", "-np", "1", "--temp", "0"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(log).unwrap())
                .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
            let mut s = LlamaServer {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log: log.to_path_buf(),
            };
            if s.wait_ready() {
                return s;
            }
        }
        panic!("llama-server did not start three times");
    }

    /// `true` once `/health` answers 200; `false` where the process ended (a port taken);
    /// a server still loading after two minutes fails the test.
    fn wait_ready(&mut self) -> bool {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let err = self.output();
                if err.contains("bind") || err.contains("address already in use") {
                    return false;
                }
                panic!("llama-server exited ({st}) at start:\n{err}");
            }
            let r = ureq::get(&format!("{}/health", self.base))
                .timeout(Duration::from_secs(5))
                .call();
            if r.is_ok() {
                return true;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "llama-server not ready after 120 s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's stderr and stdout so far, for a failure's message.
    pub fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let err = read(&self.log.with_extension("err"));
        let tail: String = err
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!("{tail}\n{}", read(&self.log))
    }

    /// The ids llama.cpp's `/tokenize` gives `text` (special-token text read as such; the
    /// BOS and other special tokens the vocabulary adds with `add_special`).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.post(
            "/tokenize",
            &serde_json::json!({"content": text, "add_special": add_special}),
        )["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_u64().expect("an id") as u32)
            .collect()
    }

    /// POSTs `body` to `path` and returns the JSON answer (a non-200 fails the test).
    pub fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let r = ureq::post(&format!("{}{path}", self.base))
            .timeout(Duration::from_secs(300))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        let text = match r {
            Ok(resp) => resp.into_string().unwrap(),
            Err(ureq::Error::Status(code, resp)) => panic!(
                "llama-server {path}: {code} {}\n{}",
                resp.into_string().unwrap_or_default(),
                self.output()
            ),
            Err(e) => panic!("llama-server {path}: {e}\n{}", self.output()),
        };
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
