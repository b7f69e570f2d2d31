//! Structured output over HTTP on the default model: `response_format` (json_object,
//! json_schema), vLLM's `structured_outputs` and `guided_*` (json, regex, choice, grammar) on
//! both endpoints; n > 1, streaming, seeds, preemption on a small KV pool; 400s naming the
//! field for constraints that do not compile. The model is sampled at temperature 1 (a
//! 135M model left alone rarely writes valid JSON), so only the grammar makes these pass.

mod common;
use camelid_engine::EngineMetrics;
use common::{assert_error, post, serve_default_model, short, EngineServer};
use regex::Regex;
use serde_json::{json, Value};
use std::sync::{Mutex, OnceLock};

fn server() -> &'static EngineServer {
    static S: OnceLock<EngineServer> = OnceLock::new();
    S.get_or_init(|| serve_default_model(64))
}

/// One test at a time on the shared server (timings of the 2-core machine).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn chat(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": "smol", "messages": [{"role": "user", "content": content}],
        "max_tokens": 160, "temperature": 1.0, "seed": 1});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn chat_ok(base: &str, body: &Value) -> Vec<(String, String)> {
    let (st, b) = post(base, "/v1/chat/completions", body);
    assert_eq!(st, 200, "{}", short(&b));
    b["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["message"]["content"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The events of a streamed answer (status 200), up to `[DONE]`.
fn stream_events(base: &str, path: &str, body: &Value) -> Vec<Value> {
    common::sse_data(base, path, body)
        .iter()
        .take_while(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The schema the tests ask for, and a check of it written out (no schema validator in
/// the Rust dependencies; the Python client test validates with `jsonschema`).
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "colour": {"enum": ["red", "green", "blue"]},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
        },
        "required": ["name", "age", "colour", "pets"],
        "additionalProperties": false
    })
}

fn assert_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "colour", "name", "pets"], "{text}");
    assert!(
        o["name"].as_str().is_some_and(|s| s.chars().count() <= 24),
        "{text}"
    );
    assert!(o["age"].as_u64().is_some_and(|a| a <= 150), "{text}");
    assert!(
        ["red", "green", "blue"].contains(&o["colour"].as_str().unwrap_or("")),
        "{text}"
    );
    let pets = o["pets"].as_array().unwrap_or_else(|| panic!("{text}"));
    assert!(pets.len() <= 3, "{text}");
    assert!(
        pets.iter()
            .all(|p| p.as_str().is_some_and(|s| s.chars().count() <= 12)),
        "{text}"
    );
}

const ASK: &str = "Describe a person: name, age, favourite colour, pets.";

fn schema_format() -> Value {
    json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "person", "schema": person_schema(), "strict": true}}})
}

#[test]
fn json_object_outputs_parse_as_objects() {
    let _g = serial();
    let s = server();
    // Any object: keys and strings are unbounded, so the model must close them itself
    // (at temperature 1 this 135M model rambles inside a string past any budget): greedy.
    for ask_for in [
        "a cat's name and age",
        "a city's name and country",
        "a book's title and year",
    ] {
        let body = chat(
            &format!("A JSON object with {ask_for}."),
            json!({"response_format": {"type": "json_object"}, "temperature": 0.0,
                   "max_tokens": 300}),
        );
        for (text, finish) in chat_ok(&s.base, &body) {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(v.is_object(), "{text}");
            assert_eq!(finish, "stop", "{text}");
        }
    }
}

/// n = 4 in one request (four matchers in one batch), twice with the same seed: every
/// output validates, and the second request repeats the first.
#[test]
fn json_schema_outputs_validate_with_n_4_and_seeds_repeat() {
    let _g = serial();
    let s = server();
    let mut extra = schema_format();
    extra["n"] = json!(4);
    extra["seed"] = json!(11);
    let body = chat(ASK, extra);
    let first = chat_ok(&s.base, &body);
    assert_eq!(first.len(), 4);
    for (text, finish) in &first {
        assert_person(text);
        assert_eq!(finish, "stop");
    }
    let distinct: std::collections::HashSet<&String> = first.iter().map(|c| &c.0).collect();
    assert!(
        distinct.len() > 1,
        "four samples at temperature 1 all equal: {first:?}"
    );
    assert_eq!(chat_ok(&s.base, &body), first, "same seed, same outputs");
}

