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
    /// `winner`: model_a, model_b, tie, "tie (bothbad)"; `anony`, `tstamp`), or `mtbench
    /// judge` pairwise judgments (one battle per swapped pair of games). Repeatable. As
    /// FastChat's `elo_analysis`: battles with `"anony": false` are left out, and all are
    /// taken in `tstamp` order when every one has a stamp (else in file order).
    #[arg(long = "battles", required = true)]
    battles: Vec<PathBuf>,
    /// Rate the battles whose voters saw the model names (`"anony": false`) too.
    #[arg(long)]
    include_named: bool,
    /// Bradley–Terry convention: `fastchat` (FastChat's `compute_elo_mle_with_tie`:
    /// scikit-learn's default L2 penalty, `llama-13b` anchored at 800 when rated) or `mle`
    /// (the plain maximum-likelihood fit, centred on 1000).
    #[arg(long, value_enum, default_value_t = Convention::Fastchat)]
    bt: Convention,
    /// Style control: the answers' length and Markdown (headers, list items, bold) as
    /// covariates, from FastChat's `conv_metadata` or the battles' conversations; the style
    /// coefficients go to standard error.
    #[arg(long)]
    style_control: bool,
    /// Only the battles of this category: a battle's `category` (a name or a list of names)
    /// or a true flag of FastChat's `category_tag`, named by its path (`math_v0.1.math`).
    #[arg(long)]
    category: Option<String>,
    /// One table of every model's rating (and battles) in each category the battles carry,
    /// beside `full` (all of them).
    #[arg(long, conflicts_with = "category")]
    by_category: bool,
    /// Bootstrap resamples for the intervals (0: none).
    #[arg(long, default_value_t = 100)]
    bootstrap: usize,
    /// Seed of the resampling (numpy's: 42, FastChat's, gives its resamples).
    #[arg(long, default_value_t = camelid_eval::ratings::FASTCHAT_SEED)]
    seed: u32,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    format: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Convention {
    Fastchat,
    Mle,
}

