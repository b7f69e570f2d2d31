//! Tokenizers from `tokenizer.json`, from vocabularies (SentencePiece BPE or GPT-2 byte-level
//! BPE pieces, as GGUF metadata holds them: load/gguf_tokenizer.rs), or from a
//! SentencePiece `tokenizer.model` alone. Vocabularies become an HF `tokenizer.json` document,
//! so `camelid convert` writes exactly the tokenizer the server runs.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Texts longer than this (bytes) are tokenized one at a time in the process: while it works
/// the tokenizer holds ~90 bytes a byte of text (offsets and alignments), so 16 prompts of
/// 4 MiB sent at once, each refused afterwards as too long, took ~6 GB. Shorter texts (up to
/// ~8 000 tokens) do not wait.
const LARGE_TEXT: usize = 32 << 10;

/// A large text's turn at the tokenizer. When it ends (after the tokenizer's working memory
/// is freed), glibc is asked to give free memory back: its per-thread arenas keep what they
/// freed, so large texts tokenized in turn on different threads still added up (twelve
/// 3.5 MB prompts: a 2.9 GB peak in turn, 0.6 GB with one arena).
struct LargeTextTurn {
    _turn: MutexGuard<'static, ()>,
}

impl Drop for LargeTextTurn {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // Safety: only asks the allocator to return free pages; no memory in use moves.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A code model's fill-in-the-middle tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
}

/// The texts the FIM tokens have in the code models' vocabularies (llama.cpp looks for the
/// same): Qwen2.5-Coder and CodeGemma, SantaCoder, StarCoder, CodeLlama, DeepSeek-Coder.
const FIM_TEXTS: [[&str; 3]; 6] = [
    ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
    ["<fim-prefix>", "<fim-suffix>", "<fim-middle>"],
    ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
    ["<PRE>", "<SUF>", "<MID>"],
    ["▁<PRE>", "▁<SUF>", "▁<MID>"],
    ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
];

/// A tokenizer plus the special-token facts generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    /// Loaded from an HF folder: a jinja chat template's render is tokenized as transformers'
    /// `apply_chat_template` (and vLLM's chat) tokenizes it, without special tokens, so its
    /// prompts get only the BOS the template writes, whatever `add_bos` says. (A built-in
    /// FastChat template's render gets the tokenizer's BOS, as FastChat's workers tokenize;
    /// a GGUF's chat prompts llama.cpp's, which adds it.)
    pub jinja_chat_without_bos: bool,
    /// The special token the model's tokenizer appends to text (GGUF's `add_eos_token`, an
    /// HF post-processor's trailing token: Qwen3-Embedding's `<|endoftext|>`). Embedding
    /// inputs get it ([`Self::encode_for_embedding`]), as llama.cpp and sentence-transformers
    /// tokenize them; prompts to generate from do not.
    pub eos_appended: Option<u32>,
    /// Fill-in-the-middle tokens of a code model (GGUF's `fim_*_token_id`, else found by
    /// their text): what a completion with a `suffix` is written with.
    pub fim: Option<FimTokens>,
    /// The `tokenizer.json` document when camelid built it (GGUF, SentencePiece).
    pub json: Option<Value>,
    /// Ids of the special (control) added tokens.
    special_ids: HashSet<u32>,
    /// `inner` reading special-token text as the characters it is, and that again for text
    /// that does not start the input where `inner`'s Metaspace prepends `▁` to the first
    /// split only ([`continuing`]); made on first use.
    literal: OnceLock<(tokenizers::Tokenizer, Option<tokenizers::Tokenizer>)>,
    /// The longest vocabulary entry, in bytes; measured on first use.
    longest_token: OnceLock<usize>,
}

impl Tokenizer {
    fn wrap(inner: tokenizers::Tokenizer, json: Option<Value>) -> Self {
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        Self {
            inner,
            bos_id: None,
            eos_ids: vec![],
            add_bos: false,
            jinja_chat_without_bos: false,
            eos_appended: None,
            fim: None,
            json,
            special_ids,
            literal: OnceLock::new(),
            longest_token: OnceLock::new(),
        }
    }

