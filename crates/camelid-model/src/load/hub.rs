//! Hugging Face hub ids: which files a LLaMA repo needs, fetched through hf-hub (with a
//! progress bar, `--revision`, `HF_TOKEN`), and the local cache under `HF_HUB_OFFLINE` or
//! when the hub is out of reach (no connection, 429, 5xx), as Python's huggingface_hub
//! falls back.

use crate::error::{Error, Result};
use crate::load::hf_folder::shards_from_index;
use hf_hub::api::sync::ApiError;
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// `owner/name` with no path-like parts: what the hub accepts as a model id.
pub fn is_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(owner) && ok(name)
}

/// Files to fetch after the weight index (if any) is known: the index names the shards.
pub fn weight_files_from_listing(listing: &[String]) -> Vec<String> {
    let has = |f: &str| listing.iter().any(|x| x == f);
    if has("model.safetensors.index.json") {
        vec!["model.safetensors.index.json".into()]
    } else if has("model.safetensors") {
        vec!["model.safetensors".into()]
    } else if has("pytorch_model.bin.index.json") {
        vec!["pytorch_model.bin.index.json".into()]
    } else if has("pytorch_model.bin") {
        vec!["pytorch_model.bin".into()]
    } else {
        vec![]
    }
}

pub const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    // Older transformers list added tokens here (a bare tokenizer.model has no others).
    "added_tokens.json",
    // Multimodal checkpoints and newer transformers keep the chat template apart.
    "chat_template.json",
    "chat_template.jinja",
    // A sentence-transformers embedding model's pooling (mean or last token), and its
    // modules (one past the pooling, e.g. a `Dense` projection, is not computed: refused).
    "1_Pooling/config.json",
    "modules.json",
];

/// `HF_HUB_OFFLINE` (or transformers' `TRANSFORMERS_OFFLINE`) as the Python hub reads it:
/// 1, true, yes or on, any case.
fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k).is_ok_and(|v| {
            ["1", "true", "yes", "on"]
                .iter()
                .any(|t| v.trim().eq_ignore_ascii_case(t))
        })
    })
}

/// A hub model spec: `owner/name`, or `owner/name:QUANT` naming one GGUF file of the repo
/// (llama.cpp's `-hf owner/name:Q4_K_M`, Ollama's `hf.co/owner/name:Q4_K_M`): its id and
/// quantization tag, if it is one.
pub fn parse_hub_spec(spec: &str) -> Option<(&str, Option<&str>)> {
    let (id, quant) = match spec.split_once(':') {
        Some((id, q))
            if !q.is_empty()
                && !q.starts_with('.')
                && q.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
        {
            (id, Some(q))
        }
        Some(_) => return None,
        None => (spec, None),
    };
    is_hub_id(id).then_some((id, quant))
}

