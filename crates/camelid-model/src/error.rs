//! One error type for the model crate: every failure names the file or field at fault.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad model config: {0}")]
    BadConfig(String),
    #[error("bad weights: {0}")]
    BadWeights(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A rendered prompt longer than any the context holds (refused while rendering).
    #[error("{0}")]
    TooLong(String),
    #[error("{0}")]
    Io(String),
    /// A model larger than the memory left (the loader refuses it before reading it).
    #[error("not enough memory: {0}")]
    Memory(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request's own grammar could not go on (a limit of the matcher reached, or no
    /// token it allows): the client's to fix, not the server's.
    #[error("grammar: {0}")]
    Grammar(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Error::Io(format!("{}: {e}", path.display()))
    }
}
