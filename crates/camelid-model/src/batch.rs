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
}

/// Tokens of every chunk, concatenated in chunk order.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub tokens: Vec<u32>,
    pub chunks: Vec<SeqChunk>,
}

impl ForwardBatch {
    pub fn single(seq: u64, start_pos: usize, tokens: &[u32], logits: LogitsWanted) -> Self {
        Self {
            tokens: tokens.to_vec(),
            chunks: vec![SeqChunk {
                seq,
                start_pos,
                len: tokens.len(),
                logits,
            }],
        }
    }

    pub fn push(&mut self, seq: u64, start_pos: usize, tokens: &[u32], logits: LogitsWanted) {
        self.tokens.extend_from_slice(tokens);
        self.chunks.push(SeqChunk {
            seq,
            start_pos,
            len: tokens.len(),
            logits,
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
        }
    }
}
