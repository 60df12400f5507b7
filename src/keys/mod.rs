//! Clients and keys at runtime: issued, rotated and revoked through the gateway's API, kept in the
//! record store, and seen by every replica within a second (docs/architecture.md, "Keys at
//! runtime").
//!
//! Authentication never reads the store: each replica holds one [`KeySnapshot`] (the YAML clients
//! and the store's, built into [`ClientKeys`]) and swaps it whole on a change — after its own
//! writes at once, on PostgreSQL when another replica's `NOTIFY tl_gateway_keys` arrives, and in
//! any case every `store.refresh_interval` (the fallback for a lost notification). While the store
//! is down the last snapshot keeps authenticating; changes answer 503 `store_unavailable`. YAML
//! clients stay read-only (reviewed in git); store clients cannot take a YAML client's id. Keys
//! are stored as SHA-256 digests only. When a key was last used is recorded coarsely: the request
//! path stores the current second into the key's counter, and a flush writes the changed ones at
//! most once a minute, one document per client.

pub mod records;
mod settings;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::audit::record::{Event, Phase};
use crate::audit::AuditLog;
use crate::auth::{ClientKey, ClientKeys, ClientSettings, KeySnapshot, Principal};
use crate::error::GatewayError;
use crate::ids::{ClientId, Role};
use crate::metrics::Metrics;
use crate::store::{RecordStore, StoreError};
use crate::units::{hex, rfc3339};
use records::{StoredClient, StoredKey};

pub use settings::{KeySettings, RawKeys};

/// The PostgreSQL channel every replica listens on for key changes.
pub const CHANNEL: &str = "tl_gateway_keys";

/// How often changed last-use times are written.
pub const USAGE_FLUSH: Duration = Duration::from_secs(60);

/// How long an audit record of a change may take to become durable.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients and keys of this replica: the snapshot authentication reads, and the changes the
/// API makes.
#[derive(Debug)]
pub struct Keyring {
    snapshot: KeySnapshot,
    config_clients: ArcSwap<Vec<ClientSettings>>,
    stored: ArcSwap<Vec<StoredClient>>,
    store: RecordStore,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    /// Last use per (client, label) of store keys, shared with every snapshot built.
    usage: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
    /// What was last written of `usage`.
    flushed: Mutex<HashMap<(String, String), u64>>,
    /// When the store was last read whole (Unix ms; 0: never).
    loaded_ms: AtomicU64,
    /// Wakes the watcher after a local change.
    changed: Arc<tokio::sync::Notify>,
}

