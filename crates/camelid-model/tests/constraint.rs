//! Structured output in the model crate: the hand-written vocabulary adapter on the default
//! model's byte-level BPE and on the SentencePiece fixture (byte fallback), grammar masks,
//! and constrained generation on the default model.

mod common;
use camelid_model::constraint::{SequenceConstraint, VocabEnv};
use camelid_model::decode::{generate, FinishReason, GenerationParams};
use camelid_model::text::tokenizer::{from_sentencepiece, Tokenizer};
use camelid_model::{SamplingParams, TopLevelGrammar};
use llguidance::toktrie::{TokTrie, TokenizerEnv};
use std::path::Path;
use std::sync::OnceLock;

fn smol() -> &'static camelid_model::LoadedModel {
    static M: OnceLock<camelid_model::LoadedModel> = OnceLock::new();
    M.get_or_init(|| common::load(&common::default_gguf()))
}

fn spm() -> Tokenizer {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    from_sentencepiece(&p.join("tokenizer.model")).expect("fixture tokenizer")
}

const TEXTS: &[&str] = &[
    "Hello, world!",
    "  two spaces, a tab\tand\na newline",
    "{\"name\": \"Zoë\", \"age\": 42}",
    "ünïcödé — 東京 🦙 emoji",
    "x = [1, 2, 3]; // code",
];

/// The bytes the trie holds for `ids`, concatenated.
fn spelled(trie: &TokTrie, ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|&t| trie.token(t).to_vec()).collect()
}

#[test]
fn byte_level_vocabulary_spells_what_the_tokenizer_encodes() {
    let lm = smol();
    let env = VocabEnv::new(&lm.tokenizer, &lm.stop_token_ids).unwrap();
    let trie = env.tok_trie();
    assert_eq!(trie.vocab_size(), lm.tokenizer.vocab_size());
    for text in TEXTS {
        let ids = lm.tokenizer.encode(text, false).unwrap();
        assert_eq!(spelled(trie, &ids), text.as_bytes(), "{text:?}");
        assert_eq!(env.tokenize_bytes(text.as_bytes()), ids, "{text:?}");
    }
    // Control tokens carry the special marker and are not text.
    for &s in &lm.stop_token_ids {
        let b = trie.token(s);
        assert_eq!(b[0], TokTrie::SPECIAL_TOKEN_MARKER, "{s}");
        assert!(trie.is_special_token(s));
        assert_eq!(&b[1..], lm.tokenizer.id_to_token(s).unwrap().as_bytes());
    }
    assert_eq!(trie.eos_tokens(), lm.stop_token_ids.as_slice());
}

#[test]
fn sentencepiece_vocabulary_spells_spaces_and_fallback_bytes() {
    let tok = spm();
    let env = VocabEnv::new(&tok, &tok.eos_ids).unwrap();
    let trie = env.tok_trie();
    // The fixture's tiny vocabulary has no byte pieces: characters it lacks are <unk>, so
    // only texts it spells are compared (the byte pieces are checked id by id below).
    let unk = tok.token_to_id("<unk>");
    let mut checked = 0;
    for text in TEXTS
        .iter()
        .chain(&["hello world", "the cat sat on the mat"])
    {
        // The tokenizer prepends SentencePiece's dummy-prefix space to a text.
        let ids = tok.encode(text, false).unwrap();
        if ids.iter().any(|&t| Some(t) == unk) {
            continue;
        }
        checked += 1;
        let want = format!(" {text}");
        assert_eq!(spelled(trie, &ids), want.as_bytes(), "{text:?}");
        // Bytes tokenized for a grammar are a continuation: no space is prepended.
        let cont = env.tokenize_bytes(text.as_bytes());
        assert_eq!(spelled(trie, &cont), text.as_bytes(), "{text:?}");
    }
    assert!(checked > 0, "no text the fixture's vocabulary spells");
    for id in 0..tok.vocab_size() as u32 {
        let piece = tok.id_to_token(id).unwrap();
        if tok.is_special(id) {
            assert_eq!(trie.token(id)[0], TokTrie::SPECIAL_TOKEN_MARKER, "{piece}");
        } else if let Some(h) = piece.strip_prefix("<0x") {
            let b = u8::from_str_radix(h.trim_end_matches('>'), 16).unwrap();
            assert_eq!(trie.token(id), [b], "{piece}");
        } else {
            assert!(!trie.token(id).contains(&0xff), "{piece}");
        }
    }
}

