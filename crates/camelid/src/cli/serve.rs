//! `camelid serve`: loads the models and serves them over the OpenAI-compatible API.

use super::model_args::{load_spec, ModelArgs};
use anyhow::{Context, Result};
use camelid_engine::{EngineConfig, EngineOverrides, NgramSpec};
use camelid_model::KvDtype;
use camelid_server::{RequestLimits, ServerConfig};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// `[NAME=]PATH_OR_HUB_ID`, repeatable: several models in one process, each under its name
    /// (default: the default model). The request's `model` field picks one.
    #[arg(long = "model", env = "CAMELID_MODEL", value_delimiter = ',')]
    models: Vec<String>,
    /// Extra names a model answers to, `NAME=ALIAS` (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// LoRA adapters served beside their base model, as vLLM's flag: `NAME=PATH` or
    /// `{"name": NAME, "path": PATH, "base_model_name": MODEL}` (repeatable, or several after
    /// one flag). PATH is a PEFT folder (adapter_config.json, adapter_model.safetensors) or a
    /// llama.cpp LoRA GGUF. A request whose `model` is NAME runs the base model under the
    /// adapter, batched with the others; the base is the one model served, or MODEL.
    #[arg(long = "lora-modules", num_args = 1.., value_parser = parse_lora_module)]
    lora_modules: Vec<LoraModule>,
    /// Serve vLLM's `POST /v1/load_lora_adapter` (`{"lora_name", "lora_path",
    /// "base_model_name"}`) and `/v1/unload_lora_adapter` (`{"lora_name"}`): adapters added
    /// and removed while running (vLLM's `VLLM_ALLOW_RUNTIME_LORA_UPDATING`). A caller names
    /// files on this machine: keep it behind --api-key.
    // Boolish (true/false, 1/0, yes/no, on/off), as vLLM's variable is usually set to 1.
    #[arg(
        long,
        env = "CAMELID_ALLOW_RUNTIME_LORA",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    allow_runtime_lora: bool,
    /// Chat template for every model (default: each model's own, or chosen by name).
    #[arg(long)]
    template: Option<String>,
    /// A jinja chat template file for every model, instead of its own (as vLLM's and
    /// llama.cpp's `--chat-template`): e.g. one that renders `tools` for a model whose own
    /// template does not.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    #[arg(long, env = "CAMELID_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "CAMELID_PORT", default_value_t = 8000)]
    port: u16,
    /// Accepted API keys (repeatable); none (and no --api-key-file) means no authentication.
    /// The API (/v1/*, Ollama's /api/*, /tokenize, /detokenize) needs one, and /metrics unless
    /// --metrics-public; /health, the pages and (unless --arena-private) the arena's routes
    /// stay open. An empty key is an error.
    // Secrets: --help names the variable, not its value.
    #[arg(
        long = "api-key",
        env = "CAMELID_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// A file of accepted API keys, one per line (blank lines and `#` comments skipped), so
    /// keys stay out of the process list and the environment.
    #[arg(long, env = "CAMELID_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Serve /metrics without an API key (for a scraper on a trusted network).
    #[arg(long)]
    metrics_public: bool,
    /// Web origins whose pages may call the API from a browser (CORS, vLLM's flag; comma
    /// separated or repeated, e.g. http://localhost:3000), `*` for any. Default: none, only
    /// camelid's own pages. Not `*` for a public arena: any site could then make its
    /// visitors' browsers play the arena.
    #[arg(long, env = "CAMELID_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Host names this server answers besides this machine's own (comma separated or
    /// repeated; `*` for any). On a loopback --host (the default) a request naming another
    /// host is refused (403): a web page can point its own name at 127.0.0.1 (DNS
    /// rebinding) and then read this server's answers. Behind a proxy on this machine, give
    /// the name the proxy sends (nginx's `upstream` name, or its `Host` with
    /// `proxy_set_header Host $host`). With names given, a public --host answers only them.
    #[arg(long, env = "CAMELID_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Split a reasoning model's leading `<think>…</think>` (Qwen3, QwQ, DeepSeek-R1 and its
    /// distills) from its answer into `reasoning_content`, as vLLM's flag: `deepseek_r1` or
    /// `qwen3` (the same `<think>` format), `none` (the default: the text as written).
    #[arg(long, env = "CAMELID_REASONING_PARSER", default_value = "none",
          value_parser = ["none", "deepseek_r1", "qwen3"])]
    reasoning_parser: String,
    /// How embeddings pool a prompt's final hidden states: `last` (the last token's) or
    /// `mean` (llama.cpp's flag). Default: what the model's files name (GGUF
    /// `pooling_type`, sentence-transformers' `1_Pooling`), else `last`.
    #[arg(long, env = "CAMELID_POOLING", value_parser = ["last", "mean"])]
    pooling: Option<String>,
    /// Context length served (default: the model's).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// `auto`: a request's sampling fields it leaves out (temperature, top_p, top_k, min_p,
    /// repetition_penalty) take the values of the model's generation_config.json, as its
    /// publisher recommends (vLLM's default); `vllm`: the neutral ones (temperature 1).
    #[arg(long, env = "CAMELID_GENERATION_CONFIG", default_value = "auto",
          value_parser = ["auto", "vllm"])]
    generation_config: String,
    /// Requests in flight (being prompted, queued or generating) before new ones get 429.
    #[arg(long, default_value_t = ServerConfig::default().max_concurrent)]
    max_concurrent: usize,
    /// Sequences (a request's choices count one each) waiting for a batch slot before new
    /// requests get 503.
    #[arg(long, default_value_t = EngineConfig::default().max_waiting)]
    max_waiting_seqs: usize,
    #[command(flatten)]
    limits: LimitArgs,
    /// Sequences batched together in one step.
    #[arg(long, default_value_t = EngineConfig::default().max_running, value_parser = positive)]
    max_num_seqs: usize,
    /// Tokens in one step (long prompts are prefilled in chunks of this size). Default: 512
    /// on the CPU, 2048 on CUDA. Smaller values shorten the stalls a prefill causes in running
    /// streams (about 1.5–2 ms per prefill token for SmolLM2-135M on 2 cores) at the cost of
    /// time-to-first-token and throughput (measured in benches/README.md). At least
    /// --max-num-seqs + 1 (raised to it): a step holds every decode and a prompt token. On
    /// the CPU a prompt alone in its step takes up to a quarter more where that finishes it
    /// (a step of its own would read every weight again for those few tokens).
    #[arg(long, value_parser = positive)]
    max_num_batched_tokens: Option<usize>,
    /// Prefill tokens in a step that also decodes running streams (they wait for the whole
    /// step): smaller keeps their inter-token latency low, larger gives new requests their
    /// first token sooner. Default: 64 on the CPU, the step budget on CUDA.
    #[arg(long)]
    max_prefill_tokens_while_decoding: Option<usize>,
    /// Within that cap, a step that also decodes may take at most this multiple of a decode
    /// step of every running sequence, or 2.5× a lone stream's step if that is longer
    /// (learned from the steps run; at least one prompt token per step goes in). 1: streams
    /// wait at most about a decode step of the batch (and never past 2.5× a lone stream's
    /// gap), prompts wait longer for their first token; 2: first tokens sooner under load,
    /// gaps longer. Default: 1 on the CPU, off on CUDA; 0 turns it off (llama.cpp's policy:
    /// most throughput and soonest first tokens, at several times the gaps).
    #[arg(long)]
    max_step_stretch: Option<f64>,
    /// With --max-step-stretch, a step that also decodes may always take this multiple of a
    /// lone stream's decode step, however cheap a decode step of the batch is (on a model
    /// whose decode steps are bound by reading the weights, the stretch alone would hold
    /// prompts beside busy streams to a token or two a step). Default: 2.5 on the CPU; 0: the
    /// stretch alone.
    #[arg(long)]
    lone_stream_gaps: Option<f64>,
    /// When a request reaches an idle engine, requests arriving right after it (each within
    /// 1 ms of the one before) join its first step, for at most this many milliseconds: a
    /// burst of clients starts together instead of most of it waiting for the first step
    /// and then entering beside the streams it started. Default: 10 on the CPU (whose steps
    /// take every core), 0 on CUDA; 0 turns it off.
    #[arg(long)]
    burst_window_ms: Option<u64>,
    /// KV cache memory per model, in MiB. Default: 512; on the CPU more where that holds less
    /// than the model's context, up to 4 096 positions (llama.cpp's and Ollama's default
    /// context; a 7B model's f16 cache then takes 2 GiB). On a GPU, size it to the card:
    /// divide what the weights leave among the models served (512 holds about 1 000
    /// positions of a 7B).
    #[arg(long, env = "CAMELID_KV_CACHE_MB", value_parser = positive)]
    kv_cache_mb: Option<usize>,
    /// Positions per KV block (1 to 256): the pool holds whole blocks, so a larger one could
    /// take more memory than --kv-cache-mb.
    #[arg(long, default_value_t = EngineConfig::default().block_size, value_parser = block_size)]
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
    /// Speculative decoding, as vLLM's flag: `{"method": "ngram", "num_speculative_tokens":
    /// K, "prompt_lookup_max": N, "prompt_lookup_min": M, "disable_by_batch_size": B}`. Each
    /// decode also verifies up to K tokens that followed the latest earlier occurrence of the
    /// sequence's last M..N tokens (prompt lookup); the output is the same as without, only
    /// sooner where the text repeats what came before (quoting, editing, summaries, code).
    /// No drafts while more than B sequences run. Default: off.
    #[arg(long, env = "CAMELID_SPECULATIVE_CONFIG", value_parser = parse_speculative_config)]
    speculative_config: Option<NgramSpec>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().body_limit)]
    max_body_bytes: usize,
    /// Seconds in-flight requests may run after SIGTERM.
    #[arg(long, default_value_t = ServerConfig::default().shutdown_grace_secs)]
    shutdown_grace: u64,
    #[command(flatten)]
    arena: super::arena::ArenaServeArgs,
    /// Weight dtype for safetensors models: f32, bf16, f16 (default on CPU: f32 compute with
    /// f16/bf16 matrices kept 16-bit; on CUDA the checkpoint's own 16-bit type, else bf16).
    #[arg(long)]
    dtype: Option<String>,
    /// Quantize an HF model's matrices while loading (CPU): q4_0, q4_1, q5_0, q5_1, q8_0,
    /// q4_k, q5_k, q6_k.
    #[arg(long)]
    quantize: Option<String>,
    /// cpu or cuda[:N].
    #[arg(long, env = "CAMELID_DEVICE", default_value = "cpu")]
    device: String,
    /// Hub revision (branch, tag or commit) of hub models.
    #[arg(long)]
    revision: Option<String>,
}