/// The GGUF file of a repo to serve: the one `quant` names (its stem ends with the tag, any
/// case: `llama-2-7b-chat.Q4_K_M.gguf`, `Meta-Llama-3-8B-Instruct-Q4_K_M.gguf`); with no tag
/// the only one, else Q4_K_M's (llama.cpp's default). Split shards and multimodal projectors
/// are not candidates. An error lists the tags there are.
pub fn pick_gguf(id: &str, listing: &[String], quant: Option<&str>) -> Result<String> {
    let candidates: Vec<&String> = listing
        .iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.ends_with(".gguf")
                && !name.to_ascii_lowercase().contains("mmproj")
                && !crate::load::gguf::is_split_shard(Path::new(name))
        })
        .collect();
    let tagged = |tag: &str| {
        let tag = tag.to_ascii_uppercase();
        candidates
            .iter()
            .filter(|f| {
                let stem = f.trim_end_matches(".gguf").to_ascii_uppercase();
                stem.strip_suffix(&tag)
                    .is_some_and(|rest| rest.ends_with(['.', '-', '_']))
            })
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
    };
    let found = match quant {
        Some(q) => tagged(q),
        None if candidates.len() == 1 => vec![candidates[0].clone()],
        None => tagged("Q4_K_M"),
    };
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => {
            // The tag only in split shards (`…-q4_k_m-00001-of-00002.gguf`, how large
            // quantizations are published): say so, and how to join them.
            if let Some(q) = quant.filter(|_| found.is_empty()) {
                let q = q.to_ascii_uppercase();
                // The tag as a whole word of the name (`Q4_K` is not `Q4_K_M`'s).
                let split = listing.iter().find(|f| {
                    let name = f.rsplit('/').next().unwrap_or(f);
                    let upper = name.to_ascii_uppercase();
                    crate::load::gguf::is_split_shard(Path::new(name))
                        && upper.match_indices(&q).any(|(at, _)| {
                            let before = upper[..at].chars().next_back();
                            let after = upper[at + q.len()..].chars().next();
                            before.is_none_or(|c| "-._".contains(c))
                                && after.is_some_and(|c| "-.".contains(c))
                        })
                });
                if let Some(first) = split {
                    return Err(Error::Unsupported(format!(
                        "hub {id}: {q} is published split in parts ({first}, …): download \
                         them and join them with llama.cpp's `llama-gguf-split --merge`, then \
                         serve the joined file"
                    )));
                }
            }
            let names: Vec<&str> = candidates.iter().map(|s| s.as_str()).collect();
            Err(Error::Invalid(format!(
                "hub {id}: {} GGUF file {}; name one as {id}:TAG, of: {}",
                if found.is_empty() {
                    "no"
                } else {
                    "more than one"
                },
                match quant {
                    Some(q) => format!("tagged {q}"),
                    None => "to choose (and none tagged Q4_K_M)".into(),
                },
                if names.is_empty() {
                    "(no GGUF files)".into()
                } else {
                    names.join(", ")
                }
            )))
        }
    }
}

/// What a hub spec ([`parse_hub_spec`]) serves: the snapshot folder of an HF repo, or the
/// GGUF file a tag names (or a GGUF-only repo's only or Q4_K_M file), fetched or cached.
pub fn fetch_model(spec: &str, revision: Option<&str>) -> Result<PathBuf> {
    let Some((id, quant)) = parse_hub_spec(spec) else {
        return Err(Error::Invalid(format!("{spec:?} is not a hub id")));
    };
    if quant.is_none() {
        return fetch_repo(id, revision);
    }
    let repo = match revision {
        Some(r) => Repo::with_revision(id.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    let cached = |why: &str| -> Result<PathBuf> {
        let dir = cached_snapshot(id, revision).ok_or_else(|| {
            Error::Io(format!("hub {id}: {why}, and the repo is not in the cache"))
        })?;
        let file = pick_gguf(id, &file_names(&dir)?, quant)?;
        tracing::info!("hub {id}: serving {file} of the cached snapshot");
        Ok(dir.join(file))
    };
    if offline() {
        return cached("HF_HUB_OFFLINE is set");
    }
    let hub_err = |f: &str, e: &dyn std::fmt::Display| Error::Io(format!("hub {id}: {f}: {e}"));
    let r = api().map_err(|e| hub_err("client", &e))?.repo(repo);
    let info = match r.info() {
        Ok(info) => info,
        Err(ApiError::RequestError(e)) if hub_unreachable(&e) => {
            return cached(&format!("the hub is out of reach ({e})"))
        }
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(401 | 403 | 404, _)) => {
            return Err(info_refused(id, revision, &e))
        }
        Err(e) => return Err(hub_err("repo info", &e)),
    };
    let listing: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let file = pick_gguf(id, &listing, quant)?;
    tracing::info!("hub {id}: serving {file}");
    r.get(&file).map_err(|e| file_error(id, &file, e))
}

/// The error for a repository-info request the hub refused (401, 403, 404): what it says is
/// wrong, from its `X-Error-*` headers.
fn info_refused(id: &str, revision: Option<&str>, e: &ureq::Error) -> Error {
    // The hub answers a repository that does not exist (or is private) with a 401 to
    // a client without a token and a 404 to one whose token has no access, and says
    // which in `X-Error-Code`; a gated one lists its files to anyone (only its files
    // are refused, `file_error`). As Python's `hf_raise_for_status`, a token the hub
    // does not take is read first: its 401 may say RepoNotFound too.
    let (code, error_code, message) = match e {
        ureq::Error::Status(code, r) => (
            *code,
            r.header("x-error-code").unwrap_or_default().to_string(),
            r.header("x-error-message").unwrap_or_default().to_string(),
        ),
        _ => (0, String::new(), String::new()),
    };
    Error::Io(if message.contains("Invalid credentials") {
        format!(
            "hub {id}: the hub does not take the token in HF_TOKEN ({e}): it is \
             invalid or expired"
        )
    } else if error_code == "RevisionNotFound" {
        format!("hub {id}: no revision {} ({e})", revision.unwrap_or("main"))
    } else if code == 404 || error_code == "RepoNotFound" {
        format!(
            "hub {id}: no such model repository ({e}): check the id (a private \
             repository needs a token with access in HF_TOKEN)"
        )
    } else {
        format!(
            "hub {id}: the hub refused access ({e}): a gated or private repository \
             needs its license accepted on huggingface.co and a token with access in \
             HF_TOKEN"
        )
    })
}

/// The names of the files in `dir` (a cached snapshot's listing).
fn file_names(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect())
}

