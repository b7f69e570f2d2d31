//! Text in and out: tokenizers ([`tokenizer`]), chat templates ([`template`]), a chat's
//! prompt ids with control tokens only where the template wrote them ([`chat_prompt`]), and
//! the incremental detokenizer with stop strings ([`stream`]).

pub mod chat_prompt;
pub mod stream;
pub mod template;
pub mod tool_calls;
pub mod tokenizer;