/// What one request may ask for, and what one connection may hold (over a cap: 400 naming
/// the field; connections beyond the cap wait to be accepted).
#[derive(Args)]
struct LimitArgs {
    /// Prompts in one /v1/completions request.
    #[arg(long, default_value_t = RequestLimits::default().max_prompts)]
    max_prompts_per_request: usize,
    /// Sequences one request may start (prompts × n).
    #[arg(long, default_value_t = RequestLimits::default().max_sequences)]
    max_seqs_per_request: usize,
    /// Inputs in one embeddings request (they run --max-seqs-per-request at a time).
    #[arg(long, default_value_t = RequestLimits::default().max_embedding_inputs)]
    max_embedding_inputs: usize,
    /// Stop strings in one request.
    #[arg(long, default_value_t = RequestLimits::default().max_stop_strings)]
    max_stop_strings: usize,
    /// Bytes of one stop string.
    #[arg(long, default_value_t = RequestLimits::default().max_stop_string_bytes)]
    max_stop_string_bytes: usize,
    /// Entries of `stop_token_ids` in one request.
    #[arg(long, default_value_t = RequestLimits::default().max_stop_token_ids)]
    max_stop_token_ids: usize,
    /// Entries of `logit_bias` in one request.
    #[arg(long, default_value_t = RequestLimits::default().max_logit_bias)]
    max_logit_bias: usize,
    /// Messages in one chat request.
    #[arg(long, default_value_t = RequestLimits::default().max_messages)]
    max_messages: usize,
    /// Function definitions (`tools`) in one chat request.
    #[arg(long, default_value_t = RequestLimits::default().max_tools)]
    max_tools: usize,
    /// Log-probability entries one response may return: a scoring request's (`echo` with
    /// `logprobs` k) for its prompts, prompt tokens × n × (k + 1); a response not streamed
    /// for its output, n × max_tokens × (k + 1).
    #[arg(
        long,
        alias = "max-prompt-logprob-entries",
        default_value_t = RequestLimits::default().max_logprob_entries
    )]
    max_logprob_entries: usize,
    /// Open connections at once; more wait to be accepted.
    #[arg(long, default_value_t = ServerConfig::default().max_connections)]
    max_connections: usize,
    /// Open connections from one address at once, 0 for no cap (the default: a proxy or load
    /// balancer in front brings every client from its own address). Serving visitors
    /// directly (a public arena), set it, e.g. 32: one client's idle connections then
    /// cannot take every slot of --max-connections. More are answered 429 and closed
    #[arg(long, default_value_t = ServerConfig::default().max_connections_per_address)]
    max_connections_per_address: usize,
    /// Seconds a client has to send a request's headers (also the idle keep-alive time).
    #[arg(long, default_value_t = ServerConfig::default().header_timeout_secs)]
    header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body, from the end of its headers
    /// (later: 408, connection closed).
    #[arg(long, default_value_t = ServerConfig::default().body_timeout_secs)]
    body_timeout_secs: u64,
    /// Seconds a response may wait on a client that does not read it (its socket full)
    /// before the connection is closed and its generation cancelled: a stream nobody reads
    /// would hold a concurrency slot for good.
    #[arg(long, default_value_t = ServerConfig::default().write_timeout_secs)]
    write_timeout_secs: u64,
}

