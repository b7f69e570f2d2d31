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

/// Held by the tests that set environment variables: clap reads every `env` of a command as
/// it builds it, so one test's variables would leak into another's parse.
#[cfg(test)]
pub(crate) static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
