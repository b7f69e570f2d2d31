//! A varlen batch: tokens of several sequences, each at its own positions, flattened into one
//! list, and which logits each chunk wants back. What the engine builds and every runtime reads.

use camelid_kernels::attention::SeqSpan;

/// Which logits a chunk wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last position only (the next-token distribution).
    Last,
    /// Every position of the chunk (prompt scoring, tests).
    All,
}

/// A run of consecutive tokens of one sequence inside a batch.
#[derive(Debug, Clone)]
pub struct SeqChunk {
    /// The sequence's key in the [`KvStore`].
    pub seq: u64,
    /// Position of the chunk's first token (= tokens of this sequence already cached).
    pub start_pos: usize,
    pub len: usize,
    pub logits: LogitsWanted,
    /// The sequence's first generated position (its prompt's length): the attention kernels
    /// treat prompt and generated positions each their own way, see [`SeqSpan`].
    pub generated_from: usize,
}

/// Tokens of every chunk, concatenated in chunk order.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub tokens: Vec<u32>,
    pub chunks: Vec<SeqChunk>,
}

impl ForwardBatch {
    /// One chunk; a lone token is taken for a decode, a longer chunk for prompt (see
    /// [`Self::push`]).
    pub fn single(seq: u64, start_pos: usize, tokens: &[u32], logits: LogitsWanted) -> Self {
        let mut b = Self::default();
        b.push(seq, start_pos, tokens, logits);
        b
    }

    /// Adds a chunk: a lone token is taken for a decode, a longer chunk for prompt; where
    /// that may be wrong (a one-token prompt piece, generated tokens recomputed), say which
    /// positions are generated with [`Self::push_with_prompt`].
    pub fn push(&mut self, seq: u64, start_pos: usize, tokens: &[u32], logits: LogitsWanted) {
        let prompt_len = if tokens.len() == 1 {
            start_pos
        } else {
            usize::MAX
        };
        self.push_with_prompt(seq, start_pos, tokens, logits, prompt_len);
    }

    /// Adds a chunk of a sequence whose prompt is `prompt_len` tokens: positions from there
    /// on are its generated tokens.
    pub fn push_with_prompt(
        &mut self,
        seq: u64,
        start_pos: usize,
        tokens: &[u32],
        logits: LogitsWanted,
        prompt_len: usize,
    ) {
        self.tokens.extend_from_slice(tokens);
        self.chunks.push(SeqChunk {
            seq,
            start_pos,
            len: tokens.len(),
            logits,
            generated_from: prompt_len,
        });
    }

    /// Batch rows whose logits are wanted, in chunk order.
    pub fn logit_row_indices(&self) -> Vec<usize> {
        let mut rows = Vec::with_capacity(self.logit_rows());
        let mut off = 0;
        for c in &self.chunks {
            match c.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push(off + c.len - 1),
                LogitsWanted::All => rows.extend(off..off + c.len),
            }
            off += c.len;
        }
        rows
    }

    /// Number of logit rows `Llama::forward` returns for this batch.
    pub fn logit_rows(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| match c.logits {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => c.len,
            })
            .sum()
    }
}

impl SeqChunk {
    /// What the attention kernels need of the chunk.
    pub fn span(&self) -> SeqSpan {
        SeqSpan {
            seq: self.seq,
            start_pos: self.start_pos,
            len: self.len,
            generated_from: self.generated_from,
        }
    }
}
