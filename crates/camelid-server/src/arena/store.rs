//! The arena's tables in SQLite or PostgreSQL, through one sqlx `Any` pool. The SQL is the
//! subset both speak: `$n` parameters, BIGINT 0/1 for booleans (sqlx's `Any` reads no SQLite
//! BOOLEAN), DOUBLE PRECISION unix seconds, JSON as TEXT. Every write is one statement, so
//! each is atomic and committed when it returns (no transaction spans a request); on
//! PostgreSQL the rate-limit check takes advisory locks first (see `admit`).
//!
//! - `arena_battles` — open battles: the drawn models, both conversations, the owner
//!   (SHA-256 of the visitor's token), the turn count, when it expires.
//! - `arena_votes` — the votes, one per battle (the primary key), each carrying its battle's
//!   conversations: the battle row is swept after it expires, the vote stays.
//! - `arena_requests` — recent turns and votes by visitor and address, for the rate limits.
//! - `arena_answering` — battles whose follow-up turn is being answered now (until when at
//!   the latest): no vote lands on a turn the visitor is still reading, on any server.
//! - `arena_named` — open battles with a turn that was shown in part and not stored (stopped,
//!   failed) whose shown text named a model, or whose turn's `arena_answering` mark ran out
//!   without the turn ending (what it showed is unknown): their vote is not anonymous.
//!
//! The schema is made and changed by migrations (`migrations/*.sql`, recorded in
//! `arena_schema_migrations`); a server refuses a database a newer camelid migrated.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The schema's migrations, in order: each file is applied once, in a transaction, and
/// recorded (version and checksum) in [`MIGRATIONS_TABLE`]. Applied files must never change
/// (their checksum is checked at every start); a schema change is a new file here.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "arena tables",
    include_str!("../../migrations/0001_arena_tables.sql"),
)];

/// Where the applied migrations are recorded: a name of the arena's own, not sqlx's
/// default, so a database shared with another sqlx application keeps the two apart.
const MIGRATIONS_TABLE: &str = "arena_schema_migrations";

/// Applies the migrations the database lacks, in one transaction. On PostgreSQL that
/// transaction first takes an advisory lock of the arena's own, so servers starting together
/// take turns; the lock ends with the transaction, which a transaction-mode pooler (PgBouncer)
/// keeps on one server connection (sqlx's own lock is held by the session). A database
/// migrated by a newer camelid (a migration this build does not know) is refused rather than
/// written to; an error that may pass (the database restarting) stays one, for
/// `--arena-db-wait`.
async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::Error> {
    let mut migrator = Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.set_locking(false);
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(7243551)")
            .execute(&mut *tx)
            .await?;
    }
    // Each migration nests in this transaction (a savepoint). `run_direct` is `run` on a
    // connection: `run`'s `Acquire` bound makes the server's futures not `Send` (sqlx's
    // own note on it).
    migrator
        .run_direct(None, &mut *tx, false)
        .await
        .map_err(|e| match e {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => e,
            MigrateError::VersionMissing(v) => sqlx::Error::Configuration(
                format!(
                    "the arena's tables are at schema version {v}, which this camelid does not \
                 know (it knows up to {}): they were made by a newer camelid; run that one",
                    MIGRATIONS.len()
                )
                .into(),
            ),
            MigrateError::VersionMismatch(v) => sqlx::Error::Configuration(
                format!(
                    "migration {v} of the arena's schema is not the one this database applied \
                 (its file was edited: applied migrations must stay as they are)"
                )
                .into(),
            ),
            e => e.into(),
        })?;
    tx.commit().await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

pub(super) struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Set once the tables exist (at connect, or at first use for the in-memory store).
    schema: OnceCell<()>,
}

/// A battle's row.
pub(super) struct BattleRow {
    pub visitor: String,
    pub model_a: String,
    pub model_b: String,
    pub conversation_a: String,
    pub conversation_b: String,
    pub turns: i64,
    pub expires_at: f64,
    /// A vote for it exists.
    pub voted: bool,
}

