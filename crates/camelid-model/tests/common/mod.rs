//! Shared fixtures: the default model (fetched once by `.ci/run` or on first use) and its
//! f32 safetensors conversion (made once per test process).

#![allow(dead_code)]

use camelid_model::LoadOptions;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn default_gguf() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        camelid_model::loader::resolve(None, None)
            .expect("default model (run models/fetch-default.sh)")
            .1
    })
    .clone()
}

/// The default model converted to an f32 HF folder.
pub fn converted_f32() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("camelid-test-f32-{}", std::process::id()));
        camelid_model::convert::gguf_to_hf(&default_gguf(), &dir, candle_core::DType::F32)
            .expect("convert");
        dir
    })
    .clone()
}

pub fn load(path: &std::path::Path) -> camelid_model::LoadedModel {
    camelid_model::load(Some(path.to_str().unwrap()), &LoadOptions::default()).expect("load")
}

/// A ~40-token chat prompt rendered with the model's own template.
pub fn chat_prompt(lm: &camelid_model::LoadedModel) -> Vec<u32> {
    let msgs = [camelid_model::Message::new(
        "user",
        "Explain in two sentences why the sky looks blue during the day and red at sunset.",
    )];
    let text = lm.template.render(&msgs, true).unwrap();
    lm.tokenizer.encode(&text, true).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    camelid_model::sampling::top_k_indices(v, k)
}
