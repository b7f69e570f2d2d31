//! `camelid`: the command line. Each subcommand wires the library crates together.

use anyhow::{Context, Result};
use camelid_model::decode::{generate, GenerationParams};
use camelid_model::load::parse_dtype;
use camelid_model::KvDtype;
use camelid_model::{LoadOptions, LoadedModel, Message, SamplingParams};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "camelid",
    version,
    about = "Inference server for LLaMA-family chat models (Vicuna, Llama 2/3, SmolLM2, TinyLlama)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt and print it as it streams.
    Generate(GenerateArgs),
    /// Chat interactively (multi-turn, with the model's chat template). Empty line or /exit quits.
    Chat(ChatArgs),
    /// Convert a GGUF file into an HF folder (safetensors, config.json, tokenizer.json).
    Convert(ConvertArgs),
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Load-test any OpenAI-compatible server: prefill/decode throughput, TTFT, inter-token latency.
    Bench(BenchArgs),
    /// MT-bench: generate answers, judge them with an LLM, show the results.
    #[command(subcommand)]
    Mtbench(MtbenchCommand),
    /// Chatbot Arena ratings from pairwise battles.
    #[command(subcommand)]
    Arena(ArenaCommand),
    /// Write the logits of every position of a token sequence (raw little-endian f32,
    /// positions × vocab): compares devices, dtypes and implementations on the same weights.
    Score(ScoreArgs),
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated (fed as one sequence, no template, no BOS added).
    #[arg(long, conflicts_with = "text")]
    ids: Option<String>,
    /// Text to tokenize instead of --ids.
    #[arg(long)]
    text: Option<String>,
    /// Output file.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Run through the serving engine's paged KV cache (block size 16, the prompt in two
    /// chunks) instead of a contiguous one: the CPU kernel or, on CUDA, camelid's kernels.
    #[arg(long)]
    paged: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Base URL of the server (e.g. http://127.0.0.1:8000).
    #[arg(long)]
    endpoint: String,
    #[arg(long, default_value = "default")]
    model: String,
    /// A label for the results (e.g. camelid, llama.cpp).
    #[arg(long, default_value = "server")]
    name: String,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    output_tokens: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    concurrency: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    requests_per_client: usize,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of the load levels: TTFT of a second turn over a history of this many tokens.
    #[arg(long)]
    second_turn: Option<usize>,
}

#[derive(Subcommand)]
enum MtbenchCommand {
    /// Answer the MT-bench questions (both turns) through an OpenAI-compatible endpoint.
    Answer(MtAnswerArgs),
    /// Grade answers with an LLM judge (single score, or pairwise with position swap).
    Judge(MtJudgeArgs),
    /// Print score or win-rate tables from a judgment file.
    Show(MtShowArgs),
}

#[derive(Args)]
struct MtAnswerArgs {
    /// Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000).
    #[arg(long)]
    endpoint: String,
    /// Model name sent to the endpoint.
    #[arg(long)]
    model: String,
    /// model_id written to the answers (default: --model).
    #[arg(long)]
    model_id: Option<String>,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// question.jsonl
    #[arg(long)]
    questions: PathBuf,
    /// Answer file (JSONL, appended to; questions already answered are skipped).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1)]
    num_choices: usize,
    /// Only the first N questions.
    #[arg(long)]
    first_n: Option<usize>,
    /// At most N questions of each category.
    #[arg(long)]
    per_category: Option<usize>,
    /// One temperature for every question (default: FastChat's per-category table).
    #[arg(long)]
    force_temperature: Option<f32>,
    /// A system message sent before the questions (default: none; the server's template
    /// applies the model's own default).
    #[arg(long)]
    system: Option<String>,
}