    pub fn from_json_value(doc: Value, origin: &str) -> Result<Self> {
        let inner: tokenizers::Tokenizer = serde_json::from_value(doc.clone())
            .map_err(|e| Error::Tokenizer(format!("{origin}: {e}")))?;
        Ok(Self::wrap(inner, Some(doc)))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::wrap(inner, None))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// At least the bytes of text one token can stand for: a text longer than this times
    /// `n` cannot be `n` tokens or fewer (how a rendered prompt is refused before it is
    /// tokenized). The longest vocabulary entry as spelled (byte-level and SentencePiece
    /// spellings are never shorter than the text they cover), times 4 under a normalizer,
    /// which may shrink its input (NFKC maps a 4-byte mathematical letter to 1 byte).
    pub fn max_text_bytes_per_token(&self) -> usize {
        let longest = *self.longest_token.get_or_init(|| {
            let vocab = self.inner.get_vocab(true);
            vocab.keys().map(String::len).max().unwrap_or(1).max(4)
        });
        match self.inner.get_normalizer() {
            Some(_) => 4 * longest,
            None => longest,
        }
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The turn of a text past [`LARGE_TEXT`] bytes (`None` for a shorter one).
    fn large_text_turn(text: &str) -> Option<LargeTextTurn> {
        static TURN: Mutex<()> = Mutex::new(());
        (text.len() > LARGE_TEXT).then(|| LargeTextTurn {
            _turn: TURN.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    /// Encodes text in which special tokens written literally (`<|im_end|>`, `</s>`) become
    /// their ids. BOS is prepended when the model wants it and the text lacks it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let _turn = Self::large_text_turn(text);
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(self.with_bos(enc.get_ids().to_vec(), add_bos))
    }

    /// [`Tokenizer::encode`]'s ids and where each token starts in `text`, in characters (the
    /// tokenizer's own alignment: a SentencePiece `▁word` starts at its word, a BOS the text
    /// lacks at 0).
    pub fn encode_with_starts(&self, text: &str, add_bos: bool) -> Result<(Vec<u32>, Vec<usize>)> {
        let _turn = Self::large_text_turn(text);
        let enc = self
            .inner
            .encode_char_offsets(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        let mut starts: Vec<usize> = enc.get_offsets().iter().map(|&(s, _)| s).collect();
        let with = self.with_bos(ids.clone(), add_bos);
        if with.len() > ids.len() {
            starts.insert(0, 0);
        }
        Ok((with, starts))
    }

    /// The FIM tokens found by their text (see [`FIM_TEXTS`]), if the vocabulary has a set.
    pub fn find_fim(&self) -> Option<FimTokens> {
        FIM_TEXTS.iter().find_map(|[p, s, m]| {
            Some(FimTokens {
                prefix: self.token_to_id(p)?,
                suffix: self.token_to_id(s)?,
                middle: self.token_to_id(m)?,
            })
        })
    }

    /// A fill-in-the-middle prompt in the models' own order (prefix, suffix, middle):
    /// the BOS when the model adds one, `FIM_PRE prefix FIM_SUF suffix FIM_MID`; the model
    /// writes what goes between. The code is text: special-token spellings in it (a file
    /// that mentions `<|fim_middle|>`) stay characters, as llama.cpp tokenizes infill input.
    /// `None` when the model has no FIM tokens.
    pub fn encode_infill(&self, prefix: &str, suffix: &str) -> Result<Option<Vec<u32>>> {
        let Some(f) = self.fim else {
            return Ok(None);
        };
        let text =
            |t: &str| self.encode_with_literal(t, std::slice::from_ref(&(0..t.len())), false);
        let mut ids = self.with_bos(vec![], true);
        ids.push(f.prefix);
        ids.extend(text(prefix)?);
        ids.push(f.suffix);
        ids.extend(text(suffix)?);
        ids.push(f.middle);
        Ok(Some(ids))
    }

    /// Tokens that end an infill besides the EOS, where the vocabulary has them (llama.cpp's
    /// end-of-generation set for FIM: the pad, repository and file-separator tokens, and the
    /// end-of-text spellings code models close a middle with).
    pub fn fim_stop_ids(&self) -> Vec<u32> {
        const TEXTS: [&str; 12] = [
            "<|fim_pad|>",
            "<fim_pad>",
            "<fim-pad>",
            "<|repo_name|>",
            "<reponame>",
            "<repo_name>",
            "<|file_sep|>",
            "<file_sep>",
            "<|file_separator|>",
            "<|endoftext|>",
            "<EOT>",
            "<|end_of_text|>",
        ];
        let fim = self.fim.map(|f| [f.prefix, f.suffix, f.middle]);
        TEXTS
            .iter()
            .filter_map(|t| self.token_to_id(t))
            .filter(|id| !fim.is_some_and(|f| f.contains(id)))
            .collect()
    }

    /// [`Self::encode`] with the BOS and the token the tokenizer appends
    /// ([`Self::eos_appended`]): an embedding model's input.
    pub fn encode_for_embedding(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, true)?;
        if let Some(e) = self.eos_appended {
            if ids.last() != Some(&e) {
                ids.push(e);
            }
        }
        Ok(ids)
    }

    fn with_bos(&self, mut ids: Vec<u32>, add_bos: bool) -> Vec<u32> {
        if add_bos && self.add_bos {
            if let Some(b) = self.bos_id {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        ids
    }

    /// Like [`Tokenizer::encode`], but special-token text inside the `literal` byte ranges
    /// (a chat's message contents) is tokenized as the characters it is: only text outside
    /// them (the chat template's own) yields control tokens. When no special token touches a
    /// literal range the ids are exactly `encode(text)`'s. Otherwise the special tokens wholly
    /// outside the ranges are kept and the text between them is encoded with special tokens
    /// off, which is how the tokenizer treats the text between special tokens anyway.
    pub fn encode_with_literal(
        &self,
        text: &str,
        literal: &[Range<usize>],
        add_bos: bool,
    ) -> Result<Vec<u32>> {
        let _turn = Self::large_text_turn(text);
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
        // Special tokens the added-token matcher found: their text is in their span (an
        // `lstrip`/`rstrip` token's span also holds the whitespace it swallows). Others, such
        // as `<unk>` from the model, are ordinary output.
        let core = |i: usize| -> Option<Range<usize>> {
            let (s, e) = offsets[i];
            let t = self.inner.id_to_token(ids[i])?;
            let k = text.get(s..e)?.find(t.as_str())?;
            Some(s + k..s + k + t.len())
        };
        let specials: Vec<(usize, Range<usize>)> = (0..ids.len())
            .filter(|&i| self.is_special(ids[i]))
            .filter_map(|i| Some((i, core(i)?)))
            .collect();
        // A special token is the template's when its text lies outside every literal range:
        // no range starting before it ends reaches past its start. Ranges sorted by start,
        // with the furthest end so far, answer that by a binary search (a body may hold
        // hundreds of thousands of both).
        let mut sorted = literal.to_vec();
        sorted.sort_unstable_by_key(|r| r.start);
        let furthest: Vec<usize> = sorted
            .iter()
            .scan(0, |m, r| {
                *m = r.end.max(*m);
                Some(*m)
            })
            .collect();
        let from_template = |c: &Range<usize>| {
            let k = sorted.partition_point(|r| r.start < c.end);
            k == 0 || furthest[k - 1] <= c.start
        };
        if specials.iter().all(|(_, c)| from_template(c)) {
            return Ok(self.with_bos(ids.to_vec(), add_bos));
        }
        let (plain, later) = self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            let later = continuing(&t);
            (t, later)
        });
        let encode_plain = |out: &mut Vec<u32>, r: Range<usize>| -> Result<()> {
            let piece = text.get(r.clone()).ok_or_else(|| {
                Error::Tokenizer(format!("special token offsets {r:?} split a character"))
            })?;
            // Text after a template's special token does not start the input: no `▁`
            // where the whole prompt's encoding puts none.
            let plain = match later {
                Some(later) if r.start > 0 => later,
                _ => plain,
            };
            if !piece.is_empty() {
                let e = plain
                    .encode(piece, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                out.extend_from_slice(e.get_ids());
            }
            Ok(())
        };
        let mut out = Vec::with_capacity(ids.len() + 16);
        let mut from = 0;
        for &(i, _) in specials.iter().filter(|(_, c)| from_template(c)) {
            let (s, e) = offsets[i];
            encode_plain(&mut out, from..s.max(from))?;
            out.push(ids[i]);
            from = e;
        }
        encode_plain(&mut out, from..text.len())?;
        Ok(self.with_bos(out, add_bos))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Whether `id` is a special (added, control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Whether `tokenizer.json`'s post-processor puts the BOS token first (HF's
    /// `TemplateProcessing`, how Llama 3 adds `<|begin_of_text|>`): camelid encodes without
    /// the post-processor and adds the BOS itself, so it must know.
    pub fn post_processor_adds_bos(&self) -> bool {
        let Some(bos) = self.bos_id else {
            return false;
        };
        self.inner
            .encode("", true)
            .is_ok_and(|e| e.get_ids().first() == Some(&bos))
    }

    /// The special token `tokenizer.json`'s post-processor appends to text, if any.
    pub fn post_processor_appends(&self) -> Option<u32> {
        let with = self.inner.encode("a", true).ok()?;
        let without = self.inner.encode("a", false).ok()?;
        let last = *with.get_ids().last()?;
        (with.get_ids().len() > without.get_ids().len() && self.is_special(last)).then_some(last)
    }

    /// The JSON document for `tokenizer.json`.
    pub fn to_json_string(&self) -> Result<String> {
        match &self.json {
            Some(v) => serde_json::to_string_pretty(v).map_err(|e| Error::Tokenizer(e.to_string())),
            None => self
                .inner
                .to_string(true)
                .map_err(|e| Error::Tokenizer(e.to_string())),
        }
    }
}

/// SentencePiece piece types (sentencepiece_model.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    pub fn from_i32(v: i32) -> Self {
        match v {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": special})
}

/// How an HF folder's `tokenizer_config.json` asks a bare `tokenizer.model` to be read.
#[derive(Debug, Clone, Default)]
pub struct SpmConfig {
    /// `legacy: false` (vicuna-7b-v1.5, Llama 2): the `▁` prefix goes on the text's first
    /// piece only, not on text after a special token (`</s>USER:` is `US`, not `▁US`), as
    /// transformers' converter builds it (Metaspace, `prepend_scheme: first`).
    pub non_legacy: bool,
    /// Tokens added past the model's pieces (`added_tokens_decoder`, `added_tokens.json`):
    /// id, text, special.
    pub added: Vec<(u32, String, bool)>,
}

impl SpmConfig {
    /// From `tokenizer_config.json` (`Value::Null` when there is none) and the folder's
    /// `added_tokens.json` (older transformers' list of added tokens, `{text: id}`).
    pub fn from_hf(tok_cfg: &Value, added_tokens_json: Option<&Value>) -> Self {
        let mut added: Vec<(u32, String, bool)> = vec![];
        if let Some(m) = tok_cfg
            .get("added_tokens_decoder")
            .and_then(Value::as_object)
        {
            for (id, t) in m {
                if let (Ok(id), Some(text)) = (id.parse(), t.get("content").and_then(Value::as_str))
                {
                    let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
                    added.push((id, text.to_string(), special));
                }
            }
        }
        // transformers counts a token of added_tokens.json special when the config names
        // it (`pad_token: "<pad>"`).
        let named = |text: &str| {
            tok_cfg.as_object().is_some_and(|o| {
                o.iter().any(|(k, v)| {
                    k.ends_with("_token")
                        && (v.as_str() == Some(text)
                            || v.get("content").and_then(Value::as_str) == Some(text))
                })
            })
        };
        if let Some(m) = added_tokens_json.and_then(Value::as_object) {
            for (text, id) in m {
                if let Some(id) = id.as_u64().and_then(|i| u32::try_from(i).ok()) {
                    if !added.iter().any(|a| a.0 == id) {
                        added.push((id, text.clone(), named(text)));
                    }
                }
            }
        }
        added.sort();
        Self {
            non_legacy: tok_cfg.get("legacy").and_then(Value::as_bool) == Some(false),
            added,
        }
    }
}

/// A SentencePiece BPE vocabulary as an HF tokenizer (what transformers' `LlamaConverter`
/// produces): byte fallback, `▁` for spaces, merges recovered from the vocabulary.
/// A vocabulary whose merges would take far more memory than its pieces is an error.
pub fn spm_bpe_json(pieces: &[(String, f32, PieceType)], add_dummy_prefix: bool) -> Result<Value> {
    spm_bpe_json_with(pieces, add_dummy_prefix, &SpmConfig::default())
}

/// The merges' text may take this many times the pieces' own bytes (plus
/// [`MERGES_SLACK`]): real vocabularies' take about 4 times (Llama 2's 32k pieces, 61k
/// merges), while pieces `a`, `aa`, … of every length up to L (L²/2 bytes) make L²/2 merges
/// of L³/3 bytes: 3 GB from a 2 MB file.
const MERGES_PER_PIECE_BYTE: usize = 16;
const MERGES_SLACK: usize = 16 << 20;

/// [`spm_bpe_json`] as `config` asks (non-legacy spacing, added tokens).
pub fn spm_bpe_json_with(
    pieces: &[(String, f32, PieceType)],
    add_dummy_prefix: bool,
    config: &SpmConfig,
) -> Result<Value> {
    let piece_bytes: usize = pieces.iter().map(|p| p.0.len()).sum();
    let merge_budget = piece_bytes
        .saturating_mul(MERGES_PER_PIECE_BYTE)
        .saturating_add(MERGES_SLACK);
    let mut merge_bytes = 0usize;
    let vocab: serde_json::Map<String, Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, (p, _, _))| (p.clone(), json!(i)))
        .collect();
    let index: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, (p, _, _))| (p.as_str(), i))
        .collect();
    // Every split of a normal piece into two pieces of the vocabulary is a merge; merges are
    // ranked by the merged piece's score (higher first), then by the parts' ids.
    // Only splits into lengths some piece has are looked up: each lookup hashes its part,
    // and every split of a long piece (a model file's one 8 MiB token) hashed it whole,
    // quadratic in its length.
    let lengths: std::collections::HashSet<usize> = pieces.iter().map(|p| p.0.len()).collect();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (p, score, ty) in pieces {
        if *ty != PieceType::Normal && *ty != PieceType::UserDefined {
            continue;
        }
        for (at, _) in p.char_indices().skip(1) {
            if !lengths.contains(&at) || !lengths.contains(&(p.len() - at)) {
                continue;
            }
            let (l, r) = p.split_at(at);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((*score, li, ri, l, r));
                merge_bytes += p.len();
                if merge_bytes > merge_budget {
                    return Err(Error::Tokenizer(format!(
                        "the SentencePiece vocabulary's merges pass {merge_budget} bytes \
                         ({piece_bytes} bytes of pieces): no real vocabulary has so many"
                    )));
                }
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<Value> = merges.iter().map(|m| json!([m.3, m.4])).collect();
    let unk = pieces
        .iter()
        .find(|p| p.2 == PieceType::Unknown)
        .map(|p| p.0.clone());
    let added: Vec<Value> = pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            matches!(
                p.2,
                PieceType::Control | PieceType::Unknown | PieceType::UserDefined
            )
        })
        .map(|(i, p)| added_token(i, &p.0, p.2 != PieceType::UserDefined))
        .chain(
            config
                .added
                .iter()
                .filter(|(id, _, _)| *id as usize >= pieces.len())
                .map(|(id, text, special)| added_token(*id as usize, text, *special)),
        )
        .collect();
    // transformers' LlamaConverter: legacy spacing is a normalizer (every section of text,
    // after special tokens too, gets the `▁`); non-legacy a Metaspace pre-tokenizer that
    // prefixes the first section only.
    let (normalizer, pre_tokenizer) = if config.non_legacy {
        let scheme = if add_dummy_prefix { "first" } else { "never" };
        (
            Value::Null,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme,
                   "split": false}),
        )
    } else {
        let mut normalizers = vec![];
        if add_dummy_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        (
            json!({"type": "Sequence", "normalizers": normalizers}),
            Value::Null,
        )
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_dummy_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    }))
}

