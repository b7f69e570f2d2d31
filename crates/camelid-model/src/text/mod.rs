//! Text in and out: tokenizers ([`tokenizer`]), chat templates ([`template`]), and the
//! incremental detokenizer with stop strings ([`stream`]).

pub mod stream;
pub mod template;
pub mod tokenizer;