/// The first mask of a regex allows exactly the tokens that spell a prefix of a match; the
/// stop tokens only once the grammar can end; the grammar ends after the last character.
#[test]
fn masks_allow_exactly_the_tokens_a_match_can_start_with() {
    let lm = smol();
    let c = lm
        .grammar
        .compile(TopLevelGrammar::from_regex("(cat|catalog|dog)s?"))
        .unwrap();
    let env = VocabEnv::new(&lm.tokenizer, &lm.stop_token_ids).unwrap();
    let trie = env.tok_trie();
    let mut seq = SequenceConstraint::start(&c, &[]).unwrap();
    let mask = seq.mask().unwrap();
    assert!(!mask.can_end);
    let matches = ["cat", "cats", "catalog", "catalogs", "dog", "dogs"];
    let mut allowed = 0;
    for id in 0..trie.vocab_size() as u32 {
        let b = trie.token(id);
        let fits = !b.is_empty()
            && b[0] != TokTrie::SPECIAL_TOKEN_MARKER
            && matches.iter().any(|m| m.as_bytes().starts_with(b));
        assert_eq!(
            mask.is_allowed(id),
            fits,
            "token {id} {:?}",
            String::from_utf8_lossy(b)
        );
        allowed += fits as usize;
    }
    assert!(allowed >= 6, "{allowed}");
    let mut logits = vec![0.0f32; trie.vocab_size() + 64];
    mask.apply(&mut logits, &lm.stop_token_ids);
    for &s in &lm.stop_token_ids {
        assert_eq!(logits[s as usize], f32::NEG_INFINITY);
    }
    assert!(logits[trie.vocab_size()..]
        .iter()
        .all(|l| *l == f32::NEG_INFINITY));
    // "dog" then "s": after "dog" the grammar may end (stop tokens allowed), after "dogs" it
    // is finished.
    let ids = lm.tokenizer.encode("dog", false).unwrap();
    for &t in &ids {
        assert!(!seq.commit(t).unwrap());
        let _ = seq.mask().unwrap();
    }
    // (The mask after "dog" was taken in the loop; take a fresh matcher to look at it.)
    let mut again = SequenceConstraint::start(&c, &ids).unwrap();
    let m = again.mask().unwrap();
    assert!(m.can_end);
    let s = lm.tokenizer.token_to_id("s").unwrap();
    assert!(m.is_allowed(s));
    assert!(
        again.commit(s).unwrap(),
        "after \"dogs\" nothing may follow"
    );
}

#[test]
fn bad_grammars_are_refused_with_a_reason() {
    let g = &smol().grammar;
    for bad in [
        TopLevelGrammar::from_regex("[0-9"),
        TopLevelGrammar::from_lark("start: missing_rule".into()),
        TopLevelGrammar::from_json_schema(serde_json::json!({"type": "no-such-type"})),
    ] {
        let e = g.compile(bad).unwrap_err();
        assert!(!e.is_empty());
    }
}

fn chat_prompt(text: &str) -> Vec<u32> {
    let lm = smol();
    let msgs = [camelid_model::Message::new("user", text)];
    let t = lm.template.render(&msgs, true).unwrap();
    lm.tokenizer.encode(&t, true).unwrap()
}

fn params(seed: u64, grammar: Option<TopLevelGrammar>) -> GenerationParams {
    let lm = smol();
    let mut p = GenerationParams::new(
        80,
        SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
    );
    p.stop_token_ids = lm.stop_token_ids.clone();
    p.constraint = grammar.map(|g| lm.grammar.compile(g).unwrap());
    p
}

/// Greedy generation of up to 40 tokens under `grammar`, for the tests that script the
/// logits step by step ([`favouring`]).
fn greedy_under(grammar: TopLevelGrammar) -> GenerationParams {
    let lm = smol();
    let mut p = GenerationParams::new(
        40,
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
    );
    p.stop_token_ids = lm.stop_token_ids.clone();
    p.constraint = Some(lm.grammar.compile(grammar).unwrap());
    p
}

/// Made-up logits over `vocab` tokens that favour `want`: greedy sampling draws it unless
/// the grammar forbids it.
fn favouring(vocab: usize, want: u32) -> Vec<f32> {
    let mut l = vec![0.0f32; vocab];
    l[want as usize] = 20.0;
    l
}

