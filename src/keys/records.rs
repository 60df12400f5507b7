//! Clients and keys as the record store holds them: one document per client (`client:{id}`, its
//! keys inside), an index `clients` by creation time, and the coarse last-use times of its keys in
//! `key-used:{id}`. Every change is one compare-and-swap of the client's document.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{RecordStore, StoreError};

/// The index of every store client, by creation time.
pub const INDEX: &str = "clients";

/// Store clients are kept this long past their last change (they never expire in practice).
pub const RETENTION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A client issued at runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredClient {
    /// Its id.
    pub id: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Every key refused with 401 `client_disabled` while set.
    #[serde(default)]
    pub disabled: bool,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time in ms (ordering).
    pub created_ms: u64,
    /// Its keys, oldest first (revoked ones kept for the record).
    #[serde(default)]
    pub keys: Vec<StoredKey>,
}

/// One key of a store client: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Unique within the client.
    pub label: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    /// When it was issued (RFC 3339).
    pub created_at: String,
    /// Who issued it.
    pub created_by: String,
    /// When it stops working (Unix ms), if ever.
    pub expires_ms: Option<u64>,
    /// When it was revoked (RFC 3339).
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// Who revoked it.
    #[serde(default)]
    pub revoked_by: Option<String>,
}

impl StoredKey {
    /// `active`, `expired` or `revoked`.
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|at| at <= now_ms) {
            "expired"
        } else {
            "active"
        }
    }
}

/// The store key of a client's document.
pub fn doc_key(id: &str) -> String {
    format!("client:{id}")
}

/// The store key of a client's last-use times.
pub fn used_key(id: &str) -> String {
    format!("key-used:{id}")
}

pub use crate::units::now_ms;

/// Every store client (one index page after another, then their documents): the full resync.
pub async fn load_all(store: &RecordStore) -> Result<Vec<StoredClient>, StoreError> {
    const PAGE: usize = 200;
    let mut clients = Vec::new();
    let mut before: Option<(u64, String)> = None;
    loop {
        let page = store
            .index_page(INDEX, before.as_ref().map(|(s, m)| (*s, m.as_str())), PAGE)
            .await?;
        let keys: Vec<String> = page.iter().map(|(id, _)| doc_key(id)).collect();
        for doc in store.get_many(&keys).await?.into_iter().flatten() {
            match serde_json::from_str::<StoredClient>(&doc) {
                Ok(client) => clients.push(client),
                Err(error) => tracing::error!(%error, "a stored client could not be read; skipped"),
            }
        }
        if page.len() < PAGE {
            return Ok(clients);
        }
        before = page.last().map(|(id, score)| (*score, id.clone()));
    }
}

/// One client's document as stored (the raw text a swap must match) and parsed.
pub async fn load(
    store: &RecordStore,
    id: &str,
) -> Result<Option<(String, StoredClient)>, StoreError> {
    Ok(store
        .get(&doc_key(id))
        .await?
        .and_then(|raw| serde_json::from_str(&raw).ok().map(|c| (raw, c))))
}

/// The last-use times (Unix seconds) of a client's keys, by label.
pub async fn last_used(
    store: &RecordStore,
    id: &str,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    Ok(store
        .get(&used_key(id))
        .await?
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or_default())
}
