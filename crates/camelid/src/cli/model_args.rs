//! The model and sampling flags the local subcommands share, and loading a model from them.

use anyhow::Result;
use camelid_model::decode::GenerationParams;
use camelid_model::load::{parse_dtype, parse_quantize};
use camelid_model::sampling_ranges::{self as ranges, FieldRange};
use camelid_model::{LoadOptions, LoadedModel, SamplingParams};
use clap::Args;
use std::sync::Arc;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Registry name, GGUF file, HF folder or hub id (owner/name). Default: SmolLM2-135M-Instruct.
    #[arg(long, env = "CAMELID_MODEL")]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// Chat template: a built-in (vicuna_v1.1, llama-2, llama-3, alpaca, zero_shot, one_shot,
    /// chatml, qwen-7b-chat, mistral, gemma) or `model`.
    #[arg(long)]
    pub template: Option<String>,
    /// Weight dtype for safetensors models: f32, bf16, f16 (default on CPU: f32 compute with
    /// f16/bf16 matrices kept 16-bit; on CUDA the checkpoint's own 16-bit type, else bf16).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize an HF model's matrices while loading, tensor by tensor (CPU): q4_0, q4_1,
    /// q5_0, q5_1, q8_0, q4_k, q5_k, q6_k.
    #[arg(long)]
    pub quantize: Option<String>,
    /// cpu or cuda[:N].
    #[arg(long, env = "CAMELID_DEVICE", default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Maximum new tokens (at least 1).
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub max_tokens: usize,
    /// 0 is greedy; at most 2 (the server's range).
    #[arg(long, default_value_t = 0.0, value_parser = temperature)]
    pub temperature: f32,
    /// Nucleus sampling: in [0, 1] (0 keeps the best token alone).
    #[arg(long, default_value_t = 1.0, value_parser = top_p)]
    pub top_p: f32,
    /// 0 is off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// In (0, 100]; 1 is off.
    #[arg(long, default_value_t = 1.0, value_parser = repetition_penalty)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

/// The sampling flags' ranges, as the server checks the same fields.
fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?}: a whole number, at least 1")),
    }
}

fn in_range(s: &str, r: FieldRange) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if r.contains(v) => Ok(v),
        _ => Err(format!("{s:?}: a number in {}", r.describe())),
    }
}

fn temperature(s: &str) -> std::result::Result<f32, String> {
    in_range(s, ranges::TEMPERATURE)
}

fn top_p(s: &str) -> std::result::Result<f32, String> {
    in_range(s, ranges::TOP_P)
}

fn repetition_penalty(s: &str) -> std::result::Result<f32, String> {
    in_range(s, ranges::REPETITION_PENALTY)
}

pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if (s == "cuda" || s.starts_with("cuda:")) && !cfg!(feature = "cuda") => {
            anyhow::bail!(
                "--device {s}: this camelid was built without CUDA (build it with \
                 `cargo build --release -p camelid --features cuda`)"
            )
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let idx = s
                .strip_prefix("cuda:")
                .map(|i| i.parse::<usize>())
                .transpose()?
                .unwrap_or(0);
            // One stream for every thread: `new_cuda` gives each host thread its own
            // (per-thread default stream), and the weights and the KV cache are made on the
            // loader's thread while the engine's thread runs the forwards, with nothing
            // ordering the two.
            let device = candle_core::Device::new_cuda_with_stream(idx)?;
            #[cfg(feature = "cuda")]
            // SAFETY: every tensor, kernel, cuBLAS call and copy of this device runs on its one
            // stream, so nothing needs cudarc's cross-stream events. With them (on by default,
            // and active once a context has its own stream) every allocation made two events
            // and every kernel argument waited on one and recorded another: ~7 ms of driver
            // calls per decode step on an H200 (benches/gpu/RESULTS.md, 2026-12-04).
            unsafe {
                device.as_cuda_device()?.disable_event_tracking();
            }
            Ok(device)
        }
        other => anyhow::bail!("unknown device {other:?} (cpu, cuda, cuda:N)"),
    }
}

