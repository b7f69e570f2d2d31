//! `camelid arena`: Chatbot Arena leaderboards from battle logs, the arena store's FastChat
//! export and import, and the arena flags `serve` takes.

use anyhow::{Context, Result};
use camelid_server::arena::{pairs, Arena, ArenaConfig, RateLimits};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum ArenaCommand {
    /// A leaderboard from battles: Bradley–Terry ratings (the Arena leaderboard's) with 95 %
    /// bootstrap intervals, FastChat's online Elo, battle counts and score rates.
    Ratings(ArenaRatingsArgs),
    /// Writes the store's votes as FastChat battles (a JSON array, `clean_battle_data`'s
    /// fields), which `arena ratings` and FastChat's `elo_analysis` read.
    Export(ArenaExportArgs),
    /// Loads FastChat battles (a JSON array or lines; a torn last line is skipped) into the
    /// store as votes; battles already there (same `question_id`) are left as they are.
    Import(ArenaImportArgs),
}

#[derive(Args)]
pub struct ArenaRatingsArgs {
    /// Battles: FastChat's `clean_battle` JSON (array or lines of `model_a`, `model_b`,
    /// `winner`: model_a, model_b, tie, "tie (bothbad)"; those with `"anony": false` are left
    /// out, as FastChat's leaderboard leaves them), or `mtbench judge` pairwise judgments (one
    /// battle per swapped pair of games). Repeatable.
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

#[derive(Args)]
pub struct ArenaExportArgs {
    /// The store: `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`.
    #[arg(long, env = "CAMELID_ARENA_DB")]
    arena_db: String,
    /// Where to write (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ArenaImportArgs {
    /// The store: `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`.
    #[arg(long, env = "CAMELID_ARENA_DB")]
    arena_db: String,
    /// FastChat battle files (an old `--arena-log` too). Repeatable.
    #[arg(long = "battles", required = true)]
    battles: Vec<PathBuf>,
}

/// `camelid serve`'s arena flags.
#[derive(Args)]
pub struct ArenaServeArgs {
    /// The arena's store of record: `sqlite:PATH` (created if missing) or
    /// `postgres://USER@HOST:PORT/DATABASE` (several servers behind a load balancer share
    /// it). Default: kept in memory, lost at exit.
    #[arg(long, env = "CAMELID_ARENA_DB")]
    arena_db: Option<String>,
    /// Seconds an arena battle stays open after its start or last turn.
    #[arg(long, default_value_t = 3600)]
    arena_battle_ttl: u64,
    /// Arena turns (new battles and follow-ups) one visitor may start a minute (0: no limit).
    #[arg(long, default_value_t = 20)]
    arena_visitor_turns_per_minute: u32,
    /// Arena turns one client address may start a minute (0: no limit).
    #[arg(long, default_value_t = 60)]
    arena_address_turns_per_minute: u32,
    /// Arena votes one visitor may cast a minute (0: no limit).
    #[arg(long, default_value_t = 20)]
    arena_visitor_votes_per_minute: u32,
    /// Arena votes one client address may cast a minute (0: no limit).
    #[arg(long, default_value_t = 60)]
    arena_address_votes_per_minute: u32,
    /// A model's sampling weight in arena pairs, `NAME=W` (repeatable): as FastChat, the first
    /// model is drawn by weight, its rival by weight among the others. Unnamed models weigh
    /// 1 (every pair alike); 0 leaves a model out.
    #[arg(long = "arena-weight", value_parser = pairs::parse_weight)]
    arena_weights: Vec<(String, f64)>,
    /// Take the client's address (for the per-address limits) from the last
    /// `X-Forwarded-For` entry: set it behind a proxy that adds one.
    #[arg(long)]
    arena_trust_forwarded_for: bool,
    /// Put the arena's routes (battles, votes, leaderboard) behind the API keys like the
    /// OpenAI API; the pages then ask the visitor for a key. Default: open to visitors.
    #[arg(long)]
    arena_private: bool,
    /// Gone: votes live in the store (`--arena-db`); `camelid arena import` loads an old log.
    #[arg(long, hide = true)]
    arena_log: Option<PathBuf>,
}

impl ArenaServeArgs {
    /// `--arena-private`.
    pub fn private(&self) -> bool {
        self.arena_private
    }

    fn config(&self) -> ArenaConfig {
        ArenaConfig {
            battle_ttl: Duration::from_secs(self.arena_battle_ttl),
            turn_limits: RateLimits {
                per_visitor: self.arena_visitor_turns_per_minute,
                per_address: self.arena_address_turns_per_minute,
            },
            vote_limits: RateLimits {
                per_visitor: self.arena_visitor_votes_per_minute,
                per_address: self.arena_address_votes_per_minute,
            },
            weights: self.arena_weights.iter().cloned().collect(),
            trust_forwarded_for: self.arena_trust_forwarded_for,
            private: self.arena_private,
        }
    }

    /// The arena these flags describe (its store connected, its tables made).
    pub async fn open(&self) -> Result<Arena> {
        if let Some(log) = &self.arena_log {
            anyhow::bail!(
                "--arena-log is gone: arena votes live in the store (--arena-db sqlite:PATH or \
                 postgres://…); load {} with `camelid arena import --arena-db … --battles {}`",
                log.display(),
                log.display()
            );
        }
        match &self.arena_db {
            Some(url) => Ok(Arena::connect(url, self.config())
                .await
                .map_err(anyhow::Error::msg)?),
            None => {
                tracing::warn!(
                    "arena votes are kept in memory and lost at exit; --arena-db sqlite:PATH keeps them"
                );
                Ok(Arena::in_memory(self.config()))
            }
        }
    }
}

pub fn run(c: ArenaCommand) -> Result<()> {
    match c {
        ArenaCommand::Ratings(a) => ratings(a),
        ArenaCommand::Export(a) => store_runtime()?.block_on(export(a)),
        ArenaCommand::Import(a) => store_runtime()?.block_on(import(a)),
    }
}

fn store_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
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

async fn export(a: ArenaExportArgs) -> Result<()> {
    let arena = Arena::connect(&a.arena_db, ArenaConfig::default())
        .await
        .map_err(anyhow::Error::msg)?;
    let battles = arena.export().await.map_err(anyhow::Error::msg)?;
    let text = serde_json::to_string_pretty(&battles)? + "\n";
    match &a.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    eprintln!("{} battles exported", battles.len());
    Ok(())
}

async fn import(a: ArenaImportArgs) -> Result<()> {
    let arena = Arena::connect(&a.arena_db, ArenaConfig::default())
        .await
        .map_err(anyhow::Error::msg)?;
    for p in &a.battles {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let read = camelid_eval::ratings::read_records(&text)
            .with_context(|| format!("in {}", p.display()))?;
        if let Some(line) = read.torn_last_line {
            eprintln!(
                "{}: line {line}, the last, is cut short (a write interrupted?): skipped",
                p.display()
            );
        }
        let added = arena
            .import(&read.records)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("in {}", p.display()))?;
        eprintln!(
            "{}: {added} of {} battles added",
            p.display(),
            read.records.len()
        );
    }
    Ok(())
}
