//! What every handler shares: the loaded models (absent while loading), limits, metrics
//! and the arena's store.

use crate::arena::Arena;
use crate::error::ApiError;
use crate::limits::RequestLimits;
use crate::metrics::ServerMetrics;
use camelid_engine::EngineHandle;
use camelid_model::ChatTemplate;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One served model: its engine plus what the HTTP layer needs to build prompts.
pub struct ModelEntry {
    pub name: String,
    pub aliases: Vec<String>,
    pub engine: EngineHandle,
    pub template: ChatTemplate,
    /// The model's own template for requests with tools (a `tool_use` one), if it has one.
    pub tool_template: Option<ChatTemplate>,
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Context length served (≤ the model's).
    pub max_model_len: usize,
    pub created: u64,
    /// What the model is, for listings (Ollama's `/api/tags` and `/api/show`).
    pub details: ModelDetails,
    /// Sampling a request that names none gets (the model's `generation_config.json`).
    pub sampling_defaults: camelid_model::SamplingDefaults,
}

/// A served model's description: its architecture, size and file format.
#[derive(Debug, Clone, Default)]
pub struct ModelDetails {
    /// As GGUF names it (`llama`, `qwen2`, …).
    pub architecture: String,
    /// `gguf`, `safetensors` or `pytorch`.
    pub format: String,
    /// Weights, counted from the configuration's shapes.
    pub parameters: u64,
    /// Bytes of weight files on disk.
    pub size_bytes: u64,
    /// llama.cpp's name of a GGUF's quantization (`Q4_K_M`), else empty.
    pub quantization: String,
    pub context_length: usize,
    pub embedding_length: usize,
    pub block_count: usize,
    /// The embedding pooling the model's files name, if any.
    pub pooling: Option<camelid_model::Pooling>,
    /// What of its embedding files camelid does not compute (embeddings refused).
    pub embedding_gaps: camelid_model::EmbeddingGaps,
}

impl ModelDetails {
    /// The details of a loaded model, its files read at `lm.path`.
    pub fn of(lm: &camelid_model::LoadedModel) -> Self {
        let c = lm.model.config();
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let h = c.hidden_size;
        let per_layer = h * (q + 2 * kv) + q * h + 3 * h * c.intermediate_size + 2 * h;
        let embeddings = c.vocab_size * h * if c.tie_word_embeddings { 1 } else { 2 };
        let files = weight_files(&lm.path);
        let format = files
            .iter()
            .filter_map(|f| f.extension().and_then(|e| e.to_str()))
            .find_map(|e| match e {
                "gguf" => Some("gguf"),
                "safetensors" => Some("safetensors"),
                "bin" | "pth" | "pt" => Some("pytorch"),
                _ => None,
            })
            .unwrap_or_default();
        // A GGUF says its quantization (Ollama's `quantization_level`); a folder's dtype is
        // chosen at load, so it is not named.
        let quantization = files
            .iter()
            .find(|f| f.extension().is_some_and(|e| e == "gguf"))
            .and_then(|f| camelid_model::load::gguf::quantization_name(f))
            .unwrap_or_default();
        Self {
            architecture: c.architecture.clone(),
            format: format.into(),
            quantization: quantization.into(),
            parameters: (embeddings + c.num_layers * per_layer + h) as u64,
            size_bytes: files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum(),
            context_length: lm.context_length,
            embedding_length: h,
            block_count: c.num_layers,
            pooling: lm.pooling,
            embedding_gaps: lm.embedding_gaps.clone(),
        }
    }

    /// Ollama's way of writing a parameter count: `134.52M`, `6.74B`.
    pub fn parameter_size(&self) -> String {
        let p = self.parameters as f64;
        match p {
            p if p >= 1e9 => format!("{:.2}B", p / 1e9),
            p if p >= 1e6 => format!("{:.2}M", p / 1e6),
            p => format!("{p}"),
        }
    }
}

/// The weight files of a model: the file itself, or the files a folder's weights load from
/// (the loader's choice: a Mistral snapshot's `consolidated.safetensors` beside its shards, or
/// a fine-tune's `training_args.bin`, are not counted), else its `.gguf` files.
fn weight_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    use camelid_model::load::hf_folder::{find_weight_files, WeightFiles};
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    if let Ok(WeightFiles::Safetensors(f) | WeightFiles::PyTorch(f)) = find_weight_files(path) {
        return f;
    }
    let Ok(dir) = std::fs::read_dir(path) else {
        return vec![];
    };
    let mut files: Vec<_> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("gguf" | "safetensors" | "bin" | "pth" | "pt")
            )
        })
        .collect();
    files.sort();
    files
}

impl ModelEntry {
    /// The template a conversation renders with: the `tool_use` one when the request gives
    /// tools and the model has one, else the model's template (transformers' choice).
    pub fn template_for(&self, with_tools: bool) -> &ChatTemplate {
        match &self.tool_template {
            Some(t) if with_tools => t,
            _ => &self.template,
        }
    }

