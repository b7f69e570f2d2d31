//! A varlen batch: tokens of several sequences, each at its own positions, flattened into one
//! list, and which rows each chunk wants back (logits, or final hidden states for embeddings).
//! What the engine builds and every runtime reads.

use crate::lora::SharedLora;
use camelid_kernels::attention::SeqSpan;

/// Which rows a chunk wants back (as logits, or as hidden states: [`SeqChunk::hidden`]).
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
    /// The wanted rows come back as final hidden states (after the last norm, before the LM
    /// head: what embeddings pool) instead of logits.
    pub hidden: bool,
    /// The LoRA adapter the chunk's sequence runs under (`None`: the base model).
    pub lora: Option<SharedLora>,
}

/// How an embedding request's final hidden states (after the last norm) make one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last prompt token's (what decoder embedding models such as Qwen3-Embedding or
    /// e5-mistral are trained for, and vLLM's default for a causal LM).
    Last,
    /// The mean over every prompt token (the BOS token too, as llama.cpp pools).
    Mean,
}

impl Pooling {
    /// GGUF's `<arch>.pooling_type` (llama.cpp's enum: 1 mean, 3 last; 0 none). CLS (2)
    /// and rank (4) are poolings camelid does not compute: `Err` names them.
    pub fn from_gguf(v: u32) -> Result<Option<Self>, String> {
        match v {
            1 => Ok(Some(Pooling::Mean)),
            3 => Ok(Some(Pooling::Last)),
            2 => Err("CLS (the first token's state; GGUF pooling_type 2)".into()),
            4 => Err("rank (a reranker's score; GGUF pooling_type 4)".into()),
            _ => Ok(None),
        }
    }

    /// sentence-transformers' `1_Pooling/config.json`: one of `pooling_mode_lasttoken` and
    /// `pooling_mode_mean_tokens`, or none. Any other mode (CLS, max, weighted mean, mean
    /// over √length), or several (whose vectors sentence-transformers joins): `Err` names
    /// them.
    pub fn from_sentence_transformers(cfg: &serde_json::Value) -> Result<Option<Self>, String> {
        let modes: Vec<&str> = cfg
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
            .collect();
        match modes[..] {
            [] => Ok(None),
            ["pooling_mode_lasttoken"] => Ok(Some(Pooling::Last)),
            ["pooling_mode_mean_tokens"] => Ok(Some(Pooling::Mean)),
            _ => Err(format!("sentence-transformers' {}", modes.join(" + "))),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "last" => Some(Pooling::Last),
            "mean" => Some(Pooling::Mean),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Pooling::Last => "last",
            Pooling::Mean => "mean",
        }
    }
}

/// What of an embedding model's files camelid does not compute, so that its vectors would
/// not be the model's: `/v1/embeddings` refuses them, naming this, rather than answer
/// others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddingGaps {
    /// A pooling the files name that camelid does not have (a server's `--pooling` chooses
    /// one instead).
    pub pooling: Option<String>,
    /// sentence-transformers modules after the pooling (`modules.json`): a `Dense`
    /// projection (which changes the vector's width too), a custom module.
    pub modules: Vec<String>,
}

impl EmbeddingGaps {
    /// sentence-transformers' `modules.json`: every module but the transformer, its pooling
    /// and the normalisation (camelid normalises every vector).
    pub fn modules_of(modules: &serde_json::Value) -> Vec<String> {
        const COMPUTED: [&str; 3] = ["Transformer", "Pooling", "Normalize"];
        modules
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or("?");
                let short = kind.rsplit('.').next().unwrap_or(kind);
                let computed =
                    kind.starts_with("sentence_transformers.models.") && COMPUTED.contains(&short);
                let path = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
                (!computed).then(|| format!("{path} ({kind})"))
            })
            .collect()
    }
}

/// What a forward returns: the logit rows, then the hidden-state rows, each in chunk order.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// f32 `(batch.logit_rows(), vocab)`.
    pub logits: candle_core::Tensor,
    /// f32 `(batch.hidden_rows(), hidden_size)`; `None` when no chunk wants hidden states.
    pub hidden: Option<candle_core::Tensor>,
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
            hidden: false,
            lora: None,
        });
    }

    /// Runs the last chunk pushed under the adapter `lora` (`None`: the base model).
    pub fn adapt_last(&mut self, lora: Option<SharedLora>) {
        self.chunks.last_mut().expect("a chunk was pushed").lora = lora;
    }

    /// [`Self::push_with_prompt`] for a chunk whose wanted rows come back as hidden states.
    pub fn push_hidden(
        &mut self,
        seq: u64,
        start_pos: usize,
        tokens: &[u32],
        rows: LogitsWanted,
        prompt_len: usize,
    ) {
        self.push_with_prompt(seq, start_pos, tokens, rows, prompt_len);
        self.chunks.last_mut().expect("just pushed").hidden = true;
    }

    /// Batch rows whose logits are wanted, in chunk order.
    pub fn logit_row_indices(&self) -> Vec<usize> {
        self.row_indices(false)
    }

    /// Batch rows whose hidden states are wanted, in chunk order.
    pub fn hidden_row_indices(&self) -> Vec<usize> {
        self.row_indices(true)
    }

    fn row_indices(&self, hidden: bool) -> Vec<usize> {
        let mut rows = vec![];
        let mut off = 0;
        for c in &self.chunks {
            if c.hidden == hidden {
                match c.logits {
                    LogitsWanted::None => {}
                    LogitsWanted::Last => rows.push(off + c.len - 1),
                    LogitsWanted::All => rows.extend(off..off + c.len),
                }
            }
            off += c.len;
        }
        rows
    }

    /// Number of logit rows `Llama::forward` returns for this batch.
    pub fn logit_rows(&self) -> usize {
        self.rows(false)
    }

    /// Number of hidden-state rows `Llama::forward_output` returns for this batch.
    pub fn hidden_rows(&self) -> usize {
        self.rows(true)
    }

    fn rows(&self, hidden: bool) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.hidden == hidden)
            .map(|c| c.rows())
            .sum()
    }
}

impl SeqChunk {
    /// Rows this chunk gets back.
    pub fn rows(&self) -> usize {
        match self.logits {
            LogitsWanted::None => 0,
            LogitsWanted::Last => 1,
            LogitsWanted::All => self.len,
        }
    }

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