impl Keyring {
    /// A keyring over `store` with the YAML clients `clients` (not yet loaded from the store: call
    /// [`Keyring::refresh`]).
    pub fn new(
        clients: &[ClientSettings],
        store: RecordStore,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Arc<Keyring> {
        let keyring = Arc::new(Keyring {
            snapshot: Arc::new(ArcSwap::from_pointee(ClientKeys::default())),
            config_clients: ArcSwap::from_pointee(clients.to_vec()),
            stored: ArcSwap::from_pointee(Vec::new()),
            store,
            audit,
            metrics,
            usage: Mutex::default(),
            flushed: Mutex::default(),
            loaded_ms: AtomicU64::new(0),
            changed: Arc::default(),
        });
        keyring.rebuild();
        keyring
    }

    /// The snapshot authentication reads.
    pub fn snapshot(&self) -> KeySnapshot {
        self.snapshot.clone()
    }

    /// The YAML clients changed (reload).
    pub fn set_config_clients(&self, clients: &[ClientSettings]) {
        self.config_clients.store(Arc::new(clients.to_vec()));
        self.rebuild();
    }

    /// The YAML clients.
    pub fn config_clients(&self) -> Arc<Vec<ClientSettings>> {
        self.config_clients.load_full()
    }

    /// Whether the store was read at least once (`/readyz`: a replica that never loaded its
    /// snapshot is not ready), and how old that read is.
    pub fn loaded(&self) -> Option<Duration> {
        match self.loaded_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(records::now_ms().saturating_sub(at))),
        }
    }

    /// Build the snapshot from the YAML clients and the last store read, and swap it in.
    fn rebuild(&self) {
        let config = self.config_clients.load();
        let stored = self.stored.load();
        let mut all: Vec<ClientSettings> = config.as_ref().clone();
        let now = SystemTime::now();
        for client in stored.iter() {
            if all.iter().any(|c| c.id.as_str() == client.id) {
                tracing::warn!(client = %client.id, "a store client has the id of a YAML client: the YAML client wins");
                continue;
            }
            if let Some(settings) = settings_of(client, now) {
                all.push(settings);
            }
        }
        let mut keys = ClientKeys::with_metrics(&all, &self.metrics);
        let store_keys: std::collections::HashSet<(String, String)> = stored
            .iter()
            .flat_map(|c| c.keys.iter().map(|k| (c.id.clone(), k.label.clone())))
            .collect();
        let usage = {
            let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
            usage.retain(|k, _| store_keys.contains(k));
            for key in &store_keys {
                usage
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(AtomicU64::new(0)));
            }
            usage.clone()
        };
        keys.track_usage(|client, label| {
            usage
                .get(&(client.as_str().to_owned(), label.to_owned()))
                .cloned()
        });
        self.snapshot.store(Arc::new(keys));
    }

    /// Read every store client and swap the snapshot.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let clients = records::load_all(&self.store).await?;
        self.stored.store(Arc::new(clients));
        self.rebuild();
        self.loaded_ms.store(records::now_ms(), Ordering::Release);
        Ok(())
    }

    /// Keep the snapshot current: after local changes, on notifications from other replicas
    /// (PostgreSQL), and every `refresh_interval`; flush last-use times every minute. Ends with
    /// the keyring.
    pub fn watch(self: &Arc<Self>, refresh_interval: Duration) {
        let weak = Arc::downgrade(self);
        let changed = self.changed.clone();
        let mut notifications = self.store.listen(CHANNEL);
        tokio::spawn(async move {
            let mut last_flush = tokio::time::Instant::now();
            loop {
                // Held only while working, so the keyring (and this task) ends with the gateway.
                let never_loaded = match weak.upgrade() {
                    Some(keyring) => keyring.loaded().is_none(),
                    None => return,
                };
                let wait = if never_loaded {
                    Duration::from_millis(500).min(refresh_interval)
                } else {
                    refresh_interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed.notified() => {}
                    Some(()) = async {
                        match notifications.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                let Some(keyring) = weak.upgrade() else {
                    return;
                };
                if let Err(error) = keyring.refresh().await {
                    tracing::warn!(%error, "the key snapshot could not be refreshed; the last one keeps authenticating");
                }
                if last_flush.elapsed() >= USAGE_FLUSH {
                    last_flush = tokio::time::Instant::now();
                    keyring.flush_usage().await;
                }
            }
        });
    }

    /// Write the last-use times that changed since the last flush (one document per client).
    pub async fn flush_usage(&self) {
        let changed: Vec<((String, String), u64)> = {
            let usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
            let flushed = self.flushed.lock().unwrap_or_else(PoisonError::into_inner);
            usage
                .iter()
                .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                .filter(|(k, v)| *v > 0 && flushed.get(k) != Some(v))
                .collect()
        };
        let mut by_client: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for ((client, label), at) in &changed {
            by_client
                .entry(client.clone())
                .or_default()
                .push((label.clone(), *at));
        }
        for (client, labels) in by_client {
            let key = records::used_key(&client);
            for _ in 0..4 {
                let Ok(old) = self.store.get(&key).await else {
                    break;
                };
                let mut times: std::collections::BTreeMap<String, u64> = old
                    .as_deref()
                    .and_then(|raw| serde_json::from_str(raw).ok())
                    .unwrap_or_default();
                for (label, at) in &labels {
                    let entry = times.entry(label.clone()).or_default();
                    *entry = (*entry).max(*at);
                }
                let Ok(text) = serde_json::to_string(&times) else {
                    break;
                };
                let stored = match &old {
                    None => self.store.insert(&key, &text, records::RETENTION).await,
                    Some(old) => self.store.swap(&key, old, &text, records::RETENTION).await,
                };
                if matches!(stored, Ok(true)) {
                    let mut flushed = self.flushed.lock().unwrap_or_else(PoisonError::into_inner);
                    for (label, at) in &labels {
                        flushed.insert((client.clone(), label.clone()), *at);
                    }
                    break;
                }
            }
        }
    }

    /// The store this keyring reads.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// Count a change, make its audit record durable (or undo it), tell the other replicas, and
    /// refresh this one's snapshot now.
    async fn changed(
        &self,
        undo: Option<(&str, &str, &str)>,
        event: &str,
        by: &Principal,
        client: &str,
        label: Option<&str>,
    ) -> Result<(), GatewayError> {
        let actor = by.client.as_str();
        if let Some(log) = &self.audit {
            // How the actor authenticated, as on request records (an admin signed in on the page:
            // auth oidc, issuer, subject).
            let how = crate::audit::layer::CredentialFields::of(by.credential.as_ref());
            let record = Event {
                key_label: how.key_label,
                certificate: how.certificate,
                auth: how.auth,
                issuer: how.issuer,
                subject: how.subject,
                time: rfc3339(SystemTime::now()),
                request_id: format!("adm_{:016x}", rand::random::<u64>()),
                phase: Some(Phase::Admin),
                client: Some(client.to_owned()),
                method: String::new(),
                path: String::new(),
                event: Some(event.to_owned()),
                actor: Some(actor.to_owned()),
                label: label.map(str::to_owned),
                ..Event::default()
            };
            let durable = tokio::time::timeout(AUDIT_TIMEOUT, log.write_durable(record)).await;
            if !matches!(durable, Ok(Ok(_))) {
                if let Some((key, new, old)) = undo {
                    let _ = self.store.swap(key, new, old, records::RETENTION).await;
                }
                let why = match durable {
                    Ok(Err(error)) => error.to_string(),
                    _ => "the audit log did not answer in time".into(),
                };
                return Err(GatewayError::AuditUnavailable(why));
            }
        }
        self.metrics.key_events.with_label_values(&[event]).inc();
        tracing::info!(
            event,
            actor,
            client,
            label = label.unwrap_or(""),
            "keys changed"
        );
        if let Err(error) = self.store.notify(CHANNEL).await {
            tracing::warn!(%error, "other replicas were not notified of a key change; they see it at their next resync");
        }
        if let Err(error) = self.refresh().await {
            tracing::warn!(%error, "the key snapshot could not be refreshed after a change");
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Create a store client.
    pub async fn create_client(
        &self,
        id: &ClientId,
        roles: &[Role],
        by: &Principal,
    ) -> Result<StoredClient, GatewayError> {
        let actor = by.client.as_str();
        if self
            .config_clients
            .load()
            .iter()
            .any(|c| c.id.as_str() == id.as_str())
        {
            return Err(GatewayError::ClientExists(id.as_str().to_owned()));
        }
        let created = records::now_ms();
        let client = StoredClient {
            id: id.as_str().to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            disabled: false,
            created_at: rfc3339(SystemTime::now()),
            created_by: actor.to_owned(),
            created_ms: created,
            keys: Vec::new(),
        };
        let text = serde_json::to_string(&client).map_err(internal)?;
        let key = records::doc_key(id.as_str());
        if !self
            .store
            .insert(&key, &text, records::RETENTION)
            .await
            .map_err(unavailable)?
        {
            return Err(GatewayError::ClientExists(id.as_str().to_owned()));
        }
        self.store
            .index_add(records::INDEX, id.as_str(), created)
            .await
            .map_err(unavailable)?;
        if let Err(error) = self
            .changed(None, "client_created", by, id.as_str(), None)
            .await
        {
            let _ = self.store.remove(&key, &text).await;
            return Err(error);
        }
        Ok(client)
    }

    /// Change a store client with `change` (one compare-and-swap, retried on a race); `event` is
    /// what the audit record calls it.
    pub async fn update_client<T>(
        &self,
        id: &str,
        by: &Principal,
        event: impl Fn(&StoredClient) -> (&'static str, Option<String>),
        mut change: impl FnMut(&mut StoredClient) -> Result<T, GatewayError>,
    ) -> Result<(StoredClient, T), GatewayError> {
        if self
            .config_clients
            .load()
            .iter()
            .any(|c| c.id.as_str() == id)
        {
            return Err(GatewayError::ClientReadOnly(id.to_owned()));
        }
        for _ in 0..8 {
            let Some((raw, mut client)) =
                records::load(&self.store, id).await.map_err(unavailable)?
            else {
                return Err(GatewayError::ClientNotFound(id.to_owned()));
            };
            let out = change(&mut client)?;
            let text = serde_json::to_string(&client).map_err(internal)?;
            let key = records::doc_key(id);
            if self
                .store
                .swap(&key, &raw, &text, records::RETENTION)
                .await
                .map_err(unavailable)?
            {
                let (name, label) = event(&client);
                self.changed(Some((&key, &text, &raw)), name, by, id, label.as_deref())
                    .await?;
                return Ok((client, out));
            }
        }
        Err(GatewayError::StoreUnavailable(
            "the client changed too often while being updated".into(),
        ))
    }

    /// A store client and the last-use times of its keys.
    pub async fn stored_client(
        &self,
        id: &str,
    ) -> Result<Option<(StoredClient, std::collections::BTreeMap<String, u64>)>, GatewayError> {
        let Some((_, client)) = records::load(&self.store, id).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let used = records::last_used(&self.store, id)
            .await
            .map_err(unavailable)?;
        Ok(Some((client, used)))
    }

    /// Every store client (from the store, not the snapshot: what the API shows is current).
    pub async fn stored_clients(&self) -> Result<Vec<StoredClient>, GatewayError> {
        records::load_all(&self.store).await.map_err(unavailable)
    }
}

/// A new key for `client`: the key (shown once) and what is stored of it.
pub fn new_key(label: String, actor: &str, expires_ms: Option<u64>) -> (String, StoredKey) {
    let key = crate::auth::new_client_key();
    let stored = StoredKey {
        label,
        sha256: hex(&Sha256::digest(key.as_bytes())),
        created_at: rfc3339(SystemTime::now()),
        created_by: actor.to_owned(),
        expires_ms,
        revoked_at: None,
        revoked_by: None,
    };
    (key, stored)
}

/// The authentication settings of a store client (`None` if it cannot be read: skipped).
fn settings_of(client: &StoredClient, now: SystemTime) -> Option<ClientSettings> {
    let id: ClientId = client.id.parse().ok()?;
    let roles = client
        .roles
        .iter()
        .filter_map(|r| r.parse::<Role>().ok())
        .collect();
    let keys = client
        .keys
        .iter()
        .filter_map(|k| {
            let sha256 = crate::units::parse_hex::<32>(&k.sha256)?;
            Some(ClientKey {
                sha256,
                label: k.label.clone(),
                expires: k
                    .expires_ms
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                revoked: k.revoked_at.is_some(),
            })
        })
        .collect();
    let _ = now;
    Some(ClientSettings {
        id,
        roles,
        keys,
        cert_sha256: None,
        cert_subject: None,
        max_in_flight: None,
        disabled: client.disabled,
    })
}

fn unavailable(error: StoreError) -> GatewayError {
    GatewayError::StoreUnavailable(error.to_string())
}

fn internal(error: serde_json::Error) -> GatewayError {
    GatewayError::StoreUnavailable(format!("a client could not be serialised: {error}"))
}
