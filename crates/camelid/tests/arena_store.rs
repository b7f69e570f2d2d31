//! The arena's store of record with the `camelid` binary: two servers on one PostgreSQL
//! behind a round-robin proxy share battles, votes and the leaderboard; votes that got a 200
//! survive `kill -9` (SQLite and PostgreSQL); `camelid arena export` writes them as FastChat
//! battles that `camelid arena ratings` reads.
//!
//! PostgreSQL comes from `tests/pg.sh` (Debian's `postgresql`, installed if absent, run in a
//! temporary directory on a loopback port). If it cannot be installed or started the tests
//! fail; `CAMELID_SKIP_POSTGRES=1` skips them instead.

mod common;
use common::{serve, Served};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pg_script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/pg.sh"))
}

/// A throwaway PostgreSQL server, stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    url: String,
}

impl Postgres {
    /// `None` only when `CAMELID_SKIP_POSTGRES=1`; otherwise a server or a failed test.
    fn start() -> Option<Self> {
        if std::env::var("CAMELID_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("SKIPPED: CAMELID_SKIP_POSTGRES=1");
            return None;
        }
        let install = Command::new("bash")
            .arg(pg_script())
            .arg("install")
            .output()
            .unwrap();
        assert!(
            install.status.success(),
            "PostgreSQL is not installed and could not be (set CAMELID_SKIP_POSTGRES=1 to skip): {}",
            String::from_utf8_lossy(&install.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(pg_script())
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(
            url.starts_with("postgres://127.0.0.1")
                || url.starts_with("postgres://postgres@127.0.0.1"),
            "{url}"
        );
        Some(Self { dir, url })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(pg_script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// An HTTP request over a fresh connection (`Connection: close`: one request per
/// connection, so a round-robin proxy sends each to the next server). Err when the server
/// is gone.
fn request(base: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, Value)> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {out:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((
        status,
        serde_json::from_str(body).unwrap_or_else(|_| body.into()),
    ))
}

fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    request(base, "POST", path, &body.to_string()).unwrap()
}

fn get(base: &str, path: &str) -> (u16, Value) {
    request(base, "GET", path, "").unwrap()
}

/// The leaderboard once it counts `votes` votes.
fn leaderboard_with(base: &str, votes: u64) -> Value {
    let t = Instant::now();
    loop {
        let (_, b) = get(base, "/arena/leaderboard");
        if b["votes"].as_u64() == Some(votes) {
            return b;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{base}: leaderboard at {b}, want {votes} votes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `camelid serve` with two names for the default model on the arena store `db`, taking
/// greedy turns (`ask`'s temperature 0: both sides answer alike) of any length.
fn arena_server(db: &str, extra: &[&str]) -> Served {
    let mut args = vec![
        "--model",
        "smol-a=smollm2-135m-instruct",
        "--model",
        "smol-b=smollm2-135m-instruct",
        "--arena-db",
        db,
        "--arena-min-temperature",
        "0",
        // Two-token answers keep the tests quick.
        "--arena-max-tokens-floor",
        "1",
        // Bursts from one address test the store's limits, not this server's turns at once.
        "--arena-address-turns-in-flight",
        "0",
    ];
    args.extend_from_slice(extra);
    serve(&args)
}

const NO_LIMITS: [&str; 8] = [
    "--arena-visitor-turns-per-minute",
    "0",
    "--arena-address-turns-per-minute",
    "0",
    "--arena-visitor-votes-per-minute",
    "0",
    "--arena-address-votes-per-minute",
    "0",
];

fn ask() -> Value {
    json!({"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 2, "temperature": 0})
}

/// A TCP proxy handing each new connection to the next backend in turn; `log` records
/// which backend each connection went to.
struct RoundRobin {
    base: String,
    log: Arc<Mutex<Vec<usize>>>,
}

fn round_robin(backends: Vec<String>) -> RoundRobin {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(vec![]));
    forward(listener, backends, log.clone());
    RoundRobin { base, log }
}

/// Hands each connection `listener` accepts to the next of `backends` (`[http://]HOST:PORT`)
/// in a thread of its own, noting the backend's index in `seen`.
fn forward(listener: TcpListener, backends: Vec<String>, seen: Arc<Mutex<Vec<usize>>>) {
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let k = i % backends.len();
            seen.lock().unwrap().push(k);
            let Ok(server) = TcpStream::connect(backends[k].trim_start_matches("http://")) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
}

/// A server started while its PostgreSQL cannot be reached yet waits for it
/// (`--arena-db-wait`) and then serves the arena, instead of exiting: the database's address
/// answers only 12 s after the server starts (a forwarder to the real server opens then),
/// past the pool's own 10 s of connection attempts.
#[test]
fn a_server_started_before_its_database_waits_for_it() {
    let Some(pg) = Postgres::start() else { return };
    let at = pg.url.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
    let end = at + pg.url[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let real = format!("127.0.0.1:{}", &pg.url[at..end]);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("{}{port}{}", &pg.url[..at], &pg.url[end..]);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(12));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        forward(listener, vec![real], Default::default());
    });
    let started = Instant::now();
    let s = arena_server(&url, &["--arena-db-wait", "60"]);
    assert!(started.elapsed() >= Duration::from_secs(12));
    let (status, body) = post(&s.base, "/arena/battles", ask());
    assert_eq!(status, 200, "{body}");
}

/// The rate limits hold under a burst on PostgreSQL: 40 new battles at once from one address
/// admit exactly the limit. (New battles: votes and follow-ups are counted only once their
/// battle is found to be the sender's, so a burst of those on no battle spends nothing.)
#[test]
fn rate_limits_hold_under_a_burst_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let s = arena_server(
        &pg.url,
        &[
            "--arena-visitor-turns-per-minute",
            "0",
            "--arena-address-turns-per-minute",
            "5",
        ],
    );
    let body = ask().to_string();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let battles: Vec<_> = (0..40)
            .map(|_| scope.spawn(|| request(&s.base, "POST", "/arena/battles", &body).unwrap().0))
            .collect();
        battles.into_iter().map(|v| v.join().unwrap()).collect()
    });
    let count = |status| statuses.iter().filter(|&&s| s == status).count();
    assert_eq!((count(200), count(429)), (5, 35), "{statuses:?}");
}

/// Two servers on one PostgreSQL behind a round-robin proxy: started together on the empty
/// database, both make its tables (taking turns); a battle started on one is continued and
/// voted on the other, and both leaderboards agree.
#[test]
fn two_servers_on_postgres_share_battles_behind_a_proxy() {
    let Some(pg) = Postgres::start() else { return };
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| arena_server(&pg.url, &[]));
        let two = s.spawn(|| arena_server(&pg.url, &[]));
        (one.join().unwrap(), two.join().unwrap())
    });
    let proxy = round_robin(vec![one.base.clone(), two.base.clone()]);
    let (status, started) = post(&proxy.base, "/arena/battles", ask());
    assert_eq!(status, 200, "{started}");
    let id = started["battle_id"].as_str().unwrap();
    let token = started["token"].as_str().unwrap();
    let (status, follow) = post(
        &proxy.base,
        "/arena/battles",
        json!({"battle_id": id, "token": token, "max_tokens": 2, "temperature": 0,
               "messages": [{"role": "user", "content": "Another?"}]}),
    );
    assert_eq!(status, 200, "{follow}");
    // A stranger's vote is refused there too.
    let (status, _) = post(
        &proxy.base,
        &format!("/arena/battles/{id}/vote"),
        json!({"winner": "model_a", "token": "0".repeat(64)}),
    );
    assert_eq!(status, 403);
    let (status, vote) = post(
        &proxy.base,
        &format!("/arena/battles/{id}/vote"),
        json!({"winner": "model_a", "token": token}),
    );
    assert_eq!(status, 200, "{vote}");
    let (status, again) = post(
        &proxy.base,
        &format!("/arena/battles/{id}/vote"),
        json!({"winner": "model_b", "token": token}),
    );
    assert_eq!(status, 409, "a second vote, on the other server: {again}");
    assert_eq!(
        *proxy.log.lock().unwrap(),
        [0, 1, 0, 1, 0],
        "start on one, follow-up on two, stranger's vote on one, vote on two, second vote on one"
    );
    let a = leaderboard_with(&one.base, 1);
    let b = leaderboard_with(&two.base, 1);
    assert_eq!(a["battles"], 1, "{a}");
    assert_eq!(a["leaderboard"], b["leaderboard"]);
    let winner = &vote["model_a"];
    assert_eq!(&a["leaderboard"][0]["model"], winner, "{a}");
}

