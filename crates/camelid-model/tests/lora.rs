//! LoRA adapters applied at run time against the same adapters merged into the weights
//! (`W + alpha / r · B A`, computed by the test and served as a plain model): a random-weight
//! LLaMA as an HF folder and as a GGUF (whose Q/K rows llama.cpp's converter permuted), each
//! under a PEFT adapter and under the same adapter as a llama.cpp LoRA GGUF, so both readers
//! and both directions of the Q/K permutation are checked. llama.cpp's own application of a
//! LoRA GGUF is checked in `llama_cpp_parity.rs`; the CPU serving runtime's in the engine's
//! tests, against this file's (tensor) runtime.

mod common;
use camelid_model::{ForwardBatch, LogitsWanted, LoraAdapter};
use common::lora::{self as adapters, Adapter, ALL_TARGETS};
use common::random_model::{self, Shape, Vocab, TINY};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SHAPE: Shape = Shape {
    heads: 4,
    kv_heads: 2,
    head_dim: None,
    tied: false,
};

/// A random LLaMA (HF folder), a random adapter of every projection, and the merged folder.
struct Fixture {
    base: tempfile::TempDir,
    adapter: Adapter,
    merged: PathBuf,
    _tmp: tempfile::TempDir,
}

fn fixture(seed: u64) -> Fixture {
    fixture_of("llama", seed)
}

fn fixture_of(arch: &str, seed: u64) -> Fixture {
    let base = random_model::write_hf(arch, SHAPE, &TINY, serde_json::json!({}), seed);
    let cfg = common::load(base.path()).model.config().clone();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapters::write_peft(
        &tmp.path().join("peft"),
        &cfg,
        4,
        8.0,
        ALL_TARGETS,
        0.3,
        seed + 1,
    );
    let merged = tmp.path().join("merged");
    adapters::merge_into(base.path(), &adapter, &merged);
    Fixture {
        base,
        adapter,
        merged,
        _tmp: tmp,
    }
}

fn prompt() -> Vec<u32> {
    random_model::prompt_in(TINY.vocab, 24, 7)
}

