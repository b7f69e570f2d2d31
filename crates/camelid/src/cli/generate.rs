//! `camelid generate`: one prompt, its completion streamed to stdout.

use super::model_args::{gen_params, load, ModelArgs, SamplingArgs};
use anyhow::Result;
use camelid_model::decode::generate;
use camelid_model::text::chat_prompt::chat_prompt_ids;
use camelid_model::Message;
use clap::Args;
use std::io::Write;

#[derive(Args)]
pub struct GenerateArgs {
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

pub fn run(a: GenerateArgs) -> Result<()> {
    let lm = load(&a.model)?;
    let ids = if a.raw {
        lm.tokenizer.encode(&a.prompt, true)?
    } else {
        let mut msgs = vec![];
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        chat_prompt_ids(&lm.template, &lm.tokenizer, &msgs, true)?
    };
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