/// Votes in flight when the server is killed (-9): every vote that got a 200 is in the
/// store after a restart, and exported.
fn votes_survive_kill_9(db: &str) {
    const BATTLES: usize = 90;
    let mut s = arena_server(db, &NO_LIMITS);
    // The battles to vote on, four at a time.
    let battles: Vec<(String, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let base = s.base.clone();
                scope.spawn(move || {
                    (0..BATTLES / 4 + 1)
                        .map(|_| {
                            let (status, b) = post(&base, "/arena/battles", ask());
                            assert_eq!(status, 200, "{b}");
                            (
                                b["battle_id"].as_str().unwrap().to_string(),
                                b["token"].as_str().unwrap().to_string(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    // The burst: six voters; the server is killed once a third of the votes got their 200.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let unanswered = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for part in battles.chunks(battles.len().div_ceil(6)) {
            let (base, acknowledged, acked, unanswered) = (
                s.base.clone(),
                acknowledged.clone(),
                acked.clone(),
                unanswered.clone(),
            );
            scope.spawn(move || {
                for (id, token) in part {
                    let body = json!({"winner": "model_a", "token": token}).to_string();
                    match request(&base, "POST", &format!("/arena/battles/{id}/vote"), &body) {
                        Ok((200, _)) => {
                            acknowledged.lock().unwrap().push(id.clone());
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, b)) => panic!("vote {id}: {status} {b}"),
                        Err(_) => {
                            unanswered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        let t = Instant::now();
        while acked.load(Ordering::SeqCst) < battles.len() / 3 {
            assert!(t.elapsed() < Duration::from_secs(60), "votes stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        s.child.kill().unwrap();
        s.child.wait().unwrap();
    });
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        unanswered.load(Ordering::SeqCst) > 0,
        "the kill came after the burst ({} votes acknowledged): nothing was in flight",
        acknowledged.len()
    );
    // The restarted server starts on the store and sees the votes.
    let restarted = arena_server(db, &NO_LIMITS);
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("battles.json");
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["arena", "export", "--arena-db", db, "--out"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    let ids: std::collections::HashSet<&str> = exported
        .iter()
        .map(|b| b["question_id"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "votes acknowledged with 200 but lost: {lost:?}"
    );
    assert!(exported.len() >= acknowledged.len() && exported.len() <= battles.len());
    let board = leaderboard_with(&restarted.base, exported.len() as u64);
    assert_eq!(board["battles"], exported.len(), "{board}");
    // `arena ratings` reads the export.
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["arena", "ratings", "--format", "json", "--battles"])
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counted: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["battles"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2 * exported.len() as u64, "{rows}");
    // The same ratings and bootstrap intervals as the server's leaderboard (same fit, same
    // resamples).
    for want in board["leaderboard"].as_array().unwrap() {
        let got = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == want["model"])
            .unwrap_or_else(|| panic!("{} not rated: {rows}", want["model"]));
        for k in ["rating", "ci_low", "ci_high"] {
            let (a, b) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
            assert!((a - b).abs() < 1e-6, "{k}: ratings {a}, leaderboard {b}");
        }
    }
}

#[test]
fn votes_that_got_200_survive_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    votes_survive_kill_9(&format!("sqlite:{}", dir.path().join("arena.db").display()));
}

#[test]
fn votes_that_got_200_survive_kill_9_on_postgres() {
    let Some(pg) = Postgres::start() else { return };
    votes_survive_kill_9(&pg.url);
}

/// `camelid arena import` loads an old vote log whose writer was killed mid-line (the torn
/// line is skipped), once; `--arena-log` is refused with the way forward.
#[test]
fn arena_import_loads_an_old_log_with_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("votes.jsonl");
    std::fs::write(
        &log,
        "{\"model_a\":\"x\",\"model_b\":\"y\",\"winner\":\"model_a\",\"tstamp\":1.0}\n\
         {\"model_a\":\"y\",\"model_b\":\"x\",\"winner\":\"tie\",\"tstamp\":2.0}\n\
         {\"model_a\":\"x\",\"mod",
    )
    .unwrap();
    let db = format!("sqlite:{}", dir.path().join("arena.db").display());
    let import = || {
        let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
            .args(["arena", "import", "--arena-db", &db, "--battles"])
            .arg(&log)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let first = import();
    assert!(
        first.contains("line 3") && first.contains("2 of 2 battles added"),
        "{first}"
    );
    assert!(import().contains("0 of 2 battles added"));
    let out = Command::new(env!("CARGO_BIN_EXE_camelid"))
        .args(["serve", "--port", "0", "--arena-log"])
        .arg(&log)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("camelid arena import"),
        "{err}"
    );
}