    /// Compiles structured-output grammars for this model's vocabulary.
    pub fn grammar(&self) -> &Arc<camelid_model::GrammarCompiler> {
        self.engine.grammar()
    }

    /// A LoRA adapter served beside this (base) model, under the adapter's name: the same
    /// engine, template and limits, its requests run under the adapter. An adapter read for
    /// another shape is refused.
    pub fn adapted(&self, adapter: camelid_engine::SharedLora) -> Result<ModelEntry, String> {
        Ok(ModelEntry {
            name: adapter.name.clone(),
            aliases: vec![],
            engine: self.engine.with_lora(adapter)?,
            template: self.template.clone(),
            tool_template: self.tool_template.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            stop_strings: self.stop_strings.clone(),
            max_model_len: self.max_model_len,
            created: self.created,
            details: self.details.clone(),
            sampling_defaults: self.sampling_defaults,
        })
    }
}

/// The base model a LoRA adapter's entry runs on: the entry of the same engine without an
/// adapter (`None` for a base model itself).
pub fn base_of<'a>(models: &'a [Arc<ModelEntry>], m: &ModelEntry) -> Option<&'a Arc<ModelEntry>> {
    m.engine.lora()?;
    models
        .iter()
        .find(|b| b.engine.lora().is_none() && b.engine.same_engine(&m.engine))
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Empty: no authentication. Keys must not be empty (`camelid serve` checks).
    pub api_keys: Vec<String>,
    /// Serve `/metrics` without an API key.
    pub metrics_public: bool,
    /// Requests in flight (being prompted, queued or generating) before new ones get 429.
    pub max_concurrent: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// How long in-flight streams may run after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// What one request may ask for.
    pub limits: RequestLimits,
    /// Open connections; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections from one address (0: no cap); more are answered 429 and closed.
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection stays open).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body, from the end of its headers;
    /// later is 408 and the connection is closed.
    pub body_timeout_secs: u64,
    /// Seconds a response may wait on a client that does not read it (its socket full)
    /// before the connection is closed: a stream nobody reads holds a concurrency slot.
    pub write_timeout_secs: u64,
    /// Web origins whose pages may call the API from a browser (CORS; vLLM's
    /// `--allowed-origins`): empty, only the server's own pages; `*`, any.
    pub allowed_origins: Vec<String>,
    /// `Host` names answered (`--allowed-hosts`; a loopback server: this machine's only).
    pub allowed_hosts: crate::hosts::AllowedHosts,
    /// Split a reasoning model's leading `<think>…</think>` from its answer into
    /// `reasoning_content` (vLLM's `--reasoning-parser deepseek_r1`/`qwen3`).
    pub reasoning_parser: bool,
    /// How embeddings pool every model's hidden states (`--pooling`); `None`: what each
    /// model's files name, else the last token's.
    pub pooling: Option<camelid_model::Pooling>,
    /// Serve `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (`--allow-runtime-lora`):
    /// callers then name files on the server's disk.
    pub runtime_lora: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_keys: vec![],
            metrics_public: false,
            max_concurrent: 256,
            body_limit: 4 << 20,
            shutdown_grace_secs: 30,
            limits: RequestLimits::default(),
            max_connections: 512,
            max_connections_per_address: 0,
            header_timeout_secs: 30,
            body_timeout_secs: 30,
            write_timeout_secs: 60,
            allowed_origins: vec![],
            allowed_hosts: Default::default(),
            reasoning_parser: false,
            pooling: None,
            runtime_lora: false,
        }
    }
}

/// A request's concurrency slot. Clones share it: work a request hands to another thread
/// holds a clone, so the slot stays taken until that work is done too, even when the client
/// has gone and the handler was dropped.
#[derive(Clone)]
pub struct Permit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

pub struct AppState {
    models: RwLock<Option<Vec<Arc<ModelEntry>>>>,
    pub config: ServerConfig,
    pub metrics: ServerMetrics,
    pub arena: Arena,
    permits: Arc<Semaphore>,
    /// Slots of their own for arena votes (see [`Self::vote_permit`]).
    vote_permits: Arc<Semaphore>,
    /// Set at SIGTERM (see [`Self::stop_admitting`]).
    shutting_down: AtomicBool,
}

/// Arena votes handled at once.
const VOTE_SLOTS: usize = 64;

