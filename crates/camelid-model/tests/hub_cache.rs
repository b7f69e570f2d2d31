//! Hub ids and `--revision` without the network: `HF_HUB_OFFLINE=1` over a Hugging Face
//! cache laid out as hf-hub (and the Python hub) write it, `models--org--name/refs/<rev>`
//! naming a commit and `snapshots/<commit>/` holding its files. Its own test binary: it sets
//! `HF_HOME` and `HF_HUB_OFFLINE` for the whole process.

mod common;
use camelid_model::load::hub::fetch_repo;
use camelid_model::load::resolve;
use camelid_model::LoadOptions;
use std::path::{Path, PathBuf};

const MAIN: &str = "1111111111111111111111111111111111111111";
const V2: &str = "2222222222222222222222222222222222222222";

/// `HF_HOME/hub/models--acme--tiny-llama`: `main` is a commit with a config and no weights,
/// the tag `v2` a commit with the whole tiny model.
fn fake_cache(home: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    let repo = home.join("hub").join("models--acme--tiny-llama");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v2"), V2).unwrap();
    // No `refs/<commit>` for either commit: only tags and branches have refs.
    let main = repo.join("snapshots").join(MAIN);
    std::fs::create_dir_all(&main).unwrap();
    std::fs::copy(fixture.join("config.json"), main.join("config.json")).unwrap();
    let v2 = repo.join("snapshots").join(V2);
    std::fs::create_dir_all(&v2).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.model"] {
        std::fs::copy(fixture.join(f), v2.join(f)).unwrap();
    }
    repo
}

