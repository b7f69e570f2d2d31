//! The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (`llama`: SentencePiece
//! pieces; `gpt2`: byte-level BPE with `tokenizer.ggml.pre`), built as an HF tokenizer.

use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use crate::text::tokenizer::{self, PieceType, Tokenizer};

/// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let origin = g.path.display().to_string();
    let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
    let tokens = g.meta_strings("tokenizer.ggml.tokens").ok_or_else(|| {
        Error::Tokenizer(format!(
            "{origin}: metadata field tokenizer.ggml.tokens is missing"
        ))
    })?;
    let types = g.meta_i32s("tokenizer.ggml.token_type").unwrap_or_default();
    let doc = match model {
        "gpt2" => {
            let merges = g.meta_strings("tokenizer.ggml.merges").ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{origin}: metadata field tokenizer.ggml.merges is missing"
                ))
            })?;
            let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
            tokenizer::byte_level_bpe_json(&tokens, &types, &merges, pre).map_err(|e| match e {
                Error::Unsupported(m) => Error::Unsupported(format!("{origin}: {m}")),
                e => e,
            })?
        }
        "llama" => {
            let scores = g
                .meta_f32s("tokenizer.ggml.scores")
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
            let pieces: Vec<_> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    (
                        t.clone(),
                        scores.get(i).copied().unwrap_or(0.0),
                        PieceType::from_i32(types.get(i).copied().unwrap_or(1)),
                    )
                })
                .collect();
            tokenizer::spm_bpe_json(
                &pieces,
                g.meta_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true),
            )
            .map_err(|e| Error::Tokenizer(format!("{origin}: {e}")))?
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{origin}: tokenizer.ggml.model {other:?} (supported: gpt2, llama)"
            )))
        }
    };
    let mut doc = doc;
    // Phi-3's chat tokens swallow the whitespace after them (HF's tokenizer.json marks them
    // `rstrip`; its template writes `<|assistant|>\n`). GGUF keeps no such flag: llama.cpp
    // goes by the model's name, and so does camelid, with llama.cpp's exceptions.
    let name = g.meta_str("general.name").unwrap_or("").to_lowercase();
    if name.contains("phi-3") || name.contains("phi3") {
        if let Some(added) = doc
            .get_mut("added_tokens")
            .and_then(serde_json::Value::as_array_mut)
        {
            for t in added {
                let kept = matches!(
                    t["content"].as_str(),
                    Some("<unk>" | "<s>" | "<|endoftext|>")
                );
                t["rstrip"] = serde_json::Value::Bool(!kept);
            }
        }
    }
    let mut tok = Tokenizer::from_json_value(doc, &origin)?;
    tok.bos_id = g.meta_u32("tokenizer.ggml.bos_token_id").ok();
    tok.eos_ids = g
        .meta_u32("tokenizer.ggml.eos_token_id")
        .ok()
        .into_iter()
        .collect();
    // llama.cpp ends generation at the end-of-turn and end-of-message tokens too (its
    // "EOG" set); the converter writes them for Llama 3, Gemma, Qwen and others.
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Ok(id) = g.meta_u32(key) {
            if (id as usize) < tokens.len() && !tok.eos_ids.contains(&id) {
                tok.eos_ids.push(id);
            }
        }
    }
    let fim_key = |k: &str| {
        g.meta_u32(&format!("tokenizer.ggml.fim_{k}_token_id"))
            .ok()
            .filter(|&i| (i as usize) < tokens.len())
    };
    tok.fim = match (fim_key("pre"), fim_key("suf"), fim_key("mid")) {
        (Some(prefix), Some(suffix), Some(middle)) => Some(tokenizer::FimTokens {
            prefix,
            suffix,
            middle,
        }),
        _ => tok.find_fim(),
    };
    if g.meta_bool("tokenizer.ggml.add_eos_token") == Some(true) {
        tok.eos_appended = tok.eos_ids.first().copied();
    }
    // Without the key, llama.cpp's defaults: a BOS for SentencePiece vocabularies and for
    // Llama 3's byte-level one (early Llama 3 conversions have no key).
    let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("");
    tok.add_bos = g
        .meta_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(model == "llama" || matches!(pre, "llama3" | "llama-v3" | "llama-bpe"));
    Ok(tok)
}
