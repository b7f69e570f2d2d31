//! Text that streams out token by token: UTF-8-safe incremental detokenization and stop
//! strings that are never partly emitted.

use crate::error::Result;
use crate::text::tokenizer::Tokenizer;
use std::sync::Arc;

/// Tokens of one unfinished character (UTF-8 has at most 4 bytes, a token at least 1) fit
/// well within this; more pending tokens than this are emitted as they decode (with U+FFFD
/// for bytes that never formed a character), so no step decodes more than about twice this.
const MAX_PENDING: usize = 16;

/// Decodes a growing token list and yields only complete new text. A multi-byte character
/// split across tokens is held back until it is whole (the decoder would show U+FFFD).
/// Each step decodes a bounded window (the last emitted tokens for spacing, plus pending
/// ones): skipped special tokens never enter it and a run of bytes that never completes a
/// character is let out after [`MAX_PENDING`] tokens.
pub struct IncrementalDecoder {
    /// `window[..read]` was emitted (context for spacing), `window[read..]` is pending.
    window: Vec<u32>,
    read: usize,
    /// The decoding of `window[..read]`.
    prefix: String,
    skip_special: bool,
    /// Tokens handed to the tokenizer's decoder so far (the unit tests bound it).
    decoded: usize,
    /// The prompt's last tokens, until the first step makes them the window's context.
    prompt_tail: Option<Vec<u32>>,
}

/// Prompt tokens kept as the first context: vLLM's detokenizer looks back at most this far
/// for a tail that decodes whole.
const PROMPT_CONTEXT: usize = 24;

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            window: vec![],
            read: 0,
            prefix: String::new(),
            skip_special,
            decoded: 0,
            prompt_tail: None,
        }
    }

    /// A decoder whose first token is read after `prompt`: a SentencePiece decoder strips
    /// the space of the text's first `▁word`, so the first token of an answer decoded on
    /// its own loses its space (`"Paris"` after "The capital of France is", where vLLM and
    /// llama.cpp give `" Paris"`). As vLLM does, the prompt's last tokens are the context.
    pub fn after(prompt: &[u32], skip_special: bool) -> Self {
        let tail = &prompt[prompt.len().saturating_sub(PROMPT_CONTEXT)..];
        Self {
            prompt_tail: Some(tail.to_vec()),
            ..Self::new(skip_special)
        }
    }

    /// Makes the prompt's tail the emitted context: the shortest one of at least 4 tokens
    /// that decodes without a broken character (as vLLM looks for one), else none (a prompt
    /// ending inside a character: its bytes would shift what the answer's first token shows).
    fn start(&mut self, tok: &Tokenizer) -> Result<()> {
        let Some(mut tail) = self.prompt_tail.take() else {
            return Ok(());
        };
        if self.skip_special {
            tail.retain(|&id| !tok.is_special(id));
        }
        let mut from = tail.len();
        for n in 4.min(tail.len())..=tail.len() {
            let at = tail.len() - n;
            self.decoded += n;
            if !tok
                .decode(&tail[at..], self.skip_special)?
                .contains('\u{FFFD}')
            {
                from = at;
                break;
            }
        }
        self.window = tail.split_off(from);
        self.read = self.window.len();
        self.prefix = self.decode(tok, 0..self.read)?;
        Ok(())
    }

    fn decode(&mut self, tok: &Tokenizer, ids: std::ops::Range<usize>) -> Result<String> {
        self.decoded += ids.len();
        tok.decode(&self.window[ids], self.skip_special)
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        // A skipped special token decodes to nothing and changes nothing around it.
        if self.skip_special && tok.is_special(id) {
            return Ok(String::new());
        }
        self.start(tok)?;
        self.window.push(id);
        let full = self.decode(tok, 0..self.window.len())?;
        let complete = full.len() > self.prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(self.prefix.len());
        if !complete && self.window.len() - self.read < MAX_PENDING {
            return Ok(String::new());
        }
        self.advance(tok, &full)
    }

    /// Emits `full` past the prefix and makes the pending tokens the new context.
    fn advance(&mut self, tok: &Tokenizer, full: &str) -> Result<String> {
        let mut at = self.prefix.len().min(full.len());
        while !full.is_char_boundary(at) {
            at += 1;
        }
        let new = full[at..].to_string();
        self.window.drain(..self.read);
        self.read = self.window.len();
        self.prefix = self.decode(tok, 0..self.read)?;
        Ok(new)
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.read == self.window.len() {
            return Ok(String::new());
        }
        let full = self.decode(tok, 0..self.window.len())?;
        self.advance(tok, &full)
    }
}

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCheck {
    /// Safe to emit; generation continues.
    Continue(String),
    /// A stop string was found: emit this text (before the stop string) and finish.
    Stopped(String),
}

