//! Tool calls in a model's output: which format a chat template teaches (`format`: as
//! llama.cpp's `chat.cpp` and vLLM's tool parsers tell them apart), and a streaming parser
//! (here; one call's JSON read by `call_reader`) that turns output text into text and calls
//! whose arguments stream as the model writes them.
//!
//! A call's `arguments` are the JSON text of its arguments object exactly as the model wrote
//! it (streamed or whole, the same bytes). Text that may begin a call is held back until it
//! is known not to. A call is *committed* — its name sent — once its name is known and its
//! arguments object has begun (or, without one, once its JSON is whole); before that, a
//! call that turns out malformed stays text. After it, argument text is sent as soon as it
//! can be completed into JSON by closing what is open; if the call then breaks off (bad
//! JSON, the output's end) its arguments are closed at that point, so they still parse, and
//! the rest of the call's region is dropped (Hermes: to `</tool_call>`; Mistral's `[ARGS]`
//! format: to the next `[TOOL_CALLS]`; Llama 3 and Mistral's array: the rest of the output).

mod call_reader;
mod format;

use call_reader::{blank, push_arguments, CallReader, Malformed};
pub use format::{
    renders_tools, ToolFormat, HERMES_CLOSE, HERMES_OPEN, MISTRAL_ARGS, MISTRAL_CALL_ID,
    MISTRAL_TRIGGER, PYTHON_TAG,
};

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
    /// A call begins: its name is known; its arguments follow as [`ToolEvent::Arguments`].
    CallStart {
        name: String,
    },
    /// The next piece of the current call's arguments text.
    Arguments(String),
}

/// Whether `c` may be in a function's name as Mistral's format writes it bare.
fn name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// The longest name a bare Mistral call may have (OpenAI's limit), so a `[TOOL_CALLS]` in
/// prose is not held for long.
const MAX_NAME: usize = 64;

