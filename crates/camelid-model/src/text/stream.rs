//! Text that streams out token by token: UTF-8-safe incremental detokenization and stop
//! strings that are never partly emitted.

use crate::error::Result;
use crate::text::tokenizer::Tokenizer;

/// Decodes a growing token list and yields only complete new text. A multi-byte character
/// split across tokens is held back until it is whole (the decoder would show U+FFFD).
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            ids: vec![],
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        // Decoding from a few tokens back keeps tokenizer-specific spacing right.
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(
            if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
                full[prefix.len()..].to_string()
            } else {
                String::new()
            },
        )
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

/// Finds stop strings in streamed text; holds back any tail that could be the start of one.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
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
        // Longest suffix of pending that is a proper prefix of some stop string.
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

    /// Text held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_pushes_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["###".into(), "END".into()]);
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

    #[test]
    fn held_prefix_is_released_when_not_a_stop() {
        let mut m = StopMatcher::new(vec!["ab".into()]);
        assert_eq!(m.push("xa"), StopCheck::Continue("x".into()));
        assert_eq!(m.push("c"), StopCheck::Continue("ac".into()));
        assert_eq!(m.push("a"), StopCheck::Continue("".into()));
        assert_eq!(m.flush(), "a");
    }
}
