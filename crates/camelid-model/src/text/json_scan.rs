//! A strict incremental JSON scanner (RFC 8259), one character at a time: where a value's
//! containers and strings open and close, and whether the text so far can be completed by
//! closing what is open. The tool-call parser streams a call's arguments with it as the model
//! writes them. Hand-written: serde_json and the partial-JSON crates parse whole texts or
//! re-parse every prefix; this keeps O(1) work per character.

/// Where the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lex {
    /// A value is expected; `or_close`: right after `[`, so `]` may come instead.
    Value {
        or_close: bool,
    },
    /// A key is expected; `or_close`: right after `{`, so `}` may come instead.
    Key {
        or_close: bool,
    },
    /// After a key.
    Colon,
    /// After a value inside a container: `,` or the container's close.
    After,
    /// Inside a string (a key's or a value's).
    Str {
        key: bool,
        esc: Esc,
    },
    Num(Num),
    /// Inside `true`, `false` or `null`: the word and how much of it has been read.
    Lit {
        word: &'static str,
        at: usize,
    },
    /// The top-level value is complete.
    Done,
}

/// An escape being read in a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Esc {
    No,
    /// After `\`.
    Slash,
    /// Inside `\uXXXX`: hex digits still to come.
    Hex(u8),
}

/// The parts of a number (`-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    /// Whether the number may end here.
    fn whole(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    fn next(self, c: char) -> Option<Num> {
        let digit = c.is_ascii_digit();
        Some(match (self, c) {
            (Num::Minus, '0') => Num::Zero,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, '.') => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::E,
            (Num::E, '+' | '-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, _) if digit => Num::Exp,
            _ => return None,
        })
    }
}

/// The text is not JSON (or goes on after a whole value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// Scans one JSON value.
#[derive(Debug, Clone)]
pub struct JsonScan {
    lex: Lex,
    /// Open containers, `{` or `[`, outermost first.
    stack: Vec<char>,
}

impl Default for JsonScan {
    fn default() -> Self {
        Self {
            lex: Lex::Value { or_close: false },
            stack: vec![],
        }
    }
}

/// Containers deeper than this are invalid: serde_json refuses them too (its recursion
/// limit), and the text that closes what is open (`closers`, rebuilt per character of a
/// streamed call) stays short.
pub const MAX_DEPTH: usize = 127;

fn blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

impl JsonScan {
    pub fn lex(&self) -> Lex {
        self.lex
    }

    /// How many containers are open.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Takes the next character.
    pub fn feed(&mut self, c: char) -> Result<(), Invalid> {
        loop {
            self.lex = match self.lex {
                _ if blank(c)
                    && matches!(
                        self.lex,
                        Lex::Value { .. } | Lex::Key { .. } | Lex::Colon | Lex::After | Lex::Done
                    ) =>
                {
                    self.lex
                }
                Lex::Done => return Err(Invalid),
                Lex::Value { .. } if matches!(c, '{' | '[') && self.stack.len() >= MAX_DEPTH => {
                    return Err(Invalid)
                }
                Lex::Value { or_close } => match c {
                    '{' => {
                        self.stack.push('{');
                        Lex::Key { or_close: true }
                    }
                    '[' => {
                        self.stack.push('[');
                        Lex::Value { or_close: true }
                    }
                    '"' => Lex::Str {
                        key: false,
                        esc: Esc::No,
                    },
                    '-' => Lex::Num(Num::Minus),
                    '0' => Lex::Num(Num::Zero),
                    '1'..='9' => Lex::Num(Num::Int),
                    't' => Lex::Lit {
                        word: "true",
                        at: 1,
                    },
                    'f' => Lex::Lit {
                        word: "false",
                        at: 1,
                    },
                    'n' => Lex::Lit {
                        word: "null",
                        at: 1,
                    },
                    ']' if or_close => self.close(']')?,
                    _ => return Err(Invalid),
                },
                Lex::Key { or_close } => match c {
                    '"' => Lex::Str {
                        key: true,
                        esc: Esc::No,
                    },
                    '}' if or_close => self.close('}')?,
                    _ => return Err(Invalid),
                },
                Lex::Colon => match c {
                    ':' => Lex::Value { or_close: false },
                    _ => return Err(Invalid),
                },
                Lex::After => match c {
                    ',' if self.stack.last() == Some(&'{') => Lex::Key { or_close: false },
                    ',' => Lex::Value { or_close: false },
                    '}' | ']' => self.close(c)?,
                    _ => return Err(Invalid),
                },
                Lex::Str { key, esc } => match (esc, c) {
                    (Esc::No, '"') if key => Lex::Colon,
                    (Esc::No, '"') => self.after_value(),
                    (Esc::No, '\\') => Lex::Str {
                        key,
                        esc: Esc::Slash,
                    },
                    (Esc::No, c) if (c as u32) < 0x20 => return Err(Invalid),
                    (Esc::No, _) => self.lex,
                    (Esc::Slash, '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {
                        Lex::Str { key, esc: Esc::No }
                    }
                    (Esc::Slash, 'u') => Lex::Str {
                        key,
                        esc: Esc::Hex(4),
                    },
                    (Esc::Hex(n), c) if c.is_ascii_hexdigit() => Lex::Str {
                        key,
                        esc: if n == 1 { Esc::No } else { Esc::Hex(n - 1) },
                    },
                    _ => return Err(Invalid),
                },
                Lex::Num(n) => match n.next(c) {
                    Some(n) => Lex::Num(n),
                    // The number ended before `c`: `c` is read again after it.
                    None if n.whole() => {
                        self.lex = self.after_value();
                        continue;
                    }
                    None => return Err(Invalid),
                },
                Lex::Lit { word, at } => {
                    if !word[at..].starts_with(c) {
                        return Err(Invalid);
                    }
                    if at + 1 == word.len() {
                        self.after_value()
                    } else {
                        Lex::Lit { word, at: at + 1 }
                    }
                }
            };
            return Ok(());
        }
    }

