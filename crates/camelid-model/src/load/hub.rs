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
];

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Downloads (or finds in the cache) what a LLaMA repo needs and returns the snapshot folder.
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
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(401 | 403, _)) => {
            return Err(Error::Io(format!(
                "hub {id}: the hub refused access ({e}): a gated or private repository needs \
                 its license accepted on huggingface.co and a token with access in HF_TOKEN"
            )))
        }
        Err(e) => return Err(hub_err("repo info", &e)),
    };
    let listing: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let mut dir = None;
    for f in SIDE_FILES
        .iter()
        .filter(|f| listing.iter().any(|x| x == *f))
    {
        let p = r.get(f).map_err(|e| hub_err(f, &e))?;
        dir.get_or_insert_with(|| p.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    let weights = weight_files_from_listing(&listing);
    if weights.is_empty() {
        return Err(Error::BadWeights(format!(
            "hub {id}: no safetensors or pytorch_model.bin weights in the repo"
        )));
    }
    for f in &weights {
        let p = r.get(f).map_err(|e| hub_err(f, &e))?;
        if f.ends_with(".index.json") {
            for shard in shards_from_index(&p)? {
                r.get(&shard).map_err(|e| hub_err(&shard, &e))?;
            }
        }
    }
    dir.ok_or_else(|| Error::BadConfig(format!("hub {id}: config.json is missing from the repo")))
}

/// The hub's client: a progress bar, `HF_TOKEN` or the cached token.
fn api() -> std::result::Result<hf_hub::api::sync::Api, ApiError> {
    hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .with_token(
            std::env::var("HF_TOKEN")
                .ok()
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
            Err(e) => return Err(hub_err(f, &e)),
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

/// The cached snapshot of `id` (HF_HOME's hub cache, as the Python hub writes it), when the
/// hub is not to be asked or cannot be: `why` says which, in the error.
fn from_cache(id: &str, repo: Repo, revision: Option<&str>, why: &str) -> Result<PathBuf> {
    // A commit hash names its snapshot directly (the Python hub writes no `refs/<commit>`,
    // and hf-hub looks every revision up there).
    if let Some(commit) =
        revision.filter(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        let snapshot = hf_hub::Cache::from_env()
            .path()
            .join(format!("models--{}", id.replace('/', "--")))
            .join("snapshots")
            .join(commit);
        if snapshot.join("config.json").is_file() {
            return Ok(snapshot);
        }
    }
    let cache = hf_hub::Cache::from_env().repo(repo);
    let cfg = cache.get("config.json").ok_or_else(|| {
        Error::Io(format!(
            "hub {id}: {why}, and config.json is not in the cache"
        ))
    })?;
    Ok(cfg.parent().unwrap_or(Path::new(".")).to_path_buf())
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