/// `NAME=SPEC` or `SPEC` (the name is then the registry name, file stem or hub id).
pub(crate) fn split_model_arg(arg: &str) -> (Option<String>, String) {
    match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), p.to_string()),
        _ => (None, arg.to_string()),
    }
}

/// The one model a local subcommand runs, from `--model` or `CAMELID_MODEL`, which a machine
/// set up for `serve` may hold in serve's form: one `NAME=SPEC` runs SPEC; several
/// (comma-separated) are an error that says to name one.
fn single_model(spec: &str) -> Result<String> {
    // A file or folder of that very name is itself (`a=b.gguf`, `x,y/`).
    if std::path::Path::new(spec).exists() {
        return Ok(spec.to_string());
    }
    if spec.contains(',') {
        anyhow::bail!(
            "--model (or CAMELID_MODEL) `{spec}` lists several models, as `serve` takes them; \
             this command runs one: give --model with one of them"
        );
    }
    Ok(split_model_arg(spec).1)
}

/// The one model of a local subcommand (`generate`, `chat`, `score`): `--model` or
/// `CAMELID_MODEL`, which may be in serve's form ([`single_model`]).
pub fn load(m: &ModelArgs) -> Result<LoadedModel> {
    let spec = m.model.as_deref().map(single_model).transpose()?;
    load_spec(m, spec.as_deref())
}

/// A model by its spec as given (`serve` split its `NAME=SPEC` already), with `m`'s
/// options.
pub fn load_spec(m: &ModelArgs, spec: Option<&str>) -> Result<LoadedModel> {
    let opts = LoadOptions {
        device: parse_device(&m.device)?,
        dtype: m.dtype.as_deref().map(parse_dtype).transpose()?,
        quantize: m.quantize.as_deref().map(parse_quantize).transpose()?,
        revision: m.revision.clone(),
        template: m.template.clone(),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let lm = camelid_model::load(spec, &opts)?;
    tracing::info!(
        "loaded {} ({}) in {:.1}s, template {}{}",
        lm.name,
        lm.path.display(),
        t.elapsed().as_secs_f32(),
        lm.template.name(),
        if lm.tool_template.is_some() {
            " (its tool_use template for requests with tools)"
        } else {
            ""
        }
    );
    Ok(lm)
}

pub fn gen_params(lm: &LoadedModel, s: &SamplingArgs) -> GenerationParams {
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
    p.stop_strings = Arc::new(lm.stop_strings.iter().chain(&s.stop).collect());
    p
}

#[cfg(test)]
mod tests {
    use super::single_model;

    /// `CAMELID_MODEL` as a machine set up for `serve` holds it: one `NAME=SPEC` runs SPEC
    /// (it was read as a spec named `smol=smollm2-135m-instruct`), several are refused with a
    /// way forward; a plain spec, a path or hub id with `=` after a `/`, is itself.
    #[test]
    fn serves_form_names_one_model() {
        assert_eq!(
            single_model("smol=smollm2-135m-instruct").unwrap(),
            "smollm2-135m-instruct"
        );
        assert_eq!(
            single_model("lmsys/vicuna-7b-v1.5").unwrap(),
            "lmsys/vicuna-7b-v1.5"
        );
        assert_eq!(
            single_model("./models/a=b.gguf").unwrap(),
            "./models/a=b.gguf"
        );
        let err = single_model("vicuna=lmsys/vicuna-7b-v1.5,smol=smollm2-135m-instruct")
            .unwrap_err()
            .to_string();
        assert!(err.contains("give --model"), "{err}");
        // A file of that very name is itself.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a=b,c.gguf");
        std::fs::write(&odd, b"").unwrap();
        let odd = odd.to_str().unwrap();
        assert_eq!(single_model(odd).unwrap(), odd);
    }
}
