//! GGUF → HF folder (`model.safetensors`, or shards of it and their index past
//! [`SHARD_BYTES`]; `config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`), dequantized to f32/bf16/f16.

use crate::config::ArchFeatures;
use crate::error::{Error, Result};
use crate::load::gguf::{gguf_name, GgufFile};
use crate::load::gguf_tokenizer;
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// GGUF stores Q/K rows of each head interleaved for rotary pairs (2i, 2i+1); HF stores
/// them as halves (i, i + d/2). This undoes llama.cpp's `permute`.
pub fn unpermute_qk(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / n_heads;
    Ok(w.reshape((n_heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?)
}

/// Bytes of weights a `model-0000k-of-0000n.safetensors` shard holds at most: the converted
/// tensors are held a shard at a time (a 7B model in f32 is 27 GB, more than the machines
/// people run quantized models on hold).
pub const SHARD_BYTES: usize = 2 << 30;

pub fn gguf_to_hf(gguf: &Path, out: &Path, dtype: DType) -> Result<()> {
    gguf_to_hf_sharded(gguf, out, dtype, SHARD_BYTES)
}

/// [`gguf_to_hf`] with shards of at most `shard_bytes` (one tensor past it gets a shard of
/// its own): `model.safetensors` where one shard holds everything, else
/// `model-0000k-of-0000n.safetensors` and their `model.safetensors.index.json`, as
/// transformers' `save_pretrained` writes them.
pub fn gguf_to_hf_sharded(gguf: &Path, out: &Path, dtype: DType, shard_bytes: usize) -> Result<()> {
    let mut g = GgufFile::open(gguf, &Device::Cpu)?;
    let cfg = g.model_config()?;
    // The HF folder written here is a LLaMA one (config.json says so, Q/K rows unpermuted).
    if cfg.architecture != "llama" || cfg.features != ArchFeatures::default() {
        return Err(Error::Unsupported(format!(
            "{}: convert writes LLaMA folders; this file is {} with {:?}",
            gguf.display(),
            cfg.architecture,
            cfg.features
        )));
    }
    let tok = gguf_tokenizer::from_gguf(&g)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    for l in 0..cfg.num_layers {
        for t in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        ] {
            names.push(format!("model.layers.{l}.{t}.weight"));
        }
    }
    // Each shard is written once full, under a temporary name (their count is known at the
    // end); only one shard's tensors are held at a time.
    let mut shards: Vec<(std::path::PathBuf, Vec<String>)> = vec![];
    let mut shard: HashMap<String, Tensor> = HashMap::new();
    let (mut shard_size, mut total) = (0usize, 0usize);
    let mut flush = |shard: &mut HashMap<String, Tensor>| -> Result<()> {
        let path = out.join(format!(".shard-{}.safetensors", shards.len() + 1));
        candle_core::safetensors::save(shard, &path).map_err(|e| Error::io(&path, e))?;
        let mut names: Vec<String> = shard.drain().map(|(n, _)| n).collect();
        names.sort();
        shards.push((path, names));
        Ok(())
    };
    for name in names {
        let g_name = gguf_name(&name, false).expect("known tensor name");
        let t = g.read_qtensor(&g_name)?.dequantize(&Device::Cpu)?;
        let t = if name.ends_with("q_proj.weight") {
            unpermute_qk(&t, cfg.num_heads)?
        } else if name.ends_with("k_proj.weight") {
            unpermute_qk(&t, cfg.num_kv_heads)?
        } else {
            t
        };
        let t = t.to_dtype(dtype)?.contiguous()?;
        let bytes = t.elem_count() * dtype.size_in_bytes();
        if !shard.is_empty() && shard_size + bytes > shard_bytes {
            flush(&mut shard)?;
            shard_size = 0;
        }
        shard_size += bytes;
        total += bytes;
        shard.insert(name, t);
    }
    if !shard.is_empty() {
        flush(&mut shard)?;
    }
    let n = shards.len();
    let mut files = vec![];
    let mut weight_map = serde_json::Map::new();
    for (k, (tmp, names)) in shards.into_iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", k + 1)
        };
        let path = out.join(&file);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        for name in names {
            weight_map.insert(name, json!(file));
        }
        files.push(path);
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let p = out.join("model.safetensors.index.json");
        std::fs::write(&p, serde_json::to_string_pretty(&index).unwrap())
            .map_err(|e| Error::io(&p, e))?;
    }
    let dtype_name = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    // A scaling HF's llama config cannot say is refused: dropped, the HF model would run
    // unscaled (llama.cpp stores Llama 3.1's `llama3` scaling only as per-frequency factors).
    use crate::config::RopeScaling;
    let rope_scaling = match &cfg.rope_scaling {
        RopeScaling::None => serde_json::Value::Null,
        RopeScaling::Linear { factor } => json!({"type": "linear", "factor": factor}),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        } => json!({"rope_type": "yarn", "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "beta_fast": beta_fast, "beta_slow": beta_slow,
            "attention_factor": attention_factor}),
        other => {
            let what = match other {
                RopeScaling::Frequencies { .. } => "per-frequency factors (rope_freqs)",
                RopeScaling::LongRope { .. } => "LongRoPE",
                _ => "this rope scaling",
            };
            return Err(Error::Unsupported(format!(
                "{}: {what} cannot be written as an HF llama config",
                gguf.display()
            )));
        }
    };
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_ids.first(),
        "torch_dtype": dtype_name,
        "hidden_act": "silu",
    });
    let tok_text = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let tok_config = json!({
        "add_bos_token": tok.add_bos,
        "add_eos_token": tok.eos_appended.is_some(),
        "bos_token": tok_text(tok.bos_id),
        "eos_token": tok_text(tok.eos_ids.first().copied()),
        "unk_token": g.meta_u32("tokenizer.ggml.unknown_token_id").ok().and_then(|i| tok.id_to_token(i)),
        "chat_template": g.meta_str("tokenizer.chat_template"),
        "model_max_length": cfg.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let gen_config = json!({"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_ids});
    let write = |name: &str, v: String| {
        let p = out.join(name);
        std::fs::write(&p, v).map_err(|e| Error::io(&p, e))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&config).unwrap(),
    )?;
    // The weights' files are written through private temporary files (owner-only); they get
    // the mode a plain write gives here (the umask's), as the other files of the folder.
    let cfg_path = out.join("config.json");
    let mode = std::fs::metadata(&cfg_path)
        .map_err(|e| Error::io(&cfg_path, e))?
        .permissions();
    for st in &files {
        std::fs::set_permissions(st, mode.clone()).map_err(|e| Error::io(st, e))?;
    }
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&tok_config).unwrap(),
    )?;
    write(
        "generation_config.json",
        serde_json::to_string_pretty(&gen_config).unwrap(),
    )?;
    write("tokenizer.json", tokenizer_json(&tok)?)?;
    Ok(())
}