#[derive(Args)]
pub struct ArenaExportArgs {
    /// The store: `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`.
    // The URL may hold a password: --help names the variable, not its value.
    #[arg(long, env = "CAMELID_ARENA_DB", hide_env_values = true)]
    arena_db: String,
    /// Where to write (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ArenaImportArgs {
    /// The store: `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`.
    // The URL may hold a password: --help names the variable, not its value.
    #[arg(long, env = "CAMELID_ARENA_DB", hide_env_values = true)]
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
    // The URL may hold a password: --help names the variable, not its value.
    #[arg(long, env = "CAMELID_ARENA_DB", hide_env_values = true)]
    arena_db: Option<String>,
    /// Refuse to start without --arena-db: where several servers share the arena (replicas
    /// behind a load balancer), one keeping battles in its own memory would answer another's
    /// votes with 404 and lose its own at every restart.
    // Boolish: a deployment file sets it as a variable.
    #[arg(
        long,
        env = "CAMELID_ARENA_DB_REQUIRED",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    arena_db_required: bool,
    /// Seconds to wait at start for an `--arena-db` that cannot be reached yet (refused,
    /// timed out, starting up), trying again meanwhile; 0 gives up at the first failure.
    #[arg(long, env = "CAMELID_ARENA_DB_WAIT", default_value_t = 300)]
    arena_db_wait: u64,
    /// Connections to `--arena-db` this server keeps at most: replicas × this must stay
    /// under the database's `max_connections`.
    #[arg(long, env = "CAMELID_ARENA_DB_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    arena_db_max_connections: u32,
    /// Seconds an arena battle stays open after its start or last turn.
    #[arg(long, default_value_t = 3600)]
    arena_battle_ttl: u64,
    /// Arena turns (new battles and follow-ups) one visitor may start a minute (0: no limit).
    #[arg(long, default_value_t = 20)]
    arena_visitor_turns_per_minute: u32,
    /// Arena turns one client address may start a minute (0: no limit). Behind a load
    /// balancer that adds no `X-Forwarded-For` (SkyServe's) every visitor has its address:
    /// this is then one cap for the whole service.
    #[arg(
        long,
        env = "CAMELID_ARENA_ADDRESS_TURNS_PER_MINUTE",
        default_value_t = 60
    )]
    arena_address_turns_per_minute: u32,
    /// Arena turns one client address may have answered at once on this server (0: no cap):
    /// each holds two generation slots, and one address within its per-minute limits could
    /// otherwise hold them all. Behind a load balancer that adds no `X-Forwarded-For`
    /// (SkyServe's) every visitor has its address: there this caps the whole replica.
    #[arg(
        long,
        env = "CAMELID_ARENA_ADDRESS_TURNS_IN_FLIGHT",
        default_value_t = 4
    )]
    arena_address_turns_in_flight: u32,
    /// Arena votes one visitor may cast a minute (0: no limit).
    #[arg(long, default_value_t = 20)]
    arena_visitor_votes_per_minute: u32,
    /// Arena votes one client address may cast a minute (0: no limit; see
    /// --arena-address-turns-per-minute).
    #[arg(
        long,
        env = "CAMELID_ARENA_ADDRESS_VOTES_PER_MINUTE",
        default_value_t = 60
    )]
    arena_address_votes_per_minute: u32,
    /// Tokens one side of an arena turn may generate: a turn that names no `max_tokens` gets
    /// this many, one that asks for more is refused (400).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    arena_max_tokens: u64,
    /// The least `max_tokens` an arena turn may ask (400 below it; FastChat's slider starts
    /// at 16): an answer cut after a token or two shows where its model's tokenizer splits
    /// words. At most --arena-max-tokens.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    arena_max_tokens_floor: u64,
    /// Turns one arena battle takes (FastChat's limit); a follow-up past them is refused
    /// (400 `battle_turn_limit`), the battle can still be voted on.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    arena_max_turns: u32,
    /// Characters of the visitor's text one arena turn may carry (FastChat's limit); more is
    /// refused (400).
    #[arg(long, default_value_t = 12_000, value_parser = clap::value_parser!(u64).range(1..))]
    arena_max_input_chars: u64,
    /// The lowest temperature an arena turn may ask (400 below it). Above 0, `top_p` below
    /// 0.9, `top_k` and `min_p` are refused as well: a greedy answer can be replayed, and a
    /// visitor who learnt each model's answer to a probe prompt in earlier battles would know
    /// both sides of the next one. 0 allows greedy turns (tests, private arenas).
    #[arg(long, default_value_t = 0.7, value_parser = min_temperature)]
    arena_min_temperature: f32,
    /// A model's sampling weight in arena pairs, `NAME=W` (repeatable): as FastChat, the first
    /// model is drawn by weight, its rival by weight among the others. Unnamed models weigh
    /// 1 (every pair alike); 0 leaves a model out.
    #[arg(long = "arena-weight", value_parser = pairs::parse_weight)]
    arena_weights: Vec<(String, f64)>,
    /// Take the client's address (for the per-address limits) from the last
    /// `X-Forwarded-For` entry: set it only behind a proxy that adds one and that clients
    /// cannot bypass (otherwise they write the header, and any address, themselves).
    // Boolish (true/false, 1/0, yes/no, on/off): a deployment file sets it as a variable, and
    // a misspelt value is refused rather than read as true.
    #[arg(
        long,
        env = "CAMELID_ARENA_TRUST_FORWARDED_FOR",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    arena_trust_forwarded_for: bool,
    /// The proxies whose `X-Forwarded-For` is read, as addresses or networks
    /// (`10.0.0.0/8,192.0.2.7`): a request from any other peer counts as that peer whatever
    /// the header says, and the proxies' own entries are passed over (the client is the last
    /// entry that is not one of them). Implies --arena-trust-forwarded-for. Give it where the
    /// servers can also be reached without the proxy.
    #[arg(
        long = "arena-trusted-proxies",
        env = "CAMELID_ARENA_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = trusted_proxy
    )]
    arena_trusted_proxies: Vec<ipnet::IpNet>,
    /// Put the arena's routes (battles, votes, leaderboard) behind the API keys like the
    /// OpenAI API; the pages then ask the visitor for a key. Default: open to visitors.
    #[arg(long)]
    arena_private: bool,
    /// Gone: votes live in the store (`--arena-db`); `camelid arena import` loads an old log.
    #[arg(long, hide = true)]
    arena_log: Option<PathBuf>,
}

/// `--arena-trusted-proxies`: a network, or one address (its own network).
fn trusted_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is neither an address nor a network (10.0.0.0/8)"))
}

