//! `camelid convert`: a GGUF file to an HF folder.

use anyhow::{Context, Result};
use camelid_model::load::parse_dtype;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
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

pub fn run(a: ConvertArgs) -> Result<()> {
    let src = match a.gguf {
        Some(p) => p,
        None => camelid_model::load::resolve(None, None)?.1,
    };
    camelid_model::load::convert::gguf_to_hf(&src, &a.out, parse_dtype(&a.dtype)?)
        .with_context(|| format!("converting {}", src.display()))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
