//! One entry point from a model spec (registry name, GGUF file, HF folder, or hub id) to a
//! ready model: weights, tokenizer, chat template, stop tokens.

use crate::config::ids_from_json;
use crate::constraint::GrammarCompiler;
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use crate::load::gguf_tokenizer;
use crate::load::hf_folder::{find_weight_files, HfWeights};
use crate::load::host_memory;
use crate::load::weights::build_llama;
use crate::models::Llama;
use crate::text::template::ChatTemplate;
use crate::text::tokenizer::{self, Tokenizer};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Default: on the CPU, f32 compute with f16/bf16 matrices kept 16-bit (an f32 file stays
    /// f32); bf16 on CUDA. Given, every weight is converted to it (GGUF always computes in f32).
    pub dtype: Option<DType>,
    /// Quantize an HF model's matrices to this GGML format while loading, one tensor at a
    /// time (CPU, f32 compute; GGUF files keep their own formats).
    pub quantize: Option<GgmlDType>,
    pub revision: Option<String>,
    /// Built-in template name, or `model` for the model's jinja template.
    pub template: Option<String>,
    /// Quantized CPU matmuls through candle's `QMatMul` instead of camelid's own kernels
    /// ([`camelid_kernels::quant`]): the reference the own kernels are tested against.
    pub candle_qmatmul: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            quantize: None,
            revision: None,
            template: None,
            candle_qmatmul: false,
        }
    }
}

pub struct LoadedModel {
    /// Display name (registry name, file stem or hub id).
    pub name: String,
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The model's own `tool_use` template (an HF list's, a GGUF's
    /// `tokenizer.chat_template.tool_use`): what a request with tools renders with, as
    /// transformers and llama.cpp choose it. `None` when the model has none or another
    /// template was chosen for it.
    pub tool_template: Option<ChatTemplate>,
    /// Tokens that end generation: EOS ids plus the template's end-of-turn tokens.
    pub stop_token_ids: Vec<u32>,
    /// Extra stop strings from the template (FastChat `stop_str`).
    pub stop_strings: Vec<String>,
    pub context_length: usize,
    /// Compiles structured-output grammars for this model's vocabulary.
    pub grammar: Arc<GrammarCompiler>,
    /// The pooling an embedding model's files name (GGUF's `pooling_type`,
    /// sentence-transformers' `1_Pooling/config.json`); `None` when they name none.
    pub pooling: Option<crate::batch::Pooling>,
    /// What of an embedding model's files camelid does not compute (a pooling it lacks, a
    /// sentence-transformers `Dense` module): its embeddings are refused.
    pub embedding_gaps: crate::batch::EmbeddingGaps,
    /// The sampling its publisher recommends (an HF folder's `generation_config.json`): what
    /// a request that names none of these gets, as vLLM's `--generation-config auto`.
    pub sampling_defaults: SamplingDefaults,
}

/// Sampling fields a model's `generation_config.json` sets (`None`: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// The fields vLLM takes from a `generation_config.json` (`do_sample` is not read, as
    /// vLLM does not); values out of range are left out.
    pub fn from_generation_config(g: &serde_json::Value) -> Self {
        use crate::sampling_ranges::{FieldRange, MIN_P, REPETITION_PENALTY, TEMPERATURE, TOP_P};
        let f = |k: &str, r: FieldRange| {
            g.get(k)
                .and_then(|v| v.as_f64())
                .map(|x| x as f32)
                .filter(|&x| r.contains(x))
        };
        Self {
            temperature: f("temperature", TEMPERATURE),
            top_p: f("top_p", TOP_P),
            top_k: g.get("top_k").and_then(|v| v.as_i64()).filter(|&k| k >= -1),
            min_p: f("min_p", MIN_P),
            repetition_penalty: f("repetition_penalty", REPETITION_PENALTY),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl LoadedModel {
    /// The model with the jinja chat template `source` instead of its own (`serve
    /// --chat-template`, as vLLM's and llama.cpp's flag): the special tokens it renders are
    /// the model's, its end-of-turn tokens stop generation.
    pub fn with_chat_template(mut self, source: String) -> Result<Self> {
        let token = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
        let (bos_token, eos_token) = match &self.template {
            ChatTemplate::Jinja {
                bos_token,
                eos_token,
                ..
            } => (bos_token.clone(), eos_token.clone()),
            ChatTemplate::Builtin(_) => (
                token(self.tokenizer.bos_id).unwrap_or_default(),
                token(self.tokenizer.eos_ids.first().copied()).unwrap_or_default(),
            ),
        };
        let template = ChatTemplate::Jinja {
            source,
            bos_token,
            eos_token,
        };
        self.stop_token_ids = stop_ids(&self.tokenizer, &template, self.tokenizer.eos_ids.clone());
        self.stop_strings = template.stop_strings();
        self.template = template;
        // The flag's template renders every request, with tools or without.
        self.tool_template = None;
        // Grammars end where the stop tokens may come.
        self.grammar = Arc::new(GrammarCompiler::new(&self.tokenizer, &self.stop_token_ids)?);
        Ok(self)
    }
}

pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::Invalid(format!(
            "unknown dtype {other:?} (f32, bf16, f16)"
        ))),
    }
}

