//! `camelid serve`: loads the models and serves them over the OpenAI-compatible API.

use super::model_args::{load, ModelArgs};
use anyhow::{Context, Result};
use camelid_engine::{EngineConfig, EngineOverrides};
use camelid_model::KvDtype;
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct ServeArgs {
    /// `[NAME=]PATH_OR_HUB_ID`, repeatable: several models in one process, each under its name
    /// (default: the default model). The request's `model` field picks one.
    #[arg(long = "model", env = "CAMELID_MODEL", value_delimiter = ',')]
    models: Vec<String>,
    /// Extra names a model answers to, `NAME=ALIAS` (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// Chat template for every model (default: each model's own, or chosen by name).
    #[arg(long)]
    template: Option<String>,
    #[arg(long, env = "CAMELID_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "CAMELID_PORT", default_value_t = 8000)]
    port: u16,
    /// Accepted API keys (repeatable); none means no authentication.
    #[arg(long = "api-key", env = "CAMELID_API_KEY", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// Context length served (default: the model's).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Requests in flight before new ones get 429.
    #[arg(long, default_value_t = 256)]
    max_concurrent: usize,
    /// Sequences batched together in one step.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// Tokens in one step (long prompts are prefilled in chunks of this size). Default: 512
    /// on the CPU, 2048 on CUDA. Smaller values shorten the stalls a prefill causes in running
    /// streams (about 1.5–2 ms per prefill token for SmolLM2-135M on 2 cores) at the cost of
    /// time-to-first-token and throughput (measured in benches/README.md).
    #[arg(long)]
    max_num_batched_tokens: Option<usize>,
    /// Prefill tokens in a step that also decodes running streams (they wait for the whole
    /// step): smaller keeps their inter-token latency low, larger gives new requests their
    /// first token sooner. Default: 64 on the CPU, the step budget on CUDA.
    #[arg(long)]
    max_prefill_tokens_while_decoding: Option<usize>,
    /// Within that cap, a step that also decodes may take at most this multiple of a decode
    /// step of every running sequence (learned from the steps run; at least one prompt token
    /// per step goes in). 1: streams never wait longer than the batch's decode step, prompts
    /// wait for their first token; 2: first tokens ~4× sooner under load, gaps ~2× longer.
    /// Default: 1 on the CPU, off on CUDA; 0 turns it off.
    #[arg(long)]
    max_step_stretch: Option<f64>,
    /// KV cache memory per model, in MiB.
    #[arg(long, default_value_t = 512)]
    kv_cache_mb: usize,
    /// Positions per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Turn automatic prefix caching off.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Element type of the CPU KV cache (f32 models on the CPU): f16 halves the memory batched
    /// decode streams and doubles the positions `--kv-cache-mb` holds (llama.cpp's default);
    /// q8_0 (8-bit, a scale per 32 values, as llama.cpp's `-ctk/-ctv q8_0`) holds 1.8× the
    /// positions of f16 in the same memory, at a small cost in accuracy; f32 is exact. CUDA and
    /// bf16/f16 models keep K/V in the model's dtype.
    #[arg(long, value_enum, default_value_t = KvCacheDtype::F16)]
    kv_cache_dtype: KvCacheDtype,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seconds in-flight requests may run after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    #[command(flatten)]
    arena: super::arena::ArenaServeArgs,
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    revision: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KvCacheDtype {
    F16,
    F32,
    #[value(name = "q8_0")]
    Q8_0,
}

impl ServeArgs {
    /// The engine settings given on the command line (the rest are the device's defaults).
    fn engine_overrides(&self) -> EngineOverrides {
        EngineOverrides {
            max_waiting: Some(self.max_concurrent),
            max_running: Some(self.max_num_seqs),
            max_batch_tokens: self.max_num_batched_tokens,
            max_prefill_tokens_while_decoding: self.max_prefill_tokens_while_decoding,
            max_step_stretch: self.max_step_stretch,
            block_size: Some(self.block_size),
            kv_cache_mb: Some(self.kv_cache_mb),
            prefix_caching: Some(!self.no_prefix_caching),
            host_kv_dtype: Some(match self.kv_cache_dtype {
                KvCacheDtype::F16 => KvDtype::F16,
                KvCacheDtype::F32 => KvDtype::F32,
                KvCacheDtype::Q8_0 => KvDtype::Q8_0,
            }),
        }
    }
}

/// `NAME=SPEC` or `SPEC` (the name is then the registry name, file stem or hub id).
fn split_model_arg(arg: &str) -> (Option<String>, String) {
    match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), p.to_string()),
        _ => (None, arg.to_string()),
    }
}

fn load_entries(a: &ServeArgs) -> Result<Vec<camelid_server::ModelEntry>> {
    let specs: Vec<Option<String>> = if a.models.is_empty() {
        vec![None]
    } else {
        a.models.iter().cloned().map(Some).collect()
    };
    let mut out = vec![];
    for spec in specs {
        let (name, path) = match &spec {
            Some(s) => {
                let (n, p) = split_model_arg(s);
                (n, Some(p))
            }
            None => (None, None),
        };
        let margs = ModelArgs {
            model: path,
            revision: a.revision.clone(),
            template: a.template.clone(),
            dtype: a.dtype.clone(),
            device: a.device.clone(),
        };
        let lm = load(&margs)?;
        let engine_config = EngineConfig::for_device(lm.model.device(), &a.engine_overrides());
        let name = name.unwrap_or_else(|| lm.name.clone());
        let mut aliases: Vec<String> = a
            .aliases
            .iter()
            .filter_map(|x| {
                x.split_once('=')
                    .filter(|(n, _)| *n == name)
                    .map(|(_, al)| al.to_string())
            })
            .collect();
        if spec.is_none() {
            aliases.push("default".into());
        }
        let max_model_len = a
            .max_model_len
            .map(|m| m.min(lm.context_length))
            .unwrap_or(lm.context_length);
        let entry = camelid_server::ModelEntry {
            aliases,
            template: lm.template.clone(),
            stop_token_ids: lm.stop_token_ids.clone(),
            stop_strings: lm.stop_strings.clone(),
            max_model_len,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            name,
            engine: camelid_engine::EngineHandle::spawn(lm, engine_config),
        };
        out.push(entry);
    }
    Ok(out)
}

pub fn run(a: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let arena = a.arena.open().await?;
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let state = std::sync::Arc::new(
            camelid_server::AppState::new(camelid_server::ServerConfig {
                api_keys: a.api_keys.clone(),
                max_concurrent: a.max_concurrent,
                body_limit: a.max_body_bytes,
                shutdown_grace_secs: a.shutdown_grace,
            })
            .with_arena(arena),
        );
        // Listen at once (health says 503 while loading), load in the background.
        let loader_state = state.clone();
        let loading = tokio::task::spawn_blocking(move || -> Result<()> {
            let entries = load_entries(&a)?;
            let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
            loader_state
                .arena
                .check_weights(&names)
                .map_err(anyhow::Error::msg)?;
            loader_state.set_models(entries);
            tracing::info!("ready on http://{local} serving {}", names.join(", "));
            Ok(())
        });
        let server = camelid_server::serve(listener, state);
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => return r.map_err(Into::into),
            r = loading => r??,
        }
        server.await.map_err(Into::into)
    })
}
