//! The record store: where records that must not be lost live — approvals today — behind one
//! small interface, chosen by `store.backend` (docs/architecture.md, "Store and state").
//!
//! Two kinds of shared data are kept apart: **state** ([`crate::state`], memory or Redis) holds
//! counters that may be lost (rate-limit buckets); the **store** holds records:
//!
//! - `memory` (the default without a `store:` section): in this process, lost on restart — said at
//!   start and by `check`;
//! - `sqlite`: one file, for a single replica (the demo uses it);
//! - `postgres`: one database every replica shares.
//!
//! The interface is the one storage back ends of access systems converge on (Teleport's, etcd's):
//! documents with an expiry, read, created if absent, and changed only by an atomic
//! compare-and-swap — one conditional `UPDATE … WHERE key = $1 AND value = $2` in one statement on
//! SQL — plus small ordered indexes read one page at a time. Every state transition of an approval
//! is one such swap, so two racing requests (on one replica or several sharing PostgreSQL) cannot
//! both win. SQL schemas are migrated at start by sqlx's migrator (on PostgreSQL under an advisory
//! lock, so replicas starting together on an empty database do not race).

mod memory;
mod settings;
mod sql;

use std::sync::Arc;
use std::time::Duration;

pub use settings::{RawStore, StoreBackend, StoreSettings};

/// Why the store could not answer (the detail is for logs: clients get a generic message).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No answer within `store.*.timeout`.
    #[error("the record store did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The store cannot be reached.
    #[error("the record store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("the record store failed: {0}")]
    Failed(String),
}

/// Why the store could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("store ({backend}): {message}")]
pub struct OpenError {
    backend: &'static str,
    message: String,
}

/// The store in use; cheap to clone.
#[derive(Clone, Debug)]
pub enum RecordStore {
    /// In this process.
    Memory(Arc<memory::MemoryRecords>),
    /// On SQLite or PostgreSQL.
    Sql(Arc<sql::SqlStore>),
}

/// What a timed-out write did, given what `key` holds now (see `RecordStore::read_back`).
fn settled_after_timeout(
    now: Option<&str>,
    old: Option<&str>,
    new: &str,
    waited: Duration,
) -> Result<bool, StoreError> {
    match now {
        Some(now) if now == new => Ok(true),
        Some(now) if Some(now) != old => Ok(false),
        _ => Err(StoreError::Timeout(waited)),
    }
}

impl RecordStore {
    /// The in-process store.
    pub fn memory() -> RecordStore {
        RecordStore::Memory(Arc::default())
    }

    /// Open the store `settings` name: connect, run the migrations, start the health probe. Must
    /// be called within a tokio runtime.
    pub async fn open(
        settings: &StoreSettings,
        up: prometheus::IntGauge,
    ) -> Result<RecordStore, OpenError> {
        match &settings.backend {
            StoreBackend::Memory => {
                up.set(1);
                Ok(RecordStore::memory())
            }
            backend => sql::SqlStore::open(backend, settings.timeout, up)
                .await
                .map(RecordStore::Sql)
                .map_err(|message| OpenError {
                    backend: backend.name(),
                    message,
                }),
        }
    }