/// Model repo `id`'s folder in the hub cache (`models--owner--name`), as hf-hub and the
/// Python hub lay it out.
fn cached_repo_dir(id: &str) -> PathBuf {
    hf_hub::Cache::from_env()
        .path()
        .join(format!("models--{}", id.replace('/', "--")))
}

/// The cached snapshot folder of `id` at `revision` (a branch or tag through `refs/`, or a
/// commit).
fn cached_snapshot(id: &str, revision: Option<&str>) -> Option<PathBuf> {
    let repo = cached_repo_dir(id);
    let rev = revision.unwrap_or("main");
    let commit = std::fs::read_to_string(repo.join("refs").join(rev))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| rev.to_string());
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// Downloads (or finds in the cache) what a LLaMA repo needs and returns the snapshot folder.
/// A repo of GGUF files only (TheBloke/…-GGUF) gives its only or Q4_K_M file.
pub fn fetch_repo(id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let repo = match revision {
        Some(r) => Repo::with_revision(id.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    let hub_err = |f: &str, e: &dyn std::fmt::Display| Error::Io(format!("hub {id}: {f}: {e}"));
    if offline() {
        return from_cache(id, repo, revision, "HF_HUB_OFFLINE is set");
    }
    let r = api().map_err(|e| hub_err("client", &e))?.repo(repo.clone());
    let info = match r.info() {
        Ok(info) => info,
        // The hub out of reach: a model already in the cache is served from it, as Python's
        // huggingface_hub falls back (a restart during an outage keeps working).
        Err(ApiError::RequestError(e)) if hub_unreachable(&e) => {
            let why = format!("the hub is out of reach ({e})");
            let dir = from_cache(id, repo, revision, &why)?;
            tracing::warn!(
                "hub {id}: {why}; serving the cached snapshot {}",
                dir.display()
            );
            return Ok(dir);
        }
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(401 | 403 | 404, _)) => {
            return Err(info_refused(id, revision, &e))
        }
        Err(e) => return Err(hub_err("repo info", &e)),
    };
    let listing: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    // Every file from the one commit the revision names now (`info.sha`): one snapshot, never
    // files of two commits after the branch moved. A file already in that snapshot is used
    // as it is (the Python hub's cache has no `refs/<commit>`, where hf-hub's `get` looks,
    // and would download it again); the others are downloaded by commit.
    // A mirror that names no commit: the revision itself (as before the pinning).
    let is_commit = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let sha = if is_commit(&info.sha) {
        info.sha.clone()
    } else {
        revision.unwrap_or("main").to_string()
    };
    let r = Pinned::new(id, &sha, api().map_err(|e| hub_err("client", &e))?);
    let mut dir = None;
    for f in SIDE_FILES
        .iter()
        .filter(|f| listing.iter().any(|x| x == *f))
    {
        let p = r.get(f).map_err(|e| file_error(id, f, e))?;
        if !f.contains('/') {
            dir.get_or_insert_with(|| p.parent().unwrap_or(Path::new(".")).to_path_buf());
        }
    }
    let weights = weight_files_from_listing(&listing);
    if weights.is_empty() {
        if listing.iter().any(|f| f.ends_with(".gguf")) {
            let file = pick_gguf(id, &listing, None)?;
            tracing::info!("hub {id}: a repo of GGUF files; serving {file}");
            let path = r.get(&file).map_err(|e| file_error(id, &file, e))?;
            r.record_ref(revision.unwrap_or("main"));
            return Ok(path);
        }
        return Err(Error::BadWeights(format!(
            "hub {id}: no safetensors, pytorch_model.bin or GGUF weights in the repo"
        )));
    }
    for f in &weights {
        let p = r.get(f).map_err(|e| file_error(id, f, e))?;
        if f.ends_with(".index.json") {
            for shard in shards_from_index(&p)? {
                r.get(&shard).map_err(|e| file_error(id, &shard, e))?;
            }
        }
    }
    let dir = dir.ok_or_else(|| {
        Error::BadConfig(format!("hub {id}: config.json is missing from the repo"))
    })?;
    // The revision now names this commit in the cache too, for a later start offline or
    // with the hub out of reach (a commit asked for by its hash needs no ref).
    r.record_ref(revision.unwrap_or("main"));
    Ok(dir)
}

/// One commit of a hub repo: files from its snapshot folder in the cache where they are,
/// else downloaded (by commit, into that folder).
struct Pinned {
    snapshot: PathBuf,
    repo_dir: PathBuf,
    sha: String,
    api: hf_hub::api::sync::ApiRepo,
}

impl Pinned {
    fn new(id: &str, sha: &str, api: hf_hub::api::sync::Api) -> Self {
        let repo_dir = cached_repo_dir(id);
        Self {
            snapshot: repo_dir.join("snapshots").join(sha),
            repo_dir,
            sha: sha.to_string(),
            api: api.repo(Repo::with_revision(
                id.to_string(),
                RepoType::Model,
                sha.to_string(),
            )),
        }
    }

    fn get(&self, file: &str) -> std::result::Result<PathBuf, ApiError> {
        let cached = self.snapshot.join(file);
        // A snapshot entry is a link to a whole blob (downloads finish in `blobs/*.part`
        // and are linked only once complete, by either hub client).
        if cached.is_file() {
            return Ok(cached);
        }
        self.api.get(file)
    }

    /// `refs/<revision>` → this commit (not for a commit hash itself).
    fn record_ref(&self, revision: &str) {
        if revision == self.sha || revision.contains("..") {
            return;
        }
        let path = self.repo_dir.join("refs").join(revision);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &self.sha));
        if let Err(e) = written {
            tracing::warn!("hub cache: cannot write {}: {e}", path.display());
        }
    }
}