#[derive(Args)]
struct MtJudgeArgs {
    #[arg(long)]
    judge_endpoint: String,
    #[arg(long)]
    judge_model: String,
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// Answer files or folders of them (repeatable).
    #[arg(long, required = true, num_args = 1..)]
    answers: Vec<PathBuf>,
    /// single, pairwise-baseline or pairwise-all.
    #[arg(long, default_value = "single")]
    mode: String,
    #[arg(long)]
    baseline: Option<String>,
    /// Only these models (default: all in the answer files).
    #[arg(long, num_args = 1..)]
    models: Option<Vec<String>>,
    #[arg(long)]
    questions: PathBuf,
    #[arg(long)]
    judge_prompts: PathBuf,
    /// Reference answers (reference_answer/gpt-4.jsonl) for math, reasoning and coding.
    #[arg(long)]
    references: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Judge output budget (FastChat uses 2048).
    #[arg(long, default_value_t = 2048)]
    judge_max_tokens: usize,
    #[arg(long)]
    first_n: Option<usize>,
    #[arg(long)]
    per_category: Option<usize>,
}

#[derive(Args)]
struct MtShowArgs {
    /// A judgment file written by `mtbench judge`.
    #[arg(long)]
    judgments: PathBuf,
    /// single or pairwise (default: detected from the file).
    #[arg(long)]
    mode: Option<String>,
    /// question.jsonl, for the per-category columns.
    #[arg(long)]
    questions: Option<PathBuf>,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    format: String,
}

#[derive(Subcommand)]
enum ArenaCommand {
    /// A leaderboard from battles: Bradley–Terry ratings (the Arena leaderboard's) with 95 %
    /// bootstrap intervals, FastChat's online Elo, battle counts and score rates.
    Ratings(ArenaRatingsArgs),
}

#[derive(Args)]
struct ArenaRatingsArgs {
    /// Battles: FastChat's `clean_battle` JSON (array or lines of `model_a`, `model_b`,
    /// `winner`: model_a, model_b, tie, "tie (bothbad)"), or `mtbench judge` pairwise
    /// judgments (one battle per swapped pair of games). Repeatable.
    #[arg(long = "battles", required = true)]
    battles: Vec<PathBuf>,
    /// Bootstrap resamples for the intervals (0: none).
    #[arg(long, default_value_t = 100)]
    bootstrap: usize,
    /// Seed of the resampling, for a reproducible table.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    format: String,
}

#[derive(Args)]
struct ServeArgs {
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
    /// Append arena votes here (FastChat battle lines, `camelid arena ratings` reads them);
    /// the leaderboard starts from the votes already in it.
    #[arg(long)]
    arena_log: Option<PathBuf>,
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    revision: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KvCacheDtype {
    F16,
    F32,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Registry name, GGUF file, HF folder or hub id (owner/name). Default: SmolLM2-135M-Instruct.
    #[arg(long, env = "CAMELID_MODEL")]
    model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Chat template: a built-in (vicuna_v1.1, llama-2, llama-3, alpaca, zero_shot, one_shot, chatml) or `model`.
    #[arg(long)]
    template: Option<String>,
    /// Weight dtype for safetensors models: f32, bf16, f16 (default f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The user message (rendered with the chat template) or, with --raw, the raw prompt.
    #[arg(long)]
    prompt: String,
    /// System message (default: the template's).
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long)]
    system: Option<String>,
}

#[derive(Args)]
struct ConvertArgs {
    /// Input GGUF file (default: the default model).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn parse_device(s: &str) -> Result<candle_core::Device> {
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let idx = s
                .strip_prefix("cuda:")
                .map(|i| i.parse::<usize>())
                .transpose()?
                .unwrap_or(0);
            Ok(candle_core::Device::new_cuda(idx)?)
        }
        other => anyhow::bail!("unknown device {other:?} (cpu, cuda, cuda:N)"),
    }
}

fn run_score(a: ScoreArgs) -> Result<()> {
    let lm = load(&a.model)?;
    let ids: Vec<u32> = match (&a.ids, &a.text) {
        (Some(ids), _) => ids
            .split(',')
            .map(|s| s.trim().parse::<u32>())
            .collect::<std::result::Result<_, _>>()?,
        (None, Some(t)) => lm.tokenizer.encode(t, true)?,
        (None, None) => anyhow::bail!("give --ids or --text"),
    };
    let logits = if a.paged {
        paged_logits(&lm, &ids)?
    } else {
        lm.model.logits_all(&ids)?
    };
    let flat: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&a.out, bytes)?;
    let (rows, vocab) = logits.dims2()?;
    println!("{rows} positions x {vocab} logits -> {}", a.out.display());
    Ok(())
}