impl LimitArgs {
    fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_prompts: self.max_prompts_per_request,
            max_sequences: self.max_seqs_per_request,
            max_embedding_inputs: self.max_embedding_inputs,
            max_stop_strings: self.max_stop_strings,
            max_stop_string_bytes: self.max_stop_string_bytes,
            max_stop_token_ids: self.max_stop_token_ids,
            max_logit_bias: self.max_logit_bias,
            max_messages: self.max_messages,
            max_tools: self.max_tools,
            max_logprob_entries: self.max_logprob_entries,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KvCacheDtype {
    F16,
    F32,
    #[value(name = "q8_0")]
    Q8_0,
}

impl ServeArgs {
    /// The engine settings of the command line (flags left out give their defaults, which
    /// are `EngineConfig`'s; those without one take the device's).
    fn engine_overrides(&self) -> EngineOverrides {
        EngineOverrides {
            max_waiting: Some(self.max_waiting_seqs),
            max_running: Some(self.max_num_seqs),
            max_batch_tokens: self.max_num_batched_tokens,
            max_prefill_tokens_while_decoding: self.max_prefill_tokens_while_decoding,
            max_step_stretch: self.max_step_stretch,
            lone_stream_gaps: self.lone_stream_gaps,
            burst_window: self.burst_window_ms.map(std::time::Duration::from_millis),
            block_size: Some(self.block_size),
            kv_cache_mb: self.kv_cache_mb,
            prefix_caching: Some(!self.no_prefix_caching),
            host_kv_dtype: Some(match self.kv_cache_dtype {
                KvCacheDtype::F16 => KvDtype::F16,
                KvCacheDtype::F32 => KvDtype::F32,
                KvCacheDtype::Q8_0 => KvDtype::Q8_0,
            }),
            speculative: self.speculative_config,
        }
    }
}

/// One `--lora-modules` entry.
#[derive(Debug, Clone, PartialEq)]
struct LoraModule {
    name: String,
    path: PathBuf,
    /// The served model (name or alias) it adapts; `None`: the only one.
    base: Option<String>,
}

/// `--lora-modules`: vLLM's `NAME=PATH` or its JSON form (unknown keys refused).
/// A CPU KV cache is host memory the engine fills as requests come: one larger than what is
/// left (after the weights, and past the caches of the models before, `reserved`) would get
/// the server killed under load, not at start. A default cache shrinks to fit, with a
/// warning, leaving a tenth (at least 64 MiB) for the steps' work; a size the user gave is
/// refused.
fn fit_kv_cache(
    name: &str,
    lm: &camelid_model::LoadedModel,
    config: &mut EngineConfig,
    given: bool,
    reserved: &mut u64,
) -> Result<()> {
    use camelid_model::load::host_memory::{gib, room, SKIP_VAR};
    let Some(room) = room() else {
        return Ok(());
    };
    let left = room.bytes.saturating_sub(*reserved);
    let want = config.kv_cache_bytes(lm);
    if want > left {
        if given {
            anyhow::bail!(
                "{name}: --kv-cache-mb {}: the KV cache would take {}, and {} is left after \
                 the weights ({}); {SKIP_VAR}=1 starts anyway",
                config.kv_cache_mb,
                gib(want),
                gib(left),
                room.limited_by
            );
        }
        let margin = (left / 10).max(64 << 20);
        let fit_mb = usize::try_from(left.saturating_sub(margin) >> 20).unwrap_or(usize::MAX);
        if fit_mb < config.kv_cache_mb_holding(lm, config.block_size) {
            anyhow::bail!(
                "{name}: {} is left after the weights ({}): not enough for a KV cache; \
                 {SKIP_VAR}=1 starts anyway",
                gib(left),
                room.limited_by
            );
        }
        tracing::warn!(
            "{name}: the default KV cache ({} MiB) is more than the {} left after the \
             weights ({}): {fit_mb} MiB (--kv-cache-mb sets it)",
            config.kv_cache_mb,
            gib(left),
            room.limited_by
        );
        config.kv_cache_mb = fit_mb;
    }
    *reserved += config.kv_cache_bytes(lm);
    Ok(())
}

fn parse_lora_module(s: &str) -> Result<LoraModule, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Json {
        name: String,
        path: PathBuf,
        base_model_name: Option<String>,
    }
    let m = if s.trim_start().starts_with('{') {
        let j: Json = serde_json::from_str(s).map_err(|e| format!("{s}: {e}"))?;
        LoraModule {
            name: j.name,
            path: j.path,
            base: j.base_model_name,
        }
    } else {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| format!("{s}: expected NAME=PATH or a JSON object"))?;
        LoraModule {
            name: name.to_string(),
            path: PathBuf::from(path),
            base: None,
        }
    };
    if m.name.trim().is_empty() || m.path.as_os_str().is_empty() {
        return Err(format!("{s}: the adapter needs a name and a path"));
    }
    Ok(m)
}

