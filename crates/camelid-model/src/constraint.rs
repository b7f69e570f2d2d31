//! Structured output: a grammar (JSON schema, regex, Lark) compiled by `llguidance` into a
//! [`Constraint`]; each constrained sequence runs its own matcher, which gives the tokens
//! allowed next (a mask over the vocabulary) and consumes the token drawn. The matcher runs
//! on a thread of its own: right after a token is consumed it computes the next mask while
//! the engine runs the next forward pass ([`SequenceConstraint`]). The decoder
//! (`decode::decoder`) applies the masks; the loader builds each model's [`GrammarCompiler`].

use crate::error::{Error, Result};
use crate::text::token_bytes::TokenBytes;
use crate::text::tokenizer::Tokenizer;
pub use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper};

/// The vocabulary as byte strings for llguidance's token trie, and tokenization of bytes.
///
/// Written here rather than taken from `toktrie_hf_tokenizers` because that crate pins
/// `tokenizers` 0.21 and the workspace uses 0.22 (a second copy of the tokenizer library
/// would be built and the two `Tokenizer` types would not mix). It does what that crate
/// does: token pieces are turned back into bytes by the vocabulary's kind (GPT-2 byte-level
/// BPE: the byte-to-character table; SentencePiece with byte fallback: `<0xNN>` pieces and
/// `▁` for a space), special tokens get toktrie's marker byte in front, and bytes are
/// tokenized by our tokenizer with the "prepend a space" normalizers removed (a grammar's
/// text is a continuation, not the start of a text).
pub struct VocabEnv {
    trie: TokTrie,
    /// The model's tokenizer without SentencePiece's dummy-prefix space.
    encoder: tokenizers::Tokenizer,
}

fn without_prepend(n: NormalizerWrapper) -> Option<NormalizerWrapper> {
    match n {
        NormalizerWrapper::Prepend(_) => None,
        NormalizerWrapper::Sequence(s) => {
            let kept: Vec<_> = s
                .as_ref()
                .iter()
                .filter_map(|n| without_prepend(n.clone()))
                .collect();
            (!kept.is_empty())
                .then(|| NormalizerWrapper::Sequence(tokenizers::normalizers::Sequence::new(kept)))
        }
        n => Some(n),
    }
}

fn metaspace_never_prepends(p: PreTokenizerWrapper) -> PreTokenizerWrapper {
    use tokenizers::pre_tokenizers::{metaspace::PrependScheme, sequence::Sequence};
    match p {
        PreTokenizerWrapper::Metaspace(mut m) => {
            m.prepend_scheme = PrependScheme::Never;
            PreTokenizerWrapper::Metaspace(m)
        }
        PreTokenizerWrapper::Sequence(s) => PreTokenizerWrapper::Sequence(Sequence::new(
            s.as_ref()
                .iter()
                .map(|p| metaspace_never_prepends(p.clone()))
                .collect(),
        )),
        p => p,
    }
}