/// Without the grammar the model does not write this shape; with it, every sample does,
/// ends by itself (finish "stop"), and logprobs stay the model's.
#[test]
fn constrained_generation_on_the_default_model_matches_the_regex() {
    let lm = smol();
    let rx = "[0-9]{3}-[a-z]{3}";
    let is_match = |s: &str| {
        let b = s.as_bytes();
        b.len() == 7
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[3] == b'-'
            && b[4..].iter().all(u8::is_ascii_lowercase)
    };
    let prompt = chat_prompt("Write a product code.");
    let free = generate(lm, &prompt, params(1, None), |_| {}).unwrap();
    assert!(
        !is_match(&free.text),
        "unconstrained output matched: {:?}",
        free.text
    );
    for seed in 0..4 {
        let mut p = params(seed, Some(TopLevelGrammar::from_regex(rx)));
        p.logprobs = Some(1);
        let g = generate(lm, &prompt, p.clone(), |_| {}).unwrap();
        assert!(is_match(&g.text), "seed {seed}: {:?}", g.text);
        assert_eq!(g.finish_reason, FinishReason::Stop);
        // Same seed, same output.
        assert_eq!(generate(lm, &prompt, p, |_| {}).unwrap().text, g.text);
        // Log-probabilities are of the model's distribution: ≤ 0 and not renormalised over
        // the few allowed tokens (some token's probability under the model is below 1).
        assert!(g.logprobs.iter().all(|l| l.logprob <= 0.0));
        assert!(g.logprobs.iter().any(|l| l.logprob < -1e-3));
    }
}

#[test]
fn constrained_generation_writes_schema_json() {
    let lm = smol();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    });
    let prompt = chat_prompt("Tell me about a city.");
    for seed in 0..3 {
        let g = generate(
            lm,
            &prompt,
            params(
                seed,
                Some(TopLevelGrammar::from_json_schema(schema.clone())),
            ),
            |_| {},
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("{e}: {:?}", g.text));
        assert!(v["city"].is_string() && v["population"].is_i64(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(g.finish_reason, FinishReason::Stop);
    }
}

/// Whether `grammar` takes `text` (as the default model's tokenizer spells it) whole and may
/// end there.
fn grammar_takes(grammar: &camelid_model::Constraint, text: &str) -> bool {
    let lm = smol();
    let ids = lm.tokenizer.encode(text, false).unwrap();
    let mut seq = SequenceConstraint::start(grammar, &[]).unwrap();
    let mut finished = false;
    for &t in &ids {
        if finished || !seq.mask().unwrap().is_allowed(t) {
            return false;
        }
        finished = seq.commit(t).unwrap();
    }
    finished || seq.mask().unwrap().can_end
}

/// Mistral's `[TOOL_CALLS]name[ARGS]{…}` grammar (what `tool_choice: "required"` compiles for
/// such a template; the default model has no such control tokens, so they are text): a
/// well-formed call, or several, is taken, and parses back into those calls; a call of an
/// unknown function, arguments against the schema, the older array format are refused; and
/// sampling under it writes calls the parser reads.
#[test]
fn mistral_args_call_grammar_takes_calls_and_refuses_malformed_ones() {
    use camelid_model::text::tool_calls::{parse_output, ToolFormat};
    use camelid_model::text::tool_grammar::{call_grammar, CallableTool};
    let lm = smol();
    let weather = serde_json::json!({"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": false});
    let tools = [
        CallableTool {
            name: "get_weather",
            parameters: Some(&weather),
            strict: false,
        },
        CallableTool {
            name: "now",
            parameters: None,
            strict: false,
        },
    ];
    let lark = call_grammar(ToolFormat::MistralArgs, &tools, true, &|_| None);
    let c = lm
        .grammar
        .compile(TopLevelGrammar::from_lark(lark.clone()))
        .unwrap_or_else(|e| panic!("{e}\n{lark}"));
    for good in [
        r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}"#,
        r#"[TOOL_CALLS]now[ARGS]{}[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "unit": "fahrenheit"}"#,
    ] {
        assert!(grammar_takes(&c, good), "{good}");
        let (text, calls) = parse_output(ToolFormat::MistralArgs, good);
        assert_eq!(text, None);
        assert_eq!(calls.len(), good.matches("[TOOL_CALLS]").count(), "{good}");
    }
    for bad in [
        r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}"#,
        r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "kelvin"}"#,
        r#"[TOOL_CALLS]get_time[ARGS]{}"#,
        r#"[TOOL_CALLS]get_weather{"city": "Paris", "unit": "celsius"}"#,
        r#"[TOOL_CALLS][{"name": "now", "arguments": {}}]"#,
        r#"Sure. [TOOL_CALLS]now[ARGS]{}"#,
    ] {
        assert!(!grammar_takes(&c, bad), "{bad}");
    }
    // One call (a free-form `now` could fill any length with parallel calls).
    let one = call_grammar(ToolFormat::MistralArgs, &tools[..1], false, &|_| None);
    let one = lm.grammar.compile(TopLevelGrammar::from_lark(one)).unwrap();
    let prompt = chat_prompt("What is the weather in Paris?");
    for seed in 0..3 {
        let mut p = params(seed, None);
        p.max_tokens = 160;
        p.constraint = Some(one.clone());
        let g = generate(lm, &prompt, p, |_| {}).unwrap();
        assert_eq!(g.finish_reason, FinishReason::Stop, "{:?}", g.text);
        let (text, calls) = parse_output(ToolFormat::MistralArgs, &g.text);
        assert_eq!(text, None, "seed {seed}: {:?}", g.text);
        assert!(!calls.is_empty(), "seed {seed}: {:?}", g.text);
        for call in calls {
            let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
            assert!(args.is_object(), "{args}");
            if call.name == "get_weather" {
                assert!(
                    args["city"].is_string() && args["unit"].is_string(),
                    "{args}"
                );
            }
        }
    }
}