/// GPT-2 style byte-level BPE; `pre` is GGUF's `tokenizer.ggml.pre` (pre-tokenizer family).
pub fn byte_level_bpe_json(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
    pre: &str,
) -> Result<Value> {
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
            json!([a, b])
        })
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| added_token(i, t, types.get(i) == Some(&3)))
        .collect();
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let pre_tokenizer = match pre {
        // SmolLM / StarCoder: every digit alone, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        // Llama 3's tiktoken-style split.
        "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        // Qwen2, Qwen2.5, Qwen3 (and the R1 distills on Qwen): Llama 3's split with every
        // digit alone (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2, the regex of their
        // tokenizer.json).
        "qwen2" | "deepseek-r1-qwen" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        // "gpt-2": llama.cpp's name for GPT-2's own split (its converter writes it).
        "gpt2" | "gpt-2" | "default" | "" => byte_level(true),
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer.ggml.pre {other:?} (supported: smollm, starcoder, refact, \
                 llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen, gpt2, gpt-2, default)"
            )))
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": matches!(pre, "llama-bpe" | "llama3" | "llama-v3"), "vocab": vocab, "merges": merges
        }
    }))
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A minimal protobuf reader for `sentencepiece_model.proto`: pieces (field 1), trainer
/// spec's model type (2.3), normalizer spec's add_dummy_prefix (3.3).
pub struct SpmModel {
    pub pieces: Vec<(String, f32, PieceType)>,
    /// 1 = unigram, 2 = BPE.
    pub model_type: i32,
    pub add_dummy_prefix: bool,
}