#[test]
fn revisions_resolve_through_the_offline_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = fake_cache(home.path());
    std::env::set_var("HF_HOME", home.path());
    // Any of the Python hub's spellings (1, true, yes, on).
    std::env::set_var("HF_HUB_OFFLINE", "Yes");
    let id = "acme/tiny-llama";
    // No revision: `main`'s commit; a tag: its own commit's snapshot.
    assert_eq!(
        fetch_repo(id, None).unwrap(),
        repo.join("snapshots").join(MAIN)
    );
    assert_eq!(
        fetch_repo(id, Some("main")).unwrap(),
        repo.join("snapshots").join(MAIN)
    );
    assert_eq!(
        fetch_repo(id, Some("v2")).unwrap(),
        repo.join("snapshots").join(V2)
    );
    // A commit hash names its snapshot even without a `refs/` entry (the Python hub's cache).
    assert_eq!(
        fetch_repo(id, Some(V2)).unwrap(),
        repo.join("snapshots").join(V2)
    );
    // A revision the cache does not have is an error that says why, not another snapshot.
    let err = fetch_repo(id, Some("v3")).unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains(id), "{err}");
    let err = fetch_repo("acme/absent", None).unwrap_err().to_string();
    assert!(err.contains("acme/absent"), "{err}");
    // A mistyped relative path reads as a hub id too: the error says both.
    let err = resolve(Some("acme/absent"), None).unwrap_err().to_string();
    assert!(
        err.contains("no such local file or folder") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // The loader resolves a hub id the same way and loads the revision asked for: `v2` has
    // weights, `main` has none.
    let (name, path, template) = resolve(Some(id), Some("v2")).unwrap();
    assert_eq!(
        (name.as_str(), path, template),
        (id, repo.join("snapshots").join(V2), None)
    );
    let opts = |revision: Option<&str>| LoadOptions {
        revision: revision.map(String::from),
        ..LoadOptions::default()
    };
    let lm = camelid_model::load(Some(id), &opts(Some("v2"))).expect("loading revision v2");
    assert_eq!(lm.path, repo.join("snapshots").join(V2));
    assert_eq!(lm.name, id);
    // A PEFT adapter's hub id: its snapshot, loadable for the model.
    let adapter_repo = home.path().join("hub").join("models--acme--tiny-lora");
    std::fs::create_dir_all(adapter_repo.join("refs")).unwrap();
    std::fs::write(adapter_repo.join("refs/main"), MAIN).unwrap();
    let snapshot = adapter_repo.join("snapshots").join(MAIN);
    common::lora::write_peft(
        &snapshot,
        lm.model.config(),
        2,
        4.0,
        &["self_attn.q_proj"],
        0.1,
        1,
    );
    let dir = camelid_model::load::lora::resolve(Path::new("acme/tiny-lora"), None).unwrap();
    assert_eq!(dir, snapshot);
    camelid_model::LoraAdapter::load("t", &dir, lm.model.config(), lm.model.device())
        .expect("the cached adapter loads");
    let err = camelid_model::load::lora::resolve(Path::new("acme/no-lora"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(
        camelid_model::load(Some(id), &opts(None)).is_err(),
        "main has no weights: loading it must fail"
    );

    // A repo of GGUF files (TheBloke/…-GGUF): `id:TAG` names one, a bare id takes its
    // Q4_K_M (llama.cpp's default); the file loads and is served by the spec's name.
    let gguf_repo = home.path().join("hub").join("models--acme--smol-GGUF");
    std::fs::create_dir_all(gguf_repo.join("refs")).unwrap();
    std::fs::write(gguf_repo.join("refs/main"), MAIN).unwrap();
    let snapshot = gguf_repo.join("snapshots").join(MAIN);
    std::fs::create_dir_all(&snapshot).unwrap();
    let real = common::default_gguf();
    for tag in ["Q4_1", "Q4_K_M"] {
        std::os::unix::fs::symlink(&real, snapshot.join(format!("smol.{tag}.gguf"))).unwrap();
    }
    use camelid_model::load::hub::fetch_model;
    assert_eq!(
        fetch_model("acme/smol-GGUF:q4_1", None).unwrap(),
        snapshot.join("smol.Q4_1.gguf")
    );
    assert_eq!(
        fetch_model("acme/smol-GGUF", None).unwrap(),
        snapshot.join("smol.Q4_K_M.gguf")
    );
    let err = fetch_model("acme/smol-GGUF:Q8_0", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("smol.Q4_1.gguf") && err.contains("acme/smol-GGUF:TAG"),
        "{err}"
    );
    let lm = camelid_model::load(Some("acme/smol-GGUF:Q4_1"), &opts(None)).expect("the GGUF loads");
    assert_eq!(lm.name, "acme/smol-GGUF:Q4_1");
    assert_eq!(lm.path, snapshot.join("smol.Q4_1.gguf"));
    // TheBloke's GGUF repos carry a stub config.json (`{"model_type": "llama"}`): still
    // their GGUF file, not a folder without weights.
    std::fs::write(snapshot.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    assert_eq!(
        fetch_model("acme/smol-GGUF", None).unwrap(),
        snapshot.join("smol.Q4_K_M.gguf")
    );
    let lm = camelid_model::load(Some("acme/smol-GGUF"), &opts(None)).expect("the GGUF loads");
    assert_eq!(lm.path, snapshot.join("smol.Q4_K_M.gguf"));

    // Online, with the hub out of reach (nothing listens on the endpoint's port): the cached
    // snapshot is served, as Python's huggingface_hub falls back; a model not in the cache
    // is an error that says the hub is out of reach.
    std::env::remove_var("HF_HUB_OFFLINE");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    std::env::set_var("HF_ENDPOINT", format!("http://127.0.0.1:{port}"));
    assert_eq!(
        fetch_repo(id, Some("v2")).unwrap(),
        repo.join("snapshots").join(V2)
    );
    let err = fetch_repo("acme/absent", None).unwrap_err().to_string();
    assert!(err.contains("out of reach"), "{err}");
    // A hub that fails (a 503 in an outage) is out of reach too; a refusal (a gated
    // repository without a token) says what to do.
    std::env::set_var("HF_ENDPOINT", hub_answering("503 Service Unavailable"));
    assert_eq!(
        fetch_repo(id, Some("v2")).unwrap(),
        repo.join("snapshots").join(V2)
    );
    std::env::set_var("HF_ENDPOINT", hub_answering("401 Unauthorized"));
    let err = fetch_repo("acme/gated", None).unwrap_err().to_string();
    assert!(err.contains("HF_TOKEN") && err.contains("license"), "{err}");
    // A misspelt id: the hub's 401 to a client without a token says it does not exist, and
    // so does the error (not a token to get); a 404 likewise.
    std::env::set_var(
        "HF_ENDPOINT",
        hub_answering("401 Unauthorized\r\nX-Error-Code: RepoNotFound"),
    );
    let err = fetch_repo("acme/vicuna-7b-v15", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no such model repository") && !err.contains("license"),
        "{err}"
    );
    std::env::set_var("HF_ENDPOINT", hub_answering("404 Not Found"));
    let err = fetch_repo("acme/absent", None).unwrap_err().to_string();
    assert!(err.contains("no such model repository"), "{err}");
    // A misspelt revision is named as such; a token the hub does not take too, whatever
    // else its 401 says.
    std::env::set_var(
        "HF_ENDPOINT",
        hub_answering("404 Not Found\r\nX-Error-Code: RevisionNotFound"),
    );
    let err = fetch_repo("acme/smol", Some("v9")).unwrap_err().to_string();
    assert!(err.contains("no revision v9"), "{err}");
    std::env::set_var(
        "HF_ENDPOINT",
        hub_answering(
            "401 Unauthorized\r\nX-Error-Code: RepoNotFound\r\n\
             X-Error-Message: Invalid credentials in Authorization header",
        ),
    );
    let err = fetch_repo("acme/smol", None).unwrap_err().to_string();
    assert!(err.contains("invalid or expired"), "{err}");

    // Online, the hub up but serving no file (every download a 503): files already in the
    // snapshot of the commit the hub names are used from it, whether the revision is that
    // commit's hash (the Python hub's cache has no `refs/<commit>`: hf-hub's lookup missed it
    // and downloaded the model again) or a branch that moved to it (its files had come from
    // the old commit's snapshot); the branch then names the new commit, for offline starts.
    std::env::set_var("HF_ENDPOINT", hub_listing(V2, "503 Service Unavailable"));
    assert_eq!(
        fetch_repo(id, Some(V2)).unwrap(),
        repo.join("snapshots").join(V2)
    );
    assert_eq!(
        fetch_repo(id, None).unwrap(),
        repo.join("snapshots").join(V2)
    );
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), V2);
    assert!(!repo.join("refs").join(V2).exists());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(
        fetch_repo(id, None).unwrap(),
        repo.join("snapshots").join(V2)
    );
    std::env::remove_var("HF_HUB_OFFLINE");
    // A gated repository lists its files to anyone and refuses them without a token whose
    // owner accepted the license: the refusal of a file says so (it came as a bare 403).
    std::env::set_var("HF_ENDPOINT", hub_listing(V2, "403 Forbidden"));
    let err = fetch_repo("acme/gated-files", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_TOKEN") && err.contains("license"), "{err}");
    // A repo of GGUF files served online: its branch then names the commit too, so the next
    // start offline finds it (the pinned fetch had written only `refs/<commit>`).
    let gguf_repo = home.path().join("hub").join("models--acme--pinned-GGUF");
    let snapshot = gguf_repo.join("snapshots").join(V2);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink(&real, snapshot.join("pinned.Q4_K_M.gguf")).unwrap();
    std::env::set_var(
        "HF_ENDPOINT",
        hub_listing_files(V2, "503 Service Unavailable", &["pinned.Q4_K_M.gguf"]),
    );
    let want = snapshot.join("pinned.Q4_K_M.gguf");
    assert_eq!(fetch_repo("acme/pinned-GGUF", None).unwrap(), want);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(fetch_model("acme/pinned-GGUF", None).unwrap(), want);
    std::env::remove_var("HF_HUB_OFFLINE");
}

/// A hub on a loopback port whose every revision of every repo is commit `sha`, listing the
/// tiny model's files, and which serves no file (`refusal`, e.g. a 503); its URL.
fn hub_listing(sha: &'static str, refusal: &'static str) -> String {
    hub_listing_files(
        sha,
        refusal,
        &["config.json", "model.safetensors", "tokenizer.model"],
    )
}

/// [`hub_listing`] listing `files`.
fn hub_listing_files(
    sha: &'static str,
    refusal: &'static str,
    files: &'static [&'static str],
) -> String {
    let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hub.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in hub.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let reply = if head.starts_with("GET /api/models/") {
                let siblings: Vec<_> = files
                    .iter()
                    .map(|f| serde_json::json!({ "rfilename": f }))
                    .collect();
                let body = serde_json::json!({"sha": sha, "siblings": siblings}).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                format!("HTTP/1.1 {refusal}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            };
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    url
}

/// A hub on a loopback port that answers every request with `status` (e.g. "503 Service
/// Unavailable", which may go on with header lines) and no body; its URL.
fn hub_answering(status: &'static str) -> String {
    let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hub.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in hub.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let reply =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    url
}
