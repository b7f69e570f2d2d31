//! `camelid bench`: load-tests an OpenAI-compatible server.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// Base URL of the server (e.g. http://127.0.0.1:8000).
    #[arg(long)]
    endpoint: String,
    /// The model to request; by default the first the server lists at /v1/models.
    #[arg(long)]
    model: Option<String>,
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
    // A secret: --help names the variable, not its value.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of the load levels: TTFT of a second turn over a history of this many tokens.
    #[arg(long)]
    second_turn: Option<usize>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => rt.block_on(camelid_eval::bench::served_model(
            &a.endpoint,
            a.api_key.as_deref(),
        ))?,
    };
    let o = camelid_eval::bench::BenchOptions {
        endpoint: a.endpoint.clone(),
        model: model.clone(),
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        concurrency: a.concurrency.clone(),
        requests_per_client: a.requests_per_client,
        api_key: a.api_key.clone(),
    };
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
        let doc = serde_json::json!({"name": a.name, "endpoint": a.endpoint, "model": model,
            "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens, "levels": rows});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