impl AppState {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            models: RwLock::new(None),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            vote_permits: Arc::new(Semaphore::new(VOTE_SLOTS)),
            arena: Arena::default(),
            config,
            metrics: ServerMetrics::default(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The arena to serve (by default one without a vote log).
    pub fn with_arena(mut self, arena: Arena) -> Self {
        self.arena = arena;
        self
    }

    pub fn set_models(&self, models: Vec<ModelEntry>) {
        // The flag is read under the write lock: a SIGTERM's `stop_admitting` sets it before
        // it reads the models, so either it sees these or this sees the flag (checked before
        // the lock, both could miss each other and these engines would go on admitting).
        let mut served = self.models.write().unwrap();
        if self.shutting_down.load(Ordering::SeqCst) {
            models.iter().for_each(|m| m.engine.stop_admitting());
        }
        *served = Some(models.into_iter().map(Arc::new).collect());
    }

    /// Whether [`Self::stop_admitting`] was called (SIGTERM).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Shutting down: every engine refuses the requests that have not started (their
    /// clients get 503 at once) and anything new; running ones finish.
    pub fn stop_admitting(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for m in self.models().unwrap_or_default() {
            m.engine.stop_admitting();
        }
    }

    /// The shutdown's grace period is over: every request still in an engine ends now, its
    /// client told so (an error event, a 503), rather than cut off with the connection.
    pub fn end_all(&self) {
        self.stop_admitting();
        for m in self.models().unwrap_or_default() {
            m.engine.end_all();
        }
    }

    /// Changes the served models under the lock (adapters loaded and unloaded at run time);
    /// `f`'s error leaves them as they were. While the models load: 503.
    pub fn update_models<T>(
        &self,
        f: impl FnOnce(&mut Vec<Arc<ModelEntry>>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.models.write().unwrap();
        let models = guard.as_mut().ok_or_else(Self::loading_error)?;
        let mut next = models.clone();
        let out = f(&mut next)?;
        *models = next;
        Ok(out)
    }

    /// None while the models load.
    pub fn models(&self) -> Option<Vec<Arc<ModelEntry>>> {
        self.models.read().unwrap().clone()
    }

    pub fn loading_error() -> ApiError {
        ApiError::overloaded(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "The models are still loading.",
        )
    }

    /// The model a request names (by name or alias); with one model (its LoRA adapters
    /// aside), `None` means it.
    /// A request's `model` left out or empty becomes the one model's name (so the answer
    /// names the model that gave it); several served: 400.
    pub fn fill_model_name(&self, name: &mut String) -> Result<(), ApiError> {
        if name.is_empty() {
            *name = self.model(None)?.name.clone();
        }
        Ok(())
    }

    pub fn model(&self, name: Option<&str>) -> Result<Arc<ModelEntry>, ApiError> {
        let models = self.models().ok_or_else(Self::loading_error)?;
        let mut bases = models.iter().filter(|m| m.engine.lora().is_none());
        let only_base = match (bases.next(), bases.next()) {
            (Some(b), None) => Some(b.clone()),
            _ => None,
        };
        match name {
            None | Some("") if only_base.is_some() => Ok(only_base.expect("checked")),
            None | Some("") => Err(ApiError::invalid_param(
                "model",
                "`model` is required when several models are served",
            )),
            Some(n) => models
                .iter()
                .find(|m| m.name == n || m.aliases.iter().any(|a| a == n))
                .cloned()
                .ok_or_else(|| ApiError::model_not_found(n)),
        }
    }

    /// A slot for one arena vote: a few store queries, bounded apart from generation, so a
    /// server whose slots are all generating still takes the votes on the answers it gave
    /// (a vote refused for load is a vote lost to a visitor who does not retry).
    pub fn vote_permit(&self) -> Result<Permit, ApiError> {
        slot(
            &self.vote_permits,
            format!("Too many votes in flight (limit {VOTE_SLOTS}); retry later."),
        )
    }

    /// A slot for one request, taken once its body is read and held until its answer is
    /// sent: parsing, rendering, tokenizing and generating all count. None left means 429.
    pub fn permit(&self) -> Result<Permit, ApiError> {
        slot(
            &self.permits,
            format!(
                "Too many requests in flight (limit {}); retry later.",
                self.config.max_concurrent
            ),
        )
    }
}

/// A slot of `slots`, or 429 saying `full`.
fn slot(slots: &Arc<Semaphore>, full: String) -> Result<Permit, ApiError> {
    slots
        .clone()
        .try_acquire_owned()
        .map(|p| Permit(Arc::new(p)))
        .map_err(|_| ApiError::overloaded(axum::http::StatusCode::TOO_MANY_REQUESTS, full))
}

#[cfg(test)]
mod tests {
    use super::weight_files;

    /// A folder's size is what its weights load from: a Mistral snapshot's
    /// `consolidated.safetensors` beside its shards and a fine-tune's `training_args.bin` are
    /// not weights of the model (they doubled `/api/tags`' size).
    #[test]
    fn a_folders_weights_are_the_loaders() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "consolidated.safetensors",
            "training_args.bin",
        ] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        std::fs::write(
            d.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors",
                               "b": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let names: Vec<String> = weight_files(d.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        // A folder of GGUF files: those.
        let g = tempfile::tempdir().unwrap();
        std::fs::write(g.path().join("m.Q4_K_M.gguf"), b"x").unwrap();
        assert_eq!(weight_files(g.path()), [g.path().join("m.Q4_K_M.gguf")]);
    }
}