/// Every position's logits through `PagedKv` (f32 host cache on the CPU), the prompt in two
/// chunks so the second reads the first's blocks.
fn paged_logits(lm: &LoadedModel, ids: &[u32]) -> Result<candle_core::Tensor> {
    use camelid_model::{ForwardBatch, LogitsWanted};
    anyhow::ensure!(!ids.is_empty(), "no tokens to score");
    let c = lm.model.config();
    let bs = 16;
    let mut kv = camelid_engine::paged::PagedKv::new(
        c.num_layers,
        c.num_kv_heads,
        c.head_dim,
        ids.len().div_ceil(bs),
        bs,
        lm.model.dtype(),
        KvDtype::F32,
        lm.model.device(),
    )?;
    kv.start(0, &[]);
    anyhow::ensure!(kv.reserve(0, ids.len()), "KV pool too small");
    let half = ids.len().div_ceil(2);
    let mut parts = vec![];
    for (start, chunk) in [(0, &ids[..half]), (half, &ids[half..])] {
        if chunk.is_empty() {
            continue;
        }
        let mut batch = ForwardBatch::default();
        batch.push(0, start, chunk, LogitsWanted::All);
        parts.push(lm.model.forward(&batch, &mut kv)?);
    }
    Ok(candle_core::Tensor::cat(&parts, 0)?)
}

fn load(m: &ModelArgs) -> Result<LoadedModel> {
    let opts = LoadOptions {
        device: parse_device(&m.device)?,
        dtype: m.dtype.as_deref().map(parse_dtype).transpose()?,
        revision: m.revision.clone(),
        template: m.template.clone(),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let lm = camelid_model::load(m.model.as_deref(), &opts)?;
    tracing::info!(
        "loaded {} ({}) in {:.1}s, template {}",
        lm.name,
        lm.path.display(),
        t.elapsed().as_secs_f32(),
        lm.template.name()
    );
    Ok(lm)
}

fn gen_params(lm: &LoadedModel, s: &SamplingArgs) -> GenerationParams {
    let sampling = SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        ..Default::default()
    };
    let mut p = GenerationParams::new(s.max_tokens, sampling);
    p.stop_token_ids = lm.stop_token_ids.clone();
    p.stop_strings = lm.stop_strings.iter().chain(&s.stop).cloned().collect();
    p
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let lm = load(&a.model)?;
    let text = if a.raw {
        a.prompt.clone()
    } else {
        let mut msgs = vec![];
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        lm.template.render(&msgs, true)?
    };
    let ids = lm.tokenizer.encode(&text, true)?;
    let t = std::time::Instant::now();
    let mut out = std::io::stdout();
    let g = generate(&lm, &ids, gen_params(&lm, &a.sampling), |s| {
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "[{} prompt tokens, {} generated, finish {}, {:.1} tok/s]",
        g.prompt_tokens,
        g.tokens.len(),
        g.finish_reason.as_str(),
        g.tokens.len() as f64 / secs
    );
    Ok(())
}

fn run_chat(a: ChatArgs) -> Result<()> {
    let lm = load(&a.model)?;
    let mut msgs = vec![];
    if let Some(s) = &a.system {
        msgs.push(Message::new("system", s));
    }
    let stdin = std::io::stdin();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() || line == "/exit" {
            break;
        }
        msgs.push(Message::new("user", line));
        let ids = lm
            .tokenizer
            .encode(&lm.template.render(&msgs, true)?, true)?;
        let mut out = std::io::stdout();
        let g = generate(&lm, &ids, gen_params(&lm, &a.sampling), |s| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        })?;
        println!();
        msgs.push(Message::new("assistant", g.text.trim()));
    }
    Ok(())
}

