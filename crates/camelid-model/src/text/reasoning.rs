//! A reasoning model's thinking split from its answer as the text streams: the
//! `<think>…</think>` block that Qwen3, QwQ and DeepSeek-R1 (and its Qwen and Llama distills)
//! write before answering. Only a block at the start of the output counts, as vLLM's
//! `deepseek_r1`/`qwen3` parsers read it; a prompt that already opened the block (DeepSeek-R1's
//! template ends its generation prompt with `<think>\n`) starts the output inside it. Leading
//! whitespace of the thinking and of the answer is dropped (the model writes newlines there).

pub const THINK_OPEN: &str = "<think>";
pub const THINK_CLOSE: &str = "</think>";

/// What a piece of output adds to each part.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the output may still open a block.
    Start,
    Reasoning,
    Content,
}

/// Splits one choice's output, piece by piece (the pieces join to the same parts however
/// the output was cut).
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    state: State,
    /// Text not yet known to be one part or the other.
    held: String,
    /// The current part has emitted nothing yet (its leading whitespace is dropped).
    fresh: bool,
}

impl ReasoningSplitter {
    /// `inside`: the prompt ends inside an open block ([`prompt_opens_block`]).
    pub fn new(inside: bool) -> Self {
        Self {
            state: if inside {
                State::Reasoning
            } else {
                State::Start
            },
            held: String::new(),
            fresh: true,
        }
    }

    /// Whether the output is inside the thinking block now.
    pub fn in_reasoning(&self) -> bool {
        self.state == State::Reasoning
    }

    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Reasoning;
                        self.fresh = true;
                    } else if THINK_OPEN.starts_with(t) {
                        return out; // blank, or a prefix of the tag: wait
                    } else {
                        self.state = State::Content;
                        self.fresh = false;
                    }
                }
                State::Reasoning => match self.held.find(THINK_CLOSE) {
                    Some(i) => {
                        let thought = self.held[..i].to_string();
                        self.held.drain(..i + THINK_CLOSE.len());
                        self.emit_reasoning(&thought, &mut out);
                        self.state = State::Content;
                        self.fresh = true;
                    }
                    None => {
                        // All but a tail that may begin the closing tag.
                        let keep = partial_suffix(&self.held, THINK_CLOSE);
                        let sure = self.held[..self.held.len() - keep].to_string();
                        self.held.drain(..sure.len());
                        self.emit_reasoning(&sure, &mut out);
                        return out;
                    }
                },
                State::Content => {
                    let t = std::mem::take(&mut self.held);
                    let t = if self.fresh { t.trim_start() } else { &t };
                    if !t.is_empty() {
                        self.fresh = false;
                        out.content.push_str(t);
                    }
                    return out;
                }
            }
        }
    }

    /// The output has ended: what was held goes to the part it was in (an unclosed block is
    /// all thinking, as a length-cut answer of a reasoning model is).
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        let rest = std::mem::take(&mut self.held);
        match self.state {
            State::Reasoning => self.emit_reasoning(&rest, &mut out),
            State::Start | State::Content => out.content = rest,
        }
        out
    }

    fn emit_reasoning(&mut self, text: &str, out: &mut Split) {
        let t = if self.fresh { text.trim_start() } else { text };
        if !t.is_empty() {
            self.fresh = false;
            out.reasoning.push_str(t);
        }
    }
}

/// The longest end of `s` that is a proper prefix of `tag`.
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// Whether a rendered prompt (its end is enough) opens a `<think>` block for the output:
/// it ends with the tag, as the generation prompts of DeepSeek-R1 and QwQ do. A `<think>`
/// earlier in the prompt (a user asking about the tag) opens nothing.
pub fn prompt_opens_block(prompt_tail: &str) -> bool {
    prompt_tail.trim_end().ends_with(THINK_OPEN)
}

/// A whole output's parts (`inside`: as for [`ReasoningSplitter::new`]).
pub fn split_reasoning(output: &str, inside: bool) -> Split {
    let mut s = ReasoningSplitter::new(inside);
    let mut a = s.push(output);
    let b = s.finish();
    a.reasoning += &b.reasoning;
    a.content += &b.content;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_chars(output: &str, inside: bool) -> Split {
        let mut s = ReasoningSplitter::new(inside);
        let mut all = Split::default();
        for c in output.chars() {
            let p = s.push(&c.to_string());
            all.reasoning += &p.reasoning;
            all.content += &p.content;
        }
        let p = s.finish();
        all.reasoning += &p.reasoning;
        all.content += &p.content;
        all
    }

    fn split(reasoning: &str, content: &str) -> Split {
        Split {
            reasoning: reasoning.into(),
            content: content.into(),
        }
    }

    #[test]
    fn a_leading_block_is_thinking_however_the_output_is_cut() {
        let cases = [
            // Qwen3: the model opens the block.
            (
                "<think>\nLet me see: 2 + 2.\n</think>\n\nIt is 4.",
                false,
                split("Let me see: 2 + 2.\n", "It is 4."),
            ),
            // DeepSeek-R1: the prompt opened it.
            ("Okay, 4.\n</think>\n\n4", true, split("Okay, 4.\n", "4")),
            // No block: all answer, whitespace kept inside.
            (
                "Hello <think> there",
                false,
                split("", "Hello <think> there"),
            ),
            // Only a block at the start counts.
            (
                "Sure. <think>x</think> y",
                false,
                split("", "Sure. <think>x</think> y"),
            ),
            // Cut off while thinking: all thinking.
            (
                "<think>still going </thi",
                false,
                split("still going </thi", ""),
            ),
            // Qwen3 with thinking off: an empty block.
            ("<think>\n\n</think>\n\nHi!", false, split("", "Hi!")),
            // A tag-like start that is not the tag.
            ("<thinking about it", false, split("", "<thinking about it")),
            ("  ", false, split("", "  ")),
            ("héllo</think>wörld", true, split("héllo", "wörld")),
        ];
        for (out, inside, want) in cases {
            assert_eq!(split_reasoning(out, inside), want, "{out:?}");
            assert_eq!(by_chars(out, inside), want, "{out:?} by characters");
        }
    }

    #[test]
    fn prompts_that_leave_a_block_open() {
        assert!(prompt_opens_block("<|Assistant|><think>\n"));
        assert!(!prompt_opens_block("<|im_start|>assistant\n"));
        // Qwen3 with enable_thinking false writes an empty closed block into the prompt.
        assert!(!prompt_opens_block(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        // A user's message about the tag opens nothing.
        assert!(!prompt_opens_block(
            "What does <think> do?<|im_end|>\n<|im_start|>assistant\n"
        ));
    }
}