impl VocabEnv {
    /// `eos` are the tokens that end a sequence (the grammar allows them where it can end).
    pub fn new(tok: &Tokenizer, eos: &[u32]) -> Result<Self> {
        let inner = &tok.inner;
        let spell = TokenBytes::new(tok).ok_or_else(|| {
            Error::Unsupported(format!(
                "structured output needs a byte-level or byte-fallback vocabulary; decoder {:?}",
                inner.get_decoder()
            ))
        })?;
        let n = tok.vocab_size();
        let mut words: Vec<Vec<u8>> = vec![Vec::new(); n];
        let added = inner.get_added_tokens_decoder();
        for (id, word) in words.iter_mut().enumerate() {
            let id = id as u32;
            if let Some(a) = added.get(&id) {
                // Control tokens (and `<…>` added tokens, as llguidance's own adapter does)
                // are special: a grammar names them, text never spells them.
                if a.special || (a.content.starts_with('<') && a.content.ends_with('>')) {
                    *word = [&[TokTrie::SPECIAL_TOKEN_MARKER], a.content.as_bytes()].concat();
                } else {
                    *word = a.content.as_bytes().to_vec();
                }
                continue;
            }
            if let Some(b) = spell.piece(inner, id) {
                *word = b; // a piece of no known spelling stays empty: never allowed
            }
        }
        // llguidance's trie asserts on a longer token (its nodes' parent chains, ~1 025
        // bytes past a shared prefix): such a token is never allowed instead.
        for word in &mut words {
            if word.len() > MAX_TOKEN_BYTES {
                word.clear();
            }
        }
        let eos0 = eos.first().copied().or(tok.eos_ids.first().copied());
        let mut info = TokRxInfo::new(n as u32, eos0.unwrap_or(0));
        info.tok_bos = tok.bos_id;
        // Its other limits (2^22 nodes in all) assert too: an error here, remembered by the
        // caller, rather than a panic on every constrained request.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            TokTrie::from(&info, &words)
        }));
        let mut trie = built.map_err(|_| {
            Error::Invalid(
                "grammar tokenizer: this vocabulary is beyond llguidance's token trie".into(),
            )
        })?;
        let eos: Vec<u32> = eos.iter().copied().filter(|&t| (t as usize) < n).collect();
        if !eos.is_empty() {
            trie = trie.with_eos_tokens(&eos);
        }
        let mut encoder = inner.clone();
        if let Some(norm) = encoder.get_normalizer().cloned() {
            encoder
                .with_normalizer(without_prepend(norm))
                .map_err(|e| Error::Invalid(format!("grammar tokenizer: {e}")))?;
        }
        if let Some(pre) = encoder.get_pre_tokenizer().cloned() {
            encoder.with_pre_tokenizer(Some(metaspace_never_prepends(pre)));
        }
        Ok(Self { trie, encoder })
    }
}

/// Bytes of the longest token a grammar may allow: llguidance's trie limit (GLM-4 has a
/// token of 1 024 spaces, which stays allowed).
const MAX_TOKEN_BYTES: usize = 1024;

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.encoder
                .encode(s, false)
                .map(|e| e.get_ids().to_vec())
                // Text the tokenizer cannot take: the trie's greedy split of its bytes.
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s.as_bytes()))
        })
    }
}

/// Masks computed and the time they took, over every sequence of a model.
#[derive(Debug, Default)]
pub struct MaskStats {
    masks: AtomicU64,
    nanos: AtomicU64,
}