struct Pb<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Pb<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// Next (field, wire type, payload) where payload is the bytes of a length-delimited or
    /// the raw value of a varint/fixed field.
    fn next(&mut self) -> Option<(u64, u8, &'a [u8], u64)> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let key = self.varint()?;
        let (field, wt) = (key >> 3, (key & 7) as u8);
        match wt {
            0 => Some((field, 0, &[][..], self.varint()?)),
            1 => {
                let b = self.buf.get(self.pos..self.pos + 8)?;
                self.pos += 8;
                Some((field, 1, b, 0))
            }
            2 => {
                let n = self.varint()? as usize;
                let b = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
                self.pos += n;
                Some((field, 2, b, 0))
            }
            5 => {
                let b = self.buf.get(self.pos..self.pos + 4)?;
                self.pos += 4;
                Some((field, 5, b, 0))
            }
            _ => None,
        }
    }
}

impl SpmModel {
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self> {
        let bad = || {
            Error::Tokenizer(format!(
                "{origin}: not a valid SentencePiece model protobuf"
            ))
        };
        let mut m = SpmModel {
            pieces: vec![],
            model_type: 1,
            add_dummy_prefix: true,
        };
        let mut pb = Pb { buf: bytes, pos: 0 };
        while pb.pos < bytes.len() {
            let (field, wt, payload, _) = pb.next().ok_or_else(bad)?;
            match (field, wt) {
                (1, 2) => {
                    let mut p = Pb {
                        buf: payload,
                        pos: 0,
                    };
                    let (mut piece, mut score, mut ty) = (String::new(), 0f32, PieceType::Normal);
                    while p.pos < payload.len() {
                        let (f, w, b, v) = p.next().ok_or_else(bad)?;
                        match (f, w) {
                            (1, 2) => piece = String::from_utf8_lossy(b).into_owned(),
                            (2, 5) => score = f32::from_le_bytes(b.try_into().map_err(|_| bad())?),
                            (3, 0) => ty = PieceType::from_i32(v as i32),
                            _ => {}
                        }
                    }
                    m.pieces.push((piece, score, ty));
                }
                (2, 2) | (3, 2) => {
                    let mut p = Pb {
                        buf: payload,
                        pos: 0,
                    };
                    while p.pos < payload.len() {
                        let (f, w, _, v) = p.next().ok_or_else(bad)?;
                        if field == 2 && f == 3 && w == 0 {
                            m.model_type = v as i32;
                        }
                        if field == 3 && f == 3 && w == 0 {
                            m.add_dummy_prefix = v != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(bad());
        }
        Ok(m)
    }
}

/// A tokenizer from a SentencePiece `tokenizer.model` (BPE models, as LLaMA/Vicuna ship).
pub fn from_sentencepiece(path: &Path) -> Result<Tokenizer> {
    from_sentencepiece_with(path, &SpmConfig::default())
}

/// [`from_sentencepiece`] as an HF folder's tokenizer config asks. An added token whose id
/// the vocabulary cannot give it (a gap after the pieces) is an error, not a shifted id.
pub fn from_sentencepiece_with(path: &Path, config: &SpmConfig) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let origin = path.display().to_string();
    let m = SpmModel::parse(&bytes, &origin)?;
    if m.model_type != 2 {
        return Err(Error::Unsupported(format!(
            "{origin}: SentencePiece model type {} (only BPE, type 2, is supported)",
            m.model_type
        )));
    }
    let doc = spm_bpe_json_with(&m.pieces, m.add_dummy_prefix, config)
        .map_err(|e| Error::Tokenizer(format!("{origin}: {e}")))?;
    let mut tok = Tokenizer::from_json_value(doc, &origin)?;
    for (id, text, _) in &config.added {
        if tok.token_to_id(text) != Some(*id) {
            return Err(Error::Tokenizer(format!(
                "{origin}: added token {text:?} should have id {id}, the vocabulary gives it {:?}",
                tok.token_to_id(text)
            )));
        }
    }
    tok.bos_id = tok.token_to_id("<s>");
    tok.eos_ids = tok.token_to_id("</s>").into_iter().collect();
    tok.add_bos = true;
    Ok(tok)
}

/// A byte-level BPE tokenizer for unit tests: the 256 byte tokens (id = byte value, spelled
/// with GPT-2's byte-to-character map), merges `h e` (256) and `he l` (257), and the special
/// tokens `<|a|>` (258) and `<|b|>` (259).
/// `t` for text that does not start the input: where its Metaspace pre-tokenizer prepends
/// `▁` to the input's first split only (`prepend_scheme: first`, transformers' non-legacy
/// Llama tokenizers such as vicuna-7b-v1.5's), one that prepends none, as the whole input's
/// encoding gives the text after a special token; `None` where `t` has no such scheme
/// (every split alike: encoding a piece alone gives what the whole input's encoding does).
fn continuing(t: &tokenizers::Tokenizer) -> Option<tokenizers::Tokenizer> {
    use tokenizers::pre_tokenizers::metaspace::PrependScheme;
    use tokenizers::pre_tokenizers::PreTokenizerWrapper as Pre;
    fn never(p: &mut Pre) -> bool {
        match p {
            Pre::Metaspace(m) if m.get_prepend_scheme() == PrependScheme::First => {
                m.set_prepend_scheme(PrependScheme::Never);
                true
            }
            Pre::Sequence(seq) => seq.as_mut().iter_mut().fold(false, |any, p| never(p) | any),
            _ => false,
        }
    }
    let mut pre = t.get_pre_tokenizer()?.clone();
    if !never(&mut pre) {
        return None;
    }
    let mut t = t.clone();
    t.with_pre_tokenizer(Some(pre));
    Some(t)
}

#[cfg(test)]
pub(crate) fn test_byte_tokenizer() -> Tokenizer {
    test_byte_tokenizer_with(&["<|a|>", "<|b|>"])
}

/// A byte-level BPE vocabulary: the 256 bytes, `he`, `hel`, then `specials` (control tokens).
#[cfg(test)]
fn test_byte_tokenizer_with(specials: &[&str]) -> Tokenizer {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut spelled = vec![String::new(); 256];
    for (b, c) in bytes.iter().zip(&chars) {
        spelled[*b as usize] = char::from_u32(*c).unwrap().to_string();
    }
    let mut tokens = spelled;
    tokens.extend(["he", "hel"].map(String::from));
    tokens.extend(specials.iter().map(|t| t.to_string()));
    let mut types = vec![1; 258];
    types.extend(specials.iter().map(|_| 3));
    let merges = ["h e".to_string(), "he l".to_string()];
    let doc = byte_level_bpe_json(&tokens, &types, &merges, "gpt2").unwrap();
    Tokenizer::from_json_value(doc, "test").unwrap()
}

#[cfg(test)]
mod fim_tests {
    use super::*;

    #[test]
    fn fim_tokens_are_found_by_their_text() {
        assert_eq!(test_byte_tokenizer().find_fim(), None);
        for set in FIM_TEXTS {
            let tok = test_byte_tokenizer_with(&["<|x|>", set[2], set[0], set[1]]);
            assert_eq!(
                tok.find_fim(),
                Some(FimTokens {
                    prefix: 260,
                    suffix: 261,
                    middle: 259
                }),
                "{set:?}"
            );
        }
        // Two of the three are no set.
        let tok = test_byte_tokenizer_with(&["<|fim_prefix|>", "<|fim_suffix|>"]);
        assert_eq!(tok.find_fim(), None);
    }

    #[test]
    fn an_infill_stops_at_the_pad_separator_and_end_of_text_tokens() {
        let mut tok = test_byte_tokenizer_with(&[
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            "<|fim_pad|>",
            "<|file_sep|>",
            "<|endoftext|>",
            "<|im_end|>",
        ]);
        tok.fim = tok.find_fim();
        assert_eq!(tok.fim_stop_ids(), [261, 262, 263]);
        // A FIM token that doubles as a stop spelling stays a FIM token.
        tok.fim = Some(FimTokens {
            prefix: 258,
            suffix: 259,
            middle: 261,
        });
        assert_eq!(tok.fim_stop_ids(), [262, 263]);
    }
}