/// vLLM's `structured_outputs.json` (a schema given as a string too) and `guided_json`.
#[test]
fn structured_outputs_json_and_guided_json_validate() {
    let _g = serial();
    let s = server();
    for extra in [
        json!({"structured_outputs": {"json": person_schema()}}),
        json!({"structured_outputs": {"json": person_schema().to_string()}, "seed": 2}),
        json!({"guided_json": person_schema(), "seed": 3}),
    ] {
        for (text, _) in chat_ok(&s.base, &chat(ASK, extra)) {
            assert_person(&text);
        }
    }
}

#[test]
fn regex_choice_and_grammar_outputs_match() {
    let _g = serial();
    let s = server();
    let rx = r"[0-9]{3}-[a-z]{2,5}( [A-Z][a-z]{1,8})?";
    let whole = Regex::new(&format!("^(?:{rx})$")).unwrap();
    for (extra, seed) in [
        (json!({"structured_outputs": {"regex": rx}}), 1),
        (json!({"guided_regex": rx}), 2),
    ] {
        let mut extra = extra;
        extra["seed"] = json!(seed);
        extra["n"] = json!(2);
        for (text, finish) in chat_ok(&s.base, &chat("Write a product code.", extra)) {
            assert!(whole.is_match(&text), "{text:?} does not match {rx}");
            assert_eq!(finish, "stop");
        }
    }
    let choices = ["sunny", "rainy", "snowy with a chance of fog"];
    for extra in [
        json!({"structured_outputs": {"choice": choices}}),
        json!({"guided_choice": choices, "seed": 5}),
    ] {
        for (text, finish) in chat_ok(&s.base, &chat("What is the weather?", extra)) {
            assert!(choices.contains(&text.as_str()), "{text:?}");
            assert_eq!(finish, "stop");
        }
    }
    // More choices than llguidance keeps alternatives of a rule (2 000 a row).
    let many: Vec<String> = (0..3000).map(|i| format!("item-{i}")).collect();
    let extra = json!({"guided_choice": many, "seed": 6, "max_tokens": 16});
    for (text, finish) in chat_ok(&s.base, &chat("Pick an item.", extra)) {
        assert!(many.contains(&text), "{text:?}");
        assert_eq!(finish, "stop");
    }
    // FastChat's judge verdict: free text, then the rating in double brackets.
    let lark = r#"start: /[^\[\]]{0,200}/ "[[" /10|[1-9]/ "]]""#;
    let verdict = Regex::new(r"^[^\[\]]{0,200}\[\[(10|[1-9])\]\]$").unwrap();
    for extra in [
        json!({"structured_outputs": {"grammar": lark}, "max_tokens": 120}),
        json!({"guided_grammar": lark, "seed": 9, "max_tokens": 120}),
    ] {
        for (text, finish) in chat_ok(&s.base, &chat("Rate the sky from 1 to 10.", extra)) {
            assert!(verdict.is_match(&text), "{text:?}");
            assert_eq!(finish, "stop");
        }
    }
}