/// The indices of the `--lora-modules` whose base is the model served as `name` (with
/// `aliases`), among `all` models.
fn adapters_of(modules: &[LoraModule], name: &str, aliases: &[String], all: usize) -> Vec<usize> {
    (0..modules.len())
        .filter(|&i| match &modules[i].base {
            Some(b) => b == name || aliases.contains(b),
            None => all == 1,
        })
        .collect()
}

/// `--speculative-config`: vLLM's JSON for its `ngram` method (the one camelid has: no draft
/// model). Unknown keys are refused, so a typo does not silently turn speculation off.
fn parse_speculative_config(s: &str) -> Result<NgramSpec, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        method: String,
        num_speculative_tokens: usize,
        prompt_lookup_min: Option<usize>,
        prompt_lookup_max: Option<usize>,
        disable_by_batch_size: Option<usize>,
    }
    let c: Config =
        serde_json::from_str(s).map_err(|e| format!("not a speculative config: {e}"))?;
    if c.method != "ngram" {
        return Err(format!(
            "method {:?} is not supported: camelid speculates by prompt lookup only (\"ngram\")",
            c.method
        ));
    }
    NgramSpec::new(
        c.num_speculative_tokens,
        c.prompt_lookup_min,
        c.prompt_lookup_max,
        c.disable_by_batch_size,
    )
}