    /// `memory`, `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            RecordStore::Memory(_) => "memory",
            RecordStore::Sql(sql) => sql.backend(),
        }
    }

    /// The document at `key`, if any (and not expired).
    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            RecordStore::Memory(memory) => Ok(memory.get(key)),
            RecordStore::Sql(sql) => sql.get(key).await,
        }
    }

    /// The documents at `keys`, in order (one round trip).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RecordStore::Memory(memory) => Ok(keys.iter().map(|k| memory.get(k)).collect()),
            RecordStore::Sql(sql) => sql.get_many(keys).await,
        }
    }

    /// Store `value` at `key` for `ttl` unless a live document is there; whether it was stored.
    pub async fn insert(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let result = match self {
            RecordStore::Memory(memory) => Ok(memory.insert(key, value, ttl)),
            RecordStore::Sql(sql) => sql.insert(key, value, ttl).await,
        };
        self.read_back(key, None, value, result).await
    }

    /// Replace `old` at `key` with `new` (for `ttl`) if `key` still holds exactly `old`; whether it
    /// did. The one atomic step every state transition is made of.
    pub async fn swap(
        &self,
        key: &str,
        old: &str,
        new: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result = match self {
            RecordStore::Memory(memory) => Ok(memory.swap(key, old, new, ttl)),
            RecordStore::Sql(sql) => sql.swap(key, old, new, ttl).await,
        };
        self.read_back(key, Some(old), new, result).await
    }

    /// A write that timed out may still have been applied (the statement reached the server; its
    /// answer did not come back in time): read the key back, so a caller never reports a failure
    /// for a change that was made (and, say, leaves it unrecorded). Holding `new`: it was made;
    /// holding something else than `old`: it was not, someone else's change is there; holding
    /// `old` (or nothing, for an insert) or unreadable: the timeout stands.
    async fn read_back(
        &self,
        key: &str,
        old: Option<&str>,
        new: &str,
        result: Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let Err(StoreError::Timeout(waited)) = result else {
            return result;
        };
        match self.get(key).await {
            Ok(now) => settled_after_timeout(now.as_deref(), old, new, waited),
            Err(_) => Err(StoreError::Timeout(waited)),
        }
    }

    /// Remove the document at `key` if it holds exactly `value` (an abandoned claim).
    pub async fn remove(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        match self {
            RecordStore::Memory(memory) => Ok(memory.remove(key, value)),
            RecordStore::Sql(sql) => sql.remove(key, value).await,
        }
    }

    /// Add `member` to the ordered index `index` with `score` (re-adding updates the score).
    pub async fn index_add(&self, index: &str, member: &str, score: u64) -> Result<(), StoreError> {
        match self {
            RecordStore::Memory(memory) => {
                memory.index_add(index, member, score);
                Ok(())
            }
            RecordStore::Sql(sql) => sql.index_add(index, member, score).await,
        }
    }

    /// The members of `index`, highest score first, at most `limit`.
    pub async fn index_newest(&self, index: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .index_page(index, None, limit)
            .await?
            .into_iter()
            .map(|(member, _)| member)
            .collect())
    }

    /// At most `limit` members of `index` strictly before `before` (by score, then member; highest
    /// first), with their scores: one page of a listing, read without reading the rest.
    pub async fn index_page(
        &self,
        index: &str,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            RecordStore::Memory(memory) => Ok(memory.index_page(index, before, limit)),
            RecordStore::Sql(sql) => sql.index_page(index, before, limit).await,
        }
    }

    /// The members of `index` after its newest `keep` (by score, then member), newest first, at
    /// most `limit`: what a bounded index forgets.
    pub async fn index_beyond(
        &self,
        index: &str,
        keep: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            RecordStore::Memory(memory) => Ok(memory.index_beyond(index, keep, limit)),
            RecordStore::Sql(sql) => sql.index_beyond(index, keep, limit).await,
        }
    }

    /// Remove the members of `index` scored below `score`, and expired documents.
    pub async fn index_trim(&self, index: &str, score: u64) -> Result<(), StoreError> {
        match self {
            RecordStore::Memory(memory) => {
                memory.index_trim(index, score);
                Ok(())
            }
            RecordStore::Sql(sql) => sql.index_trim(index, score).await,
        }
    }

    /// Remove `members` from `index`.
    pub async fn index_remove(&self, index: &str, members: &[String]) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        match self {
            RecordStore::Memory(memory) => {
                memory.index_remove(index, members);
                Ok(())
            }
            RecordStore::Sql(sql) => sql.index_remove(index, members).await,
        }
    }

    /// Tell the other replicas that records on `channel` changed (PostgreSQL `NOTIFY`).
    pub async fn notify(&self, channel: &str) -> Result<(), StoreError> {
        match self {
            RecordStore::Memory(_) => Ok(()),
            RecordStore::Sql(sql) => sql.notify(channel).await,
        }
    }

    /// Notifications from the other replicas on `channel` (PostgreSQL); `None` where there are
    /// no other replicas to hear from (memory, SQLite).
    pub fn listen(&self, channel: &str) -> Option<tokio::sync::mpsc::Receiver<()>> {
        match self {
            RecordStore::Memory(_) => None,
            RecordStore::Sql(sql) => sql.listen(channel),
        }
    }

    /// `Ok` while the store answers (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        match self {
            RecordStore::Memory(_) => Ok(()),
            RecordStore::Sql(sql) => sql.readiness(),
        }
    }
}

/// The store's clock (expiry of SQL rows): milliseconds since the Unix epoch.
use crate::units::now_ms;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod read_back_tests {
    use super::*;

    #[test]
    fn a_timed_out_write_is_judged_by_what_the_key_holds_now() {
        let t = Duration::from_secs(1);
        // The swap was applied: success, so the caller goes on to record it.
        assert!(matches!(
            settled_after_timeout(Some("new"), Some("old"), "new", t),
            Ok(true)
        ));
        // Someone else's change is there: not ours.
        assert!(matches!(
            settled_after_timeout(Some("other"), Some("old"), "new", t),
            Ok(false)
        ));
        // Still the old value: unknown (it may yet land), the timeout stands.
        assert!(matches!(
            settled_after_timeout(Some("old"), Some("old"), "new", t),
            Err(StoreError::Timeout(_))
        ));
        // An insert that left nothing: the timeout stands; one that left ours: made.
        assert!(matches!(
            settled_after_timeout(None, None, "id", t),
            Err(StoreError::Timeout(_))
        ));
        assert!(matches!(
            settled_after_timeout(Some("id"), None, "id", t),
            Ok(true)
        ));
        assert!(matches!(
            settled_after_timeout(Some("theirs"), None, "id", t),
            Ok(false)
        ));
    }
}