/// Stop strings with their Knuth–Morris–Pratt tables: `fail[k][i]` is the longest proper
/// prefix of `stops[k][..=i]` that is also its suffix. Four bytes per byte of stop string:
/// built once per request, where its parameters are made (not on the engine thread), and
/// shared through `Arc` by every sequence of the request.
#[derive(Debug, Default)]
pub struct StopSet {
    stops: Vec<String>,
    fail: Vec<Box<[u32]>>,
    /// The matched stop string ends the text instead of being cut off (vLLM's
    /// `include_stop_str_in_output`).
    pub include_in_output: bool,
    /// How many of `stops`, from the first, are the client's; the rest are the server's own
    /// (a built-in template's end of turn), which stop the text without being named.
    client: usize,
}

impl StopSet {
    /// The set of these stop strings; empty ones (which would stop at once) are dropped.
    pub fn new(mut stops: Vec<String>) -> Self {
        stops.retain(|s| !s.is_empty());
        let fail = stops
            .iter()
            .map(|s| {
                let b = s.as_bytes();
                let mut fail = vec![0u32; b.len()];
                let mut k = 0usize;
                for i in 1..b.len() {
                    while k > 0 && b[i] != b[k] {
                        k = fail[k - 1] as usize;
                    }
                    if b[i] == b[k] {
                        k += 1;
                    }
                    fail[i] = k as u32;
                }
                fail.into()
            })
            .collect();
        Self {
            client: stops.len(),
            stops,
            fail,
            include_in_output: false,
        }
    }

    /// The client's stop strings, then the server's own (a built-in template's end of turn):
    /// all of them stop the text, only the client's are named as what stopped it (vLLM's
    /// `stop_reason`). A string in both is the client's.
    pub fn client_then_server(client: &[String], server: &[String]) -> Self {
        let mut set = Self::new(client.iter().chain(server).cloned().collect());
        set.client = client.iter().filter(|s| !s.is_empty()).count();
        set
    }

    pub fn strings(&self) -> &[String] {
        &self.stops
    }
}

impl<S: Into<String>> FromIterator<S> for StopSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self::new(iter.into_iter().map(Into::into).collect())
    }
}

/// Finds stop strings in streamed text; holds back any tail that could be the start of one.
/// Each stop string is followed byte by byte (Knuth–Morris–Pratt): a push costs amortised
/// O(new text × stop strings), not O(stop string length), so long stop strings cannot make
/// every token slow.
pub struct StopMatcher {
    set: Arc<StopSet>,
    /// Per stop string: the length of the longest end of the stream that begins it.
    matched: Vec<usize>,
    /// `pending[start..]` is the held-back text (the longest end of the stream that begins
    /// some stop string); the part before `start` is emitted, dropped in amortised batches.
    pending: String,
    start: usize,
    /// Automaton steps so far (the unit tests bound it).
    work: u64,
    /// The stop string that stopped the stream, by its index in the set.
    stopped_by: Option<usize>,
}

impl StopMatcher {
    pub fn new(set: Arc<StopSet>) -> Self {
        Self {
            matched: vec![0; set.stops.len()],
            set,
            pending: String::new(),
            start: 0,
            work: 0,
            stopped_by: None,
        }
    }

    /// The client's stop string found by the push that returned [`StopCheck::Stopped`] (none
    /// when a server's own stop string stopped it).
    pub fn stopped_by(&self) -> Option<&str> {
        self.stopped_by
            .filter(|&k| k < self.set.client)
            .map(|k| self.set.stops[k].as_str())
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        self.scan(text, true)
    }

    /// As [`Self::push`], but a stop string that ends within `text` does not stop (vLLM's
    /// `min_tokens` holds stop strings off): one that begins here and ends in a later push
    /// still does.
    pub fn push_unchecked(&mut self, text: &str) -> String {
        match self.scan(text, false) {
            StopCheck::Continue(t) | StopCheck::Stopped(t) => t,
        }
    }