/// With `constraint_after` (a reasoning model's `</think>`), the grammar holds off until the
/// output has written it: the thinking is free, then only the grammar's tokens are drawn.
/// Logits are made up, favouring a chosen token each step; greedy sampling draws it unless
/// the grammar forbids it.
#[test]
fn a_grammar_after_the_thinking_starts_at_its_end() {
    use camelid_model::decode::SequenceDecoder;
    let lm = smol();
    let tok = &lm.tokenizer;
    let vocab = tok.vocab_size();
    let favour = |id: u32| favouring(vocab, id);
    let ids = |t: &str| tok.encode(t, false).unwrap();
    let x = ids("x")[0];
    let thought = ids("Let me see.</think>");
    let run = |gated: bool| {
        let mut p = greedy_under(TopLevelGrammar::from_regex("[0-9]{2}"));
        p.constraint_after = gated.then(|| "</think>".to_string());
        let mut d = SequenceDecoder::new(vec![1], p, 512);
        let mut text = String::new();
        // The thinking's tokens, then `x` (which the grammar refuses) until the end.
        for &t in thought.iter().chain(std::iter::repeat(&x)).take(12) {
            let out = d.step(tok, &favour(t)).unwrap();
            text += &out.text;
            if out.finished.is_some() {
                break;
            }
        }
        text
    };
    let (gated, from_the_start) = (run(true), run(false));
    let answer = gated
        .strip_prefix("Let me see.</think>")
        .unwrap_or_else(|| panic!("the thinking was constrained: {gated:?}"));
    assert!(
        answer.len() == 2 && answer.bytes().all(|b| b.is_ascii_digit()),
        "{gated:?}"
    );
    // Without the gate the grammar takes the first token.
    assert!(
        from_the_start.len() == 2 && from_the_start.bytes().all(|b| b.is_ascii_digit()),
        "{from_the_start:?}"
    );
}