/// A vote's row, as exported and imported.
pub(super) struct VoteRow {
    pub battle_id: String,
    pub model_a: String,
    pub model_b: String,
    pub winner: String,
    pub anony: bool,
    pub tstamp: f64,
    pub judge: String,
    pub conversation_a: String,
    pub conversation_b: String,
    pub turn: i64,
}

/// What the leaderboard needs of every vote; the conversations (for the style-controlled
/// fit) are read once per vote, see [`Store::vote_conversations`].
pub(super) struct RatedVote {
    pub battle_id: String,
    pub model_a: String,
    pub model_b: String,
    pub winner: String,
    pub anony: bool,
}

/// A connection error that may pass: nothing listening yet, a timeout, a server still
/// starting up or shutting down (PostgreSQL's class 57P0x), rather than a wrong URL or
/// password.
pub fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P0")),
        _ => false,
    }
}

impl Store {
    /// A pool of at most `max_connections` on `url` (`sqlite:PATH`, created if missing, or
    /// `postgres://…`); the tables are created now.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let (backend, url) = parse_url(url)?;
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // FULL: a committed vote survives a power cut, not just a killed process.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let store = Self {
            pool: options.connect(&url).await?,
            backend,
            schema: OnceCell::new(),
        };
        store.ready().await?;
        Ok(store)
    }

    /// The most connections the pool keeps.
    #[cfg(test)]
    pub fn max_connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// A store in this process's memory (one SQLite connection, kept for good: the database
    /// lives as long as it does). The tables are made at first use.
    pub fn in_memory() -> Self {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy("sqlite::memory:")
            .expect("a valid in-memory SQLite URL");
        Self {
            pool,
            backend: Backend::Sqlite,
            schema: OnceCell::new(),
        }
    }

    /// Brings the tables to this build's schema once ([`migrate`]).
    async fn ready(&self) -> Result<&Self, sqlx::Error> {
        self.schema
            .get_or_try_init(|| async {
                if self.backend == Backend::Sqlite {
                    // Persistent in the file: readers do not wait for writers. In-memory
                    // databases answer "memory" and stay so.
                    let mode: String = sqlx::query("PRAGMA journal_mode")
                        .fetch_one(&self.pool)
                        .await?
                        .try_get(0)?;
                    if mode.eq_ignore_ascii_case("delete") {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&self.pool)
                            .await?;
                    }
                }
                migrate(&self.pool, self.backend).await
            })
            .await?;
        Ok(self)
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn insert_battle(
        &self,
        id: &str,
        visitor: &str,
        model_a: &str,
        model_b: &str,
        now: f64,
        expires_at: f64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO arena_battles (id, visitor, model_a, model_b, conversation_a,
                 conversation_b, turns, created_at, expires_at)
             VALUES ($1, $2, $3, $4, '[]', '[]', 0, $5, $6)",
        )
        .bind(id)
        .bind(visitor)
        .bind(model_a)
        .bind(model_b)
        .bind(now)
        .bind(expires_at)
        .execute(self.ready().await?.pool())
        .await?;
        Ok(())
    }

    pub async fn battle(&self, id: &str) -> Result<Option<BattleRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT visitor, model_a, model_b, conversation_a, conversation_b, turns, expires_at,
                 (SELECT COUNT(*) FROM arena_votes v WHERE v.battle_id = b.id) AS votes
             FROM arena_battles b WHERE b.id = $1",
        )
        .bind(id)
        .fetch_optional(self.ready().await?.pool())
        .await?;
        row.map(|r| {
            Ok(BattleRow {
                visitor: r.try_get(0)?,
                model_a: r.try_get(1)?,
                model_b: r.try_get(2)?,
                conversation_a: r.try_get(3)?,
                conversation_b: r.try_get(4)?,
                turns: r.try_get(5)?,
                expires_at: r.try_get(6)?,
                voted: r.try_get::<i64, _>(7)? > 0,
            })
        })
        .transpose()
    }

    /// Battle `id`'s vote, if it has one.
    pub async fn vote(&self, id: &str) -> Result<Option<VoteRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT battle_id, model_a, model_b, winner, anony, tstamp, judge, conversation_a,
                 conversation_b, turn
             FROM arena_votes WHERE battle_id = $1",
        )
        .bind(id)
        .fetch_optional(self.ready().await?.pool())
        .await?;
        row.as_ref().map(vote_row).transpose()
    }

    /// Whether a vote exists for battle `id` (its battle row may be swept already).
    pub async fn voted(&self, id: &str) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("SELECT 1 FROM arena_votes WHERE battle_id = $1")
                .bind(id)
                .fetch_optional(self.ready().await?.pool())
                .await?
                .is_some(),
        )
    }

    /// Stores the conversations after turn `turns + 1` if the battle is still `visitor`'s,
    /// unvoted, at turn `turns` with the conversations `read` (a regenerate may have replaced
    /// the last answers since) and was open at `admitted` (when the turn was let in); false
    /// otherwise. It is then open until `expires_at`. `turn`: `(turns, admitted, expires_at)`.
    pub async fn record_turn(
        &self,
        id: &str,
        visitor: &str,
        turn: (i64, f64, f64),
        conversations: (&str, &str),
        read: &(String, String),
    ) -> Result<bool, sqlx::Error> {
        self.store_turn(id, visitor, turn, conversations, read, 1)
            .await
    }

    /// As [`Self::record_turn`] for turn `turns` answered again (Regenerate): the new
    /// conversations replace `read`, only if those are still stored; the turn count stays.
    pub async fn replace_turn(
        &self,
        id: &str,
        visitor: &str,
        turn: (i64, f64, f64),
        conversations: (&str, &str),
        read: &(String, String),
    ) -> Result<bool, sqlx::Error> {
        self.store_turn(id, visitor, turn, conversations, read, 0)
            .await
    }

    /// The compare-and-set both take: the turn count grows by `added`.
    async fn store_turn(
        &self,
        id: &str,
        visitor: &str,
        (turns, admitted, expires_at): (i64, f64, f64),
        (conversation_a, conversation_b): (&str, &str),
        read: &(String, String),
        added: i64,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE arena_battles
             SET conversation_a = $1, conversation_b = $2, turns = turns + $10, expires_at = $3
             WHERE id = $4 AND visitor = $5 AND turns = $6 AND expires_at > $7
                 AND conversation_a = $8 AND conversation_b = $9
                 AND NOT EXISTS (SELECT 1 FROM arena_votes v WHERE v.battle_id = $4)",
        )
        .bind(conversation_a)
        .bind(conversation_b)
        .bind(expires_at)
        .bind(id)
        .bind(visitor)
        .bind(turns)
        .bind(admitted)
        .bind(&read.0)
        .bind(&read.1)
        .bind(added)
        .execute(self.ready().await?.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks battle `id`'s follow-up turn as being answered until `until`, unless another
    /// turn's mark holds it at `now`; whether this turn has the mark. A mark that ran out
    /// unended (its turn's end was never settled) becomes a named mark first.
    pub async fn claim_answer(&self, id: &str, until: f64, now: f64) -> Result<bool, sqlx::Error> {
        self.name_unsettled(Some(id), now).await?;
        let r = sqlx::query(
            "INSERT INTO arena_answering (battle_id, ends_by) VALUES ($1, $2)
             ON CONFLICT (battle_id) DO UPDATE SET ends_by = excluded.ends_by
             WHERE arena_answering.ends_by <= $3",
        )
        .bind(id)
        .bind(until)
        .bind(now)
        .execute(self.ready().await?.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Keeps battle `id`'s mark (its turn still runs) until `until` at the latest.
    pub async fn begin_answer(&self, id: &str, until: f64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO arena_answering (battle_id, ends_by) VALUES ($1, $2)
             ON CONFLICT (battle_id) DO UPDATE SET ends_by = excluded.ends_by",
        )
        .bind(id)
        .bind(until)
        .execute(self.ready().await?.pool())
        .await?;
        Ok(())
    }

    /// Marks named the battles (`id`, or every one) whose "being answered" mark ran out by
    /// `by` without its turn ending: a server died in the turn, or could not reach the store
    /// to note what the turn showed and end it. What the visitor saw then is unknown, so the
    /// vote is not rated; the expired mark itself is swept or claimed again later.
    async fn name_unsettled(&self, id: Option<&str>, by: f64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO arena_named (battle_id)
             SELECT battle_id FROM arena_answering
             WHERE ends_by <= $1 AND ($2 = '' OR battle_id = $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(by)
        .bind(id.unwrap_or(""))
        .execute(self.ready().await?.pool())
        .await?;
        Ok(())
    }

    /// Battle `id`'s turn is answered (stored, failed or left).
    pub async fn end_answer(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM arena_answering WHERE battle_id = $1")
            .bind(id)
            .execute(self.ready().await?.pool())
            .await?;
        Ok(())
    }

    /// Whether a turn of battle `id` is being answered at `now`.
    pub async fn answering(&self, id: &str, now: f64) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("SELECT 1 FROM arena_answering WHERE battle_id = $1 AND ends_by > $2")
                .bind(id)
                .bind(now)
                .fetch_optional(self.ready().await?.pool())
                .await?
                .is_some(),
        )
    }

    /// Battle `id` showed a model's name in a turn it did not keep.
    pub async fn mark_named(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO arena_named (battle_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(self.ready().await?.pool())
            .await?;
        Ok(())
    }

    /// Casts the vote of battle `id` from its row, if it is `visitor`'s, unexpired, at turn
    /// `turns` (> 0) with the conversations `read` (what `anony` was judged on) and not
    /// answering a turn; false otherwise, or if it has a vote already. It is anonymous if
    /// `anony`, the battle is not marked named and no turn's mark ran out unended (its turn
    /// may have shown a name no server could note); read in the same statement, so a mark
    /// made while this runs is not missed.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_vote(
        &self,
        id: &str,
        visitor: &str,
        (turns, read): (i64, (&str, &str)),
        winner: &str,
        anony: bool,
        judge: &str,
        now: f64,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO arena_votes (battle_id, model_a, model_b, winner, anony, tstamp, judge,
                 conversation_a, conversation_b, turn)
             SELECT id, model_a, model_b, $1,
                 CASE WHEN EXISTS (SELECT 1 FROM arena_named m WHERE m.battle_id = $4)
                           OR EXISTS (SELECT 1 FROM arena_answering n WHERE n.battle_id = $4)
                      THEN CAST(0 AS BIGINT) ELSE $2 END,
                 $3, $7, conversation_a, conversation_b, turns
             FROM arena_battles
             WHERE id = $4 AND visitor = $5 AND turns = $6 AND turns > 0 AND expires_at > $3
                 AND conversation_a = $8 AND conversation_b = $9
                 AND NOT EXISTS (SELECT 1 FROM arena_answering n
                                 WHERE n.battle_id = $4 AND n.ends_by > $3)
             ON CONFLICT (battle_id) DO NOTHING",
        )
        .bind(winner)
        .bind(anony as i64)
        .bind(now)
        .bind(id)
        .bind(visitor)
        .bind(turns)
        .bind(judge)
        .bind(read.0)
        .bind(read.1)
        .execute(self.ready().await?.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Logs one request of `kind` unless `visitor` or `address` made `per_visitor` or
    /// `per_address` of them since `since`; false when refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        &self,
        kind: &str,
        visitor: &str,
        address: &str,
        now: f64,
        since: f64,
        per_visitor: i64,
        per_address: i64,
    ) -> Result<bool, sqlx::Error> {
        let pool = self.ready().await?.pool();
        // PostgreSQL runs concurrent statements on snapshots (READ COMMITTED): a burst of
        // requests would each count the rows before any of them is inserted, and all pass
        // (40 votes at once against a limit of 5 let 11 in). Each takes the locks of its
        // address and its visitor first (always in that order: no deadlock), held to its
        // commit. SQLite runs one write at a time already.
        let mut tx = pool.begin().await?;
        if self.backend == Backend::Postgres {
            for key in [format!("a:{kind}:{address}"), format!("v:{kind}:{visitor}")] {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))::TEXT")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let r = sqlx::query(
            "INSERT INTO arena_requests (kind, visitor, address, at)
             SELECT $1, $2, $3, $4
             WHERE (SELECT COUNT(*) FROM arena_requests
                    WHERE kind = $1 AND visitor = $2 AND at > $5) < $6
               AND (SELECT COUNT(*) FROM arena_requests
                    WHERE kind = $1 AND address = $3 AND at > $5) < $7",
        )
        .bind(kind)
        .bind(visitor)
        .bind(address)
        .bind(now)
        .bind(since)
        .bind(per_visitor)
        .bind(per_address)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Forgets requests made before `requests_before` and battles that expired before
    /// `battles_before`; returns the battles removed.
    pub async fn sweep(
        &self,
        requests_before: f64,
        battles_before: f64,
    ) -> Result<u64, sqlx::Error> {
        let pool = self.ready().await?.pool();
        sqlx::query("DELETE FROM arena_requests WHERE at < $1")
            .bind(requests_before)
            .execute(pool)
            .await?;
        // Expired marks go, their turns' battles marked named first (`name_unsettled`).
        self.name_unsettled(None, requests_before).await?;
        sqlx::query("DELETE FROM arena_answering WHERE ends_by <= $1")
            .bind(requests_before)
            .execute(pool)
            .await?;
        let r = sqlx::query("DELETE FROM arena_battles WHERE expires_at < $1")
            .bind(battles_before)
            .execute(pool)
            .await?;
        sqlx::query(
            "DELETE FROM arena_named
             WHERE NOT EXISTS (SELECT 1 FROM arena_battles b WHERE b.id = arena_named.battle_id)",
        )
        .execute(pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn vote_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM arena_votes")
            .fetch_one(self.ready().await?.pool())
            .await?
            .try_get(0)
    }

    /// Every vote in the order the leaderboard fits them (the same on every server),
    /// without its conversations.
    pub async fn rated_votes(&self) -> Result<Vec<RatedVote>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT battle_id, model_a, model_b, winner, anony
             FROM arena_votes ORDER BY tstamp, battle_id",
        )
        .fetch_all(self.ready().await?.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RatedVote {
                    battle_id: r.try_get(0)?,
                    model_a: r.try_get(1)?,
                    model_b: r.try_get(2)?,
                    winner: r.try_get(3)?,
                    anony: r.try_get::<i64, _>(4)? != 0,
                })
            })
            .collect()
    }

    /// The conversations (a's, b's) of these votes, by battle id; ids with no vote are left
    /// out.
    pub async fn vote_conversations(
        &self,
        ids: &[&str],
    ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        let pool = self.ready().await?.pool();
        let mut out = Vec::with_capacity(ids.len());
        // Bounded lists of parameters (SQLite allows 32 766 a statement).
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT battle_id, conversation_a, conversation_b FROM arena_votes
                 WHERE battle_id IN ({})",
                marks.join(", ")
            );
            // Only `$n` placeholders are formatted in; every id is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(pool).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(out)
    }

    pub async fn votes(&self) -> Result<Vec<VoteRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT battle_id, model_a, model_b, winner, anony, tstamp, judge, conversation_a,
                 conversation_b, turn
             FROM arena_votes ORDER BY tstamp, battle_id",
        )
        .fetch_all(self.ready().await?.pool())
        .await?;
        rows.iter().map(vote_row).collect()
    }

    /// Adds votes whose battle id is not in the store yet; returns how many were added.
    pub async fn import_votes(&self, votes: &[VoteRow]) -> Result<u64, sqlx::Error> {
        let mut tx = self.ready().await?.pool().begin().await?;
        let mut added = 0;
        for v in votes {
            added += sqlx::query(
                "INSERT INTO arena_votes (battle_id, model_a, model_b, winner, anony, tstamp,
                     judge, conversation_a, conversation_b, turn)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (battle_id) DO NOTHING",
            )
            .bind(&v.battle_id)
            .bind(&v.model_a)
            .bind(&v.model_b)
            .bind(&v.winner)
            .bind(v.anony as i64)
            .bind(v.tstamp)
            .bind(&v.judge)
            .bind(&v.conversation_a)
            .bind(&v.conversation_b)
            .bind(v.turn)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }
}