/// A grammar that matches only the empty string (`guided_regex: ""`) answers an empty text
/// that stops at once, on both endpoints, whole and streamed (it was a 500 carrying the
/// matcher's internal state: the matcher has nothing left to match from the start).
/// A constrained answer's log-probabilities are over the tokens the grammar allows (vLLM
/// masks the logits before reading them): the chosen token's share of the allowed ones, and
/// no forbidden token among the alternatives. A choice's confidence is then a probability
/// over the choices (it was the unconstrained model's, alternatives the grammar refused).
#[test]
fn constrained_logprobs_are_over_the_allowed_tokens() {
    let _g = serial();
    let base = &server().base;
    let choices = ["Maybe", "Never"];
    let body = chat(
        "Is the sky green? Answer Yes or No.",
        json!({"guided_choice": choices, "temperature": 0, "max_tokens": 8,
               "logprobs": true, "top_logprobs": 20}),
    );
    let (st, b) = post(base, "/v1/chat/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    let content = b["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(choices.contains(&content), "{content}");
    let first = &b["choices"][0]["logprobs"]["content"][0];
    let allowed: Vec<(&str, f64)> = first["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["token"].as_str().unwrap(), e["logprob"].as_f64().unwrap()))
        .filter(|(_, lp)| *lp > -9999.0)
        .collect();
    for (t, _) in &allowed {
        assert!(
            choices.iter().any(|c| c.starts_with(t)),
            "{t:?} begins no choice: {first}"
        );
    }
    // Every allowed first token is among the 20: their probabilities make the whole.
    let total: f64 = allowed.iter().map(|(_, lp)| lp.exp()).sum();
    assert!((total - 1.0).abs() < 1e-3, "{total}: {first}");
    let chosen = first["logprob"].as_f64().unwrap();
    assert!(
        chosen > (0.5f64).ln() - 1e-6,
        "greedy takes the likelier half: {chosen}"
    );
}

#[test]
fn a_grammar_of_only_the_empty_string_answers_nothing_and_stops() {
    let _g = serial();
    let s = server();
    for extra in [
        json!({"guided_regex": ""}),
        json!({"structured_outputs": {"regex": ""}, "n": 2}),
    ] {
        for (text, finish) in chat_ok(&s.base, &chat("Say something.", extra)) {
            assert_eq!((text.as_str(), finish.as_str()), ("", "stop"));
        }
    }
    let body = json!({"model": "smol", "prompt": "Say something:", "max_tokens": 8,
        "guided_regex": ""});
    let (st, b) = post(&s.base, "/v1/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    assert_eq!(b["choices"][0]["text"], "");
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    assert_eq!(b["usage"]["completion_tokens"], 1, "the end token alone");
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 8, "guided_regex": "", "stream": true});
    let events = stream_events(&s.base, "/v1/chat/completions", &body);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "");
    let finish: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
}

/// A grammar that cannot go on is the request's fault, never a 500 with the matcher's
/// internals: where every token it allows is a stop token (a `stop_token_ids` entry, or the
/// end of turn it asks for itself) the answer ends there; a matcher limit reached mid-answer
/// (a schema that recurses without end) is a 400, streamed or not; and no message carries
/// llguidance's parser state. All four were 500s.
#[test]
fn grammars_that_cannot_go_on_end_or_answer_400() {
    let _g = serial();
    let s = server();
    let (st, t) = post(
        &s.base,
        "/tokenize",
        &json!({"model": "smol", "prompt": "!", "add_special_tokens": false}),
    );
    assert_eq!(st, 200, "{}", short(&t));
    let bang = t["tokens"][0].as_u64().unwrap();
    let body = json!({"model": "smol", "prompt": "Say", "max_tokens": 4,
        "guided_choice": ["!"], "stop_token_ids": [bang]});
    let (st, b) = post(&s.base, "/v1/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    assert_eq!(b["choices"][0]["finish_reason"], "stop", "{}", short(&b));
    // Token 2 is SmolLM2's <|im_end|>, one of the turn's own stop tokens.
    for (text, finish) in chat_ok(
        &s.base,
        &chat("Hi", json!({"guided_grammar": "start: <[2]>"})),
    ) {
        assert_eq!((text.as_str(), finish.as_str()), ("", "stop"));
    }
    let endless = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
        "schema": {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}}}});
    let (st, b) = post(
        &s.base,
        "/v1/chat/completions",
        &chat("Hi", endless.clone()),
    );
    assert_error(st, &b, 400, None);
    let message = b["error"]["message"].as_str().unwrap();
    assert!(!message.contains("<state>"), "{message}");
    let mut streamed = chat("Hi", endless);
    streamed["stream"] = true.into();
    let events = stream_events(&s.base, "/v1/chat/completions", &streamed);
    let last = events.last().unwrap();
    assert_eq!(last["error"]["type"], "invalid_request_error", "{last}");
    assert!(!last.to_string().contains("<state>"), "{last}");
    let (st, b) = post(
        &s.base,
        "/v1/chat/completions",
        &chat("Hi", json!({"guided_regex": "(.{0,1000}){0,1000}"})),
    );
    assert_error(st, &b, 400, Some("guided_regex"));
    assert!(!b.to_string().contains("<state>"), "{}", short(&b));
}