/// A `--quantize` format: the GGML formats camelid's CPU kernels run.
pub fn parse_quantize(s: &str) -> Result<GgmlDType> {
    match s.to_ascii_lowercase().as_str() {
        "q4_0" => Ok(GgmlDType::Q4_0),
        "q4_1" => Ok(GgmlDType::Q4_1),
        "q5_0" => Ok(GgmlDType::Q5_0),
        "q5_1" => Ok(GgmlDType::Q5_1),
        "q8_0" => Ok(GgmlDType::Q8_0),
        "q4_k" => Ok(GgmlDType::Q4K),
        "q5_k" => Ok(GgmlDType::Q5K),
        "q6_k" => Ok(GgmlDType::Q6K),
        other => Err(Error::Invalid(format!(
            "unknown quantization {other:?} (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k)"
        ))),
    }
}

/// Resolves the spec to a local file or folder (fetching registry or hub models).
pub fn resolve(
    spec: Option<&str>,
    revision: Option<&str>,
) -> Result<(String, PathBuf, Option<String>)> {
    let reg = crate::load::registry::registry();
    let entry = match spec {
        None => Some(reg.default_entry()),
        Some(s) if !Path::new(s).exists() => reg.find(s),
        _ => None,
    };
    if let Some(e) = entry {
        let path = match e.source.as_str() {
            "pypi" => crate::load::registry::fetch_pypi(e)?,
            "hub" => crate::load::hub::fetch_repo(e.repo.as_deref().unwrap_or_default(), revision)?,
            other => return Err(Error::BadConfig(format!("registry source {other:?}"))),
        };
        return Ok((e.name.clone(), path, Some(e.template.clone())));
    }
    let spec = spec.unwrap_or_default();
    let p = Path::new(spec);
    if p.exists() {
        return Ok((local_model_name(p, spec), p.to_path_buf(), None));
    }
    if crate::load::hub::parse_hub_spec(spec).is_some() {
        // `models/foo` mistyped is also a hub id: the hub's answer (401 for a repo that does
        // not exist) must not hide that no such path exists here either.
        let path = crate::load::hub::fetch_model(spec, revision).map_err(|e| {
            Error::Io(format!(
                "{spec}: no such local file or folder; as a hub id: {e}"
            ))
        })?;
        return Ok((spec.to_string(), path, None));
    }
    Err(Error::Io(format!(
        "{spec}: no such file or folder, not a registry name, not a hub id (owner/name, or \
         owner/name:TAG for one GGUF file of the repo)"
    )))
}

/// The dtype a GPU computes an HF checkpoint in when none is asked: the checkpoint's own
/// 16-bit type (vicuna v1.5 and Llama 2 chat are float16: bf16 would drop 3 bits of every
/// weight), bf16 for f32 or unnamed ones, as vLLM's `dtype: auto`.
fn gpu_dtype(torch_dtype: Option<&str>) -> DType {
    match torch_dtype {
        Some("float16" | "half" | "fp16") => DType::F16,
        _ => DType::BF16,
    }
}