/// Every position's logits of the model at `model` under the adapter at `adapter`.
fn logits(model: &Path, adapter: Option<&Path>) -> Vec<f32> {
    let lm = common::load(model);
    let lora = adapter.map(|p| {
        Arc::new(LoraAdapter::load("t", p, lm.model.config(), lm.model.device()).unwrap())
    });
    lm.model
        .logits_all_adapted(&prompt(), lora)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The adapted model equals the merged one, and the adapter changes the base's logits.
fn check(label: &str, base: &Path, adapter: &Path, merged: &Path) {
    let adapted = logits(base, Some(adapter));
    let reference = logits(merged, None);
    let plain = logits(base, None);
    let d = common::max_abs_diff(&adapted, &reference);
    let moved = common::max_abs_diff(&plain, &reference);
    eprintln!("{label}: |adapted - merged| {d:.2e}, |base - merged| {moved:.3}");
    assert!(d < 1e-3, "{label}: adapted and merged logits differ by {d}");
    assert!(
        moved > 0.5,
        "{label}: the adapter barely moves the logits ({moved})"
    );
}

#[test]
fn peft_adapter_on_an_hf_folder_equals_its_merged_weights() {
    let f = fixture(11);
    check("PEFT on HF", f.base.path(), &f.adapter.dir, &f.merged);
}

#[test]
fn peft_adapter_on_a_gguf_equals_its_merged_gguf() {
    // The GGUF's Q/K rows are permuted by the converter: the adapter's B rows must follow.
    let f = fixture(12);
    let base = random_model::write_gguf(f.base.path(), "llama", &Vocab::Fixture);
    let merged = random_model::write_gguf(&f.merged, "llama", &Vocab::Fixture);
    check("PEFT on GGUF", &base, &f.adapter.dir, &merged);
}

#[test]
fn lora_gguf_equals_its_merged_weights_on_a_gguf_and_on_an_hf_folder() {
    let f = fixture(13);
    let cfg = common::load(f.base.path()).model.config().clone();
    let lora =
        adapters::write_lora_gguf(&f.adapter, "llama", &cfg, &f.base.path().join("lora.gguf"));
    let base = random_model::write_gguf(f.base.path(), "llama", &Vocab::Fixture);
    let merged = random_model::write_gguf(&f.merged, "llama", &Vocab::Fixture);
    check("LoRA GGUF on GGUF", &base, &lora, &merged);
    // On the HF folder the GGUF adapter's permuted Q/K rows are put back.
    check("LoRA GGUF on HF", f.base.path(), &lora, &f.merged);
}

/// llama.cpp writes Mistral models, and their adapters, as `llama` GGUFs: such an adapter
/// fits an HF Mistral folder (its Q/K rows put back in HF's layout).
#[test]
fn a_llama_lora_gguf_fits_a_mistral_folder() {
    let f = fixture_of("mistral", 16);
    let cfg = common::load(f.base.path()).model.config().clone();
    assert_eq!(cfg.architecture, "mistral");
    let lora =
        adapters::write_lora_gguf(&f.adapter, "llama", &cfg, &f.base.path().join("lora.gguf"));
    check(
        "llama LoRA GGUF on HF Mistral",
        f.base.path(),
        &lora,
        &f.merged,
    );
}

#[test]
fn a_batch_runs_each_chunk_under_its_own_adapter() {
    let f = fixture(14);
    let lm = common::load(f.base.path());
    let lora = Arc::new(
        LoraAdapter::load("t", &f.adapter.dir, lm.model.config(), lm.model.device()).unwrap(),
    );
    let p = prompt();
    let alone = |a: Option<Arc<LoraAdapter>>| -> Vec<f32> {
        let l = lm.model.logits_all_adapted(&p, a).unwrap();
        l.flatten_all().unwrap().to_vec1().unwrap()
    };
    let (plain, adapted) = (alone(None), alone(Some(lora.clone())));
    // Base, adapted, base: three sequences in one forward.
    let mut batch = ForwardBatch::default();
    for (seq, a) in [(0, None), (1, Some(lora.clone())), (2, None)] {
        batch.push(seq, 0, &p, LogitsWanted::All);
        batch.adapt_last(a);
    }
    let mut kv = camelid_model::kv::ContiguousKv::new();
    let all: Vec<f32> = lm
        .model
        .forward(&batch, &mut kv)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let n = plain.len();
    for (i, want) in [&plain, &adapted, &plain].into_iter().enumerate() {
        let d = common::max_abs_diff(&all[i * n..(i + 1) * n], want);
        assert!(d < 1e-4, "chunk {i} differs from its sequence alone by {d}");
    }
}

#[test]
fn adapters_that_do_not_fit_are_refused() {
    let f = fixture(15);
    let lm = common::load(f.base.path());
    let (cfg, dev) = (lm.model.config().clone(), lm.model.device().clone());
    let err = |p: &Path| {
        LoraAdapter::load("t", p, &cfg, &dev)
            .unwrap_err()
            .to_string()
    };
    // Written for a model with another FFN width.
    let tmp = tempfile::tempdir().unwrap();
    let mut wide = cfg.clone();
    wide.intermediate_size *= 2;
    let other = adapters::write_peft(&tmp.path().join("wide"), &wide, 4, 8.0, ALL_TARGETS, 0.3, 1);
    let e = err(&other.dir);
    assert!(e.contains("another model"), "{e}");
    // DoRA, and modules the adapter cannot update.
    let cfg_path = f.adapter.dir.join("adapter_config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(&original).unwrap();
    c["use_dora"] = true.into();
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    assert!(err(&f.adapter.dir).contains("use_dora"));
    c["use_dora"] = false.into();
    c["modules_to_save"] = serde_json::json!(["lm_head"]);
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    assert!(err(&f.adapter.dir).contains("modules_to_save"));
    std::fs::write(&cfg_path, &original).unwrap();
    // A model GGUF is not an adapter; nor is a missing path.
    let gguf = random_model::write_gguf(f.base.path(), "llama", &Vocab::Fixture);
    assert!(err(&gguf).contains("not a LoRA adapter"));
    assert!(err(&tmp.path().join("nothing")).contains("nothing"));
}