#[test]
fn completions_take_constraints_too() {
    let _g = serial();
    let s = server();
    let rx = Regex::new(r"^(yes|no)$").unwrap();
    let body = json!({"model": "smol", "prompt": "Is water wet? Answer:", "max_tokens": 8,
        "temperature": 1.0, "seed": 4, "n": 3, "guided_choice": ["yes", "no"]});
    let (st, b) = post(&s.base, "/v1/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    for c in b["choices"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        assert!(rx.is_match(t), "{t:?}");
        assert_eq!(c["finish_reason"], "stop");
    }
    let body = json!({"model": "smol", "prompt": "A JSON person:", "max_tokens": 160,
        "temperature": 1.0, "seed": 4, "response_format": {"type": "json_schema",
        "json_schema": {"name": "p", "schema": person_schema()}}});
    let (st, b) = post(&s.base, "/v1/completions", &body);
    assert_eq!(st, 200, "{}", short(&b));
    assert_person(b["choices"][0]["text"].as_str().unwrap());
}

/// Streamed, the deltas add up to the same validated text as the whole answer (same seed).
#[test]
fn streamed_constrained_output_equals_the_whole_one() {
    let _g = serial();
    let s = server();
    let mut extra = schema_format();
    extra["seed"] = json!(21);
    let body = chat(ASK, extra);
    let whole = chat_ok(&s.base, &body);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let mut streamed = String::new();
    let mut finish = None;
    for v in stream_events(&s.base, "/v1/chat/completions", &sbody) {
        if let Some(c) = v["choices"].get(0) {
            streamed += c["delta"]["content"].as_str().unwrap_or("");
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    assert_person(&streamed);
    assert_eq!(streamed, whole[0].0);
    assert_eq!(finish.as_deref(), Some("stop"));
}

/// A KV pool of 4 MiB: 11 blocks of 16 positions (SmolLM2-135M's f16 KV takes 23 kB a
/// position). One choice (a 43-token prompt + 120 max_tokens; a person takes at most ~90)
/// fits alone; four (~6 blocks each, the prompt's 2 full blocks shared) do not, so sequences
/// are preempted and recomputed mid-output, and every output still validates (the decoder,
/// and with it the matcher, stays with its sequence).
#[test]
fn preemption_keeps_constrained_outputs_valid() {
    let _g = serial();
    let s = serve_default_model(4);
    let mut extra = schema_format();
    extra["n"] = json!(4);
    extra["seed"] = json!(5);
    extra["max_tokens"] = json!(120);
    let before = EngineMetrics::get(&s.engine.metrics.preemptions);
    let out = chat_ok(&s.base, &chat(ASK, extra));
    let preempted = EngineMetrics::get(&s.engine.metrics.preemptions) - before;
    assert!(preempted > 0, "no preemption: the test tests nothing");
    for (text, finish) in &out {
        assert_person(text);
        assert_eq!(finish, "stop");
    }
}

#[test]
fn constraints_that_do_not_compile_are_400s_naming_the_field() {
    let _g = serial();
    let s = server();
    for (extra, param) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"structured_outputs": {"regex": "[0-9"}}),
            "structured_outputs.regex",
        ),
        (
            json!({"structured_outputs": {"grammar": "start: undefined_rule"}}),
            "structured_outputs.grammar",
        ),
        (
            json!({"structured_outputs": {"json": "{not json"}}),
            "structured_outputs.json",
        ),
        (json!({"structured_outputs": {}}), "structured_outputs"),
        (
            json!({"structured_outputs": {"regex": "a", "choice": ["a"]}}),
            "structured_outputs",
        ),
        (json!({"guided_choice": ["a", 3]}), "guided_choice"),
        (json!({"guided_regex": "(unclosed"}), "guided_regex"),
        (
            json!({"guided_regex": "a", "response_format": {"type": "json_object"}}),
            "guided_regex",
        ),
    ] {
        let (st, b) = post(&s.base, "/v1/chat/completions", &chat("Hi", extra.clone()));
        assert_error(st, &b, 400, Some(param));
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains(param.split('.').next().unwrap()),
            "the message names the field: {}",
            short(&b)
        );
    }
    let body = json!({"model": "smol", "prompt": "x", "guided_grammar": "start: ("});
    let (st, b) = post(&s.base, "/v1/completions", &body);
    assert_error(st, &b, 400, Some("guided_grammar"));
}