impl MaskStats {
    fn record(&self, started: Instant) {
        self.masks.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    /// Masks computed so far.
    pub fn masks(&self) -> u64 {
        self.masks.load(Ordering::Relaxed)
    }
    /// Seconds spent computing them (on the matchers' threads, mostly during forward passes).
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// Compiles grammars for one model's vocabulary: one per loaded model. The vocabulary's
/// trie and llguidance's factory are built on the first compile (tens of milliseconds
/// for a 50k vocabulary), so loading a model that never sees a grammar costs nothing.
pub struct GrammarCompiler {
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
    stats: Arc<MaskStats>,
    /// The latest compiled grammars by their JSON text, newest last: clients send the same
    /// tools and formats with every turn (an agent's loop), and a large schema takes
    /// milliseconds of a blocking worker to compile. A compiled grammar is never advanced
    /// itself (each sequence clones it), so one serves any number of requests.
    recent: Mutex<VecDeque<(String, Constraint)>>,
}

/// How many compiled grammars a model keeps ([`GrammarCompiler::compile`]).
const RECENT_GRAMMARS: usize = 32;
/// And how much grammar text in all: a compiled grammar takes about ten times its text (a
/// 3 MB `enum` schema ~33 MiB), so 32 of the largest a body may carry would pin gigabytes.
/// A grammar past this alone is compiled for its request and not kept.
const RECENT_GRAMMAR_BYTES: usize = 4 << 20;

impl GrammarCompiler {
    /// `eos`: the tokens that end a sequence (EOS and end-of-turn), allowed only where the
    /// grammar can end.
    pub fn new(tokenizer: &Tokenizer, eos: &[u32]) -> Result<Self> {
        Ok(Self {
            tokenizer: tokenizer.clone(),
            eos: eos.to_vec(),
            factory: OnceLock::new(),
            stats: Arc::new(MaskStats::default()),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    fn factory(&self) -> std::result::Result<&ParserFactory, String> {
        self.factory
            .get_or_init(|| {
                let env: TokEnv =
                    Arc::new(VocabEnv::new(&self.tokenizer, &self.eos).map_err(|e| e.to_string())?);
                let mut factory = ParserFactory::new_simple(&env)
                    .map_err(|e| format!("grammar compiler: {e}"))?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The token environment (vocabulary bytes, tokenization) grammars are compiled for.
    pub fn tok_env(&self) -> std::result::Result<&TokEnv, String> {
        Ok(self.factory()?.tok_env())
    }

    /// The id of the token spelled `text` when the grammars' vocabulary holds it as special
    /// (control tokens, and added tokens spelled `<…>` such as Qwen's `<tool_call>`): a grammar
    /// must name it by id (`<[id]>`), as a text literal never matches it. `None` for text and
    /// when the vocabulary cannot be built.
    pub fn special_token(&self, text: &str) -> Option<u32> {
        self.tok_env().ok()?.tok_trie().get_special_token(text)
    }

    /// Per-token mask time over every sequence of this model.
    pub fn mask_stats(&self) -> &MaskStats {
        &self.stats
    }

    /// Compiles `grammar`; `Err(reason)` for a bad schema, regex or grammar, or one that no
    /// token can start. One of the latest grammars again is not compiled again.
    pub fn compile(&self, grammar: TopLevelGrammar) -> std::result::Result<Constraint, String> {
        let key = serde_json::to_string(&grammar).ok();
        let recent = || self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = &key {
            let mut recent = recent();
            if let Some(i) = recent.iter().position(|(g, _)| g == k) {
                let hit = recent.remove(i).expect("found");
                recent.push_back(hit.clone());
                return Ok(hit.1);
            }
        }
        let compiled = self.compile_anew(grammar)?;
        if let Some(k) = key.filter(|k| k.len() <= RECENT_GRAMMAR_BYTES) {
            let mut recent = recent();
            let mut bytes: usize = recent.iter().map(|(g, _)| g.len()).sum();
            while recent.len() == RECENT_GRAMMARS || bytes + k.len() > RECENT_GRAMMAR_BYTES {
                let Some((old, _)) = recent.pop_front() else {
                    break;
                };
                bytes -= old.len();
            }
            recent.push_back((k, compiled.clone()));
        }
        Ok(compiled)
    }

    /// The grammar text the kept compiled grammars take.
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        let recent = self.recent.lock().unwrap();
        recent.iter().map(|(g, _)| g.len()).sum()
    }

    fn compile_anew(&self, grammar: TopLevelGrammar) -> std::result::Result<Constraint, String> {
        let parser = self
            .factory()?
            .create_parser(grammar)
            .map_err(|e| without_state(&e.to_string()))?;
        let mut probe = Matcher::new(Ok(parser.clone()));
        let mask = probe
            .compute_mask_or_eos()
            .map_err(|e| without_state(&e.to_string()))?;
        if mask.is_zero() && !probe.is_accepting().unwrap_or(false) {
            return Err("no text matches the grammar".into());
        }
        Ok(Constraint {
            parser: Arc::new(parser),
            stats: self.stats.clone(),
        })
    }
}

/// A compiled grammar; each sequence starts its own matcher from it.
#[derive(Clone)]
pub struct Constraint {
    parser: Arc<TokenParser>,
    stats: Arc<MaskStats>,
}

impl Constraint {
    /// `text` as tokens of the grammar's vocabulary: the special token it spells where it
    /// is one (Qwen's `<tool_call>`, Mistral's `[TOOL_CALLS]`), else its bytes tokenized with
    /// no space prepended (what a lazy grammar replays of the text that started it).
    pub fn tokens_of(&self, text: &str) -> Vec<u32> {
        let env = &self.parser.token_env;
        match env.tok_trie().get_special_token(text) {
            Some(id) => vec![id],
            None => env.tokenize_bytes(text.as_bytes()),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("grammar", &self.parser.dbg_grammar.len())
            .finish_non_exhaustive()
    }
}

/// The tokens allowed at one step.
pub struct StepMask {
    allowed: SimpleVob,
    /// The grammar may end here (stop tokens allowed).
    pub can_end: bool,
}

impl StepMask {
    /// Sets every logit the grammar forbids to −∞: tokens outside the mask, tokens past the
    /// tokenizer's vocabulary, and `stop_tokens` where the grammar cannot end.
    pub fn apply(&self, logits: &mut [f32], stop_tokens: &[u32]) {
        let n = self.allowed.len().min(logits.len());
        for (i, l) in logits[..n].iter_mut().enumerate() {
            if !self.allowed.is_allowed(i as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        for l in &mut logits[n..] {
            *l = f32::NEG_INFINITY;
        }
        if !self.can_end {
            for &s in stop_tokens {
                if let Some(l) = logits.get_mut(s as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Whether the grammar allows `token` (never one past the tokenizer's vocabulary).
    pub fn is_allowed(&self, token: u32) -> bool {
        (token as usize) < self.allowed.len() && self.allowed.is_allowed(token)
    }
}

type MaskReply = std::result::Result<StepMask, String>;

/// llguidance's error text without the parser state it appends (`<state>…</state>`): the
/// reason is for the client, the matcher's internals are not.
fn without_state(message: &str) -> String {
    message
        .split("<state>")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// A matcher of its own for one sequence. A deep copy: a plain clone of llguidance's parser
/// shares the lexer's state (behind a mutex) with the compiled grammar that every later
/// request of the same grammar text starts from, so one sequence that hit the lexer's limits
/// left that state failed for all of them, and the sequences took turns at the mutex.
fn fresh_matcher(c: &Constraint) -> Matcher {
    Matcher::new(Ok(c.parser.deep_clone()))
}

/// One sequence's matcher on its own thread. The thread computes a mask, hands it over,
/// waits for the token drawn, consumes it, says whether the grammar is finished, and starts
/// on the next mask at once, so that mask is computed during the next forward pass. The
/// thread ends when this is dropped or the grammar is finished.
pub struct SequenceConstraint {
    tokens: mpsc::Sender<u32>,
    masks: mpsc::Receiver<MaskReply>,
    consumed: mpsc::Receiver<std::result::Result<bool, String>>,
}

impl SequenceConstraint {
    /// A fresh matcher after `generated` (the sequence's output so far: a decoder rebuilt
    /// mid-sequence replays it, so the grammar state matches the tokens).
    pub fn start(c: &Constraint, generated: &[u32]) -> Result<Self> {
        let mut m = fresh_matcher(c);
        m.consume_tokens(generated)
            .map_err(|e| Error::Invalid(format!("output does not match the grammar: {e}")))?;
        let (tok_tx, tok_rx) = mpsc::channel::<u32>();
        let (mask_tx, mask_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let stats = c.stats.clone();
        std::thread::Builder::new()
            .name("camelid-grammar".into())
            .spawn(move || loop {
                let started = Instant::now();
                // A grammar with nothing left to match (one that matches only the empty
                // string is so at the start) allows the end tokens alone; `compute_mask`
                // would fail on it.
                let mask = m.compute_mask_or_eos().map_err(|e| e.to_string());
                stats.record(started);
                let reply = mask.map(|allowed| StepMask {
                    allowed,
                    can_end: m.is_stopped() || m.is_accepting().unwrap_or(false),
                });
                if mask_tx.send(reply).is_err() {
                    return;
                }
                let Ok(t) = tok_rx.recv() else { return };
                let r = m
                    .consume_token(t)
                    .map(|()| m.is_stopped())
                    .map_err(|e| e.to_string());
                let end = !matches!(r, Ok(false));
                if done_tx.send(r).is_err() || end {
                    return;
                }
            })
            .map_err(|e| Error::Invalid(format!("cannot start a grammar thread: {e}")))?;
        Ok(Self {
            tokens: tok_tx,
            masks: mask_rx,
            consumed: done_rx,
        })
    }

    /// The tokens allowed now (waits for the matcher's thread if it is still computing).
    pub fn mask(&mut self) -> Result<StepMask> {
        match self.masks.recv() {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(Error::Grammar(without_state(&e))),
            Err(_) => Err(Error::Invalid("the grammar's matcher stopped".into())),
        }
    }

    /// Consumes the token drawn; true when the grammar is finished (nothing may follow).
    pub fn commit(&mut self, token: u32) -> Result<bool> {
        let gone = || Error::Invalid("the grammar's matcher stopped".into());
        self.tokens.send(token).map_err(|_| gone())?;
        match self.consumed.recv() {
            Ok(Ok(finished)) => Ok(finished),
            Ok(Err(e)) => Err(Error::Grammar(without_state(&e))),
            Err(_) => Err(gone()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::text::tokenizer::byte_level_bpe_json;
    use crate::text::tool_calls::{parse_output, ToolFormat, HERMES_CLOSE, HERMES_OPEN};
    use crate::text::tool_grammar::{call_grammar, CallableTool};
    use serde_json::json;

    /// One sequence whose lexer fails (its limits hit) leaves the compiled grammar, which the
    /// next request of the same grammar starts from, as it was.
    #[test]
    fn a_sequences_lexer_error_stays_its_own() {
        let tok = tiny_tokenizer(&[("<|endoftext|>", true)]);
        let eos = tok.token_to_id("<|endoftext|>").unwrap();
        let compiler = GrammarCompiler::new(&tok, &[eos]).unwrap();
        let c = compiler
            .compile(TopLevelGrammar::from_regex("[a-z]+"))
            .unwrap();
        let mut a = fresh_matcher(&c);
        assert!(a.compute_mask_or_eos().is_ok());
        let _ = a.test_trigger_lexer_error();
        assert!(a.compute_mask_or_eos().is_err());
        let mut b = fresh_matcher(&c);
        b.compute_mask_or_eos()
            .expect("a fresh sequence of the same grammar");
    }

    /// Kept compiled grammars are bounded by their text too, not only by count: three of
    /// 1.5 MB keep at most 4 MiB, the newest among them; one past 4 MiB is not kept.
    #[test]
    fn kept_grammars_are_bounded_by_their_size() {
        let tok = tiny_tokenizer(&[("<|endoftext|>", true)]);
        let eos = tok.token_to_id("<|endoftext|>").unwrap();
        let compiler = GrammarCompiler::new(&tok, &[eos]).unwrap();
        for c in ['a', 'b', 'c'] {
            let literal = c.to_string().repeat(1_500_000);
            compiler
                .compile(TopLevelGrammar::from_regex(&literal))
                .unwrap();
            assert!(compiler.kept_bytes() <= RECENT_GRAMMAR_BYTES);
            assert!(compiler.kept_bytes() >= 1_500_000, "the newest is kept");
        }
        let huge = "d".repeat(RECENT_GRAMMAR_BYTES + 1);
        let before = compiler.kept_bytes();
        compiler
            .compile(TopLevelGrammar::from_regex(&huge))
            .unwrap();
        assert_eq!(compiler.kept_bytes(), before);
    }

    /// [`tiny_tokenizer`] with Qwen's `<tool_call>` tags as added tokens not flagged
    /// special, and `<|endoftext|>` as its end.
    fn hermes_tokenizer() -> Tokenizer {
        tiny_tokenizer(&[
            (HERMES_OPEN, false),
            (HERMES_CLOSE, false),
            ("<|endoftext|>", true),
        ])
    }

    /// A byte-level BPE tokenizer of the 256 bytes (ids 0-255, no merges) and `added` tokens
    /// after them, each `(text, special)`, as a model's `tokenizer.json` lists them.
    pub(crate) fn tiny_tokenizer(added: &[(&str, bool)]) -> Tokenizer {
        // GPT-2's byte → character table: printable bytes are themselves, the rest 256, 257…
        let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut next = 255;
        let mut tokens: Vec<String> = (0..256u32)
            .map(|b| {
                let c = if printable(b) {
                    b
                } else {
                    next += 1;
                    next
                };
                char::from_u32(c).unwrap().to_string()
            })
            .collect();
        let mut types = vec![1; 256];
        for (t, special) in added {
            tokens.push(t.to_string());
            types.push(if *special { 3 } else { 4 }); // GGUF: control, user-defined
        }
        let doc = byte_level_bpe_json(&tokens, &types, &[], "gpt2").unwrap();
        Tokenizer::from_json_value(doc, "test").unwrap()
    }

    /// Qwen2.5/3's `<tool_call>` is an added token not flagged special, which the grammars'
    /// vocabulary holds as special for its `<…>` spelling: under a `required` grammar the model
    /// may write that trained token (and not the tag spelled out in characters), and the
    /// output parses back into the call.
    #[test]
    fn a_hermes_call_grammar_allows_the_added_tool_call_token() {
        let tok = hermes_tokenizer();
        let open = tok.token_to_id(HERMES_OPEN).unwrap();
        let close = tok.token_to_id(HERMES_CLOSE).unwrap();
        let eos = tok.token_to_id("<|endoftext|>").unwrap();
        assert!(!tok.is_special(open));
        let compiler = GrammarCompiler::new(&tok, &[eos]).unwrap();
        assert_eq!(compiler.special_token(HERMES_OPEN), Some(open));
        assert_eq!(compiler.special_token("<"), None);
        let tools = [CallableTool {
            name: "now",
            parameters: None,
            strict: false,
        }];
        let lark = call_grammar(ToolFormat::Hermes, &tools, false, &|t| {
            compiler.special_token(t)
        });
        let c = compiler.compile(TopLevelGrammar::from_lark(lark)).unwrap();
        let mut seq = SequenceConstraint::start(&c, &[]).unwrap();
        let first = seq.mask().unwrap();
        assert!(first.is_allowed(open));
        assert!(!first.is_allowed(tok.token_to_id("<").unwrap()));
        // A whole call in the trained tokens is taken and ends the grammar.
        let body = tok
            .encode("\n{\"name\": \"now\", \"arguments\": {}}\n", false)
            .unwrap();
        let ids: Vec<u32> = [vec![open], body, vec![close]].concat();
        // (One mask per step: a fresh matcher for the walk.)
        let mut seq = SequenceConstraint::start(&c, &[]).unwrap();
        let mut finished = false;
        for &t in &ids {
            assert!(!finished && seq.mask().unwrap().is_allowed(t), "{t}");
            // (With the tag named as text, llguidance allowed its token, from tokenizing the
            // forced text, and then refused it here: the call could not be written at all.)
            finished = seq.commit(t).unwrap_or_else(|e| panic!("token {t}: {e}"));
        }
        assert!(finished || seq.mask().unwrap().can_end);
        let (text, calls) = parse_output(ToolFormat::Hermes, &tok.decode(&ids, true).unwrap());
        assert_eq!(text, None);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "now");
    }

    /// A vocabulary token past llguidance's trie limits (2 000 bytes here; its trie asserts
    /// on ~1 025) is never allowed, and grammars still compile for the rest, where the trie
    /// panicked on every constrained request.
    #[test]
    fn a_token_too_long_for_the_trie_is_never_allowed() {
        let long = "x".repeat(2000);
        let tok = tiny_tokenizer(&[(long.as_str(), false), ("<|endoftext|>", true)]);
        let long_id = tok.token_to_id(&long).unwrap();
        let eos = tok.token_to_id("<|endoftext|>").unwrap();
        let compiler = GrammarCompiler::new(&tok, &[eos]).unwrap();
        let c = compiler.compile(TopLevelGrammar::from_regex("x+")).unwrap();
        let mut seq = SequenceConstraint::start(&c, &[]).unwrap();
        let mask = seq.mask().unwrap();
        assert!(mask.is_allowed(tok.token_to_id("x").unwrap()));
        assert!(!mask.is_allowed(long_id));
    }

    // The tool-call grammars of text::tool_grammar, compiled and run here (the text module
    // does not depend on this one).
    /// Whether `tools`' Hermes grammar (compiled for a byte vocabulary) takes `text`, or why it
    /// does not compile.
    fn hermes_takes(tools: &[CallableTool], text: &str) -> std::result::Result<bool, String> {
        let tok = tiny_tokenizer(&[("<|endoftext|>", true)]);
        let eos = tok.token_to_id("<|endoftext|>").unwrap();
        let compiler = GrammarCompiler::new(&tok, &[eos]).unwrap();
        let lark = call_grammar(ToolFormat::Hermes, tools, false, &|_| None);
        let c = compiler.compile(crate::TopLevelGrammar::from_lark(lark))?;
        let mut seq = SequenceConstraint::start(&c, &[]).unwrap();
        let mut finished = false;
        for t in tok.encode(text, false).unwrap() {
            if finished || !seq.mask().unwrap().is_allowed(t) {
                return Ok(false);
            }
            finished = seq.commit(t).unwrap();
        }
        Ok(finished || seq.mask().unwrap().can_end)
    }

    fn call(name: &str, args: &str) -> String {
        format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args}}}\n</tool_call>")
    }

    /// pydantic's shape (an enum as a `$defs` entry and a `$ref`) compiles and is enforced,
    /// and two tools may each define the same name differently.
    #[test]
    fn refs_to_defs_compile_and_constrain() {
        let weather = json!({"type": "object", "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"]}},
            "properties": {"unit": {"$ref": "#/$defs/Unit"}}, "required": ["unit"],
            "additionalProperties": false});
        let time = json!({"type": "object", "$defs": {"Unit": {"enum": ["UTC", "CET"]}},
            "properties": {"unit": {"$ref": "#/$defs/Unit"}}, "required": ["unit"],
            "additionalProperties": false});
        let tools = [
            CallableTool {
                name: "weather",
                parameters: Some(&weather),
                strict: false,
            },
            CallableTool {
                name: "time",
                parameters: Some(&time),
                strict: false,
            },
        ];
        for (text, ok) in [
            (call("weather", r#"{"unit": "celsius"}"#), true),
            (call("time", r#"{"unit": "CET"}"#), true),
            (call("weather", r#"{"unit": "CET"}"#), false),
            (call("time", r#"{"unit": "kelvin"}"#), false),
        ] {
            assert_eq!(hermes_takes(&tools, &text), Ok(ok), "{text}");
        }
    }

    /// Keywords llguidance cannot enforce are ignored, not refused (OpenAI takes them).
    #[test]
    fn unenforceable_keywords_are_ignored() {
        let p = json!({"type": "object", "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
            "secret": {"type": "string", "format": "password"},
            "n": {"type": "integer", "not": {"const": 3}}}});
        let t = [CallableTool {
            name: "f",
            parameters: Some(&p),
            strict: false,
        }];
        let args = r#"{"tags": ["a"], "secret": "x", "n": 2}"#;
        assert_eq!(hermes_takes(&t, &call("f", args)), Ok(true));
    }

    /// `"parameters": {}`: a forced call's arguments are an object, not any JSON value.
    #[test]
    fn empty_parameters_take_objects_only() {
        let empty = json!({});
        let t = [CallableTool {
            name: "f",
            parameters: Some(&empty),
            strict: false,
        }];
        assert_eq!(hermes_takes(&t, &call("f", r#"{"a": 1}"#)), Ok(true));
        for not_object in ["1", "\"x\"", "[]", "null"] {
            assert_eq!(
                hermes_takes(&t, &call("f", not_object)),
                Ok(false),
                "{not_object}"
            );
        }
    }

    /// A tool whose schema lists its properties takes no others (xgrammar's reading, vLLM's
    /// default): a tool of no arguments (`properties: {}`) is called with `{}`, not made-up
    /// ones; nested objects alike; `additionalProperties: true` keeps them open.
    #[test]
    fn listed_properties_are_the_only_ones() {
        let none = json!({"type": "object", "properties": {}});
        let nested = json!({"type": "object", "properties": {"where": {"type": "object",
            "properties": {"city": {"type": "string"}}}}});
        let open = json!({"type": "object", "properties": {}, "additionalProperties": true});
        let tool = |schema| {
            [CallableTool {
                name: "f",
                parameters: Some(schema),
                strict: false,
            }]
        };
        assert_eq!(hermes_takes(&tool(&none), &call("f", "{}")), Ok(true));
        assert_eq!(
            hermes_takes(&tool(&none), &call("f", r#"{"x": 1}"#)),
            Ok(false)
        );
        let city = r#"{"where": {"city": "Paris"}}"#;
        assert_eq!(hermes_takes(&tool(&nested), &call("f", city)), Ok(true));
        let extra = r#"{"where": {"city": "Paris", "zip": 1}}"#;
        assert_eq!(hermes_takes(&tool(&nested), &call("f", extra)), Ok(false));
        assert_eq!(
            hermes_takes(&tool(&open), &call("f", r#"{"x": 1}"#)),
            Ok(true)
        );
    }

    /// A lazy grammar's replay of its trigger where the vocabulary holds it as one (special)
    /// token: the grammar names it by id, and `tokens_of` gives that id, so the matcher starts
    /// past it and wants the call's newline next.
    #[test]
    fn a_lazy_call_grammar_replays_the_added_tool_call_token() {
        let tok = hermes_tokenizer();
        let open = tok.token_to_id(HERMES_OPEN).unwrap();
        let eos = tok.token_to_id("<|endoftext|>").unwrap();
        let compiler = GrammarCompiler::new(&tok, &[eos]).unwrap();
        let tools = [CallableTool {
            name: "now",
            parameters: None,
            strict: false,
        }];
        let lark = call_grammar(ToolFormat::Hermes, &tools, false, &|t| {
            compiler.special_token(t)
        });
        let c = compiler
            .compile(TopLevelGrammar::from_lark(lark.clone()))
            .unwrap();
        assert_eq!(c.tokens_of(HERMES_OPEN), vec![open]);
        assert_eq!(c.tokens_of("\n{"), vec![b'\n' as u32, b'{' as u32]);
        let mut seq = SequenceConstraint::start(&c, &c.tokens_of(HERMES_OPEN)).unwrap();
        let mask = seq.mask().unwrap();
        assert!(mask.is_allowed(b'\n' as u32));
        assert!(!mask.is_allowed(b'x' as u32) && !mask.is_allowed(open) && !mask.is_allowed(eos));
        // The same grammar again is the compiled one (kept), not compiled anew.
        let again = compiler.compile(TopLevelGrammar::from_lark(lark)).unwrap();
        assert!(Arc::ptr_eq(&c.parser, &again.parser));
    }
}