/// The keys of `--api-key` and `--api-key-file`. An empty or blank key would let requests
/// without one in, and a key with spaces around it could never be matched (HTTP trims header
/// values): both are refused.
fn api_keys(a: &ServeArgs) -> Result<Vec<String>> {
    let mut keys = vec![];
    for k in &a.api_keys {
        if k.trim().is_empty() {
            anyhow::bail!(
                "--api-key / CAMELID_API_KEY: an API key is empty (check for a stray comma)"
            );
        }
        if k.trim() != k {
            anyhow::bail!("--api-key / CAMELID_API_KEY: an API key has spaces around it");
        }
        keys.push(k.clone());
    }
    if let Some(path) = &a.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --api-key-file {}", path.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
        if keys.len() == before {
            anyhow::bail!("--api-key-file {}: no API key in the file", path.display());
        }
    }
    // A header value past visible ASCII reads as no key at all: such a key could never match.
    if keys
        .iter()
        .any(|k| !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        anyhow::bail!(
            "--api-key / --api-key-file: an API key holds a character other than visible \
             ASCII (letters, digits, punctuation), which no client's header could match"
        );
    }
    Ok(keys)
}

fn load_entries(a: &ServeArgs) -> Result<Vec<camelid_server::ModelEntry>> {
    let specs: Vec<Option<String>> = if a.models.is_empty() {
        vec![None]
    } else {
        a.models.iter().cloned().map(Some).collect()
    };
    let mut out = vec![];
    if specs.len() > 1 {
        if let Some(m) = a.lora_modules.iter().find(|m| m.base.is_none()) {
            anyhow::bail!(
                "--lora-modules {}: several models are served: name the base with \
                 {{\"name\": ..., \"path\": ..., \"base_model_name\": ...}}",
                m.name
            );
        }
    }
    let mut names: Vec<&str> = a.lora_modules.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("--lora-modules: two adapters are named {:?}", w[0]);
    }
    // Which modules found their base, so one that names none fails after the loads.
    let mut loaded = vec![false; a.lora_modules.len()];
    // The CPU KV caches of the models loaded so far: allocated as they fill, so not yet
    // missing from the machine's available memory.
    let mut kv_reserved = 0u64;
    for spec in &specs {
        let (name, path) = match spec {
            Some(s) => {
                let (n, p) = super::model_args::split_model_arg(s);
                (n, Some(p))
            }
            None => (None, None),
        };
        let margs = ModelArgs {
            model: path,
            revision: a.revision.clone(),
            template: a.template.clone(),
            dtype: a.dtype.clone(),
            quantize: a.quantize.clone(),
            device: a.device.clone(),
        };
        let mut lm = load_spec(&margs, margs.model.as_deref())?;
        if let Some(path) = &a.chat_template {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading --chat-template {}", path.display()))?;
            lm = lm.with_chat_template(source)?;
            // A template that cannot render a plain chat fails here, not at every request.
            let probe = [camelid_model::Message::new("user", "hi")];
            lm.template
                .render(&probe, true)
                .with_context(|| format!("--chat-template {}", path.display()))?;
        }
        let mut engine_config = EngineConfig::for_device(lm.model.device(), &a.engine_overrides());
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
        if let Some(m) = a.max_model_len.filter(|&m| m > lm.context_length) {
            // Past the trained context the positions are ones the model never saw.
            tracing::warn!(
                "{name}: --max-model-len {m} is past the model's context length {}: serving {}",
                lm.context_length,
                lm.context_length
            );
        }
        let mut max_model_len = a
            .max_model_len
            .map(|m| m.min(lm.context_length))
            .unwrap_or(lm.context_length);
        // On the CPU, a cache that holds the context by default (host memory); a GPU's is
        // sized to the card by hand, as several models share it.
        if a.kv_cache_mb.is_none() && lm.model.device().is_cpu() {
            engine_config.kv_cache_mb = engine_config.default_kv_cache_mb(&lm, max_model_len);
        }
        if lm.model.device().is_cpu() {
            fit_kv_cache(
                &name,
                &lm,
                &mut engine_config,
                a.kv_cache_mb.is_some(),
                &mut kv_reserved,
            )?;
        }
        // A KV pool that holds less than the context: the served context is what it holds
        // (else a request that names no max_tokens, given the rest of the context, could
        // never fit and would be refused).
        let pool = engine_config.num_blocks(&lm) * engine_config.block_size;
        if pool < max_model_len {
            tracing::warn!(
                "{name}: the KV cache holds {pool} positions, less than the context of \
                 {max_model_len}: serving a context of {pool} (raise --kv-cache-mb for more)"
            );
            max_model_len = pool;
        }
        let mut adapters = vec![];
        for i in adapters_of(&a.lora_modules, &name, &aliases, specs.len()) {
            let m = &a.lora_modules[i];
            loaded[i] = true;
            let path = camelid_model::load::lora::resolve(&m.path, None)
                .with_context(|| format!("--lora-modules {}", m.name))?;
            let adapter = camelid_model::LoraAdapter::load(
                &m.name,
                &path,
                lm.model.config(),
                lm.model.device(),
            )
            .with_context(|| format!("--lora-modules {}", m.name))?;
            tracing::info!(
                "{name}: LoRA adapter {} (rank {}) from {}",
                m.name,
                adapter.rank,
                path.display()
            );
            adapters.push(std::sync::Arc::new(adapter));
        }
        let sampling_defaults = if a.generation_config == "auto" {
            lm.sampling_defaults
        } else {
            Default::default()
        };
        if !sampling_defaults.is_empty() {
            tracing::info!(
                "{name}: sampling fields a request leaves out take the model's \
                 generation_config.json: {sampling_defaults:?} (--generation-config vllm for \
                 the neutral ones)"
            );
        }
        let entry = camelid_server::ModelEntry {
            aliases,
            sampling_defaults,
            template: lm.template.clone(),
            tool_template: lm.tool_template.clone(),
            stop_token_ids: lm.stop_token_ids.clone(),
            stop_strings: lm.stop_strings.clone(),
            max_model_len,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            name,
            details: camelid_server::state::ModelDetails::of(&lm),
            engine: camelid_engine::EngineHandle::spawn(lm, engine_config),
        };
        // The base, then each adapter: the base's engine seen through it, under its name.
        let adapted: Vec<_> = adapters
            .into_iter()
            .map(|a| entry.adapted(a).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
        out.push(entry);
        out.extend(adapted);
    }
    if let Some(i) = loaded.iter().position(|l| !l) {
        let m = &a.lora_modules[i];
        anyhow::bail!(
            "--lora-modules {}: no served model is named {:?}",
            m.name,
            m.base.as_deref().unwrap_or_default()
        );
    }
    let mut names: Vec<&str> = out
        .iter()
        .flat_map(|e| std::iter::once(e.name.as_str()).chain(e.aliases.iter().map(|a| a.as_str())))
        .collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!(
            "two served models are named {:?} (models, aliases and adapters)",
            w[0]
        );
    }
    Ok(out)
}