/// A non-strict `json_schema` with keywords llguidance cannot enforce (Pydantic's and Zod's
/// `uniqueItems`, `not`, unknown formats) is taken, as OpenAI takes it and as tool parameters
/// are: the rest of the schema holds. `strict: true` asks for every keyword kept: refused.
#[test]
fn non_strict_schemas_with_unenforceable_keywords_are_taken() {
    let _one = serial();
    let s = server();
    let schema = json!({"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                 "uniqueItems": true, "maxItems": 2},
        "id": {"type": "string", "format": "int64", "maxLength": 4},
        "n": {"type": "integer", "not": {"const": 3}}},
        "required": ["tags", "id", "n"], "additionalProperties": false});
    let format = |strict: bool| {
        json!({"response_format": {"type": "json_schema", "json_schema":
            {"name": "x", "strict": strict, "schema": schema.clone()}}})
    };
    for (content, finish) in chat_ok(&s.base, &chat("Tag it.", format(false))) {
        assert_eq!(finish, "stop", "{content}");
        let v: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{e}: {content}"));
        let tags = v["tags"].as_array().unwrap();
        assert!(
            tags.len() <= 2 && tags.iter().all(|t| t == "a" || t == "b"),
            "{v}"
        );
        assert!(
            v["id"].as_str().unwrap().len() <= 4 && v["n"].is_i64(),
            "{v}"
        );
    }
    let (st, b) = post(
        &s.base,
        "/v1/chat/completions",
        &chat("Tag it.", format(true)),
    );
    assert_error(st, &b, 400, None);
}

/// `mtbench judge --constrain`'s grammars: with them every verdict parses, even when the
/// explanation runs into the token budget (then the grammar closes it with the verdict).
#[test]
fn judge_verdict_grammars_always_parse() {
    use camelid_eval::judge::{
        parse_score, parse_two_scores, parse_verdict, parse_verdict_labelled, verdict_grammar,
        verdict_grammar_for, verdict_grammar_labelled, VerdictFormat,
    };
    let _g = serial();
    let s = server();
    for seed in 0..3 {
        let pair = json!({"structured_outputs": {"grammar": verdict_grammar(true, 40)},
            "max_tokens": 56, "seed": seed});
        for (text, finish) in chat_ok(&s.base, &chat("Which answer is better, A or B?", pair)) {
            assert_ne!(parse_verdict(&text), "error", "{text:?}");
            assert_eq!(finish, "stop", "{text:?}");
        }
        // The rename experiment's labels (quotes and brackets-free text, escaped for Lark).
        let labels = ["Assistant \"X\"", "Assistant Y", "tie"];
        let renamed = json!({"structured_outputs": {"grammar": verdict_grammar_labelled(Some(labels), 40)},
            "max_tokens": 56, "seed": seed});
        for (text, finish) in chat_ok(&s.base, &chat("Which is better, X or Y?", renamed)) {
            assert_ne!(parse_verdict_labelled(&text, labels), "error", "{text:?}");
            assert_eq!(finish, "stop", "{text:?}");
        }
        let single = json!({"structured_outputs": {"grammar": verdict_grammar(false, 40)},
            "max_tokens": 56, "seed": seed});
        for (text, _) in chat_ok(&s.base, &chat("Rate this answer from 1 to 10.", single)) {
            let score = parse_score(&text);
            assert!((1.0..=10.0).contains(&score), "{text:?}");
        }
        // FastChat's score-style pairwise verdict, `[[rating_a,rating_b]]`.
        let two = verdict_grammar_for(VerdictFormat::TwoScores, 40);
        let two = json!({"structured_outputs": {"grammar": two}, "max_tokens": 56, "seed": seed});
        for (text, _) in chat_ok(&s.base, &chat("Rate answers A and B from 1 to 10.", two)) {
            assert_ne!(parse_two_scores(&text), "error", "{text:?}");
        }
    }
}