fn run_convert(a: ConvertArgs) -> Result<()> {
    let src = match a.gguf {
        Some(p) => p,
        None => camelid_model::load::resolve(None, None)?.1,
    };
    camelid_model::load::convert::gguf_to_hf(&src, &a.out, parse_dtype(&a.dtype)?)
        .with_context(|| format!("converting {}", src.display()))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
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
        let lm_on_cpu = lm.model.device().is_cpu();
        let step_tokens = a
            .max_num_batched_tokens
            .unwrap_or(if lm_on_cpu { 512 } else { 2048 })
            .max(1);
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
            engine: camelid_engine::EngineHandle::spawn(
                lm,
                camelid_engine::EngineConfig {
                    max_waiting: a.max_concurrent.max(1),
                    max_running: a.max_num_seqs.max(1),
                    max_batch_tokens: step_tokens,
                    max_prefill_tokens_while_decoding: a
                        .max_prefill_tokens_while_decoding
                        .unwrap_or(if lm_on_cpu { 64 } else { step_tokens })
                        .max(1),
                    max_step_stretch: match a.max_step_stretch {
                        Some(s) if s > 0.0 => Some(s.max(1.0)),
                        Some(_) => None,
                        None => lm_on_cpu.then_some(1.0),
                    },
                    block_size: a.block_size.max(1),
                    kv_cache_mb: a.kv_cache_mb.max(1),
                    prefix_caching: !a.no_prefix_caching,
                    num_blocks: None,
                    host_kv_dtype: match a.kv_cache_dtype {
                        KvCacheDtype::F16 => KvDtype::F16,
                        KvCacheDtype::F32 => KvDtype::F32,
                        KvCacheDtype::Q8_0 => KvDtype::Q8_0,
                    },
                },
            ),
        };
        out.push(entry);
    }
    Ok(out)
}