/// The tokenizer as `tokenizer.json`, its post-processor adding the BOS (and appending the
/// EOS) as the GGUF's `add_bos_token` (`add_eos_token`) say: transformers'
/// `PreTrainedTokenizerFast`, vLLM and TGI take special tokens from the post-processor alone
/// (not from `tokenizer_config.json`), so without one they encoded the converted model's
/// prompts without the BOS llama.cpp and camelid give it.
fn tokenizer_json(tok: &crate::text::tokenizer::Tokenizer) -> Result<String> {
    let mut doc: serde_json::Value = serde_json::from_str(&tok.to_json_string()?)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let special = |id: u32| tok.id_to_token(id).map(|text| (id, text));
    let bos = tok.bos_id.filter(|_| tok.add_bos).and_then(special);
    let eos = tok.eos_appended.and_then(special);
    if bos.is_some() || eos.is_some() {
        // A sequence between the special tokens, each tagged with the sequence's type id.
        let around = |seq: &str, type_id: u32| -> Vec<serde_json::Value> {
            let token = |(_, text): &(u32, String)| json!({"SpecialToken": {"id": text, "type_id": type_id}});
            bos.iter()
                .map(token)
                .chain([json!({"Sequence": {"id": seq, "type_id": type_id}})])
                .chain(eos.iter().map(token))
                .collect()
        };
        let single = around("A", 0);
        let pair = [around("A", 0), around("B", 1)].concat();
        let specials: serde_json::Map<String, serde_json::Value> = bos
            .iter()
            .chain(&eos)
            .map(|(id, text)| {
                (
                    text.clone(),
                    json!({"id": text, "ids": [id], "tokens": [text]}),
                )
            })
            .collect();
        doc["post_processor"] = json!({"type": "TemplateProcessing", "single": single,
            "pair": pair, "special_tokens": specials});
    }
    serde_json::to_string(&doc).map_err(|e| Error::Tokenizer(e.to_string()))
}
