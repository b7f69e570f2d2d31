//! The subcommands: one module each, holding its clap arguments and its `run`.

pub mod arena;
pub mod bench;
pub mod chat;
pub mod convert;
pub mod generate;
pub mod model_args;
pub mod mtbench;
pub mod score;
pub mod serve;
