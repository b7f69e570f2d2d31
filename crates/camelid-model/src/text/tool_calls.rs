//! Tool calls in a model's output: which format a chat template teaches (as llama.cpp's
//! `chat.cpp` and vLLM's tool parsers tell them apart), and a streaming parser that turns
//! output text into text and whole calls. Text that may begin a call is held back until it
//! is known not to; a call whose JSON does not parse stays text.

use crate::text::template::{ChatTemplate, Message};
use serde_json::Value as Json;

/// The call formats of the templates camelid serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes / Qwen2.5 / Qwen3: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
    /// one block per call.
    Hermes,
    /// Llama 3.1 / 3.2: the whole answer is `{"name": …, "parameters": {…}}`, optionally after
    /// `<|python_tag|>`; several calls separated by `;`.
    Llama3Json,
    /// Mistral (v3 tokenizers): `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.
    Mistral,
}

pub const HERMES_OPEN: &str = "<tool_call>";
pub const HERMES_CLOSE: &str = "</tool_call>";
pub const PYTHON_TAG: &str = "<|python_tag|>";
pub const MISTRAL_TRIGGER: &str = "[TOOL_CALLS]";

impl ToolFormat {
    /// The format a template writes calls in, from what its source writes (llama.cpp's
    /// detection); templates that show none of them get Hermes, the commonest.
    pub fn for_template(template: &ChatTemplate) -> ToolFormat {
        let src = match template {
            ChatTemplate::Jinja { source, .. } => source.as_str(),
            ChatTemplate::Builtin(_) => "",
        };
        if src.contains(MISTRAL_TRIGGER) {
            ToolFormat::Mistral
        } else if src.contains(HERMES_OPEN) {
            ToolFormat::Hermes
        } else if src.contains("<|start_header_id|>")
            && (src.contains(PYTHON_TAG) || src.contains("\"parameters\""))
        {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// The text that starts a call; the client must see it (not skipped as a special token).
    pub fn trigger(self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Llama3Json => PYTHON_TAG,
            ToolFormat::Mistral => MISTRAL_TRIGGER,
        }
    }

    /// The key a call's arguments go under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

/// Whether `template` renders `tools` into the prompt: a conversation rendered with them
/// names every function (by name) that it does not name without them. A template that
/// ignores `tools` (SmolLM2's, the built-ins) cannot offer them to the model.
pub fn renders_tools(template: &ChatTemplate, tools: &[Json]) -> bool {
    let probe = [Message::new("user", "?")];
    let kwargs = Default::default();
    let (Ok(with), Ok(without)) = (
        template.render_with(&probe, Some(tools), true, &kwargs),
        template.render_with(&probe, None, true, &kwargs),
    ) else {
        return false;
    };
    tools.iter().all(|t| {
        let name = t
            .pointer("/function/name")
            .and_then(Json::as_str)
            .unwrap_or_default();
        with.matches(name).count() > without.matches(name).count()
    })
}

/// One call as the model wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    /// The arguments as a JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// What the parser releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    Text(String),
    Call(ParsedCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Scanning text for the trigger.
    Text,
    /// Inside a Hermes block, waiting for its close.
    InBlock,
    /// After a trigger that takes the rest of the output (Mistral, Llama 3).
    Rest,
    /// Llama 3: the answer did not start as a call; everything is text.
    Plain,
}

/// Splits one sequence's output into text and calls as it arrives.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    format: ToolFormat,
    state: State,
    /// Output not yet released: a possible trigger's beginning, a call being read.
    buf: String,
    /// Trailing whitespace, held: dropped when a call follows (or ends the output after
    /// one), released before the next text otherwise.
    blank: String,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            state: match format {
                ToolFormat::Llama3Json => State::Rest,
                _ => State::Text,
            },
            buf: String::new(),
            blank: String::new(),
            calls: 0,
        }
    }

    /// Calls found so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Takes the next piece of output; returns what is now known.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut out = vec![];
        loop {
            match (self.format, self.state) {
                (_, State::Plain) => {
                    let t = std::mem::take(&mut self.buf);
                    self.text(t, &mut out);
                    break;
                }
                (ToolFormat::Llama3Json, State::Rest) if self.calls == 0 => {
                    // Undecided until the first non-blank text: a call starts with `{` or
                    // the python tag.
                    let t = self.buf.trim_start();
                    let call = t.starts_with('{') || t.starts_with(PYTHON_TAG);
                    if t.is_empty() || call || PYTHON_TAG.starts_with(t) {
                        break;
                    }
                    self.state = State::Plain;
                }
                (_, State::Rest) => break,
                (_, State::Text) => {
                    let trigger = self.format.trigger();
                    if let Some(k) = self.buf.find(trigger) {
                        let before = self.buf[..k].to_string();
                        self.buf.drain(..k + trigger.len());
                        self.text(before, &mut out);
                        self.state = match self.format {
                            ToolFormat::Hermes => State::InBlock,
                            _ => State::Rest,
                        };
                        continue;
                    }
                    let keep = partial_suffix(&self.buf, trigger);
                    let release = self.buf[..self.buf.len() - keep].to_string();
                    self.buf.drain(..release.len());
                    self.text(release, &mut out);
                    break;
                }
                (_, State::InBlock) => {
                    let Some(k) = self.buf.find(HERMES_CLOSE) else {
                        break;
                    };
                    let body = self.buf[..k].to_string();
                    self.buf.drain(..k + HERMES_CLOSE.len());
                    self.state = State::Text;
                    match parse_calls(ToolFormat::Hermes, &body) {
                        Some(calls) => self.emit_calls(calls, &mut out),
                        None => {
                            let t = format!("{HERMES_OPEN}{body}{HERMES_CLOSE}");
                            self.text(t, &mut out)
                        }
                    }
                }
            }
        }
        out
    }

    /// The output has ended: whatever is held is resolved (an unclosed Hermes block or a
    /// trailing call is read if its JSON is whole, else released as text).
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = vec![];
        let rest = std::mem::take(&mut self.buf);
        let (body, as_text) = match self.state {
            State::Text | State::Plain => (None, rest),
            State::InBlock => (Some(rest.clone()), format!("{HERMES_OPEN}{rest}")),
            State::Rest => match self.format {
                ToolFormat::Mistral => (Some(rest.clone()), format!("{MISTRAL_TRIGGER}{rest}")),
                _ => (Some(rest.clone()), rest),
            },
        };
        match body.and_then(|b| parse_calls(self.format, &b)) {
            Some(calls) => self.emit_calls(calls, &mut out),
            None => self.text(as_text, &mut out),
        }
        if self.calls == 0 && !self.blank.is_empty() {
            out.push(ToolEvent::Text(std::mem::take(&mut self.blank)));
        }
        self.state = State::Plain;
        out
    }

    /// Releases `t`, its trailing whitespace held (however the output was cut into pieces,
    /// the same text comes out).
    fn text(&mut self, t: String, out: &mut Vec<ToolEvent>) {
        let head = t.trim_end().len();
        if head == 0 {
            self.blank.push_str(&t);
            return;
        }
        let released = std::mem::take(&mut self.blank) + &t[..head];
        self.blank = t[head..].to_string();
        let t = released;
        match out.last_mut() {
            Some(ToolEvent::Text(prev)) => prev.push_str(&t),
            _ => out.push(ToolEvent::Text(t)),
        }
    }

    fn emit_calls(&mut self, calls: Vec<ParsedCall>, out: &mut Vec<ToolEvent>) {
        self.blank.clear();
        self.calls += calls.len();
        out.extend(calls.into_iter().map(ToolEvent::Call));
    }
}