    fn close(&mut self, c: char) -> Result<Lex, Invalid> {
        let open = if c == '}' { '{' } else { '[' };
        if self.stack.pop() != Some(open) {
            return Err(Invalid);
        }
        Ok(self.after_value())
    }

    fn after_value(&self) -> Lex {
        if self.stack.is_empty() {
            Lex::Done
        } else {
            Lex::After
        }
    }

    /// The text that completes what was read so far into JSON by closing an open string
    /// value and the containers from `depth` in, when only closing is missing; `None` when
    /// more is needed (inside a key, an escape, a literal, an unfinished number, after `,`
    /// or `:`).
    pub fn closers(&self, depth: usize) -> Option<String> {
        let string = match self.lex {
            Lex::Done
            | Lex::After
            | Lex::Key { or_close: true }
            | Lex::Value { or_close: true } => "",
            Lex::Num(n) if n.whole() => "",
            Lex::Str {
                key: false,
                esc: Esc::No,
            } => "\"",
            _ => return None,
        };
        let brackets = self.stack[depth.min(self.stack.len())..]
            .iter()
            .rev()
            .map(|&o| if o == '{' { '}' } else { ']' });
        Some(string.chars().chain(brackets).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(s: &str) -> Result<JsonScan, Invalid> {
        let mut j = JsonScan::default();
        for c in s.chars() {
            j.feed(c)?;
        }
        Ok(j)
    }

    #[test]
    fn nesting_stops_where_serde_json_stops() {
        let deep = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(scan(&deep(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH)).is_ok());
        assert!(scan(&deep(MAX_DEPTH + 1)).is_err());
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        for s in [
            r#"{"a": [1, -2.5e+3, 0, true, false, null], "b\"\u00e9\n": {"c": []}}"#,
            "[]",
            "{}",
            r#" { "x" : "y" } "#,
            "{\"a\": 1,}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": tru}",
            "{\"a\" 1}",
            "[1 2]",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12g4\"}",
            "{\"a\": \"tab\there\"}",
            "{\"a\": [}",
            "{} {}",
            "{'a': 1}",
        ] {
            let mine = scan(s).map(|j| j.lex() == Lex::Done);
            let serde = serde_json::from_str::<serde_json::Value>(s).is_ok();
            assert_eq!(mine.unwrap_or(false), serde, "{s}");
        }
    }

    #[test]
    fn closers_complete_every_closable_prefix() {
        let s = r#"{"city": "Pa\"ris", "n": [1, 20, {"deep": -3.5}], "ok": true, "e": {}}"#;
        let mut j = JsonScan::default();
        let mut closable = 0;
        for (i, c) in s.char_indices() {
            j.feed(c).unwrap();
            let prefix = &s[..i + c.len_utf8()];
            if let Some(close) = j.closers(0) {
                closable += 1;
                let whole = format!("{prefix}{close}");
                serde_json::from_str::<serde_json::Value>(&whole)
                    .unwrap_or_else(|e| panic!("{whole}: {e}"));
            }
        }
        // Values, strings and containers' opens are closable: most of the way.
        assert!(closable >= 20, "{closable}");
        // Not closable: inside a key, after a colon or comma, mid-escape, mid-literal.
        for p in [
            r#"{"ci"#,
            r#"{"a":"#,
            r#"{"a": 1,"#,
            r#"{"a": "\"#,
            r#"{"a": tr"#,
            r#"{"a": 1."#,
        ] {
            assert_eq!(scan(p).unwrap().closers(0), None, "{p}");
        }
        // From a depth: only the inner containers.
        assert_eq!(
            scan(r#"{"a": {"b": [1"#).unwrap().closers(1),
            Some("]}".into())
        );
    }
}