pub fn run(a: ServeArgs) -> Result<()> {
    let api_keys = api_keys(&a)?;
    if a.arena.private() && api_keys.is_empty() {
        anyhow::bail!(
            "--arena-private puts the arena behind the API keys: give --api-key or --api-key-file"
        );
    }
    let loopback = a
        .host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
        || a.host == "localhost";
    if !loopback && !a.arena.private() && a.allowed_origins.iter().any(|o| o == "*") {
        tracing::warn!(
            "--allowed-origins '*' with the arena open to visitors: any site's pages may make \
             their visitors' browsers start battles and vote, each from its own address (list \
             the origins, or --arena-private)"
        );
    }
    if a.allow_runtime_lora && api_keys.is_empty() && !loopback {
        anyhow::bail!(
            "--allow-runtime-lora lets callers load files of this machine: give --api-key or \
             --api-key-file, or listen on a loopback address"
        );
    }
    if api_keys.is_empty() && !loopback {
        tracing::warn!(
            "listening on {} without an API key: anyone who reaches it may use /v1/* (the \
             arena's pages are open to visitors by design); give --api-key or --api-key-file \
             to open it to the public",
            a.host
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    let served = rt.block_on(async move {
        let arena = a.arena.open().await?;
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let state = std::sync::Arc::new(
            camelid_server::AppState::new(ServerConfig {
                api_keys,
                metrics_public: a.metrics_public,
                max_concurrent: a.max_concurrent,
                body_limit: a.max_body_bytes,
                shutdown_grace_secs: a.shutdown_grace,
                limits: a.limits.request_limits(),
                max_connections: a.limits.max_connections,
                max_connections_per_address: a.limits.max_connections_per_address,
                header_timeout_secs: a.limits.header_timeout_secs,
                write_timeout_secs: a.limits.write_timeout_secs,
                body_timeout_secs: a.limits.body_timeout_secs,
                allowed_origins: a.allowed_origins.clone(),
                allowed_hosts: camelid_server::AllowedHosts::new(
                    local.ip().is_loopback(),
                    &a.allowed_hosts,
                ),
                reasoning_parser: a.reasoning_parser != "none",
                pooling: a.pooling.as_deref().and_then(camelid_model::Pooling::parse),
                runtime_lora: a.allow_runtime_lora,
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
    });
    // Shut down without waiting for blocking tasks: a model load or hub download still in
    // progress (SIGTERM came first) is abandoned, not finished (hf-hub and the PyPI fetch
    // write to a temporary file and rename it when complete).
    rt.shutdown_background();
    served
}

/// A count that must be at least 1 (0 was quietly raised to 1).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?}: a whole number, at least 1")),
    }
}

/// `--block-size`: 1 to 256 positions.
fn block_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: a whole number from 1 to 256")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn speculative_config_reads_vllms_ngram_json() {
        let c = super::parse_speculative_config(
            r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}"#,
        )
        .unwrap();
        assert_eq!((c.tokens, c.min_n, c.max_n, c.max_batch), (4, 3, 3, None));
        let c = super::parse_speculative_config(
            r#"{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 1,
                "prompt_lookup_max": 4, "disable_by_batch_size": 4}"#,
        )
        .unwrap();
        assert_eq!(
            (c.tokens, c.min_n, c.max_n, c.max_batch),
            (2, 1, 4, Some(4))
        );
        for (bad, says) in [
            (
                r#"{"method": "eagle", "num_speculative_tokens": 4}"#,
                "eagle",
            ),
            (r#"{"method": "ngram"}"#, "num_speculative_tokens"),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_maxx": 3}"#,
                "prompt_lookup_maxx",
            ),
            (
                r#"{"method": "ngram", "num_speculative_tokens": 0}"#,
                "at least 1",
            ),
            ("ngram", "not a speculative config"),
        ] {
            let e = super::parse_speculative_config(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// `CAMELID_ALLOW_RUNTIME_LORA` is read as vLLM's variable is set (`=1`): clap's plain
    /// bool took only `true`/`false`, and `=1` stopped the server at start.
    #[test]
    fn runtime_lora_is_allowed_by_the_environment_as_vllms() {
        use clap::Parser;
        let _env = super::super::ENV_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let allowed = |v: Option<&str>| {
            match v {
                Some(v) => std::env::set_var("CAMELID_ALLOW_RUNTIME_LORA", v),
                None => std::env::remove_var("CAMELID_ALLOW_RUNTIME_LORA"),
            }
            let r = crate::Cli::try_parse_from(["camelid", "serve"]).map(|c| match c.command {
                crate::Command::Serve(s) => s.allow_runtime_lora,
                _ => unreachable!("serve parsed as serve"),
            });
            std::env::remove_var("CAMELID_ALLOW_RUNTIME_LORA");
            r
        };
        assert!(!allowed(None).unwrap());
        for yes in ["1", "true", "True", "yes"] {
            assert!(allowed(Some(yes)).unwrap(), "{yes}");
        }
        for no in ["0", "false"] {
            assert!(!allowed(Some(no)).unwrap(), "{no}");
        }
        assert!(allowed(Some("maybe")).is_err());
    }

    /// clap prints `[env: NAME=VALUE]` in --help: the secrets' values must not appear there
    /// (a help screen ends up in terminals, logs and bug reports).
    #[test]
    fn help_does_not_show_secret_environment_values() {
        let _env = super::super::ENV_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let secrets = [
            ("CAMELID_API_KEY", "sk-help-test-api-key"),
            (
                "CAMELID_ARENA_DB",
                "postgres://camelid:help-test-pw@db:5432/arena",
            ),
            ("OPENAI_API_KEY", "sk-help-test-openai-key"),
        ];
        for (k, v) in secrets {
            std::env::set_var(k, v);
        }
        // Built after the variables are set: clap reads them as it builds the arguments.
        let mut cli = crate::Cli::command();
        cli.build();
        let mut helps = vec![];
        for path in [
            &["serve"][..],
            &["bench"],
            &["arena", "export"],
            &["arena", "import"],
            &["mtbench", "answer"],
            &["mtbench", "judge"],
        ] {
            let mut cmd = &mut cli;
            for name in path {
                cmd = cmd
                    .find_subcommand_mut(name)
                    .unwrap_or_else(|| panic!("no subcommand {path:?}"));
            }
            helps.push((path, cmd.render_long_help().to_string()));
        }
        for (k, _) in secrets {
            std::env::remove_var(k);
        }
        for (path, help) in &helps {
            for (k, v) in secrets {
                assert!(
                    !help.contains(v),
                    "`{path:?} --help` shows {k}'s value:\n{help}"
                );
            }
        }
        // The variables themselves are still named.
        let serve = &helps[0].1;
        assert!(serve.contains("[env: CAMELID_API_KEY]"), "{serve}");
        assert!(serve.contains("[env: CAMELID_ARENA_DB]"), "{serve}");
    }
}
