//! `camelid arena`: Chatbot Arena leaderboards from battle logs.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ArenaCommand {
    /// A leaderboard from battles: Bradley–Terry ratings (the Arena leaderboard's) with 95 %
    /// bootstrap intervals, FastChat's online Elo, battle counts and score rates.
    Ratings(ArenaRatingsArgs),
}

#[derive(Args)]
pub struct ArenaRatingsArgs {
    /// Battles: FastChat's `clean_battle` JSON (array or lines of `model_a`, `model_b`,
    /// `winner`: model_a, model_b, tie, "tie (bothbad)"), or `mtbench judge` pairwise
    /// judgments (one battle per swapped pair of games). Repeatable.
    #[arg(long = "battles", required = true)]
    battles: Vec<PathBuf>,
    /// Bootstrap resamples for the intervals (0: none).
    #[arg(long, default_value_t = 100)]
    bootstrap: usize,
    /// Seed of the resampling, for a reproducible table.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    format: String,
}

pub fn run(c: ArenaCommand) -> Result<()> {
    match c {
        ArenaCommand::Ratings(a) => ratings(a),
    }
}

fn ratings(a: ArenaRatingsArgs) -> Result<()> {
    use camelid_eval::ratings;
    let mut battles = vec![];
    for p in &a.battles {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        battles
            .extend(ratings::read_battles(&text).with_context(|| format!("in {}", p.display()))?);
    }
    if battles.is_empty() {
        anyhow::bail!("no battles in {:?}", a.battles);
    }
    let rows = ratings::leaderboard(&battles, a.bootstrap, a.seed);
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        "markdown" => print!("{}", ratings::render_leaderboard(&rows, true)),
        "text" => print!("{}", ratings::render_leaderboard(&rows, false)),
        f => anyhow::bail!("unknown --format {f:?} (text, markdown, json)"),
    }
    Ok(())
}
