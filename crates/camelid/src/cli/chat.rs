//! `camelid chat`: an interactive multi-turn chat on stdin/stdout.

use super::model_args::{gen_params, load, ModelArgs, SamplingArgs};
use anyhow::Result;
use camelid_model::decode::generate;
use camelid_model::text::chat_prompt::chat_prompt_ids;
use camelid_model::Message;
use clap::Args;
use std::io::{BufRead, Write};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message before the conversation (default: the template's own, if any).
    #[arg(long)]
    system: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
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
        let ids = chat_prompt_ids(&lm.template, &lm.tokenizer, &msgs, true)?;
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