/// The name a local model is served as: a file's stem (`vicuna-7b.Q4_K_M.gguf` →
/// `vicuna-7b.Q4_K_M`), a folder's whole name (`Qwen2.5-7B-Instruct`, whose stem would end at
/// the dot), and for a snapshot in the HF hub cache (`models--lmsys--vicuna-7b-v1.5/
/// snapshots/<commit>`) its repo id, which also picks the template by name.
fn local_model_name(p: &Path, spec: &str) -> String {
    // `.` and `..` name the folder they stand for; a link keeps its own name.
    let full = match p.file_name() {
        Some(_) => p.to_path_buf(),
        None => std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()),
    };
    if full.is_dir() {
        // Whether it is a hub snapshot is read off its absolute path (`snapshots/<commit>`
        // given from inside `models--owner--name` has no grandparent as written).
        let absolute = std::fs::canonicalize(&full).unwrap_or_else(|_| full.clone());
        let parent = absolute.parent();
        let repo = parent
            .filter(|d| d.file_name().is_some_and(|n| n == "snapshots"))
            .and_then(|d| d.parent()?.file_name()?.to_str()?.strip_prefix("models--"));
        if let Some(repo) = repo {
            return repo.replacen("--", "/", 1);
        }
        if let Some(n) = full.file_name() {
            return n.to_string_lossy().into_owned();
        }
    } else if let Some(stem) = full.file_stem() {
        return stem.to_string_lossy().into_owned();
    }
    spec.to_string()
}

pub fn load(spec: Option<&str>, opts: &LoadOptions) -> Result<LoadedModel> {
    let (name, path, registry_template) = resolve(spec, opts.revision.as_deref())?;
    let template_choice = opts.template.clone().or(registry_template);
    let gguf_in_dir = if path.is_dir() && !path.join("config.json").exists() {
        one_gguf_in(&path)?
    } else {
        None
    };
    let mut loaded = if let Some(g) = gguf_in_dir {
        load_gguf(&name, &g, opts, template_choice.as_deref())?
    } else if path.is_dir() {
        load_hf_folder(&name, &path, opts, template_choice.as_deref())?
    } else {
        load_gguf(&name, &path, opts, template_choice.as_deref())?
    };
    loaded.path = path;
    check_special_ids(&loaded)?;
    Ok(loaded)
}

/// The BOS id, put before every prompt, names a row of the embedding: one past it would load
/// and then fail every request ("outside the vocabulary"), so the file is refused here.
/// (An end id past the rows is harmless: it is never sampled.)
fn check_special_ids(lm: &LoadedModel) -> Result<()> {
    let vocab = lm.model.config().vocab_size;
    if let Some(bad) = lm.tokenizer.bos_id.filter(|&i| i as usize >= vocab) {
        return Err(Error::BadConfig(format!(
            "{}: the BOS token id {bad} is past the vocabulary of {vocab} rows",
            lm.path.display()
        )));
    }
    // Tokens past the table (added by a fine-tune that did not grow it) load, as in
    // transformers; a prompt that spells one is refused (400), said here once.
    let past: Vec<u32> = lm
        .tokenizer
        .inner
        .get_vocab(true)
        .into_values()
        .filter(|&i| i as usize >= vocab)
        .collect();
    if !past.is_empty() {
        tracing::warn!(
            "{}: {} tokenizer token(s) have ids past the {vocab} rows of the embedding table \
             (the highest is {}): prompts that contain them will be refused",
            lm.path.display(),
            past.len(),
            past.iter().max().copied().unwrap_or_default()
        );
    }
    Ok(())
}

