//! Text in and out: tokenizers ([`tokenizer`]) and the bytes of a token ([`token_bytes`]), chat templates ([`template`]), a chat's
//! prompt ids with control tokens only where the template wrote them ([`chat_prompt`]), the
//! incremental detokenizer with stop strings ([`stream`]), tool calls read from output
//! ([`tool_calls`]) with the incremental JSON scanner that streams their arguments
//! ([`json_scan`]), the grammar that makes a model write one ([`tool_grammar`]), and a
//! reasoning model's thinking split from its answer ([`reasoning`]).

pub mod chat_prompt;
pub mod json_scan;
pub mod reasoning;
pub mod stream;
pub mod template;
pub mod token_bytes;
pub mod tokenizer;
pub mod tool_calls;
pub mod tool_grammar;