#[derive(Debug, Clone)]
enum State {
    /// Scanning text for the trigger.
    Text,
    /// Everything left is text.
    Plain,
    /// Llama 3: the answer's start, undecided (blank, or a possible `<|python_tag|>`).
    LlamaStart,
    /// Mistral's array: after `[TOOL_CALLS]`, `[` (or a lone call object) expected.
    MistralOpen,
    /// Mistral's `[ARGS]` format: the name read so far, up to `[ARGS]` or `[CALL_ID]`.
    Name(String),
    /// Mistral's `[ARGS]` format: a call id, skipped up to `[ARGS]`.
    CallId(String),
    /// Reading a call.
    Call(Box<CallReader>),
    /// After a whole call: what the format lets follow it (`</tool_call>`, `,` or `]`, `;`).
    AfterCall,
    /// After a call broke off: the rest of its region is dropped, up to this text (Hermes'
    /// close, consumed; Mistral's trigger, which starts the next call) or the output's end.
    Skip(Option<&'static str>),
}

/// Splits one sequence's output into text and calls as it arrives.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    format: ToolFormat,
    state: State,
    /// Output not yet read: a possible trigger's beginning, a literal not yet whole.
    buf: String,
    /// Trailing whitespace, held: dropped when a call follows (or ends the output after
    /// one), released before the next text otherwise.
    blank: String,
    calls: usize,
    /// The current region's text from its trigger on: released as text when it turns out
    /// to hold no call.
    region: String,
    /// Calls committed in the current region.
    region_calls: usize,
    /// Mistral: the calls are in an array (else one call object follows the trigger).
    array: bool,
    /// The output ended inside a call (a stop string, the length limit): its arguments
    /// are as far as they were written, not closed.
    cut: bool,
    /// The request's function names, when known: a call to another stays text.
    names: Option<Vec<String>>,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        Self {
            format,
            state: match format {
                ToolFormat::Llama3Json => State::LlamaStart,
                _ => State::Text,
            },
            buf: String::new(),
            blank: String::new(),
            calls: 0,
            region: String::new(),
            region_calls: 0,
            cut: false,
            array: true,
            names: None,
        }
    }

    /// A parser that takes only calls to `names` (the request's tools) as calls.
    pub fn with_names(mut self, names: Vec<String>) -> Self {
        self.names = Some(names);
        self
    }

    /// Calls found so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Takes the next piece of output; returns what is now known.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut out = vec![];
        self.run(&mut out);
        out
    }

    fn run(&mut self, out: &mut Vec<ToolEvent>) {
        loop {
            match std::mem::replace(&mut self.state, State::Plain) {
                State::Plain => {
                    let t = std::mem::take(&mut self.buf);
                    self.text(t, out);
                    return;
                }
                State::Text => {
                    let trigger = self.format.trigger();
                    if let Some(k) = self.buf.find(trigger) {
                        let before = self.buf[..k].to_string();
                        self.buf.drain(..k + trigger.len());
                        self.text(before, out);
                        self.region = trigger.to_string();
                        self.region_calls = 0;
                        self.state = match self.format {
                            ToolFormat::Mistral => State::MistralOpen,
                            ToolFormat::MistralArgs => State::Name(String::new()),
                            _ => State::Call(Box::new(CallReader::new(None))),
                        };
                        continue;
                    }
                    let keep = partial_suffix(&self.buf, trigger);
                    let release = self.buf[..self.buf.len() - keep].to_string();
                    self.buf.drain(..release.len());
                    self.text(release, out);
                    self.state = State::Text;
                    return;
                }
                State::LlamaStart => {
                    let t = self.buf.trim_start();
                    let lead = self.buf.len() - t.len();
                    if t.starts_with(PYTHON_TAG) || t.starts_with('{') {
                        let n = if t.starts_with('{') {
                            lead
                        } else {
                            lead + PYTHON_TAG.len()
                        };
                        self.region = self.buf.drain(..n).collect();
                        self.state = State::Call(Box::new(CallReader::new(None)));
                    } else if t.is_empty() || PYTHON_TAG.starts_with(t) {
                        self.state = State::LlamaStart;
                        return;
                    }
                    // Not a call: the answer is text (`State::Plain` is set).
                }
                State::MistralOpen => {
                    let t = self.buf.trim_start();
                    let lead = self.buf.len() - t.len();
                    match t.chars().next() {
                        None => {
                            self.state = State::MistralOpen;
                            return;
                        }
                        Some('[') => {
                            self.array = true;
                            self.region.extend(self.buf.drain(..lead + 1));
                        }
                        Some('{') => {
                            self.array = false;
                            self.region.extend(self.buf.drain(..lead));
                        }
                        Some(_) => {
                            self.broken(None, out);
                            continue;
                        }
                    }
                    self.state = State::Call(Box::new(CallReader::new(None)));
                }
                State::Name(mut name) => {
                    if let Some(rest) = self.buf.strip_prefix(MISTRAL_ARGS) {
                        if name.is_empty() {
                            self.broken(None, out);
                            continue;
                        }
                        self.buf = rest.to_string();
                        self.region += MISTRAL_ARGS;
                        self.state = State::Call(Box::new(CallReader::new(Some(name))));
                    } else if let Some(rest) = self.buf.strip_prefix(MISTRAL_CALL_ID) {
                        self.buf = rest.to_string();
                        self.region += MISTRAL_CALL_ID;
                        self.state = State::CallId(name);
                    } else if self.buf.is_empty()
                        || MISTRAL_ARGS.starts_with(self.buf.as_str())
                        || MISTRAL_CALL_ID.starts_with(self.buf.as_str())
                    {
                        self.state = State::Name(name);
                        return;
                    } else {
                        let c = self.buf.chars().next().expect("not empty");
                        if !name_char(c) || name.len() >= MAX_NAME {
                            self.broken(None, out);
                            continue;
                        }
                        name.push(c);
                        self.region.push(c);
                        self.buf.drain(..c.len_utf8());
                        self.state = State::Name(name);
                    }
                }
                State::CallId(name) => {
                    if let Some(rest) = self.buf.strip_prefix(MISTRAL_ARGS) {
                        self.buf = rest.to_string();
                        self.region += MISTRAL_ARGS;
                        self.state = State::Call(Box::new(CallReader::new(Some(name))));
                    } else if self.buf.is_empty() || MISTRAL_ARGS.starts_with(self.buf.as_str()) {
                        self.state = State::CallId(name);
                        return;
                    } else {
                        let c = self.buf.chars().next().expect("not empty");
                        if !c.is_ascii_alphanumeric() || self.region.len() > 4 * MAX_NAME {
                            self.broken(None, out);
                            continue;
                        }
                        self.region.push(c);
                        self.buf.drain(..1);
                        self.state = State::CallId(name);
                    }
                }
                State::Call(mut reader) => {
                    let mut used = 0;
                    let mut result = Ok(false);
                    for c in self.buf.chars() {
                        result = reader.feed(c);
                        let Ok(done) = result else { break };
                        used += c.len_utf8();
                        let before = out.len();
                        result = reader.drain(done, out, self.names.as_deref()).map(|_| done);
                        if out[before..]
                            .iter()
                            .any(|e| matches!(e, ToolEvent::CallStart { .. }))
                        {
                            self.calls += 1;
                            self.region_calls += 1;
                            self.blank.clear();
                        }
                        if result != Ok(false) {
                            break;
                        }
                    }
                    self.region.push_str(&self.buf[..used]);
                    self.buf.drain(..used);
                    match result {
                        Ok(true) => self.state = State::AfterCall,
                        Ok(false) => {
                            self.state = State::Call(reader);
                            return;
                        }
                        Err(Malformed) => self.broken(Some(&*reader), out),
                    }
                }
                State::AfterCall => {
                    let t = self.buf.trim_start_matches(|c| {
                        blank(c) || (c == ';' && self.format == ToolFormat::Llama3Json)
                    });
                    let lead = self.buf.len() - t.len();
                    let (next, wait) = match self.format {
                        ToolFormat::Hermes if t.starts_with(HERMES_CLOSE) => {
                            self.buf.drain(..lead + HERMES_CLOSE.len());
                            (State::Text, false)
                        }
                        ToolFormat::Hermes => (State::Text, HERMES_CLOSE.starts_with(t)),
                        ToolFormat::Mistral if self.array && t.starts_with(',') => {
                            self.buf.drain(..lead + 1);
                            (State::Call(Box::new(CallReader::new(None))), false)
                        }
                        ToolFormat::Mistral if self.array && t.starts_with(']') => {
                            self.buf.drain(..lead + 1);
                            (State::Text, false)
                        }
                        ToolFormat::Mistral => (State::Text, self.array && t.is_empty()),
                        ToolFormat::MistralArgs => (State::Text, false),
                        ToolFormat::Llama3Json if t.starts_with('{') => {
                            self.buf.drain(..lead);
                            (State::Call(Box::new(CallReader::new(None))), false)
                        }
                        ToolFormat::Llama3Json => (State::Plain, t.is_empty()),
                    };
                    if wait {
                        self.state = State::AfterCall;
                        return;
                    }
                    // Text after a whole call that does not go on in the format is text.
                    self.state = next;
                }
                State::Skip(None) => {
                    self.buf.clear();
                    self.state = State::Skip(None);
                    return;
                }
                State::Skip(Some(until)) => match self.buf.find(until) {
                    Some(k) => {
                        let consumed = if until == HERMES_CLOSE {
                            until.len()
                        } else {
                            0
                        };
                        self.buf.drain(..k + consumed);
                        self.state = State::Text;
                    }
                    None => {
                        let keep = partial_suffix(&self.buf, until);
                        self.buf.drain(..self.buf.len() - keep);
                        self.state = State::Skip(Some(until));
                        return;
                    }
                },
            }
        }
    }

    /// The call being read broke off (`reader`: it had begun): a committed call's arguments
    /// are closed and the rest of its region dropped; a region without calls is text.
    fn broken(&mut self, reader: Option<&CallReader>, out: &mut Vec<ToolEvent>) {
        if let Some(close) = reader.and_then(CallReader::close) {
            push_arguments(out, &close);
        }
        if self.region_calls > 0 {
            self.state = State::Skip(match self.format {
                ToolFormat::Hermes => Some(HERMES_CLOSE),
                ToolFormat::MistralArgs => Some(MISTRAL_TRIGGER),
                _ => None,
            });
        } else {
            let t = std::mem::take(&mut self.region);
            self.text(t, out);
            self.state = match self.format {
                ToolFormat::Llama3Json => State::Plain,
                _ => State::Text,
            };
        }
    }

    /// Whether the output ended inside a call ([`Self::finish`] left it unclosed).
    pub fn cut_off(&self) -> bool {
        self.cut
    }

    /// The output has ended: whatever is held is resolved (a call being read is left as
    /// written and [`Self::cut_off`] says so if committed, else released as text).
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = vec![];
        self.run(&mut out);
        match std::mem::replace(&mut self.state, State::Plain) {
            State::Text | State::Plain | State::LlamaStart => {
                let t = std::mem::take(&mut self.buf);
                self.text(t, &mut out);
            }
            State::Call(reader) => {
                self.buf.clear();
                if reader.committed {
                    // Not closed: closing `{"city": "Pa` would make a call the model never
                    // finished look whole (vLLM then gives no call at all).
                    self.cut = true;
                    self.broken(None, &mut out);
                } else if self.region_calls == 0 {
                    let t = std::mem::take(&mut self.region);
                    self.text(t, &mut out);
                }
            }
            State::MistralOpen | State::Name(_) | State::CallId(_) => {
                let t = std::mem::take(&mut self.region) + &std::mem::take(&mut self.buf);
                self.text(t, &mut out);
            }
            // A cut-off close, separator or broken call's rest.
            State::AfterCall | State::Skip(_) => self.buf.clear(),
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
}