/// The folder's GGUF file, if it has one. Several are refused by name (a folder of Q4 and Q8
/// files would load either); so are a split model's shards (`-00001-of-00003.gguf`), which
/// camelid does not join: `llama-gguf-split --merge` makes one file of them.
fn one_gguf_in(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    let names = || {
        found
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if found.iter().any(|p| crate::load::gguf::is_split_shard(p)) {
        return Err(Error::Unsupported(format!(
            "{}: a split GGUF ({}); join its shards into one file first \
             (llama.cpp's `llama-gguf-split --merge FIRST-SHARD OUT.gguf`)",
            dir.display(),
            names()
        )));
    }
    if found.len() > 1 {
        return Err(Error::Invalid(format!(
            "{}: several GGUF files ({}); name the one to serve",
            dir.display(),
            names()
        )));
    }
    Ok(found.pop())
}

fn pick_template(
    choice: Option<&str>,
    jinja: Option<ChatTemplate>,
    name: &str,
) -> Result<ChatTemplate> {
    match choice {
        Some("model") | Some("jinja") | None => match jinja {
            Some(j) => Ok(j),
            None if matches!(choice, Some("jinja")) => Err(Error::Template(format!(
                "{name} has no chat_template of its own"
            ))),
            None => {
                let builtin = ChatTemplate::for_model_name(name);
                if builtin.name == "one_shot" {
                    // FastChat's fallback too, but a chat model of another family would
                    // answer in the wrong format without a word.
                    tracing::warn!(
                        "{name} has no chat_template and its name names no family camelid \
                         knows: serving it with FastChat's one_shot template (--template NAME \
                         or --chat-template FILE chooses another)"
                    );
                }
                Ok(ChatTemplate::Builtin(builtin))
            }
        },
        Some(other) => ChatTemplate::builtin(other),
    }
}

/// The model's `tool_use` template, kept when the model's own template is the one served
/// (a built-in chosen by name replaces both).
fn own_tool_template(choice: Option<&str>, tool: Option<ChatTemplate>) -> Option<ChatTemplate> {
    matches!(choice, Some("model") | Some("jinja") | None)
        .then_some(tool)
        .flatten()
}

/// The stop ids of a model served with `template`, and `tool` for requests with tools: EOS
/// plus the turn ends of both.
fn template_stop_ids(
    tok: &Tokenizer,
    template: &ChatTemplate,
    tool: Option<&ChatTemplate>,
) -> Vec<u32> {
    let ids = stop_ids(tok, template, tok.eos_ids.clone());
    match tool {
        Some(t) => stop_ids(tok, t, ids),
        None => ids,
    }
}

/// Stop ids: EOS plus special tokens the template ends turns with.
fn stop_ids(tok: &Tokenizer, template: &ChatTemplate, mut ids: Vec<u32>) -> Vec<u32> {
    // Qwen's ChatML turns end with <|im_end|>, Phi-3's with <|end|> (its GGUF names only
    // <|endoftext|> as EOS).
    for t in [
        "<|im_end|>",
        "<|eot_id|>",
        // Llama 3.1's end of a tool-call message.
        "<|eom_id|>",
        "<|end_of_text|>",
        "<|end|>",
        // Gemma's turns (its GGUF names only <eos> as EOS).
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
    ] {
        let used = match template {
            ChatTemplate::Builtin(b) => b.stop_str == Some(t) || t == "</s>",
            ChatTemplate::Jinja {
                source, eos_token, ..
            } => source.contains(t) || eos_token == t,
        };
        if used {
            if let Some(id) = tok.token_to_id(t) {
                ids.push(id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

pub fn load_gguf(
    name: &str,
    path: &Path,
    opts: &LoadOptions,
    template: Option<&str>,
) -> Result<LoadedModel> {
    if let Some(q) = opts.quantize {
        return Err(Error::Invalid(format!(
            "{}: --quantize {q:?} applies to HF safetensors/.bin models; a GGUF keeps its formats",
            path.display()
        )));
    }
    if let Some(d) = opts.dtype.filter(|&d| d != DType::F32) {
        // Its matrices keep the file's formats and compute is f32 whatever is asked.
        tracing::warn!(
            "{}: --dtype {d:?} does not apply to a GGUF file (its formats are kept): ignored",
            path.display()
        );
    }
    let mut g = GgufFile::open(path, &opts.device)?;
    if let Ok(n @ 2..) = g.meta_u32("split.count") {
        return Err(Error::Unsupported(format!(
            "{}: shard of a GGUF split in {n}; join the shards into one file first \
             (llama.cpp's `llama-gguf-split --merge FIRST-SHARD OUT.gguf`)",
            path.display()
        )));
    }
    g.own_kernels = !opts.candle_qmatmul;
    let cfg = g.model_config()?;
    if opts.device.is_cpu() {
        let bytes = gguf_host_bytes(&g.content.tensor_infos);
        let q4 = q4_k_bytes(cfg.matrix_parameters());
        let hint = if bytes > q4 + q4 / 2 {
            format!(
                "; a Q4_K_M file of it would take about {}",
                host_memory::gib(q4)
            )
        } else {
            String::new()
        };
        host_memory::check_weights_fit(&path.display().to_string(), bytes, &hint)?;
    }
    let tok = gguf_tokenizer::from_gguf(&g)?;
    let jinja_of = |s: &str| ChatTemplate::Jinja {
        source: s.to_string(),
        bos_token: tok
            .bos_id
            .and_then(|i| tok.id_to_token(i))
            .unwrap_or_default(),
        eos_token: tok
            .eos_ids
            .first()
            .and_then(|&i| tok.id_to_token(i))
            .unwrap_or_default(),
    };
    let jinja = g.meta_str("tokenizer.chat_template").map(jinja_of);
    // llama.cpp's converter writes an HF list's other templates as
    // `tokenizer.chat_template.NAME`.
    let tool_jinja = g.meta_str("tokenizer.chat_template.tool_use").map(jinja_of);
    let tool_template = own_tool_template(template, tool_jinja);
    let template = pick_template(template, jinja, name)?;
    let context_length = cfg.served_context();
    let mut embedding_gaps = crate::batch::EmbeddingGaps::default();
    let pooling = match g
        .meta_u32(&format!("{}.pooling_type", cfg.architecture))
        .map(crate::batch::Pooling::from_gguf)
    {
        Ok(Ok(p)) => p,
        Ok(Err(gap)) => {
            embedding_gaps.pooling = Some(gap);
            None
        }
        Err(_) => None,
    };
    // Quantized matmuls take f32 activations.
    let model = build_llama(cfg, &mut g, DType::F32, &opts.device)?;
    let stop_token_ids = template_stop_ids(&tok, &template, tool_template.as_ref());
    let grammar = Arc::new(GrammarCompiler::new(&tok, &stop_token_ids)?);
    Ok(LoadedModel {
        name: name.to_string(),
        path: path.to_path_buf(),
        model,
        stop_strings: template.stop_strings(),
        template,
        tool_template,
        tokenizer: tok,
        grammar,
        stop_token_ids,
        context_length,
        pooling,
        embedding_gaps,
        sampling_defaults: SamplingDefaults::default(),
    })
}

/// About what `params` weights take as Q4_K (4.5 bits a weight).
fn q4_k_bytes(params: u64) -> u64 {
    params.saturating_mul(9) / 16
}

/// Refuses an HF model the machine cannot hold on the CPU, from its shape and the format its
/// matrices are kept in: `--quantize`'s, `--dtype`'s, else 16 bits (a 16-bit download stays
/// 16-bit; an f32 one takes twice that, so this is a lower bound). Its matrices' parameters,
/// at most the `stored` values its files hold: a config's sizes are not trusted (weights it
/// names that the files lack are refused by name as they are read).
fn check_hf_fits(
    cfg: &crate::config::ModelConfig,
    stored: u64,
    opts: &LoadOptions,
    dir: &Path,
) -> Result<()> {
    let params = cfg.matrix_parameters().min(stored);
    let bytes = match (opts.quantize, opts.dtype) {
        (Some(q), _) => params.saturating_mul(q.type_size() as u64) / q.block_size() as u64,
        (None, Some(d)) => params.saturating_mul(d.size_in_bytes() as u64),
        (None, None) => params.saturating_mul(2),
    };
    let hint = if opts.quantize.is_none() {
        format!(
            "; `--quantize q4_k` would keep about {}",
            host_memory::gib(q4_k_bytes(params))
        )
    } else {
        String::new()
    };
    host_memory::check_weights_fit(&dir.display().to_string(), bytes, &hint)
}

/// Says which stored tensors the model does not use where that changes its answers: layers
/// past the config's count, and biases the architecture has no place for (transformers
/// warns of every unused weight; a multimodal checkpoint's other towers are not news).
fn warn_unread(unread: &[String], layers: usize, dir: &Path) {
    let layer_of = |n: &str| {
        n.strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
    };
    let telling: Vec<&String> = unread
        .iter()
        .filter(|n| layer_of(n).is_some_and(|l| l >= layers) || n.ends_with(".bias"))
        .collect();
    if let Some(first) = telling.first() {
        tracing::warn!(
            "{}: {} stored tensors are not used (e.g. {first}): does config.json say the \
             model these weights are (num_hidden_layers {layers}, its biases)?",
            dir.display(),
            telling.len()
        );
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::BadConfig(format!("{}: {e}", path.display())))
}

/// `"<s>"` or `{"content": "<s>", ...}` as tokenizer_config.json writes special tokens.
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

pub fn load_hf_folder(
    name: &str,
    dir: &Path,
    opts: &LoadOptions,
    template: Option<&str>,
) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let origin = cfg_path.display().to_string();
    let (hf, prefixes) = crate::models::parse_hf_config(&text, &origin)?;
    let cfg = crate::models::config_from_hf(&hf, &origin)?;
    let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
    let mut tok = if dir.join("tokenizer.json").exists() {
        Tokenizer::from_file(&dir.join("tokenizer.json"))?
    } else if dir.join("tokenizer.model").exists() {
        let added = read_json(&dir.join("added_tokens.json"))?;
        let spm = tokenizer::SpmConfig::from_hf(&tok_cfg, added.as_ref());
        tokenizer::from_sentencepiece_with(&dir.join("tokenizer.model"), &spm)?
    } else {
        return Err(Error::Tokenizer(format!(
            "{}: neither tokenizer.json nor tokenizer.model",
            dir.display()
        )));
    };
    // The special tokens as transformers reads them: tokenizer_config.json's, else
    // special_tokens_map.json's (2023 fine-tunes often keep them only there).
    let tokens_map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
    let special_text = |key: &str| {
        token_text(tok_cfg.get(key))
            .filter(|t| !t.is_empty())
            .or_else(|| token_text(tokens_map.get(key)).filter(|t| !t.is_empty()))
    };
    let bos_text = special_text("bos_token");
    let eos_text = special_text("eos_token");
    // The tokenizer's BOS first, as transformers and vLLM tokenize: config.json's
    // `bos_token_id` can name another token (DeepSeek-R1-Distill-Qwen's says 151643, its
    // tokenizer's BOS is 151646), which would then go before the template's own BOS.
    if let Some(b) = bos_text.as_deref().and_then(|t| tok.token_to_id(t)) {
        tok.bos_id = Some(b);
    } else if let Some(b) = hf
        .bos_token_id
        .as_ref()
        .map(ids_from_json)
        .and_then(|v| v.first().copied())
    {
        tok.bos_id = Some(b);
    }
    let mut eos = vec![];
    let mut sampling_defaults = SamplingDefaults::default();
    if let Some(g) = read_json(&dir.join("generation_config.json"))? {
        eos.extend(g.get("eos_token_id").map(ids_from_json).unwrap_or_default());
        sampling_defaults = SamplingDefaults::from_generation_config(&g);
    }
    eos.extend(
        hf.eos_token_id
            .as_ref()
            .map(ids_from_json)
            .unwrap_or_default(),
    );
    eos.extend(eos_text.as_deref().and_then(|t| tok.token_to_id(t)));
    eos.extend(tok.eos_ids.iter().copied());
    eos.sort();
    eos.dedup();
    tok.eos_ids = eos;
    tok.fim = tok.find_fim();
    // transformers applies `add_eos_token` (its `eos_token`) when it loads the tokenizer,
    // whatever the saved post-processor says.
    tok.eos_appended = match tok_cfg.get("add_eos_token").and_then(|v| v.as_bool()) {
        Some(true) => eos_text
            .as_deref()
            .and_then(|t| tok.token_to_id(t))
            .or(tok.post_processor_appends()),
        Some(false) => None,
        None => tok.post_processor_appends(),
    };
    // Without `add_bos_token` (Llama 3's tokenizer_config.json has none), HF adds the BOS
    // when the post-processor does: so does camelid, as gguf-py's converter decides it.
    tok.add_bos = match tok_cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
        Some(add) => add,
        None if tok.add_bos => true,
        None => tok.post_processor_adds_bos(),
    };
    tok.jinja_chat_without_bos = true;
    // The template, in transformers' order: chat_template.jinja (newer transformers save it
    // there, and it wins over the config's), tokenizer_config.json's, chat_template.json's
    // (multimodal checkpoints). A null one is none.
    let own_file = dir.join("chat_template.jinja");
    let in_config = tok_cfg
        .get("chat_template")
        .filter(|t| !t.is_null())
        .cloned();
    let template_value = if own_file.exists() {
        Some(serde_json::Value::String(
            std::fs::read_to_string(&own_file).map_err(|e| Error::io(&own_file, e))?,
        ))
    } else if in_config.is_some() {
        in_config
    } else {
        read_json(&dir.join("chat_template.json"))?
            .and_then(|v| v.get("chat_template").cloned())
            .filter(|t| !t.is_null())
    };
    let mut tool_src = None;
    let jinja_src = match template_value {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s),
        // A list of named templates: "default", and "tool_use" for requests with tools (as
        // transformers chooses). Without a default transformers refuses; camelid says so and
        // falls back to the built-in template of the model's name (which --chat-template or
        // --template replace).
        Some(serde_json::Value::Array(a)) => {
            let named = |name: &str| {
                a.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
                    .and_then(|t| t.get("template").and_then(|s| s.as_str()))
            };
            if named("default").is_none() {
                let names: Vec<&str> = a
                    .iter()
                    .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
                    .collect();
                tracing::warn!(
                    "{}: several chat templates ({}) and none named \"default\": a request \
                     without tools gets the built-in one (give one with --chat-template)",
                    dir.display(),
                    names.join(", ")
                );
            }
            tool_src = named("tool_use").map(String::from);
            named("default").map(String::from)
        }
        Some(_) => {
            tracing::warn!(
                "{}: chat_template is neither a string nor a list of named templates: not used",
                dir.display()
            );
            None
        }
    };
    let jinja_of = |source| ChatTemplate::Jinja {
        source,
        bos_token: bos_text.clone().unwrap_or_default(),
        eos_token: eos_text.clone().unwrap_or_default(),
    };
    let tool_template = own_tool_template(template, tool_src.map(jinja_of));
    let template = pick_template(template, jinja_src.map(jinja_of), name)?;
    if let Some(q) = opts.quantize {
        if !opts.device.is_cpu() || opts.dtype.is_some_and(|d| d != DType::F32) {
            return Err(Error::Invalid(format!(
                "--quantize {q:?} runs on the CPU with f32 compute (not {:?} on {:?})",
                opts.dtype.unwrap_or(DType::F32),
                opts.device
            )));
        }
    }
    let dtype = match opts.dtype {
        Some(d) => d,
        None if opts.device.is_cuda() => gpu_dtype(hf.torch_dtype.as_deref()),
        None => DType::F32,
    };
    let files = find_weight_files(dir)?;
    let mut weights = HfWeights::open(&files, &opts.device)?;
    if opts.device.is_cpu() {
        check_hf_fits(&cfg, weights.stored_elements(), opts, dir)?;
    }
    match prefixes {
        Some(p) => weights.read_under(p),
        None => {
            if weights.read_bare_base_model() {
                tracing::info!(
                    "{}: a base model's weights (no `model.` prefix): read as the decoder's",
                    dir.display()
                );
            }
        }
    }
    // Unasked, a 16-bit download stays 16-bit in memory on the CPU (half of f32's bytes).
    weights.keep_16bit = opts.dtype.is_none() && opts.device.is_cpu();
    weights.quantize = opts.quantize;
    let context_length = cfg.served_context();
    let mut embedding_gaps = crate::batch::EmbeddingGaps::default();
    let pooling = match read_json(&dir.join("1_Pooling/config.json"))?
        .map(|c| crate::batch::Pooling::from_sentence_transformers(&c))
    {
        Some(Ok(p)) => p,
        Some(Err(gap)) => {
            embedding_gaps.pooling = Some(gap);
            None
        }
        None => None,
    };
    if let Some(modules) = read_json(&dir.join("modules.json"))? {
        embedding_gaps.modules = crate::batch::EmbeddingGaps::modules_of(&modules);
    }
    let layers = cfg.num_layers;
    let model = build_llama(cfg, &mut weights, dtype, &opts.device)?;
    warn_unread(&weights.unread(), layers, dir);
    let stop_token_ids = template_stop_ids(&tok, &template, tool_template.as_ref());
    let grammar = Arc::new(GrammarCompiler::new(&tok, &stop_token_ids)?);
    Ok(LoadedModel {
        name: name.to_string(),
        path: dir.to_path_buf(),
        model,
        stop_strings: template.stop_strings(),
        template,
        tool_template,
        tokenizer: tok,
        grammar,
        stop_token_ids,
        context_length,
        pooling,
        embedding_gaps,
        sampling_defaults,
    })
}

/// What a GGUF's tensors take in memory on the CPU: each in its own format, but a 16-bit
/// (or f32) embedding table widened to f32 (`Embeddings::Dense`), and read a second time,
/// in its own format, as the head when the file has no `output.weight` (tied).
fn gguf_host_bytes(
    infos: &std::collections::HashMap<String, candle_core::quantized::gguf_file::TensorInfo>,
) -> u64 {
    let stored = |t: &candle_core::quantized::gguf_file::TensorInfo| {
        let d = t.ggml_dtype;
        (t.shape.elem_count() / d.block_size() * d.type_size()) as u64
    };
    let mut bytes: u64 = infos.values().map(stored).sum();
    if let Some(e) = infos.get("token_embd.weight") {
        if matches!(e.ggml_dtype, GgmlDType::F16 | GgmlDType::BF16) {
            bytes += e.shape.elem_count() as u64 * 4 - stored(e);
        }
        if !infos.contains_key("output.weight") {
            bytes += stored(e);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    /// A 16-bit embedding table counts as the f32 table it becomes, and once more as the
    /// head it is tied to; a quantized one as itself, plus the head's copy when tied.
    #[test]
    fn a_ggufs_host_bytes_count_the_widened_and_tied_embeddings() {
        use candle_core::quantized::{gguf_file::TensorInfo, GgmlDType};
        let info = |d: GgmlDType, n: usize| TensorInfo {
            ggml_dtype: d,
            shape: candle_core::Shape::from((n, 256)),
            offset: 0,
        };
        let files = |embd: GgmlDType, head: bool| {
            let mut m = std::collections::HashMap::new();
            m.insert("token_embd.weight".to_string(), info(embd, 1000));
            m.insert(
                "blk.0.ffn_up.weight".to_string(),
                info(GgmlDType::Q8_0, 100),
            );
            if head {
                m.insert("output.weight".to_string(), info(GgmlDType::Q8_0, 1000));
            }
            super::gguf_host_bytes(&m)
        };
        let q8 = |rows: u64| rows * 256 / 32 * 34;
        assert_eq!(
            files(GgmlDType::F16, true),
            1000 * 256 * 4 + q8(100) + q8(1000)
        );
        assert_eq!(
            files(GgmlDType::F16, false),
            1000 * 256 * 4 + 1000 * 256 * 2 + q8(100)
        );
        assert_eq!(files(GgmlDType::Q8_0, false), 2 * q8(1000) + q8(100));
    }

    use super::{gpu_dtype, local_model_name};
    use candle_core::DType;

    #[test]
    fn a_gpu_keeps_a_checkpoints_own_16_bit_type() {
        assert_eq!(gpu_dtype(Some("float16")), DType::F16);
        assert_eq!(gpu_dtype(Some("bfloat16")), DType::BF16);
        assert_eq!(gpu_dtype(Some("float32")), DType::BF16);
        assert_eq!(gpu_dtype(None), DType::BF16);
    }

    #[test]
    fn a_local_model_is_named_by_its_file_stem_its_folder_or_its_hub_repo() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("Qwen2.5-7B-Instruct");
        let snapshot = root
            .path()
            .join("models--lmsys--vicuna-7b-v1.5/snapshots/0123abcd");
        let file = root.path().join("vicuna-7b-v1.5.Q4_K_M.gguf");
        for d in [&folder, &snapshot] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&file, b"").unwrap();
        let name = |p: &std::path::Path| local_model_name(p, "spec");
        assert_eq!(name(&folder), "Qwen2.5-7B-Instruct");
        assert_eq!(
            name(&root.path().join("Qwen2.5-7B-Instruct/")),
            "Qwen2.5-7B-Instruct"
        );
        assert_eq!(name(&snapshot), "lmsys/vicuna-7b-v1.5");
        assert_eq!(name(&file), "vicuna-7b-v1.5.Q4_K_M");
        assert_eq!(
            name(&folder.join(".")),
            "Qwen2.5-7B-Instruct",
            "`.` is the folder it stands for"
        );
    }
}