/// `--arena-min-temperature`: a temperature a turn may ask, 0 to 2.
fn min_temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if (0.0..=2.0).contains(&t) => Ok(t),
        _ => Err(format!("`{s}` is not a temperature from 0 to 2")),
    }
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
            trust_forwarded_for: self.arena_trust_forwarded_for
                || !self.arena_trusted_proxies.is_empty(),
            trusted_proxies: self.arena_trusted_proxies.clone(),
            private: self.arena_private,
            max_tokens: self.arena_max_tokens,
            max_tokens_floor: self.arena_max_tokens_floor.min(self.arena_max_tokens),
            db_max_connections: self.arena_db_max_connections,
            min_temperature: self.arena_min_temperature,
            max_turns: self.arena_max_turns,
            max_input_chars: usize::try_from(self.arena_max_input_chars).unwrap_or(usize::MAX),
            turns_in_flight_per_address: self.arena_address_turns_in_flight,
            ..Default::default()
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
            Some(url) => Ok(Arena::connect_waiting(
                url,
                self.config(),
                std::time::Duration::from_secs(self.arena_db_wait),
            )
            .await
            .map_err(anyhow::Error::msg)?),
            None if self.arena_db_required => anyhow::bail!(
                "--arena-db-required (CAMELID_ARENA_DB_REQUIRED): give the arena's store, \
                 --arena-db postgres://USER:PASSWORD@HOST:PORT/DB (CAMELID_ARENA_DB) shared by \
                 every replica; in memory each would keep its own battles and lose them"
            ),
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
    use camelid_eval::{category, ratings};
    let mut records = vec![];
    let mut judges = std::collections::BTreeSet::new();
    let mut texts = vec![];
    for p in &a.battles {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        judges.extend(ratings::judges_of(&text).with_context(|| format!("in {}", p.display()))?);
        records.extend(
            ratings::read_battle_records(&text).with_context(|| format!("in {}", p.display()))?,
        );
        texts.push((p.display().to_string(), text));
    }
    if judges.len() > 1 {
        anyhow::bail!(
            "judgments by {} judge models ({}): rated together, each pair would count once a \
             judge; rate one judge's judgments at a time",
            judges.len(),
            judges.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let texts: Vec<(String, &str)> = texts.iter().map(|(n, t)| (n.clone(), t.as_str())).collect();
    ratings::refuse_repeated_judgments(&texts)?;
    let all = records.len();
    let records = ratings::select_records(records, a.include_named);
    if records.len() < all {
        eprintln!(
            "{} of {all} battles named the models (\"anony\": false): left out (--include-named rates them)",
            all - records.len()
        );
    }
    if records.is_empty() {
        anyhow::bail!("no battles to rate in {:?}", a.battles);
    }
    if matches!(a.bt, Convention::Mle) {
        let battles: Vec<ratings::Battle> = records.iter().map(|r| r.battle.clone()).collect();
        let unbounded = ratings::unbounded_models(&battles);
        if !unbounded.is_empty() {
            eprintln!(
                "{} won or lost every battle: no maximum-likelihood rating of theirs is bounded \
                 by the data (--bt mle's vanishing ridge sets where it stops; the default, \
                 FastChat's penalised fit, bounds them)",
                unbounded.join(", ")
            );
        }
    }
    let opts = ratings::RatingOptions {
        convention: match a.bt {
            Convention::Fastchat => ratings::BtConvention::FastChat,
            Convention::Mle => ratings::BtConvention::Mle,
        },
        rounds: a.bootstrap,
        seed: a.seed,
    };
    if a.by_category {
        let mut tables = vec![];
        for c in category::all_categories(&records) {
            let rows = rate(
                &category::in_category(&records, &c),
                &opts,
                a.style_control,
                &c,
            )?;
            tables.push((c, rows));
        }
        match a.format.as_str() {
            "json" => {
                let by: serde_json::Map<String, serde_json::Value> = tables
                    .iter()
                    .map(|(c, rows)| Ok((c.clone(), serde_json::to_value(rows)?)))
                    .collect::<Result<_>>()?;
                println!("{}", serde_json::to_string_pretty(&by)?)
            }
            "markdown" => print!("{}", category::render_by_category(&tables, true)),
            "text" => print!("{}", category::render_by_category(&tables, false)),
            f => anyhow::bail!("unknown --format {f:?} (text, markdown, json)"),
        }
        return Ok(());
    }
    let (records, label) = match &a.category {
        Some(c) => {
            let picked = category::in_category(&records, c);
            if picked.is_empty() {
                anyhow::bail!(
                    "no battle is in category {c:?}; the battles carry: {}",
                    category::all_categories(&records)[1..].join(", ")
                );
            }
            (picked, c.as_str())
        }
        None => (records, category::FULL),
    };
    let rows = rate(&records, &opts, a.style_control, label)?;
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&rows)?),
        "markdown" => print!("{}", ratings::render_leaderboard(&rows, true)),
        "text" => print!("{}", ratings::render_leaderboard(&rows, false)),
        f => anyhow::bail!("unknown --format {f:?} (text, markdown, json)"),
    }
    Ok(())
}