/// A file the hub would not serve. A gated repository lists its files to anyone but serves
/// them only with a token whose owner accepted its license: a 401 or 403 says so.
fn file_error(id: &str, file: &str, e: ApiError) -> Error {
    if let ApiError::RequestError(r) = &e {
        if matches!(**r, ureq::Error::Status(401 | 403, _)) {
            return Error::Io(format!(
                "hub {id}: {file}: the hub refused access ({e}): a gated or private \
                 repository needs its license accepted on huggingface.co and a token with \
                 access in HF_TOKEN"
            ));
        }
    }
    Error::Io(format!("hub {id}: {file}: {e}"))
}

/// The hub's client: a progress bar, `HF_TOKEN` or the cached token.
fn api() -> std::result::Result<hf_hub::api::sync::Api, ApiError> {
    hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .with_token(
            // An empty HF_TOKEN (`docker run -e HF_TOKEN` unset on the host) is none, as
            // in the Python hub: the saved token still applies.
            ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|t| !t.trim().is_empty()))
                .or_else(|| hf_hub::Cache::from_env().token()),
        )
        .build()
}

/// A PEFT LoRA adapter's files.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// Downloads (or finds in the cache, under `HF_HUB_OFFLINE` or with the hub out of reach) a
/// PEFT LoRA adapter repo's [`ADAPTER_FILES`] and returns the snapshot folder.
pub fn fetch_adapter(id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let repo = match revision {
        Some(r) => Repo::with_revision(id.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    let cached = |why: &str| -> Result<PathBuf> {
        let cache = hf_hub::Cache::from_env().repo(repo.clone());
        let mut dir = None;
        for f in ADAPTER_FILES {
            let p = cache.get(f).ok_or_else(|| {
                Error::Io(format!("hub {id}: {why}, and {f} is not in the cache"))
            })?;
            dir = p.parent().map(Path::to_path_buf);
        }
        Ok(dir.unwrap_or_default())
    };
    if offline() {
        return cached("HF_HUB_OFFLINE is set");
    }
    let hub_err = |f: &str, e: &dyn std::fmt::Display| Error::Io(format!("hub {id}: {f}: {e}"));
    let r = api().map_err(|e| hub_err("client", &e))?.repo(repo.clone());
    let mut dir = None;
    for f in ADAPTER_FILES {
        match r.get(f) {
            Ok(p) => dir = p.parent().map(Path::to_path_buf),
            Err(ApiError::RequestError(e)) if hub_unreachable(&e) => {
                let why = format!("the hub is out of reach ({e})");
                let dir = cached(&why)?;
                tracing::warn!(
                    "hub {id}: {why}; using the cached adapter {}",
                    dir.display()
                );
                return Ok(dir);
            }
            Err(e) => return Err(file_error(id, f, e)),
        }
    }
    Ok(dir.unwrap_or_default())
}

/// The hub down or out of reach, as huggingface_hub falls back to its cache: no connection
/// (DNS, refused, reset) or an overloaded or failing hub (429, 5xx). Not a wrong URL or a
/// proxy that refuses: those are the user's to fix, not to be hidden by a stale snapshot.
fn hub_unreachable(e: &ureq::Error) -> bool {
    use ureq::ErrorKind::{ConnectionFailed, Dns, Io};
    match e {
        ureq::Error::Transport(t) => matches!(t.kind(), Dns | ConnectionFailed | Io),
        ureq::Error::Status(code, _) => *code == 429 || *code >= 500,
    }
}

/// A snapshot folder as what it serves: a folder of GGUF files and no HF weights (TheBloke's
/// GGUF repos carry a stub `config.json`) is its only or Q4_K_M file, as online.
fn served_from(id: &str, dir: PathBuf) -> Result<PathBuf> {
    let names = file_names(&dir)?;
    let hf_weights = names
        .iter()
        .any(|f| f.ends_with(".safetensors") || f.ends_with(".bin"));
    if hf_weights || !names.iter().any(|f| f.ends_with(".gguf")) {
        return Ok(dir);
    }
    let file = pick_gguf(id, &names, None)?;
    tracing::info!("hub {id}: serving {file} of the cached snapshot");
    Ok(dir.join(file))
}

/// The cached snapshot of `id` (HF_HOME's hub cache, as the Python hub writes it), when the
/// hub is not to be asked or cannot be: `why` says which, in the error.
fn from_cache(id: &str, repo: Repo, revision: Option<&str>, why: &str) -> Result<PathBuf> {
    // A commit hash names its snapshot directly (the Python hub writes no `refs/<commit>`,
    // and hf-hub looks every revision up there).
    let commit = revision.filter(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(snapshot) = commit.and_then(|c| cached_snapshot(id, Some(c))) {
        if snapshot.join("config.json").is_file() {
            return served_from(id, snapshot);
        }
    }
    let cache = hf_hub::Cache::from_env().repo(repo);
    if let Some(cfg) = cache.get("config.json") {
        return served_from(id, cfg.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    // A repo of GGUF files with no config.json at all: as above.
    match cached_snapshot(id, revision) {
        Some(dir) if file_names(&dir)?.iter().any(|f| f.ends_with(".gguf")) => served_from(id, dir),
        _ => Err(Error::Io(format!(
            "hub {id}: {why}, and config.json is not in the cache"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_detection() {
        assert!(is_hub_id("lmsys/vicuna-7b-v1.5"));
        assert!(is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!is_hub_id("./models/x"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("model.gguf"));
        assert!(!is_hub_id("../x"));
    }

    #[test]
    fn a_hub_spec_may_name_a_gguf_tag() {
        assert_eq!(
            parse_hub_spec("TheBloke/Llama-2-7B-Chat-GGUF:Q5_K_M"),
            Some(("TheBloke/Llama-2-7B-Chat-GGUF", Some("Q5_K_M")))
        );
        assert_eq!(
            parse_hub_spec("lmsys/vicuna-7b-v1.5"),
            Some(("lmsys/vicuna-7b-v1.5", None))
        );
        assert_eq!(
            parse_hub_spec("unsloth/Qwen3-8B-GGUF:UD-Q4_K_XL"),
            Some(("unsloth/Qwen3-8B-GGUF", Some("UD-Q4_K_XL")))
        );
        assert_eq!(parse_hub_spec("a/b:"), None);
        assert_eq!(parse_hub_spec("a/b:../x"), None);
        assert_eq!(parse_hub_spec("a/b:..x"), None);
        assert_eq!(parse_hub_spec("./a:Q4_0"), None);
    }

    #[test]
    fn a_gguf_is_picked_by_its_tag_the_only_one_or_q4_k_m() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let bloke = l(&[
            "README.md",
            "config.json",
            "llama-2-7b-chat.Q4_0.gguf",
            "llama-2-7b-chat.Q4_K_M.gguf",
            "llama-2-7b-chat.Q4_K_S.gguf",
            "llama-2-7b-chat.Q5_K_M.gguf",
        ]);
        let pick = |l: &[String], q| pick_gguf("o/r", l, q);
        assert_eq!(
            pick(&bloke, Some("q5_k_m")).unwrap(),
            "llama-2-7b-chat.Q5_K_M.gguf"
        );
        assert_eq!(
            pick(&bloke, Some("Q4_0")).unwrap(),
            "llama-2-7b-chat.Q4_0.gguf"
        );
        assert_eq!(pick(&bloke, None).unwrap(), "llama-2-7b-chat.Q4_K_M.gguf");
        // Q4_K is no file's whole tag (Q4_K_M, Q4_K_S end otherwise).
        let err = pick(&bloke, Some("Q4_K")).unwrap_err().to_string();
        assert!(
            err.contains("o/r:TAG") && err.contains("Q4_K_S.gguf"),
            "{err}"
        );
        let bartowski = l(&[
            "Meta-Llama-3-8B-Instruct-Q8_0.gguf",
            "Meta-Llama-3-8B-Instruct-IQ4_XS.gguf",
            "mmproj-model-f16.gguf",
            "Meta-Llama-3-70B-Instruct-Q8_0-00001-of-00002.gguf",
        ]);
        assert_eq!(
            pick(&bartowski, Some("IQ4_XS")).unwrap(),
            "Meta-Llama-3-8B-Instruct-IQ4_XS.gguf"
        );
        assert_eq!(
            pick(&bartowski, Some("Q8_0")).unwrap(),
            "Meta-Llama-3-8B-Instruct-Q8_0.gguf"
        );
        assert!(
            pick(&bartowski, None).is_err(),
            "two candidates, none Q4_K_M"
        );
        // A quantization published only in split parts: the error says so and how to join
        // them (it said there were no GGUF files).
        let qwen = l(&[
            "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
            "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf",
        ]);
        let err = pick(&qwen, Some("q4_k_m")).unwrap_err().to_string();
        assert!(
            err.contains("split") && err.contains("llama-gguf-split --merge"),
            "{err}"
        );
        // Another tag that is only part of that one is not it.
        let err = pick(&qwen, Some("Q4_K")).unwrap_err().to_string();
        assert!(!err.contains("split"), "{err}");
        assert_eq!(
            pick(&l(&["model.gguf", "mmproj-f16.gguf"]), None).unwrap(),
            "model.gguf"
        );
    }

    #[test]
    fn prefers_safetensors_index_then_bins() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            weight_files_from_listing(&l(&[
                "pytorch_model.bin.index.json",
                "model.safetensors.index.json"
            ])),
            vec!["model.safetensors.index.json"]
        );
        assert_eq!(
            weight_files_from_listing(&l(&[
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model.bin.index.json"
            ])),
            vec!["pytorch_model.bin.index.json"]
        );
        assert!(weight_files_from_listing(&l(&["README.md"])).is_empty());
    }
}
