//! One call's JSON read a character at a time (`{"name": …, "arguments" | "parameters": {…}}`,
//! or Mistral's `[ARGS]` object alone): its name once known, its arguments' text as far as it
//! can be closed into JSON, and where it broke off.

use super::ToolEvent;
use crate::text::json_scan::{Esc, JsonScan, Lex};
use serde_json::Value as Json;

/// A call's arguments as far as they have been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Args {
    /// Not seen (yet): `{}` if the call ends without them.
    Missing,
    /// An object from `start` in the call's text; `end` once it closed.
    Object { start: usize, end: Option<usize> },
    /// A JSON text given as a string (some templates show calls that way); `None` while the
    /// string is read.
    Text(Option<String>),
}

/// The depth-1 string value being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Name,
    ArgsText,
}

/// The call broke off: bad JSON, or not a call (no name, arguments neither an object nor a
/// JSON text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

pub(super) fn blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Reads one call's JSON (`{"name": …, "arguments" | "parameters": {…}}`), or for Mistral's
/// `[ARGS]` format the arguments object alone, a character at a time.
#[derive(Debug, Clone)]
pub(super) struct CallReader {
    scan: JsonScan,
    text: String,
    /// The text is the arguments object itself; the name came before it.
    bare: bool,
    /// The last depth-1 key, and where the depth-1 string being read began.
    key: String,
    str_start: usize,
    reading: Option<Field>,
    name: Option<String>,
    args: Args,
    /// The arguments text up to `safe` can be sent; `closers` completes it into JSON.
    safe: usize,
    closers: String,
    sent: usize,
    pub(super) committed: bool,
}

impl CallReader {
    pub(super) fn new(bare_name: Option<String>) -> Self {
        Self {
            scan: JsonScan::default(),
            text: String::new(),
            bare: bare_name.is_some(),
            key: String::new(),
            str_start: 0,
            reading: None,
            name: bare_name,
            args: Args::Missing,
            safe: 0,
            closers: String::new(),
            sent: 0,
            committed: false,
        }
    }

    /// The depth at which the arguments object's members are.
    pub(super) fn base(&self) -> usize {
        if self.bare {
            0
        } else {
            1
        }
    }

    /// Takes the next character; `Ok(true)` when the JSON is whole.
    pub(super) fn feed(&mut self, c: char) -> Result<bool, Malformed> {
        let (before, d0, at) = (self.scan.lex(), self.scan.depth(), self.text.len());
        if d0 == 0 && !blank(c) && c != '{' {
            return Err(Malformed);
        }
        self.scan.feed(c).map_err(|_| Malformed)?;
        self.text.push(c);
        let d1 = self.scan.depth();
        let is_args = |k: &str| k == "arguments" || k == "parameters";
        if self.bare {
            if d0 == 0 && d1 == 1 {
                self.args = Args::Object {
                    start: at,
                    end: None,
                };
            }
        } else if d0 == 1 {
            match (before, c) {
                (Lex::Key { .. }, '"') => self.str_start = at,
                (
                    Lex::Str {
                        key: true,
                        esc: Esc::No,
                    },
                    '"',
                ) => self.key = decode(&self.text[self.str_start..])?,
                (Lex::Value { .. }, c) if !blank(c) => {
                    if self.key == "name" && self.name.is_none() {
                        if c != '"' {
                            return Err(Malformed);
                        }
                        self.reading = Some(Field::Name);
                        self.str_start = at;
                    } else if is_args(&self.key) && self.args == Args::Missing {
                        match c {
                            '{' => {
                                self.args = Args::Object {
                                    start: at,
                                    end: None,
                                }
                            }
                            '"' => {
                                self.args = Args::Text(None);
                                self.reading = Some(Field::ArgsText);
                                self.str_start = at;
                            }
                            _ => return Err(Malformed),
                        }
                    }
                }
                (
                    Lex::Str {
                        key: false,
                        esc: Esc::No,
                    },
                    '"',
                ) => match self.reading.take() {
                    Some(Field::Name) => {
                        let name: String = decode(&self.text[self.str_start..])?;
                        if name.is_empty() {
                            return Err(Malformed);
                        }
                        self.name = Some(name);
                    }
                    Some(Field::ArgsText) => {
                        let t: String = decode(&self.text[self.str_start..])?;
                        serde_json::from_str::<Json>(&t).map_err(|_| Malformed)?;
                        self.args = Args::Text(Some(t));
                    }
                    None => {}
                },
                _ => {}
            }
        }
        let base = self.base();
        let next = at + c.len_utf8();
        if let Args::Object { start, end: None } = self.args {
            if d1 == base && at > start {
                self.args = Args::Object {
                    start,
                    end: Some(next),
                };
                self.safe = next;
                self.closers.clear();
            } else if let Some(closers) = self.scan.closers(base) {
                self.safe = next;
                self.closers = closers;
            }
        }
        Ok(self.scan.lex() == Lex::Done)
    }

    /// What is now known: the call's start once it commits, then its arguments as far as
    /// they can be sent (all of them when `done`).
    /// A name not among `known` (the request's tools, when given) is no call: what the model
    /// wrote stays text (Llama 3's format reads any JSON answer with a `"name"` as a call).
    pub(super) fn drain(
        &mut self,
        done: bool,
        out: &mut Vec<ToolEvent>,
        known: Option<&[String]>,
    ) -> Result<(), Malformed> {
        if !self.committed {
            let Some(name) = self.name.clone() else {
                return if done { Err(Malformed) } else { Ok(()) };
            };
            if known.is_some_and(|k| !k.contains(&name)) {
                return Err(Malformed);
            }
            if !done && !matches!(self.args, Args::Object { .. }) {
                return Ok(());
            }
            self.committed = true;
            out.push(ToolEvent::CallStart { name });
        }
        match &self.args {
            Args::Object { start, end } => {
                let from = self.sent.max(*start);
                let to = end.unwrap_or(self.safe);
                if to > from {
                    push_arguments(out, &self.text[from..to]);
                    self.sent = to;
                }
            }
            Args::Missing if done => push_arguments(out, "{}"),
            Args::Text(Some(t)) if done => push_arguments(out, t),
            _ => {}
        }
        Ok(())
    }

    /// A committed call cut off: what closes the arguments sent so far.
    pub(super) fn close(&self) -> Option<String> {
        match self.args {
            Args::Object { end: None, .. } if self.committed => Some(self.closers.clone()),
            _ => None,
        }
    }
}

/// A JSON string literal's value.
pub(super) fn decode(lit: &str) -> Result<String, Malformed> {
    serde_json::from_str(lit).map_err(|_| Malformed)
}

/// Appends argument text to the events, to the last piece if that is arguments too.
pub(super) fn push_arguments(out: &mut Vec<ToolEvent>, t: &str) {
    match out.last_mut() {
        Some(ToolEvent::Arguments(prev)) => prev.push_str(t),
        _ => out.push(ToolEvent::Arguments(t.to_string())),
    }
}
