//! `camelid score`: every position's logits of a token sequence, written as raw f32.

use super::model_args::{load, ModelArgs};
use anyhow::Result;
use clap::Args;

/// `--paged`: the serving engine's cache blocks and the prompt chunks the help promises.
const PAGED_BLOCK_SIZE: usize = 16;
const PAGED_CHUNKS: usize = 2;

#[derive(Args)]
pub struct ScoreArgs {
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

pub fn run(a: ScoreArgs) -> Result<()> {
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
        camelid_engine::score::paged_logits_all(&lm.model, &ids, PAGED_BLOCK_SIZE, PAGED_CHUNKS)?
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
