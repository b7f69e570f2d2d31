//! Shared fixtures: the default model (fetched once by `.ci/run` or on first use) and its
//! f32 safetensors conversion (made once, kept under `target/tmp`).

#![allow(dead_code)]

pub mod llama_cpp;
pub mod lora;
pub mod random_model;

use camelid_model::LoadOptions;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn default_gguf() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        camelid_model::load::resolve(None, None)
            .expect("default model (run models/fetch-default.sh)")
            .1
    })
    .clone()
}

/// The default model converted to an f32 HF folder.
pub fn converted_f32() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| cached_conversion(&default_gguf(), candle_core::DType::F32))
        .clone()
}

/// `gguf` converted to an HF folder, made once and kept in cargo's temp dir for tests
/// (`target/tmp`), shared by every test binary and run. (A ~530 MB f32 copy per test process
/// in /tmp once filled the CI disk.) The key holds the file's size and a hash of the
/// converter's source, so changing the converter makes a fresh copy. The folder appears by
/// one rename, so a folder that exists is complete even when test binaries race.
pub fn cached_conversion(gguf: &Path, dtype: candle_core::DType) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    include_str!("../../src/load/convert.rs").hash(&mut h);
    std::fs::metadata(gguf).expect("gguf").len().hash(&mut h);
    let stem = gguf.file_stem().unwrap().to_string_lossy();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join(format!("{stem}-{dtype:?}-{:016x}", h.finish()));
    if dir.exists() {
        return dir;
    }
    // Copies made by an earlier converter are stale: remove them (~530 MB each in f32).
    let prefix = format!("{stem}-{dtype:?}-");
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) && e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let tmp = root.join(format!(".{stem}-{dtype:?}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    camelid_model::load::convert::gguf_to_hf(gguf, &tmp, dtype).expect("convert");
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test binary won the race; its folder is the same.
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(dir.exists(), "could not place {}", dir.display());
    }
    dir
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

/// The largest |a - b|; NaN if any difference is (`f32::max` would drop a NaN, and an output
/// of NaNs would pass as exact).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    camelid_model::decode::sampling::top_k_indices(v, k)
}