/// The length of the longest end of `s` that begins `pat` (a trigger possibly cut off).
fn partial_suffix(s: &str, pat: &str) -> usize {
    (1..pat.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && pat.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
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
    let mut calls: Vec<ParsedCall> = vec![];
    for e in events {
        match e {
            ToolEvent::Text(t) => text += &t,
            ToolEvent::CallStart { name } => calls.push(ParsedCall {
                name,
                arguments: String::new(),
            }),
            ToolEvent::Arguments(a) => {
                calls
                    .last_mut()
                    .expect("arguments follow their call's start")
                    .arguments += &a
            }
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
    use crate::text::template::{ChatTemplate, Message};
    use serde_json::Value as Json;

    fn call(name: &str, args: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: args.into(),
        }
    }

    /// Feeds `out` in the given pieces; returns the events.
    fn feed(format: ToolFormat, pieces: &[&str]) -> Vec<ToolEvent> {
        let mut p = ToolCallParser::new(format);
        let mut events: Vec<ToolEvent> = pieces.iter().flat_map(|t| p.push(t)).collect();
        events.extend(p.finish());
        events
    }

    /// `out` cut at its character boundaries into pieces of `sizes` characters, in turn.
    fn cut(out: &str, sizes: impl Iterator<Item = usize>) -> Vec<&str> {
        let cuts: Vec<usize> = (0..=out.len())
            .filter(|&i| out.is_char_boundary(i))
            .collect();
        let (mut pieces, mut at) = (vec![], 0);
        for n in sizes {
            if at + 1 >= cuts.len() {
                break;
            }
            let to = (at + n.max(1)).min(cuts.len() - 1);
            pieces.push(&out[cuts[at]..cuts[to]]);
            at = to;
        }
        pieces
    }

    /// Feeds `out` whole, a character at a time, in fixed steps and in random chunk sizes,
    /// and checks that each chunking gives what the whole gives; returns that.
    fn parse_every_way(format: ToolFormat, out: &str) -> (Option<String>, Vec<ParsedCall>) {
        let whole = parse_output(format, out);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ out.len() as u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 9) as usize + 1
        };
        let mut chunkings: Vec<Vec<&str>> = [1, 2, 3, 5, 7, 11]
            .iter()
            .map(|&k| cut(out, std::iter::repeat(k)))
            .collect();
        for _ in 0..8 {
            chunkings.push(cut(out, std::iter::repeat_with(&mut random)));
        }
        for pieces in chunkings {
            assert_eq!(pieces.concat(), out);
            let events = feed(format, &pieces);
            // Each call's start comes before its arguments, and only once.
            let mut open = false;
            for e in &events {
                match e {
                    ToolEvent::CallStart { .. } => open = true,
                    ToolEvent::Arguments(a) => assert!(open && !a.is_empty(), "{events:?}"),
                    ToolEvent::Text(_) => {}
                }
            }
            assert_eq!(collect(events), whole, "pieces {pieces:?}");
        }
        for c in &whole.1 {
            serde_json::from_str::<Json>(&c.arguments)
                .unwrap_or_else(|e| panic!("{c:?} arguments are not JSON: {e}"));
        }
        whole
    }

    /// The arguments events of one call fed a character at a time.
    fn argument_pieces(format: ToolFormat, out: &str) -> Vec<String> {
        let chars: Vec<String> = out.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        feed(format, &pieces)
            .into_iter()
            .filter_map(|e| match e {
                ToolEvent::Arguments(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hermes_calls_parallel_and_text_before() {
        let out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
        assert_eq!(text.as_deref(), Some("Let me check."));
        assert_eq!(
            calls,
            vec![
                call("get_weather", r#"{"city": "Paris", "days": 2}"#),
                call("get_time", "{}")
            ]
        );
    }

    #[test]
    fn hermes_only_a_call_has_no_text_and_an_unclosed_block_is_read() {
        let out = "\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}\n";
        let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
        assert_eq!(text, None);
        assert_eq!(calls, vec![call("f", r#"{"x": [1, 2]}"#)]);
        // Arguments before the name, as a JSON text, or none at all.
        let out = "<tool_call>{\"arguments\": {\"a\": \"b\"}, \"name\": \"f\"}</tool_call><tool_call>{\"name\": \"g\", \"arguments\": \"{\\\"n\\\": 1}\"}</tool_call><tool_call>{\"name\": \"h\"}</tool_call>";
        let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
        assert_eq!(text, None);
        assert_eq!(
            calls,
            vec![
                call("f", r#"{"a": "b"}"#),
                call("g", r#"{"n": 1}"#),
                call("h", "{}")
            ]
        );
    }

    #[test]
    fn hermes_arguments_stream_as_they_are_written() {
        let args = r#"{"city": "Pa\"ris", "days": [1, 22], "deep": {"x": -1.5e3, "ok": true}}"#;
        let out = format!(
            "<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {args}}}\n</tool_call>"
        );
        let pieces = argument_pieces(ToolFormat::Hermes, &out);
        assert_eq!(pieces.concat(), args);
        // A piece per string character; keys, escapes, numbers and literals wait to be whole.
        assert!(pieces.len() >= 15, "{pieces:?}");
        // Every prefix sent closes into JSON (what a cut-off call would be closed to).
        let mut sent = String::new();
        let mut scan = crate::text::json_scan::JsonScan::default();
        let mut fed = 0;
        for p in &pieces {
            sent += p;
            for c in sent[fed..].chars() {
                scan.feed(c).unwrap();
            }
            fed = sent.len();
            let close = scan
                .closers(0)
                .unwrap_or_else(|| panic!("{sent:?} cannot close"));
            serde_json::from_str::<Json>(&(sent.clone() + &close)).unwrap();
        }
        // The header comes first, once the name is whole and the arguments have begun.
        let chars: Vec<String> = out.chars().map(String::from).collect();
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
        let mut fed = String::new();
        for c in &chars {
            fed += c;
            let events = p.push(c);
            if let Some(ToolEvent::CallStart { name }) = events.first() {
                assert_eq!(name, "get_weather");
                assert!(fed.ends_with("\"arguments\": {"), "{fed:?}");
            }
        }
    }

    #[test]
    fn hermes_malformed_before_commit_stays_text() {
        for out in [
            "a <tool_call>{\"name\": f} b",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{not json\"}</tool_call>",
            "<tool_call>{\"name\": \"f\"",
            "<tool_call>not json</tool_call> after",
            "x <tool_ca",
            "plain <tool text </tool_call>",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::Hermes, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
        // A malformed block does not hide a good one after it.
        let (text, calls) = parse_every_way(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": 3}</tool_call> <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
        );
        assert_eq!(
            text.as_deref(),
            Some("<tool_call>{\"name\": 3}</tool_call>")
        );
        assert_eq!(calls, vec![call("f", "{}")]);
    }

    #[test]
    fn hermes_committed_call_that_breaks_is_closed_and_its_rest_dropped() {
        let (text, calls) = parse_every_way(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1, \"y\": </tool_call> after",
        );
        assert_eq!(calls, vec![call("f", r#"{"x": 1}"#)]);
        assert_eq!(text.as_deref(), Some(" after"));
        // Cut off (a stop string, the length limit) inside a string: the arguments as far as
        // they were written, not closed into a call the model never finished, and said so.
        let mut p = ToolCallParser::new(ToolFormat::Hermes);
        let mut events = p.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"city\": \"Par");
        assert!(!p.cut_off());
        events.extend(p.finish());
        assert!(p.cut_off());
        let (text, calls) = collect(events);
        assert_eq!(calls, vec![call("f", r#"{"city": "Par"#)]);
        assert_eq!(text, None);
        // Text after a whole call that is not the block's close is text.
        let (text, calls) = parse_every_way(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": {}} and more",
        );
        assert_eq!(calls, vec![call("f", "{}")]);
        assert_eq!(text.as_deref(), Some(" and more"));
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
        assert_eq!(calls, vec![call("get_weather", r#"{"city": "Oslo"}"#)]);
        let out = "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"k\": true}}";
        let (text, calls) = parse_every_way(ToolFormat::Llama3Json, out);
        assert_eq!(text, None);
        assert_eq!(calls, vec![call("a", "{}"), call("b", r#"{"k": true}"#)]);
        let args = r#"{"q": "a long query", "n": 10}"#;
        let pieces = argument_pieces(
            ToolFormat::Llama3Json,
            &format!("{{\"name\": \"s\", \"parameters\": {args}}}"),
        );
        assert!(pieces.len() > 5, "{pieces:?}");
        assert_eq!(pieces.concat(), args);
    }

    #[test]
    fn llama3_text_answers_and_malformed_calls_are_text() {
        for out in [
            "The weather is {nice}.",
            "  Sure: {\"name\": \"f\", \"parameters\": {}}",
            "{\"name\": 1, \"parameters\": {}}",
            "{\"parameters\": {}}",
            "{\"result\": 5}",
            "<|python",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::Llama3Json, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
        // A JSON answer whose "name" is no tool of the request is text (with the names
        // known), in every way it may arrive; a call to a tool is still a call.
        let answer = "{\"name\": \"Alice\", \"age\": 30}";
        for pieces in [
            vec![answer.to_string()],
            answer.chars().map(String::from).collect(),
        ] {
            let mut p = ToolCallParser::new(ToolFormat::Llama3Json).with_names(vec!["f".into()]);
            let mut text = String::new();
            for piece in &pieces {
                for e in p.push(piece) {
                    match e {
                        ToolEvent::Text(t) => text += &t,
                        other => panic!("{other:?} from {answer}"),
                    }
                }
            }
            for e in p.finish() {
                match e {
                    ToolEvent::Text(t) => text += &t,
                    other => panic!("{other:?} from {answer}"),
                }
            }
            assert_eq!(text, answer);
            assert_eq!(p.calls(), 0);
        }
        let mut p = ToolCallParser::new(ToolFormat::Llama3Json).with_names(vec!["f".into()]);
        let mut events = p.push("{\"name\": \"f\", \"parameters\": {\"a\": 1}}");
        events.extend(p.finish());
        assert_eq!(p.calls(), 1, "{events:?}");
        // Text that is not a call streams at once.
        let mut p = ToolCallParser::new(ToolFormat::Llama3Json);
        assert_eq!(p.push("Hi"), vec![ToolEvent::Text("Hi".into())]);
        // A call that breaks after its arguments began is closed; the rest is dropped.
        let (text, calls) = parse_every_way(
            ToolFormat::Llama3Json,
            "{\"name\": \"f\", \"parameters\": {\"a\": }; more",
        );
        assert_eq!((text, calls), (None, vec![call("f", "{}")]));
        // Words after a whole call are text.
        let (text, calls) =
            parse_every_way(ToolFormat::Llama3Json, "{\"name\": \"f\"} trailing words");
        assert_eq!(text.as_deref(), Some(" trailing words"));
        assert_eq!(calls, vec![call("f", "{}")]);
    }

    #[test]
    fn mistral_array_of_calls() {
        let out = "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}, {\"name\": \"b\", \"arguments\": \"{\\\"n\\\": 1}\"}]";
        let (text, calls) = parse_every_way(ToolFormat::Mistral, out);
        assert_eq!(text, None);
        assert_eq!(
            calls,
            vec![call("a", r#"{"q": "x"}"#), call("b", r#"{"n": 1}"#)]
        );
        let out = "Checking. [TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]";
        let (text, calls) = parse_every_way(ToolFormat::Mistral, out);
        assert_eq!(text.as_deref(), Some("Checking."));
        assert_eq!(calls, vec![call("a", "{}")]);
        let pieces = argument_pieces(
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": \"streamed\"}}]",
        );
        assert!(pieces.len() > 5, "{pieces:?}");
        assert_eq!(pieces.concat(), r#"{"q": "streamed"}"#);
    }

    #[test]
    fn mistral_malformed_stays_text() {
        for out in [
            "[TOOL_CALLS] []",
            "[TOOL_CALLS] [{\"arguments\": {}}]",
            "[TOOL_CALL] [{\"name\": \"a\"}]",
            "[TOOL_CALLS] not a call",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::Mistral, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
        let (text, calls) = parse_every_way(
            ToolFormat::Mistral,
            "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {]",
        );
        assert_eq!((text, calls), (None, vec![call("a", "{}")]));
    }

    #[test]
    fn mistral_args_format_calls() {
        let out = "Let me look.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\", \"unit\": \"celsius\"}[TOOL_CALLS]now[CALL_ID]a1B2c3D4e[ARGS]{}";
        let (text, calls) = parse_every_way(ToolFormat::MistralArgs, out);
        assert_eq!(text.as_deref(), Some("Let me look."));
        assert_eq!(
            calls,
            vec![
                call("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#),
                call("now", "{}")
            ]
        );
        let args = r#"{"city": "Zoë — 東京 🦙", "days": 3}"#;
        let pieces = argument_pieces(
            ToolFormat::MistralArgs,
            &format!("[TOOL_CALLS]f[ARGS]{args}"),
        );
        assert!(pieces.len() > 5, "{pieces:?}");
        assert_eq!(pieces.concat(), args);
    }

    #[test]
    fn mistral_args_malformed_stays_text_or_is_closed() {
        for out in [
            "[TOOL_CALLS]get weather[ARGS]{}",
            "[TOOL_CALLS][ARGS]{}",
            "[TOOL_CALLS]f[ARGS][1]",
            "[TOOL_CALLS]f",
            "[TOOL_CALLS]f[CALL_ID]x y[ARGS]{}",
            "[TOOL_CALLS] in prose",
        ] {
            let (text, calls) = parse_every_way(ToolFormat::MistralArgs, out);
            assert!(calls.is_empty(), "{out}");
            assert_eq!(text.as_deref(), Some(out));
        }
        // A call that breaks is closed; the next call is still read.
        let (text, calls) = parse_every_way(
            ToolFormat::MistralArgs,
            "[TOOL_CALLS]f[ARGS]{\"a\": [1, oops[TOOL_CALLS]g[ARGS]{\"b\": null}",
        );
        assert_eq!(text, None);
        assert_eq!(
            calls,
            vec![call("f", "{\"a\": [1]}"), call("g", r#"{"b": null}"#)]
        );
    }

    fn jinja(source: &str) -> ChatTemplate {
        ChatTemplate::Jinja {
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn formats_from_template_sources() {
        assert_eq!(
            ToolFormat::for_template(&jinja("{{ '<tool_call>' }}")),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::for_template(&jinja("[TOOL_CALLS] {{ x }}")),
            ToolFormat::Mistral
        );
        assert_eq!(
            ToolFormat::for_template(&jinja("{{ '[TOOL_CALLS]' + name + '[ARGS]' }}")),
            ToolFormat::MistralArgs
        );
        assert_eq!(
            ToolFormat::for_template(&jinja(
                "<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}"
            )),
            ToolFormat::Llama3Json
        );
    }

    const MISTRAL_TOOLS: &str =
        include_str!("../../../../../tests/fixtures/chat-templates/mistral-tools.jinja");

    /// Mistral's `[ARGS]` template: tools and a call render as Mistral writes them, and the
    /// parser reads the rendered call back.
    #[test]
    fn mistral_args_template_renders_and_its_calls_parse_back() {
        let t = jinja(MISTRAL_TOOLS);
        assert_eq!(ToolFormat::for_template(&t), ToolFormat::MistralArgs);
        let tools = vec![
            serde_json::json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
        ];
        assert!(renders_tools(&t, &tools, usize::MAX).unwrap());
        let mut call_msg = Message::new("assistant", "");
        call_msg.tool_calls = Some(vec![
            serde_json::json!({"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}),
            serde_json::json!({"id": "call_2", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}),
        ]);
        let mut result = Message::new("tool", "18 C");
        result.tool_call_id = Some("call_1".into());
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Weather in Paris and Oslo?"),
            call_msg,
            result,
        ];
        let got = t
            .render_with(&msgs, Some(&tools), true, &Default::default())
            .unwrap();
        let want = concat!(
            "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT]",
            r#"[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}][/AVAILABLE_TOOLS]"#,
            "[INST]Weather in Paris and Oslo?[/INST]",
            r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}</s>"#,
            "[TOOL_RESULTS]18 C[/TOOL_RESULTS]",
        );
        assert_eq!(got, want);
        let written = &got[got.find("[/INST]").unwrap() + 7..got.find("</s>").unwrap()];
        let (text, calls) = parse_every_way(ToolFormat::MistralArgs, written);
        assert_eq!(text, None);
        assert_eq!(
            calls,
            vec![
                call("get_weather", r#"{"city": "Paris"}"#),
                call("get_weather", r#"{"city": "Oslo"}"#)
            ]
        );
    }

    #[test]
    fn tools_rendered_or_not() {
        let tools = vec![
            serde_json::json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}),
        ];
        let with = jinja("{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}");
        assert!(renders_tools(&with, &tools, usize::MAX).unwrap());
        let without = jinja("{% for m in messages %}{{ m.content }}{% endfor %}");
        assert!(!renders_tools(&without, &tools, usize::MAX).unwrap());
        let builtin = ChatTemplate::builtin("chatml").unwrap();
        assert!(!renders_tools(&builtin, &tools, usize::MAX).unwrap());
    }
}