/// With `think_open` (a model that opens its thinking itself, Qwen3's `<think>`), the grammar
/// applies from the first token but that token may also open the thinking: drawn, the
/// thinking is free until `</think>` and the answer is the grammar's; not drawn, the grammar
/// takes the first token as it would without thinking. Logits are made up, as above (here
/// a token of the vocabulary stands in for the `<think>` token).
#[test]
fn a_model_that_may_open_its_thinking_thinks_or_answers_in_the_grammar() {
    use camelid_model::decode::SequenceDecoder;
    let lm = smol();
    let tok = &lm.tokenizer;
    let vocab = tok.vocab_size();
    let ids = |t: &str| tok.encode(t, false).unwrap();
    let (open, x) = (ids("Hmm")[0], ids("x")[0]);
    assert_ne!(open, x);
    // Each step's logits favour `want`; the opening token is unlikely unless it is wanted.
    let favour = |want: u32| {
        let mut l = favouring(vocab, want);
        if want != open {
            l[open as usize] = -5.0;
        }
        l
    };
    let run = |wanted: &[u32]| {
        let mut p = greedy_under(TopLevelGrammar::from_regex("[0-9]{2}"));
        p.constraint_after = Some("</think>".to_string());
        p.think_open = Some(open);
        p.logprobs = Some(0);
        let mut d = SequenceDecoder::new(vec![1], p, 512);
        let mut text = String::new();
        for &t in wanted.iter().chain(std::iter::repeat(&x)).take(16) {
            let out = d.step(tok, &favour(t)).unwrap();
            text += &out.text;
            if out.finished.is_some() {
                break;
            }
        }
        text
    };
    let thought: Vec<u32> = [open]
        .into_iter()
        .chain(ids(" let me see.</think>"))
        .collect();
    let thinking = run(&thought);
    let thought_text = tok.decode(&thought, false).unwrap();
    let answer = thinking
        .strip_prefix(thought_text.as_str())
        .unwrap_or_else(|| panic!("the thinking was constrained: {thinking:?}"));
    assert!(
        answer.len() == 2 && answer.bytes().all(|b| b.is_ascii_digit()),
        "{thinking:?}"
    );
    // The model answers at once: the grammar's from the first token.
    let at_once = run(&[x]);
    assert!(
        at_once.len() == 2 && at_once.bytes().all(|b| b.is_ascii_digit()),
        "{at_once:?}"
    );
}

/// A lazy grammar (`constraint_trigger`, `tool_choice: auto`): the output is free until it
/// writes the trigger, and from the trigger on it is the grammar's (which starts with the
/// trigger); a trigger inside the model's thinking does not count. Logits are made up, as
/// above: each step favours the next token of a script, then `x`.
#[test]
fn a_lazy_grammar_waits_for_its_trigger() {
    use camelid_model::decode::SequenceDecoder;
    let lm = smol();
    let tok = &lm.tokenizer;
    let vocab = tok.vocab_size();
    let ids = |t: &str| tok.encode(t, false).unwrap();
    let x = ids("x")[0];
    let open = ids("Hmm")[0];
    let favour = |want: u32| favouring(vocab, want);
    let run = |script: &[u32], think: bool| {
        let mut p = greedy_under(TopLevelGrammar::from_lark(
            r#"start: "CALL:" /[0-9]{2}/"#.to_string(),
        ));
        p.constraint_trigger = Some("CALL:".to_string());
        if think {
            p.constraint_after = Some("</think>".to_string());
            p.think_open = Some(open);
        }
        let mut d = SequenceDecoder::new(vec![1], p, 512);
        let mut text = String::new();
        for &t in script.iter().chain(std::iter::repeat(&x)).take(24) {
            let out = d.step(tok, &favour(t)).unwrap();
            text += &out.text;
            if out.finished.is_some() {
                return (text, true);
            }
        }
        (text, false)
    };
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    // Free text, then the trigger: the grammar's digits follow it and end the output.
    let (text, finished) = run(&ids("Sure, CALL:"), false);
    let after = text
        .strip_prefix("Sure, CALL:")
        .unwrap_or_else(|| panic!("the text before the trigger was constrained: {text:?}"));
    assert!(digits(after) && finished, "{text:?}");
    // No trigger: the output stays free to its length.
    let (text, finished) = run(&ids("Sure, no call"), false);
    assert!(text.starts_with("Sure, no callxx") && !finished, "{text:?}");
    // A trigger while the model thinks is thinking; the answer's trigger starts the grammar.
    let script: Vec<u32> = [open]
        .into_iter()
        .chain(ids(" I could CALL: maybe</think>Sure CALL:"))
        .collect();
    let (text, finished) = run(&script, true);
    let shown = tok.decode(&script, false).unwrap();
    let after = text
        .strip_prefix(shown.as_str())
        .unwrap_or_else(|| panic!("the thinking was constrained: {text:?}"));
    assert!(digits(after) && finished, "{text:?}");
}
