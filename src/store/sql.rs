//! The SQL record store: SQLite (one file, one replica) or PostgreSQL (every replica), through
//! sqlx with the same statements for both (positional `$N` parameters, `ON CONFLICT` upserts).
//!
//! Every operation is one statement, bounded by `timeout`; a compare-and-swap is one conditional
//! `UPDATE`, so it is atomic on either engine without an explicit transaction. Expired rows read as
//! absent and are deleted by the approvals' sweep (`index_trim`). A probe (`SELECT 1` every
//! second) keeps `/readyz` and `tl_gateway_store_up` current.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, PgPool, Row, SqlSafeStr, SqlitePool};

use super::settings::{redacted, StoreBackend};
use super::{now_ms, StoreError};

/// The schema, oldest first: version, description, SQL (the same for both engines).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "records and their indexes",
    include_str!("migrations/0001_records.sql"),
)];

/// The embedded migrations, as sqlx's migrator reads them.
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect())
        })
    }
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$pool` bound to whichever pool this store has (the statements are the same;
/// the types differ, so the body is compiled once per engine).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Records in a SQL database.
pub struct SqlStore {
    pool: Pool,
    timeout: Duration,
    /// Where it is, without credentials (logs).
    where_: String,
    /// Why it is down, for `/readyz`.
    health: Mutex<Option<String>>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("at", &self.where_)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SqlStore {
    /// Connect, migrate (PostgreSQL: under sqlx's advisory lock) and start the probe.
    pub async fn open(
        backend: &StoreBackend,
        timeout: Duration,
        up: prometheus::IntGauge,
    ) -> Result<Arc<SqlStore>, String> {
        let migrator = Migrator::new(Embedded)
            .await
            .map_err(|e| format!("the embedded migrations: {e}"))?;
        let (pool, where_) = match backend {
            StoreBackend::Memory => return Err("not a SQL store".into()),
            StoreBackend::Sqlite { path } => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // Durable on commit: an approval decided is an approval kept.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                migrator
                    .run(&pool)
                    .await
                    .map_err(|e| format!("{}: migrating: {e}", path.display()))?;
                (Pool::Sqlite(pool), path.display().to_string())
            }
            StoreBackend::Postgres {
                url,
                max_connections,
            } => {
                let where_ = redacted(url);
                let pool = PgPoolOptions::new()
                    .max_connections(*max_connections)
                    .acquire_timeout(timeout)
                    .connect(url)
                    .await
                    .map_err(|e| format!("{where_}: {e}"))?;
                migrator
                    .run(&pool)
                    .await
                    .map_err(|e| format!("{where_}: migrating: {e}"))?;
                (Pool::Postgres(pool), where_)
            }
        };
        up.set(1);
        let store = Arc::new(SqlStore {
            pool,
            timeout,
            where_,
            health: Mutex::default(),
        });
        tokio::spawn(probe(Arc::downgrade(&store), up));
        Ok(store)
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// `Ok` while the probe gets answers.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.health.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// One statement within the timeout, its error mapped.
    async fn run<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.error(error)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    fn error(&self, error: sqlx::Error) -> StoreError {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable(format!("{}: {error}", self.where_))
            }
            other => StoreError::Failed(format!("{}: {other}", self.where_)),
        }
    }

    /// The document at `key`, unless expired.
    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = now_ms() as i64;
        on_pool!(self, pool => self.run(async {
            let row = sqlx::query("SELECT value FROM records WHERE key = $1 AND expires_ms > $2")
                .bind(key)
                .bind(now)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|r| r.get::<String, _>(0)))
        }).await)
    }

    /// The documents at `keys`, in order.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let now = now_ms() as i64;
        let sql = format!(
            "SELECT key, value FROM records WHERE expires_ms > $1 AND key IN ({})",
            placeholders(2, keys.len())
        );
        let found: Vec<(String, String)> = on_pool!(self, pool => self.run(async {
            let mut query = sqlx::query(AssertSqlSafe(sql.clone())).bind(now);
            for key in keys {
                query = query.bind(key);
            }
            let rows = query.fetch_all(pool).await?;
            Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect())
        }).await)?;
        Ok(keys
            .iter()
            .map(|key| found.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            .collect())
    }

    /// Store `value` unless a live document is at `key` (an expired one is replaced).
    pub async fn insert(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms() as i64;
        let expires = now + ttl.as_millis() as i64;
        on_pool!(self, pool => self.run(async {
            let done = sqlx::query(
                "INSERT INTO records (key, value, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms \
                 WHERE records.expires_ms <= $4",
            )
            .bind(key)
            .bind(value)
            .bind(expires)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }).await)
    }

    /// Replace `old` with `new` if `key` holds exactly `old`: one conditional `UPDATE`.
    pub async fn swap(
        &self,
        key: &str,
        old: &str,
        new: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms() as i64;
        let expires = now + ttl.as_millis() as i64;
        on_pool!(self, pool => self.run(async {
            let done = sqlx::query(
                "UPDATE records SET value = $3, expires_ms = $4 \
                 WHERE key = $1 AND value = $2 AND expires_ms > $5",
            )
            .bind(key)
            .bind(old)
            .bind(new)
            .bind(expires)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }).await)
    }

    /// Remove `key` if it holds exactly `value`.
    pub async fn remove(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        on_pool!(self, pool => self.run(async {
            let done = sqlx::query("DELETE FROM records WHERE key = $1 AND value = $2")
                .bind(key)
                .bind(value)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }).await)
    }

    /// Add (or re-score) `member` in `index`.
    pub async fn index_add(&self, index: &str, member: &str, score: u64) -> Result<(), StoreError> {
        on_pool!(self, pool => self.run(async {
            sqlx::query(
                "INSERT INTO record_index (index_name, member, score) VALUES ($1, $2, $3) \
                 ON CONFLICT (index_name, member) DO UPDATE SET score = excluded.score",
            )
            .bind(index)
            .bind(member)
            .bind(score as i64)
            .execute(pool)
            .await?;
            Ok(())
        }).await)
    }

    /// One page of `index`, highest score first, strictly before `before`.
    pub async fn index_page(
        &self,
        index: &str,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let limit = limit as i64;
        on_pool!(self, pool => self.run(async {
            let rows = match before {
                None => {
                    sqlx::query(
                        "SELECT member, score FROM record_index WHERE index_name = $1 \
                         ORDER BY score DESC, member DESC LIMIT $2",
                    )
                    .bind(index)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
                Some((score, member)) => {
                    sqlx::query(
                        "SELECT member, score FROM record_index WHERE index_name = $1 \
                         AND (score < $2 OR (score = $2 AND member < $3)) \
                         ORDER BY score DESC, member DESC LIMIT $4",
                    )
                    .bind(index)
                    .bind(score as i64)
                    .bind(member)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
            };
            Ok(rows
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1).max(0) as u64))
                .collect())
        }).await)
    }

    /// Members of `index` after its newest `keep`, newest first, at most `limit`.
    pub async fn index_beyond(
        &self,
        index: &str,
        keep: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        on_pool!(self, pool => self.run(async {
            let rows = sqlx::query(
                "SELECT member FROM record_index WHERE index_name = $1 \
                 ORDER BY score DESC, member DESC LIMIT $2 OFFSET $3",
            )
            .bind(index)
            .bind(limit as i64)
            .bind(keep as i64)
            .fetch_all(pool)
            .await?;
            Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
        }).await)
    }

    /// Remove members of `index` scored below `score`, and every expired document.
    pub async fn index_trim(&self, index: &str, score: u64) -> Result<(), StoreError> {
        let now = now_ms() as i64;
        on_pool!(self, pool => self.run(async {
            sqlx::query("DELETE FROM record_index WHERE index_name = $1 AND score < $2")
                .bind(index)
                .bind(score as i64)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM records WHERE expires_ms <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            Ok(())
        }).await)
    }

    /// Remove `members` from `index`.
    pub async fn index_remove(&self, index: &str, members: &[String]) -> Result<(), StoreError> {
        let sql = format!(
            "DELETE FROM record_index WHERE index_name = $1 AND member IN ({})",
            placeholders(2, members.len())
        );
        on_pool!(self, pool => self.run(async {
            let mut query = sqlx::query(AssertSqlSafe(sql.clone())).bind(index);
            for member in members {
                query = query.bind(member);
            }
            query.execute(pool).await?;
            Ok(())
        }).await)
    }
}

impl SqlStore {
    /// Tell every replica listening on `channel` that something changed (PostgreSQL `NOTIFY`; a
    /// SQLite file has one replica: nothing to do).
    pub async fn notify(&self, channel: &str) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(()),
            Pool::Postgres(pool) => {
                self.run(async {
                    sqlx::query("SELECT pg_notify($1, '')")
                        .bind(channel)
                        .execute(pool)
                        .await
                        .map(|_| ())
                })
                .await
            }
        }
    }

    /// Notifications on `channel` (PostgreSQL `LISTEN`, reconnected after a failure; one is also
    /// sent after each reconnection, since notifications may have been missed meanwhile). `None`
    /// for SQLite.
    pub fn listen(&self, channel: &str) -> Option<tokio::sync::mpsc::Receiver<()>> {
        let Pool::Postgres(pool) = &self.pool else {
            return None;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let pool = pool.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            loop {
                if let Ok(mut listener) = sqlx::postgres::PgListener::connect_with(&pool).await {
                    if listener.listen(&channel).await.is_ok() {
                        let _ = tx.try_send(());
                        while listener.try_recv().await.ok().flatten().is_some() {
                            if tx.is_closed() {
                                return;
                            }
                            let _ = tx.try_send(());
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(rx)
    }
}

/// `$first, $first+1, …` for `count` parameters (only numbers: never data in the SQL text).
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SELECT 1` every second: keeps `/readyz` and `tl_gateway_store_up` current. Ends with the
/// store.
async fn probe(store: Weak<SqlStore>, up: prometheus::IntGauge) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let answer = on_pool!(store, pool => ping(sqlx::query("SELECT 1").execute(pool)).await);
        let mut state = store.health.lock().unwrap_or_else(PoisonError::into_inner);
        match answer {
            Ok(()) => {
                if state.take().is_some() {
                    tracing::info!(store = %store.where_, "record store available again");
                }
                up.set(1);
            }
            Err(why) => {
                if state.is_none() {
                    tracing::warn!(store = %store.where_, %why, "record store unavailable: approvals cannot be asked for, decided or used until it answers");
                }
                *state = Some(why);
                up.set(0);
            }
        }
    }
}

async fn ping<R>(statement: impl Future<Output = Result<R, sqlx::Error>>) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(2), statement).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
    }
}