/// The leaderboard of `records`, style-controlled or plain (the style coefficients of
/// category `label` to standard error).
fn rate(
    records: &[camelid_eval::ratings::BattleRecord],
    opts: &camelid_eval::ratings::RatingOptions,
    style_control: bool,
    label: &str,
) -> Result<Vec<camelid_eval::ratings::Rating>> {
    if style_control {
        let (rows, coefficients) = camelid_eval::style::style_controlled(records, opts)?;
        for (e, c) in camelid_eval::style::ELEMENTS.iter().zip(coefficients) {
            eprintln!("{label}: style coefficient {e}: {c:+.4} (log-odds per standard deviation)");
        }
        Ok(rows)
    } else {
        let battles: Vec<_> = records.iter().map(|r| r.battle.clone()).collect();
        Ok(camelid_eval::ratings::leaderboard_with(&battles, opts))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        arena: ArenaServeArgs,
    }

    /// The arena's proxy and per-address settings from the environment, as a deployment file
    /// (deploy/skypilot) gives them.
    #[test]
    fn forwarded_for_and_address_limits_come_from_the_environment() {
        let _env = super::super::ENV_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let vars = [
            "CAMELID_ARENA_TRUST_FORWARDED_FOR",
            "CAMELID_ARENA_TRUSTED_PROXIES",
            "CAMELID_ARENA_ADDRESS_TURNS_PER_MINUTE",
            "CAMELID_ARENA_ADDRESS_VOTES_PER_MINUTE",
        ];
        let parse = |env: &[(&str, &str)]| {
            for (k, v) in env {
                std::env::set_var(k, v);
            }
            let r = Serve::try_parse_from(["serve"]).map(|s| s.arena.config());
            for k in vars {
                std::env::remove_var(k);
            }
            r
        };
        let c = parse(&[]).unwrap();
        assert!(!c.trust_forwarded_for);
        assert_eq!(
            (c.turn_limits.per_address, c.vote_limits.per_address),
            (60, 60)
        );
        let c = parse(&[
            ("CAMELID_ARENA_TRUST_FORWARDED_FOR", "true"),
            ("CAMELID_ARENA_ADDRESS_TURNS_PER_MINUTE", "480"),
            ("CAMELID_ARENA_ADDRESS_VOTES_PER_MINUTE", "240"),
        ])
        .unwrap();
        assert!(c.trust_forwarded_for);
        assert_eq!(
            (c.turn_limits.per_address, c.vote_limits.per_address),
            (480, 240)
        );
        for yes in ["1", "yes", "on"] {
            assert!(
                parse(&[("CAMELID_ARENA_TRUST_FORWARDED_FOR", yes)])
                    .unwrap()
                    .trust_forwarded_for
            );
        }
        for no in ["false", "0", "no", "off"] {
            assert!(
                !parse(&[("CAMELID_ARENA_TRUST_FORWARDED_FOR", no)])
                    .unwrap()
                    .trust_forwarded_for
            );
        }
        // The flag itself, as before.
        let flag = Serve::try_parse_from(["serve", "--arena-trust-forwarded-for"]).unwrap();
        assert!(flag.arena.config().trust_forwarded_for);
        // A misspelt value is an error, not a quiet "true".
        assert!(parse(&[("CAMELID_ARENA_TRUST_FORWARDED_FOR", "ture")]).is_err());
        // Trusted proxies, as networks or addresses, imply reading the header.
        let c = parse(&[(
            "CAMELID_ARENA_TRUSTED_PROXIES",
            "10.0.0.0/8, 192.0.2.7,2001:db8::/32",
        )])
        .unwrap();
        assert!(c.trust_forwarded_for);
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(parse(&[("CAMELID_ARENA_TRUSTED_PROXIES", "10.0.0.0/33")]).is_err());
        assert!(parse(&[]).unwrap().trusted_proxies.is_empty());
    }

    /// With the store required (deploy/skypilot/serve.yaml's replicas), a server without one
    /// refuses to start rather than keep its battles in memory; with one, or not required,
    /// it opens the arena.
    #[test]
    fn a_required_store_is_not_replaced_by_memory() {
        let _env = super::super::ENV_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", dir.path().join("arena.db").display());
        let opens = |env: &[(&str, &str)]| {
            for (k, v) in env {
                std::env::set_var(k, v);
            }
            let args = Serve::try_parse_from(["serve"]);
            for k in ["CAMELID_ARENA_DB_REQUIRED", "CAMELID_ARENA_DB"] {
                std::env::remove_var(k);
            }
            let args = args.unwrap();
            super::store_runtime()
                .unwrap()
                .block_on(args.arena.open())
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let err = opens(&[("CAMELID_ARENA_DB_REQUIRED", "1")]).unwrap_err();
        assert!(err.contains("--arena-db"), "{err}");
        opens(&[
            ("CAMELID_ARENA_DB_REQUIRED", "1"),
            ("CAMELID_ARENA_DB", &db),
        ])
        .unwrap();
        opens(&[("CAMELID_ARENA_DB_REQUIRED", "false")]).unwrap();
        opens(&[]).unwrap();
    }
}