    fn scan(&mut self, text: &str, check: bool) -> StopCheck {
        let base = self.pending.len();
        self.pending.push_str(text);
        // The earliest-starting stop string wholly in the held text plus `text` (where it
        // begins, and where it ends).
        let mut first: Option<(usize, usize, usize)> = None;
        for (k, (stop, fail)) in self.set.stops.iter().zip(&self.set.fail).enumerate() {
            let (stop, m) = (stop.as_bytes(), &mut self.matched[k]);
            for (i, b) in text.bytes().enumerate() {
                while *m > 0 && stop[*m] != b {
                    *m = fail[*m - 1] as usize;
                    self.work += 1;
                }
                self.work += 1;
                if stop[*m] == b {
                    *m += 1;
                }
                if *m == stop.len() {
                    let end = base + i + 1;
                    let begin = end - stop.len();
                    if check && first.is_none_or(|(b, _, _)| begin < b) {
                        first = Some((begin, end, k));
                    }
                    *m = fail[*m - 1] as usize;
                }
            }
        }
        if let Some((begin, end, k)) = first {
            self.stopped_by = Some(k);
            let to = if self.set.include_in_output {
                end
            } else {
                begin
            };
            let out = self.pending[self.start..to].to_string();
            self.clear();
            return StopCheck::Stopped(out);
        }
        // Every automaton's match is an end of the stream no longer than what is held, and
        // it starts where a stop string starts: on a character boundary.
        let hold = self.matched.iter().copied().max().unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[self.start..cut].to_string();
        self.start = cut;
        if self.start > self.pending.len() / 2 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        StopCheck::Continue(out)
    }

