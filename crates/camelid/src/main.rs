//! `camelid`: the command line. Each subcommand (a module of `cli`) wires the library crates
//! together; this file only parses the command and dispatches.

mod cli;

use clap::{Parser, Subcommand};
use cli::{arena, bench, chat, convert, generate, mtbench, score, serve};

#[derive(Parser)]
#[command(
    name = "camelid",
    version,
    about = "Inference server for LLaMA-family chat models (Vicuna, Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen, Phi-3, Gemma)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt and print it as it streams.
    Generate(generate::GenerateArgs),
    /// Chat interactively (multi-turn, with the model's chat template). Empty line or /exit quits.
    Chat(chat::ChatArgs),
    /// Convert a GGUF file into an HF folder (safetensors, config.json, tokenizer.json).
    Convert(convert::ConvertArgs),
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Load-test any OpenAI-compatible server: prefill/decode throughput, TTFT, inter-token latency.
    Bench(bench::BenchArgs),
    /// MT-bench: generate answers, judge them with an LLM, show the results.
    #[command(subcommand)]
    Mtbench(mtbench::MtbenchCommand),
    /// Chatbot Arena ratings from pairwise battles.
    #[command(subcommand)]
    Arena(arena::ArenaCommand),
    /// Write the logits of every position of a token sequence (raw little-endian f32,
    /// positions × vocab): compares devices, dtypes and implementations on the same weights.
    Score(score::ScoreArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // PostgreSQL's notices ("relation … already exists, skipping" for every
                // table at each start) are not news.
                .unwrap_or_else(|_| "info,sqlx::postgres::notice=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Mtbench(c) => mtbench::run(c),
        Command::Arena(c) => arena::run(c),
        Command::Bench(a) => bench::run(a),
        Command::Score(a) => score::run(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