fn vote_row(r: &AnyRow) -> Result<VoteRow, sqlx::Error> {
    Ok(VoteRow {
        battle_id: r.try_get(0)?,
        model_a: r.try_get(1)?,
        model_b: r.try_get(2)?,
        winner: r.try_get(3)?,
        anony: r.try_get::<i64, _>(4)? != 0,
        tstamp: r.try_get(5)?,
        judge: r.try_get(6)?,
        conversation_a: r.try_get(7)?,
        conversation_b: r.try_get(8)?,
        turn: r.try_get(9)?,
    })
}

/// The backend of `--arena-db`, and the URL sqlx gets (a SQLite file is created if missing).
fn parse_url(url: &str) -> Result<(Backend, String), sqlx::Error> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((Backend::Postgres, url.to_string()))
    } else if url.starts_with("sqlite:") {
        let url = if url.contains("mode=") {
            url.to_string()
        } else if url.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        Ok((Backend::Sqlite, url))
    } else {
        Err(sqlx::Error::Configuration(
            format!(
                "{:?} is neither sqlite:PATH nor postgres://USER@HOST:PORT/DATABASE",
                redact_url(url)
            )
            .into(),
        ))
    }
}

/// `url` fit for a message or a log: its password (`USER:PASSWORD@`, or a `password=` query
/// parameter, which sqlx's PostgreSQL driver also reads) replaced by `***`. The store's URL
/// usually carries the database password, and errors end up in logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end);
    // The user part ends at the last `@`: a password typed without percent-encoding may hold
    // `/`, `?`, `#` or `@` itself, and hiding too much beats showing some of it.
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) => {
            let user = match rest[..at].split_once(':') {
                Some((user, _password)) => format!("{user}:***@"),
                None => format!("{}@", &rest[..at]),
            };
            (user, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{userinfo}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool on the SQLite file `path`, created if missing, with no migrations run.
    async fn raw_pool(path: &std::path::Path) -> AnyPool {
        sqlx::any::install_default_drivers();
        AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!("sqlite:{}?mode=rwc", path.display()))
            .await
            .unwrap()
    }

    async fn count(pool: &AnyPool, sql: &str) -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    }

    /// A database made before migrations were recorded (the tables, a vote in them) is
    /// taken as it is: its vote stays and the first migration is recorded as applied; a
    /// restart applies nothing again.
    #[tokio::test]
    async fn a_database_from_before_migrations_keeps_its_votes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arena.db");
        let pool = raw_pool(&path).await;
        sqlx::raw_sql(MIGRATIONS[0].2).execute(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO arena_votes VALUES ('b1', 'x', 'y', 'tie', 1, 1.0, 'j', '[]', '[]', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let url = format!("sqlite:{}", path.display());
        for _ in 0..2 {
            let store = Store::connect(&url, 1).await.unwrap();
            assert_eq!(
                count(&store.pool, "SELECT COUNT(*) FROM arena_votes").await,
                1
            );
            let versions = format!("SELECT COUNT(*) FROM {MIGRATIONS_TABLE} WHERE version = 1");
            assert_eq!(count(&store.pool, &versions).await, 1);
        }
    }

    /// A database a newer camelid migrated (a version this build does not know) is refused
    /// at connect, saying so, and left as it is.
    #[tokio::test]
    async fn a_database_from_a_newer_camelid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arena.db");
        let url = format!("sqlite:{}", path.display());
        drop(Store::connect(&url, 1).await.unwrap());
        let pool = raw_pool(&path).await;
        let future = Migration::new(
            2,
            "a later change".into(),
            MigrationType::Simple,
            "CREATE TABLE arena_later (x TEXT)".into_sql_str(),
            false,
        );
        let first = Migration::new(
            1,
            MIGRATIONS[0].1.into(),
            MigrationType::Simple,
            MIGRATIONS[0].2.into_sql_str(),
            false,
        );
        let mut newer = Migrator::with_migrations(vec![first, future]);
        newer.dangerous_set_table_name(MIGRATIONS_TABLE);
        newer.run(&pool).await.unwrap();
        pool.close().await;
        let Err(e) = Store::connect(&url, 1).await else {
            panic!("a newer schema was taken");
        };
        let e = e.to_string();
        assert!(
            e.contains("schema version 2") && e.contains("newer camelid"),
            "{e}"
        );
    }

    /// A database whose migration 1 is not this build's (its file edited since) is refused,
    /// saying so.
    #[tokio::test]
    async fn an_edited_migration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arena.db");
        let pool = raw_pool(&path).await;
        let other = Migration::new(
            1,
            MIGRATIONS[0].1.into(),
            MigrationType::Simple,
            "CREATE TABLE arena_other (x TEXT)".into_sql_str(),
            false,
        );
        let mut edited = Migrator::with_migrations(vec![other]);
        edited.dangerous_set_table_name(MIGRATIONS_TABLE);
        edited.run(&pool).await.unwrap();
        pool.close().await;
        let Err(e) = Store::connect(&format!("sqlite:{}", path.display()), 1).await else {
            panic!("an edited migration was taken");
        };
        assert!(e.to_string().contains("was edited"), "{e}");
    }

    #[test]
    fn passwords_are_redacted_from_store_urls() {
        for (url, shown) in [
            (
                "postgres://camelid:s3cret@db.example.com:5432/arena",
                "postgres://camelid:***@db.example.com:5432/arena",
            ),
            (
                "postgresql://camelid:p%40ss:w@rd@db:5432/arena?sslmode=require",
                "postgresql://camelid:***@db:5432/arena?sslmode=require",
            ),
            (
                "postgres://camelid@db/arena?sslmode=require&password=s3cret#x",
                "postgres://camelid@db/arena?sslmode=require&password=***#x",
            ),
            ("postgres://camelid:s3cret@db", "postgres://camelid:***@db"),
            // A password not percent-encoded: hidden whole, whatever it holds.
            (
                "postgres://camelid:s/3?c#r@et@db:5432/arena",
                "postgres://camelid:***@db:5432/arena",
            ),
            // Nothing to hide: as given.
            (
                "postgres://camelid@db:5432/arena",
                "postgres://camelid@db:5432/arena",
            ),
            ("sqlite:arena.db", "sqlite:arena.db"),
            (
                "sqlite:/var/lib/camelid/arena.db?mode=rwc",
                "sqlite:/var/lib/camelid/arena.db?mode=rwc",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    /// A URL that is not a store's still has its password hidden in the error.
    #[test]
    fn an_unknown_scheme_is_refused_without_the_password() {
        let e = super::parse_url("mysql://camelid:s3cret@db/arena").unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(msg.contains("mysql://camelid:***@db/arena"), "{msg}");
    }
}