fn run_serve(a: ServeArgs) -> Result<()> {
    let arena = camelid_server::arena::Arena::new(a.arena_log.clone()).context("arena log")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
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

fn run_bench(a: BenchArgs) -> Result<()> {
    let o = camelid_eval::bench::BenchOptions {
        endpoint: a.endpoint.clone(),
        model: a.model.clone(),
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        concurrency: a.concurrency.clone(),
        requests_per_client: a.requests_per_client,
        api_key: a.api_key.clone(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    if let Some(h) = a.second_turn {
        let (t1, t2) = rt.block_on(camelid_eval::bench::second_turn(&o, h))?;
        println!(
            "{}: history {h} tokens: first turn TTFT {:.0} ms, second turn TTFT {:.0} ms ({:.1}x)",
            a.name,
            t1 * 1e3,
            t2 * 1e3,
            t1 / t2
        );
        if let Some(p) = &a.json {
            let doc = serde_json::json!({"name": a.name, "history_tokens": h, "ttft_first_s": t1, "ttft_second_s": t2});
            std::fs::write(p, serde_json::to_string_pretty(&doc)?)?;
        }
        return Ok(());
    }
    let rows = rt.block_on(camelid_eval::bench::run(&o))?;
    print!("{}", camelid_eval::bench::render(&a.name, &rows));
    if let Some(p) = &a.json {
        let doc = serde_json::json!({"name": a.name, "endpoint": a.endpoint, "model": a.model,
            "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens, "levels": rows});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn run_mtbench(c: MtbenchCommand) -> Result<()> {
    use camelid_eval::{answer, client::ChatClient, data, judge, show};
    let rt = tokio::runtime::Runtime::new()?;
    match c {
        MtbenchCommand::Answer(a) => {
            let qs = data::select_questions(
                data::load_questions(&a.questions)?,
                a.first_n,
                a.per_category,
            );
            let client = ChatClient::new(&a.endpoint, &a.model, a.api_key.clone())?;
            let opts = answer::AnswerOptions {
                out: a.out.clone(),
                max_tokens: a.max_tokens,
                num_choices: a.num_choices,
                parallel: a.parallel,
                force_temperature: a.force_temperature,
                model_id: a.model_id.clone().unwrap_or_else(|| a.model.clone()),
                system: a.system.clone(),
            };
            let (ok, failed) = rt.block_on(answer::run(&client, &qs, &opts))?;
            eprintln!(
                "answered {ok}, failed {failed} (failed ones are retried on the next run) -> {}",
                a.out.display()
            );
            if failed > 0 && ok == 0 {
                anyhow::bail!("every question failed");
            }
        }
        MtbenchCommand::Judge(a) => {
            let qs = data::select_questions(
                data::load_questions(&a.questions)?,
                a.first_n,
                a.per_category,
            );
            let mode = match a.mode.as_str() {
                "single" => judge::Mode::Single,
                "pairwise-baseline" => judge::Mode::PairwiseBaseline,
                "pairwise-all" => judge::Mode::PairwiseAll,
                o => {
                    anyhow::bail!("unknown --mode {o:?} (single, pairwise-baseline, pairwise-all)")
                }
            };
            let references = match &a.references {
                Some(p) => data::read_jsonl::<data::Answer>(p)?
                    .into_iter()
                    .map(|r| (r.question_id, r))
                    .collect(),
                None => Default::default(),
            };
            let j = judge::Judge {
                client: ChatClient::new(&a.judge_endpoint, &a.judge_model, a.api_key.clone())?,
                prompts: data::load_judge_prompts(&a.judge_prompts)?,
                references,
                max_tokens: a.judge_max_tokens,
            };
            let answers = data::load_answers(&a.answers)?;
            let opts = judge::JudgeOptions {
                mode,
                baseline: a.baseline.clone(),
                out: a.out.clone(),
                parallel: a.parallel,
                models: a.models.clone(),
            };
            let (ok, errors) = rt.block_on(judge::run(&j, &qs, &answers, &opts))?;
            eprintln!(
                "judged {ok} matches, {errors} failed -> {}",
                a.out.display()
            );
        }
        MtbenchCommand::Show(a) => {
            let qs = match &a.questions {
                Some(p) => data::load_questions(p)?,
                None => vec![],
            };
            let first: Option<serde_json::Value> =
                data::read_existing::<serde_json::Value>(&a.judgments)
                    .into_iter()
                    .next();
            let pairwise = match a.mode.as_deref() {
                Some("pairwise") => true,
                Some("single") => false,
                Some(o) => anyhow::bail!("unknown --mode {o:?} (single, pairwise)"),
                None => first.as_ref().is_some_and(|v| v.get("g1_winner").is_some()),
            };
            let md = a.format == "markdown";
            if pairwise {
                let rows = show::pair_table(&data::read_jsonl(&a.judgments)?);
                if a.format == "json" {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", show::render_pair(&rows, md));
                }
            } else {
                let rows = show::single_table(&data::read_jsonl(&a.judgments)?, &qs);
                if a.format == "json" {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", show::render_single(&rows, md));
                }
            }
        }
    }
    Ok(())
}

fn run_arena_ratings(a: ArenaRatingsArgs) -> Result<()> {
    use camelid_eval::ratings;
    let mut battles = vec![];
    for p in &a.battles {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        battles
            .extend(ratings::read_battles(&text).with_context(|| format!("in {}", p.display()))?);
    }
    if battles.is_empty() {
        anyhow::bail!("no battles in {:?}", a.battles);
    }
    let rows = ratings::leaderboard(&battles, a.bootstrap, a.seed);
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        "markdown" => print!("{}", ratings::render_leaderboard(&rows, true)),
        "text" => print!("{}", ratings::render_leaderboard(&rows, false)),
        f => anyhow::bail!("unknown --format {f:?} (text, markdown, json)"),
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Generate(a) => run_generate(a),
        Command::Chat(a) => run_chat(a),
        Command::Convert(a) => run_convert(a),
        Command::Serve(a) => run_serve(a),
        Command::Mtbench(c) => run_mtbench(c),
        Command::Arena(ArenaCommand::Ratings(a)) => run_arena_ratings(a),
        Command::Bench(a) => run_bench(a),
        Command::Score(a) => run_score(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
