//! An in-memory emulator of the TwelveLabs v1.3 HTTP API, used as a test double and as the
//! demo upstream.
//!
//! It implements assets (direct multipart upload streamed and counted, list, get, delete with
//! the 409/`force` rule, user metadata), indexes, indexed assets that reference assets, entity
//! collections and entities linked to assets, and the two reference listings
//! `GET /assets/{id}/indexed-assets` and `GET /assets/{id}/entities`. Every request must carry
//! the configured `x-api-key`; errors use the flat TwelveLabs `{"code", "message"}` body.

mod handlers;
mod router;
mod state;
#[cfg(test)]
mod tests;
mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Map};

use self::state::{NewAsset, Shared};

/// How long `serve` waits for open connections to finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// In-memory TwelveLabs v1.3 emulator. Cheap to clone (shared state behind Arc).
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

/// Ids of the data set created by [`Emulator::seed_demo`].
#[derive(Clone, Debug)]
pub struct DemoData {
    /// The main demo index.
    pub index_id: String,
    /// An asset that indexed assets reference: a plain delete gets 409.
    pub referenced_asset_id: String,
    /// An asset nothing references: a plain delete succeeds.
    pub unreferenced_asset_id: String,
    /// The indexed assets that reference `referenced_asset_id` (one per index).
    pub indexed_asset_ids: Vec<String>,
    /// The demo entity collection.
    pub entity_collection_id: String,
    /// An entity in that collection linked to `referenced_asset_id` and an image asset.
    pub entity_id: String,
}

/// One request as the emulator received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Request method.
    pub method: http::Method,
    /// Request target as received.
    pub uri: http::Uri,
    /// HTTP version.
    pub version: http::Version,
    /// Request headers, including `x-api-key`.
    pub headers: http::HeaderMap,
    /// Body bytes the emulator read (0 when it answered without reading the body).
    pub body_bytes: u64,
}

impl Emulator {
    /// An empty emulator that accepts `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            shared: Arc::new(Shared::new(api_key.into())),
        }
    }

    /// The x-api-key this emulator accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Populate a small realistic data set; returns its ids.
    pub fn seed_demo(&self) -> DemoData {
        let mut store = self.shared.store();
        let keynote = store.insert_asset(NewAsset::direct("keynote-2025.mp4", Some(48_234_112)));
        let broll = store.insert_asset(NewAsset::direct("b-roll-warehouse.mov", Some(20_971_520)));
        let draft = store.insert_asset(NewAsset::direct("draft-cut-v3.mp4", Some(9_437_184)));
        let headshot =
            store.insert_asset(NewAsset::direct("alex-chen-headshot.jpg", Some(284_311)));
        let models =
            vec![json!({ "model_name": "marengo3.0", "model_options": ["visual", "audio"] })];
        let index_id = store.insert_index("product-videos", models.clone(), Vec::new());
        let archive_id = store.insert_index("archive-2024", models, Vec::new());
        let mut indexed_asset_ids = Vec::new();
        for idx in [&index_id, &archive_id] {
            if let Some(ia) = store.insert_indexed(idx, &keynote.id, Map::new()) {
                indexed_asset_ids.push(ia.id);
            }
        }
        // b-roll is indexed too, so the demo index holds more than one video.
        let _ = store.insert_indexed(&index_id, &broll.id, Map::new());
        let collection =
            store.insert_collection("speakers", Some("People who appear on stage".into()));
        let entity = store.insert_entity(
            &collection.id,
            "Alex Chen",
            Some("Head of product".into()),
            Map::new(),
            vec![keynote.id.clone(), headshot.id.clone()],
        );
        DemoData {
            index_id,
            referenced_asset_id: keynote.id,
            unreferenced_asset_id: draft.id,
            indexed_asset_ids,
            entity_collection_id: collection.id,
            entity_id: entity.map(|e| e.id).unwrap_or_default(),
        }
    }

    /// Adds a ready, directly uploaded asset named `filename`; returns its id.
    pub fn create_asset(&self, filename: &str) -> String {
        let mut store = self.shared.store();
        store
            .insert_asset(NewAsset::direct(filename, Some(1_048_576)))
            .id
    }

    /// Adds an index (Marengo, visual + audio) named `name`; returns its id.
    pub fn create_index(&self, name: &str) -> String {
        let models =
            vec![json!({ "model_name": "marengo3.0", "model_options": ["visual", "audio"] })];
        self.shared.store().insert_index(name, models, Vec::new())
    }

    /// Indexes an asset; returns the indexed asset id, or `None` if the index or asset is missing.
    pub fn index_asset(&self, index_id: &str, asset_id: &str) -> Option<String> {
        let mut store = self.shared.store();
        store
            .insert_indexed(index_id, asset_id, Map::new())
            .map(|ia| ia.id)
    }

    /// Adds an entity collection named `name`; returns its id.
    pub fn create_entity_collection(&self, name: &str) -> String {
        self.shared.store().insert_collection(name, None).id
    }

    /// Adds an entity linked to `asset_ids`; `None` if the collection or any asset is missing.
    pub fn create_entity(
        &self,
        collection_id: &str,
        name: &str,
        asset_ids: &[&str],
    ) -> Option<String> {
        let ids: Vec<String> = asset_ids.iter().map(|a| (*a).to_owned()).collect();
        let mut store = self.shared.store();
        if store.first_missing_asset(&ids).is_some() {
            return None;
        }
        store
            .insert_entity(collection_id, name, None, Map::new(), ids)
            .map(|e| e.id)
    }

    /// Whether an asset with this id exists.
    pub fn asset_exists(&self, asset_id: &str) -> bool {
        self.shared.store().assets.contains_key(asset_id)
    }

    /// Asset ids an entity is linked to, or `None` if there is no such entity.
    pub fn entity_asset_ids(&self, entity_id: &str) -> Option<Vec<String>> {
        self.shared
            .store()
            .entities
            .get(entity_id)
            .map(|e| e.asset_ids.clone())
    }

    /// Everything the emulator received (bounded: keep the last 10_000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let q = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect()
    }

    /// Total bytes of file parts received by direct uploads so far.
    pub fn uploaded_bytes(&self) -> u64 {
        self.shared.uploaded_bytes.load(Ordering::Relaxed)
    }

    /// Handle one request (used by `serve` and by tests without sockets).
    pub async fn handle<B>(&self, req: http::Request<B>) -> http::Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let read = Arc::new(AtomicU64::new(0));
        let body = wire::counting_stream(body, Arc::clone(&read));
        let resp = router::dispatch(&self.shared, &parts, body).await;
        let body_bytes = read.load(Ordering::Relaxed);
        tracing::debug!(
            method = %parts.method,
            uri = %parts.uri,
            status = resp.status().as_u16(),
            body_bytes,
            "emulator request"
        );
        self.shared.record(RecordedRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body_bytes,
        });
        resp
    }

    /// Serve HTTP/1.1 (and h2c) on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Usually transient (e.g. out of file descriptors): back off briefly.
                    tracing::warn!(error = %e, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let emu = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let emu = emu.clone();
                async move { Ok::<_, Infallible>(emu.handle(req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "emulator connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("emulator connections still open after the drain timeout");
        }
        Ok(())
    }
}