/// The length of the longest end of `s` that begins `pat` (a trigger possibly cut off).
fn partial_suffix(s: &str, pat: &str) -> usize {
    (1..pat.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && pat.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// The calls in `body` (what follows the trigger, or a Hermes block's inside), or `None`
/// when it is not wholly calls.
pub fn parse_calls(format: ToolFormat, body: &str) -> Option<Vec<ParsedCall>> {
    let body = body.trim();
    match format {
        ToolFormat::Hermes => Some(vec![call_from(&serde_json::from_str(body).ok()?)?]),
        ToolFormat::Mistral => match serde_json::from_str::<Json>(body).ok()? {
            Json::Array(items) if !items.is_empty() => items.iter().map(call_from).collect(),
            obj @ Json::Object(_) => Some(vec![call_from(&obj)?]),
            _ => None,
        },
        ToolFormat::Llama3Json => {
            let mut rest = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
            let mut calls = vec![];
            loop {
                rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
                if rest.is_empty() {
                    break;
                }
                let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Json>();
                let v = values.next()?.ok()?;
                calls.push(call_from(&v)?);
                rest = &rest[values.byte_offset()..];
            }
            (!calls.is_empty()).then_some(calls)
        }
    }
}

/// `{"name": "…", "arguments" | "parameters": {…}}` → a call; arguments given as a JSON
/// text are taken as that text.
fn call_from(v: &Json) -> Option<ParsedCall> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if name.is_empty() {
        return None;
    }
    let arguments = match o.get("arguments").or_else(|| o.get("parameters")) {
        None => "{}".to_string(),
        Some(Json::String(s)) => {
            serde_json::from_str::<Json>(s).ok()?;
            s.clone()
        }
        Some(a @ Json::Object(_)) => a.to_string(),
        Some(_) => return None,
    };
    Some(ParsedCall {
        name: name.to_string(),
        arguments,
    })
}

/// A whole output's text (`None` when blank) and calls.
pub fn parse_output(format: ToolFormat, output: &str) -> (Option<String>, Vec<ParsedCall>) {
    let mut p = ToolCallParser::new(format);
    let mut events = p.push(output);
    events.extend(p.finish());
    collect(events)
}

/// Events → the text they hold (`None` when blank) and the calls, in order.
pub fn collect(events: Vec<ToolEvent>) -> (Option<String>, Vec<ParsedCall>) {
    let mut text = String::new();
    let mut calls = vec![];
    for e in events {
        match e {
            ToolEvent::Text(t) => text += &t,
            ToolEvent::Call(c) => calls.push(c),
        }
    }
    (
        (!text.trim().is_empty() || calls.is_empty()).then_some(text),
        calls,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: args.into(),
        }
    }

    /// Feeds `out` cut at every split into `k` pieces for a few `k`, and checks that each
    /// chunking gives what the whole gives; returns that.
    fn parse_every_way(format: ToolFormat, out: &str) -> (Option<String>, Vec<ParsedCall>) {
        let whole = parse_output(format, out);
        let cuts: Vec<usize> = (0..=out.len())
            .filter(|&i| out.is_char_boundary(i))
            .collect();
        for step in [1, 2, 3, 5, 7, 11] {
            let mut p = ToolCallParser::new(format);
            let mut events = vec![];
            let mut at = 0;
            for &c in cuts.iter().step_by(step).chain([out.len()].iter()) {
                if c > at {
                    events.extend(p.push(&out[at..c]));
                    at = c;
                }
            }
            events.extend(p.finish());
            assert_eq!(collect(events), whole, "chunks of {step} chars: {out:?}");
        }
        // Also one character at a time, every boundary.
        let mut p = ToolCallParser::new(format);
        let mut events = vec![];
        for w in cuts.windows(2) {
            events.extend(p.push(&out[w[0]..w[1]]));
        }
        events.extend(p.finish());
        assert_eq!(collect(events), whole);
        whole
    }

    #[test]
    fn hermes_calls_parallel_and_text_before() {
        let out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
        assert_eq!(text.as_deref(), Some("Let me check."));
        assert_eq!(
            calls,
            vec![
                call("get_weather", r#"{"city":"Paris","days":2}"#),
                call("get_time", "{}")
            ]
        );
    }

    #[test]
    fn hermes_only_a_call_has_no_text_and_an_unclosed_block_is_read() {
        let out = "\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}\n";
        let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
        assert_eq!(text, None);
        assert_eq!(calls, vec![call("f", r#"{"x":[1,2]}"#)]);
    }

    #[test]
    fn hermes_malformed_json_stays_text() {
        for out in [
            "a <tool_call>{\"name\": \"f\", \"arguments\": {</tool_call> b",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}",
            "x <tool_ca",
            "plain <tool text </tool_call>",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
    }

    #[test]
    fn hermes_text_is_released_as_soon_as_it_cannot_start_a_call() {
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
        // Trailing blanks wait too: a call after them would drop them.
        assert_eq!(p.push("Hello <tool"), vec![ToolEvent::Text("Hello".into())]);
        assert_eq!(p.push("box>"), vec![ToolEvent::Text(" <toolbox>".into())]);
        // Blank text waits for what follows it.
        assert_eq!(p.push("\n"), vec![]);
        assert_eq!(p.push("x"), vec![ToolEvent::Text("\nx".into())]);
    }

    #[test]
    fn llama3_json_with_and_without_python_tag() {
        let out = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        let (text, calls) = parse_every_way(ToolFormat::Llama3Json, out);
        assert_eq!(text, None);
        assert_eq!(calls, vec![call("get_weather", r#"{"city":"Oslo"}"#)]);
        let out = "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"k\": true}}";
        let (text, calls) = parse_every_way(ToolFormat::Llama3Json, out);
        assert_eq!(text, None);
        assert_eq!(calls, vec![call("a", "{}"), call("b", r#"{"k":true}"#)]);
    }

    #[test]
    fn llama3_text_answers_and_malformed_calls_are_text() {
        for out in [
            "The weather is {nice}.",
            "  Sure: {\"name\": \"f\", \"parameters\": {}}",
            "{\"name\": \"f\", \"parameters\": {\"a\": }",
            "{\"name\": \"f\"} trailing words",
            "<|python",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::Llama3Json, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
        // Text that is not a call streams at once.
        let mut p = ToolCallParser::new(ToolFormat::Llama3Json);
        assert_eq!(p.push("Hi"), vec![ToolEvent::Text("Hi".into())]);
    }

    #[test]
    fn mistral_array_of_calls() {
        let out = "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}, {\"name\": \"b\", \"arguments\": \"{\\\"n\\\": 1}\"}]";
        let (text, calls) = parse_every_way(ToolFormat::Mistral, out);
        assert_eq!(text, None);
        assert_eq!(
            calls,
            vec![call("a", r#"{"q":"x"}"#), call("b", r#"{"n": 1}"#)]
        );
        let out = "Checking. [TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]";
        let (text, calls) = parse_every_way(ToolFormat::Mistral, out);
        assert_eq!(text.as_deref(), Some("Checking."));
        assert_eq!(calls, vec![call("a", "{}")]);
    }

    #[test]
    fn mistral_malformed_stays_text() {
        for out in [
            "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {]",
            "[TOOL_CALLS] []",
            "[TOOL_CALL] [{\"name\": \"a\"}]",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::Mistral, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
    }

    #[test]
    fn formats_from_template_sources() {
        let j = |s: &str| ChatTemplate::Jinja {
            source: s.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert_eq!(
            ToolFormat::for_template(&j("{{ '<tool_call>' }}")),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::for_template(&j("[TOOL_CALLS] {{ x }}")),
            ToolFormat::Mistral
        );
        assert_eq!(
            ToolFormat::for_template(&j(
                "<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}"
            )),
            ToolFormat::Llama3Json
        );
    }

    #[test]
    fn tools_rendered_or_not() {
        let tools = vec![
            serde_json::json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}),
        ];
        let with = ChatTemplate::Jinja {
            source: "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert!(renders_tools(&with, &tools));
        let without = ChatTemplate::Jinja {
            source: "{% for m in messages %}{{ m.content }}{% endfor %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert!(!renders_tools(&without, &tools));
        let builtin = ChatTemplate::builtin("chatml").unwrap();
        assert!(!renders_tools(&builtin, &tools));
    }
}