    /// Text held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        let out = self.pending[self.start..].to_string();
        self.clear();
        out
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.start = 0;
        self.matched.iter_mut().for_each(|m| *m = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenizer::test_byte_tokenizer;
    use rand::{Rng, SeedableRng};

    fn matcher<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> StopMatcher {
        StopMatcher::new(Arc::new(stops.into_iter().collect()))
    }

    #[test]
    fn stop_string_across_pushes_is_never_emitted() {
        let mut m = matcher(["###", "END"]);
        let mut out = String::new();
        for piece in ["Hello #", "# wor", "ld #", "#", "# tail"] {
            match m.push(piece) {
                StopCheck::Continue(t) => out += &t,
                StopCheck::Stopped(t) => {
                    out += &t;
                    break;
                }
            }
        }
        assert_eq!(out, "Hello ## world ");
    }

    /// vLLM's `include_stop_str_in_output`: the text ends with the matched stop string (the
    /// earliest-starting one), nothing after it.
    #[test]
    fn an_included_stop_string_ends_the_text() {
        let mut set: StopSet = ["ND!", "END"].into_iter().collect();
        set.include_in_output = true;
        let mut m = StopMatcher::new(Arc::new(set));
        assert_eq!(m.push("The E"), StopCheck::Continue("The ".into()));
        assert_eq!(m.stopped_by(), None);
        assert_eq!(m.push("ND! more"), StopCheck::Stopped("END".into()));
        // vLLM's `stop_reason`: the string that stopped it, the earliest-starting one.
        assert_eq!(m.stopped_by(), Some("END"));
        // The server's own stop strings stop the text but are not the client's to name; a
        // string in both lists is the client's.
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (client, server, named) in [
            (owned(&["zz"]), owned(&["END"]), None),
            (owned(&["END"]), owned(&["END"]), Some("END")),
            (owned(&["", "END"]), owned(&["ND!"]), Some("END")),
        ] {
            let set = StopSet::client_then_server(&client, &server);
            let mut m = StopMatcher::new(Arc::new(set));
            assert!(matches!(m.push("The END! more"), StopCheck::Stopped(_)));
            assert_eq!(m.stopped_by(), named, "{client:?} {server:?}");
        }
    }

    /// min_tokens: a stop string that ends in unchecked text does not stop, and what it was
    /// is emitted; one that begins there and ends in checked text does stop.
    #[test]
    fn unchecked_text_holds_stops_off_but_feeds_later_matches() {
        let mut m = matcher(["ab"]);
        assert_eq!(m.push_unchecked("xab"), "xab");
        assert_eq!(m.push_unchecked("za"), "z");
        assert_eq!(m.push("b tail"), StopCheck::Stopped("".into()));
    }

    #[test]
    fn held_prefix_is_released_when_not_a_stop() {
        let mut m = matcher(["ab"]);
        assert_eq!(m.push("xa"), StopCheck::Continue("x".into()));
        assert_eq!(m.push("c"), StopCheck::Continue("ac".into()));
        assert_eq!(m.push("a"), StopCheck::Continue("".into()));
        assert_eq!(m.flush(), "a");
    }

    /// The matcher as it was (a search per stop string per push, every prefix tried): the
    /// reference for what is emitted when.
    struct NaiveStops {
        stops: Vec<String>,
        pending: String,
    }

    impl NaiveStops {
        fn push(&mut self, text: &str) -> StopCheck {
            self.pending.push_str(text);
            let first = self
                .stops
                .iter()
                .filter_map(|s| self.pending.find(s.as_str()))
                .min();
            if let Some(at) = first {
                let out = self.pending[..at].to_string();
                self.pending.clear();
                return StopCheck::Stopped(out);
            }
            let mut hold = 0;
            for s in &self.stops {
                for (i, _) in s.char_indices().skip(1) {
                    if i > hold && self.pending.ends_with(&s[..i]) {
                        hold = i;
                    }
                }
            }
            let cut = self.pending.len() - hold;
            let out = self.pending[..cut].to_string();
            self.pending.drain(..cut);
            StopCheck::Continue(out)
        }
    }

    #[test]
    fn stops_emit_what_the_naive_matcher_emits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = ["a", "b", "é", "ab", "日"];
        let word = |rng: &mut rand::rngs::StdRng, max: usize| -> String {
            let n = rng.random_range(1..=max);
            (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        };
        for case in 0..3000 {
            let stops: Vec<String> = (0..rng.random_range(1..=4))
                .map(|_| word(&mut rng, 4))
                .collect();
            let mut fast = matcher(stops.clone());
            let mut naive = NaiveStops {
                stops: stops.clone(),
                pending: String::new(),
            };
            for _ in 0..20 {
                let piece = if rng.random_bool(0.2) {
                    String::new()
                } else {
                    word(&mut rng, 3)
                };
                let (f, n) = (fast.push(&piece), naive.push(&piece));
                assert_eq!(f, n, "case {case}: stops {stops:?}, piece {piece:?}");
                if matches!(f, StopCheck::Stopped(_)) {
                    break;
                }
            }
            assert_eq!(fast.flush(), naive.pending, "case {case}");
        }
    }

    /// 16 stop strings of 250 kB: pushing text costs a few automaton steps per byte and stop
    /// string, not a pass over the stop strings (the old matcher: 16 × 250 000 per push).
    #[test]
    fn stop_work_per_token_does_not_grow_with_stop_length() {
        let long = 250_000;
        let mut stops: Vec<String> = (0..15)
            .map(|i| format!("{}{}", "a".repeat(long - 2), i % 10))
            .collect();
        // One that the text below keeps almost matching: the held part grows to 250 kB.
        stops.push(format!("{}b", "a".repeat(long - 1)));
        let mut m = matcher(stops);
        let mut out = String::new();
        let mut pushed = 0u64;
        for i in 0..300_000 {
            let piece = if i % 1000 == 999 { "" } else { "a" };
            pushed += piece.len() as u64;
            match m.push(piece) {
                StopCheck::Continue(t) => out += &t,
                StopCheck::Stopped(_) => panic!("no stop string occurs"),
            }
        }
        out += &m.flush();
        assert_eq!(out.len() as u64, pushed);
        assert!(
            m.work <= 2 * 16 * pushed + 16,
            "{} automaton steps for {pushed} bytes",
            m.work
        );
    }

    fn decode_all(
        tok: &crate::text::tokenizer::Tokenizer,
        ids: &[u32],
        skip: bool,
    ) -> (String, Vec<usize>) {
        let mut d = IncrementalDecoder::new(skip);
        let (mut text, mut work) = (String::new(), vec![]);
        for &id in ids {
            let before = d.decoded;
            text += &d.push(tok, id).unwrap();
            work.push(d.decoded - before);
        }
        text += &d.flush(tok).unwrap();
        (text, work)
    }

    #[test]
    fn incremental_text_is_the_whole_decoding() {
        let tok = test_byte_tokenizer();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let pieces = [
            "hello", " wörld", " 日本", " 🙂", "\n", "<|a|>", "<|b|>", " a",
        ];
        for _ in 0..200 {
            let text: String = (0..rng.random_range(1..12))
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            let ids = tok.encode(&text, false).unwrap();
            for skip in [true, false] {
                let want = tok.decode(&ids, skip).unwrap();
                assert_eq!(decode_all(&tok, &ids, skip).0, want, "{text:?} skip {skip}");
            }
        }
    }

    /// After 1000 special tokens (skipped) or 1000 bytes that never form a character, a step
    /// still decodes a bounded number of tokens (the old decoder re-decoded the whole run).
    #[test]
    fn detokenizer_work_per_step_is_bounded() {
        let tok = test_byte_tokenizer();
        let special = tok.token_to_id("<|a|>").unwrap();
        let h = u32::from(b'h');
        let runs: [(Vec<u32>, &str); 3] = [
            (vec![special; 1000], ""),
            // 0x80: a continuation byte with no lead byte, never a character.
            (vec![0x80; 1000], "\u{FFFD}"),
            // 0xE3: a lead byte each time, never completed.
            (vec![0xE3; 1000], "\u{FFFD}"),
        ];
        for (run, each) in runs {
            let mut ids = vec![h];
            ids.extend(&run);
            ids.push(h);
            let (text, work) = decode_all(&tok, &ids, true);
            assert_eq!(text, format!("h{}h", each.repeat(1000)));
            assert_eq!(text, tok.decode(&ids, true).unwrap());
            let most = work.iter().max().unwrap();
            assert!(*most <= 3 * MAX_PENDING, "a step decoded {most} tokens");
            assert!(work.iter().sum::<usize>() <= 3 * MAX_PENDING * ids.len());
        }
    }

    /// A SentencePiece tokenizer (a Llama-2-style `tokenizer.model` converted, its decoder
    /// stripping the text's first space): the answer's first word keeps its space when the
    /// decoder reads it after the prompt, as the whole text decodes it.
    #[test]
    fn an_answer_read_after_its_prompt_keeps_its_first_space() {
        use crate::text::tokenizer::{spm_bpe_json, PieceType};
        let pieces: Vec<(String, f32, PieceType)> = [
            ("<unk>", PieceType::Unknown),
            ("<s>", PieceType::Control),
            ("</s>", PieceType::Control),
            ("▁The", PieceType::Normal),
            ("▁capital", PieceType::Normal),
            ("▁is", PieceType::Normal),
            ("▁Paris", PieceType::Normal),
            (".", PieceType::Normal),
        ]
        .iter()
        .map(|(p, t)| (p.to_string(), 0.0, *t))
        .collect();
        let tok = Tokenizer::from_json_value(spm_bpe_json(&pieces, true).unwrap(), "spm").unwrap();
        let (prompt, answer) = ([1u32, 3, 4, 5], [6u32, 7, 2]);
        let whole: Vec<u32> = prompt.iter().chain(&answer).copied().collect();
        let prompt_text = tok.decode(&prompt, true).unwrap();
        assert_eq!(
            prompt_text, "The capital is",
            "the decoder strips the first space"
        );
        let want = tok.decode(&whole, true).unwrap()[prompt_text.len()..].to_string();
        assert_eq!(want, " Paris.");
        for skip in [true, false] {
            let mut d = IncrementalDecoder::after(&prompt, skip);
            let mut text = String::new();
            for &id in &answer {
                text += &d.push(&tok, id).unwrap();
            }
            text += &d.flush(&tok).unwrap();
            let want = if skip { " Paris." } else { " Paris.</s>" };
            assert_eq!(text, want, "skip_special {skip}");
        }
        // A prompt of one word is context enough; one of nothing but a skipped BOS is none
        // (as decoding the whole text without special tokens strips the first space).
        for (prompt, want) in [(&[3u32][..], " Paris"), (&[1], "Paris"), (&[], "Paris")] {
            let mut d = IncrementalDecoder::after(prompt, true);
            assert_eq!(d.push(&tok, 6).unwrap(), want, "after {prompt:?}");
        }
    }

    /// A prompt ending inside a character (a token-id prompt can): the answer's text is what
    /// it decodes to on its own, no byte of it lost to the prompt's broken tail.
    #[test]
    fn an_answer_after_a_prompt_cut_inside_a_character_keeps_its_text() {
        let tok = test_byte_tokenizer();
        // "é" is 0xC3 0xA9: the prompt ends after its first byte (ids are byte values).
        let prompt: Vec<u32> = "a long prompt "
            .bytes()
            .map(u32::from)
            .chain([0xC3])
            .collect();
        let answer: Vec<u32> = [0xA9]
            .into_iter()
            .chain("hello".bytes().map(u32::from))
            .collect();
        let mut d = IncrementalDecoder::after(&prompt, true);
        let mut text = String::new();
        for &id in &answer {
            text += &d.push(&tok, id).unwrap();
        }
        text += &d.flush(&tok).unwrap();
        assert_eq!(text, tok.decode(&answer, true).unwrap());
        assert!(text.ends_with("hello"), "{text:?}");
    }

    #[test]
    fn empty_stop_strings_are_dropped() {
        let set = StopSet::new(vec!["x".repeat(1000), "y".into(), String::new()]);
        assert_eq!(set.strings().len(), 2);
        assert_eq!(set.strings()[0].len(), 1000);
    }
}
