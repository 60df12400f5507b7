//! The emulator's data model: plain records in one store behind a mutex, and the rules that
//! tie them together (references, cascades, unlinking). Nothing here knows about HTTP.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::RecordedRequest;

/// How many recorded requests are kept.
pub(super) const MAX_RECORDED: usize = 10_000;

/// Everything an emulator instance shares between clones and connections.
pub(super) struct Shared {
    pub api_key: String,
    pub store: Mutex<Store>,
    pub requests: Mutex<VecDeque<RecordedRequest>>,
    pub uploaded_bytes: AtomicU64,
}

impl Shared {
    pub fn new(api_key: String) -> Self {
        Self {
            api_key,
            store: Mutex::new(Store::default()),
            requests: Mutex::new(VecDeque::new()),
            uploaded_bytes: AtomicU64::new(0),
        }
    }

    /// Locks the store. A panic in another holder cannot leave it half-updated in a way that
    /// matters for a test double, so poisoning is ignored.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a request record, dropping the oldest beyond [`MAX_RECORDED`].
    pub fn record(&self, rec: RecordedRequest) {
        let mut q = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(rec);
        while q.len() > MAX_RECORDED {
            q.pop_front();
        }
    }
}

/// An asset (`AssetDetail` on the wire).
#[derive(Clone, Debug, Serialize)]
pub(super) struct Asset {
    #[serde(rename = "_id")]
    pub id: String,
    pub method: String,
    pub status: String,
    pub filename: String,
    pub file_type: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub user_metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hls: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Value>,
    #[serde(skip)]
    pub seq: u64,
}

impl Asset {
    /// The `asset_types` class of this asset, derived from its MIME type.
    pub fn asset_type(&self) -> Option<&'static str> {
        asset_type_of(&self.file_type)
    }
}

/// An index (`Index` on the wire, plus computed counts).
#[derive(Clone, Debug)]
pub(super) struct Index {
    pub id: String,
    pub name: String,
    pub models: Vec<Value>,
    pub addons: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub seq: u64,
}

/// System metadata copied from the asset when it was indexed.
#[derive(Clone, Debug, Serialize)]
pub(super) struct SystemMetadata {
    pub filename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// An indexed asset (`IndexedAssetDetailed` on the wire).
#[derive(Clone, Debug, Serialize)]
pub(super) struct IndexedAsset {
    #[serde(rename = "_id")]
    pub id: String,
    pub asset_id: String,
    #[serde(skip)]
    pub index_id: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub indexed_at: String,
    pub system_metadata: SystemMetadata,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub user_metadata: Map<String, Value>,
    #[serde(skip)]
    pub seq: u64,
}

/// An entity collection (`EntityCollection` on the wire).
#[derive(Clone, Debug, Serialize)]
pub(super) struct Collection {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub seq: u64,
}

/// An entity (`Entity` on the wire).
#[derive(Clone, Debug, Serialize)]
pub(super) struct Entity {
    #[serde(rename = "_id")]
    pub id: String,
    pub entity_collection_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub metadata: Map<String, Value>,
    pub asset_ids: Vec<String>,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub seq: u64,
}

/// Why an asset delete was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DeleteAssetError {
    NotFound,
    /// This many indexed assets reference the asset.
    Referenced(usize),
}

/// All emulator data. Lists are returned newest first (by insertion sequence).
#[derive(Default)]
pub(super) struct Store {
    seq: u64,
    pub assets: HashMap<String, Asset>,
    pub indexes: HashMap<String, Index>,
    pub indexed: HashMap<String, IndexedAsset>,
    pub collections: HashMap<String, Collection>,
    pub entities: HashMap<String, Entity>,
}

/// Fields of a new asset that the caller chooses.
pub(super) struct NewAsset {
    pub method: String,
    pub filename: String,
    pub file_type: String,
    pub size: Option<u64>,
    pub duration: Option<f64>,
    pub user_metadata: Map<String, Value>,
    pub enable_hls: bool,
    pub enable_thumbnail: bool,
}

impl NewAsset {
    /// A new asset of MIME type `file_type`. The emulator does not parse media, so video and
    /// audio get a nominal duration (index totals and system metadata stay plausible).
    pub fn new(method: &str, filename: &str, file_type: &str, size: Option<u64>) -> Self {
        let duration = match asset_type_of(file_type) {
            Some("video" | "audio") => Some(120.0),
            _ => None,
        };
        Self {
            method: method.into(),
            filename: filename.into(),
            file_type: file_type.into(),
            size,
            duration,
            user_metadata: Map::new(),
            enable_hls: false,
            enable_thumbnail: false,
        }
    }

    /// A directly uploaded asset with the MIME type guessed from `filename`.
    pub fn direct(filename: &str, size: Option<u64>) -> Self {
        let file_type = mime_for(filename).unwrap_or("application/octet-stream");
        Self::new("direct", filename, file_type, size)
    }
}

impl Store {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A fresh id unused by any record.
    fn fresh_id(&self) -> String {
        loop {
            let id = new_id();
            let taken = self.assets.contains_key(&id)
                || self.indexes.contains_key(&id)
                || self.indexed.contains_key(&id)
                || self.collections.contains_key(&id)
                || self.entities.contains_key(&id);
            if !taken {
                return id;
            }
        }
    }

    /// Adds an asset in status `ready` (the emulator does no media processing).
    pub fn insert_asset(&mut self, new: NewAsset) -> Asset {
        let id = self.fresh_id();
        let seq = self.next_seq();
        let asset = Asset {
            id: id.clone(),
            method: new.method,
            status: "ready".into(),
            filename: new.filename,
            file_type: new.file_type,
            created_at: now_rfc3339(),
            user_metadata: new.user_metadata,
            size: new.size,
            duration: new.duration,
            hls: new.enable_hls.then(|| json!({ "status": "ready" })),
            thumbnail: new.enable_thumbnail.then(|| json!({ "status": "ready" })),
            seq,
        };
        self.assets.insert(id, asset.clone());
        asset
    }

    /// Deletes an asset. Without `force`, any referencing indexed asset blocks it; with
    /// `force`, entity links are removed and referencing indexed assets are left in place
    /// (their index data is separate from the source file).
    pub fn delete_asset(&mut self, id: &str, force: bool) -> Result<(), DeleteAssetError> {
        if !self.assets.contains_key(id) {
            return Err(DeleteAssetError::NotFound);
        }
        let refs = self.indexed.values().filter(|ia| ia.asset_id == id).count();
        if refs > 0 && !force {
            return Err(DeleteAssetError::Referenced(refs));
        }
        self.assets.remove(id);
        let now = now_rfc3339();
        for ent in self.entities.values_mut() {
            let before = ent.asset_ids.len();
            ent.asset_ids.retain(|a| a != id);
            if ent.asset_ids.len() != before {
                ent.updated_at.clone_from(&now);
            }
        }
        Ok(())
    }

    /// Indexed assets (in existing indexes) that reference `asset_id`, newest first.
    pub fn indexed_referencing(&self, asset_id: &str) -> Vec<&IndexedAsset> {
        newest_first(self.indexed.values().filter(|ia| ia.asset_id == asset_id))
    }

    /// Entities whose `asset_ids` contain `asset_id`, newest first.
    pub fn entities_referencing(&self, asset_id: &str) -> Vec<&Entity> {
        newest_first(
            self.entities
                .values()
                .filter(|e| e.asset_ids.iter().any(|a| a == asset_id)),
        )
    }

    /// Adds an index.
    pub fn insert_index(&mut self, name: &str, models: Vec<Value>, addons: Vec<String>) -> String {
        let id = self.fresh_id();
        let seq = self.next_seq();
        let now = now_rfc3339();
        self.indexes.insert(
            id.clone(),
            Index {
                id: id.clone(),
                name: name.into(),
                models,
                addons,
                created_at: now.clone(),
                updated_at: now,
                seq,
            },
        );
        id
    }

    /// Deletes an index and every indexed asset in it.
    pub fn delete_index(&mut self, id: &str) -> bool {
        if self.indexes.remove(id).is_none() {
            return false;
        }
        self.indexed.retain(|_, ia| ia.index_id != id);
        true
    }

    /// Whether another index already uses `name`.
    pub fn index_name_taken(&self, name: &str, except: Option<&str>) -> bool {
        self.indexes
            .values()
            .any(|i| i.name == name && Some(i.id.as_str()) != except)
    }

    /// The `Index` JSON, with counts computed from its indexed assets.
    pub fn index_json(&self, index: &Index) -> Value {
        let members = self.indexed.values().filter(|ia| ia.index_id == index.id);
        let (count, duration) = members.fold((0u64, 0.0f64), |(n, d), ia| {
            (n + 1, d + ia.system_metadata.duration.unwrap_or(0.0))
        });
        json!({
            "_id": index.id,
            "index_name": index.name,
            "models": index.models,
            "addons": index.addons,
            "video_count": count,
            "total_duration": duration,
            "created_at": index.created_at,
            "updated_at": index.updated_at,
        })
    }

    /// Indexes `asset_id` into `index_id`; `None` if either is missing.
    pub fn insert_indexed(
        &mut self,
        index_id: &str,
        asset_id: &str,
        user_metadata: Map<String, Value>,
    ) -> Option<IndexedAsset> {
        if !self.indexes.contains_key(index_id) {
            return None;
        }
        let asset = self.assets.get(asset_id)?;
        let system_metadata = SystemMetadata {
            filename: asset.filename.clone(),
            duration: asset.duration,
            size: asset.size,
        };
        let id = self.fresh_id();
        let seq = self.next_seq();
        let now = now_rfc3339();
        let ia = IndexedAsset {
            id: id.clone(),
            asset_id: asset_id.into(),
            index_id: index_id.into(),
            status: "ready".into(),
            created_at: now.clone(),
            updated_at: now.clone(),
            indexed_at: now,
            system_metadata,
            user_metadata,
            seq,
        };
        self.indexed.insert(id, ia.clone());
        Some(ia)
    }

    /// The indexed asset `id` if it belongs to `index_id`.
    pub fn indexed_in(&self, index_id: &str, id: &str) -> Option<&IndexedAsset> {
        self.indexed.get(id).filter(|ia| ia.index_id == index_id)
    }

    /// Adds an entity collection.
    pub fn insert_collection(&mut self, name: &str, description: Option<String>) -> Collection {
        let id = self.fresh_id();
        let seq = self.next_seq();
        let now = now_rfc3339();
        let c = Collection {
            id: id.clone(),
            name: name.into(),
            description,
            created_at: now.clone(),
            updated_at: now,
            seq,
        };
        self.collections.insert(id, c.clone());
        c
    }

    /// Deletes a collection and the entities in it.
    pub fn delete_collection(&mut self, id: &str) -> bool {
        if self.collections.remove(id).is_none() {
            return false;
        }
        self.entities.retain(|_, e| e.entity_collection_id != id);
        true
    }

    /// Adds an entity; `None` if the collection is missing. Asset ids are not checked here.
    pub fn insert_entity(
        &mut self,
        collection_id: &str,
        name: &str,
        description: Option<String>,
        metadata: Map<String, Value>,
        asset_ids: Vec<String>,
    ) -> Option<Entity> {
        if !self.collections.contains_key(collection_id) {
            return None;
        }
        let id = self.fresh_id();
        let seq = self.next_seq();
        let now = now_rfc3339();
        let e = Entity {
            id: id.clone(),
            entity_collection_id: collection_id.into(),
            name: name.into(),
            description,
            metadata,
            asset_ids: dedup(asset_ids),
            status: "ready".into(),
            created_at: now.clone(),
            updated_at: now,
            seq,
        };
        self.entities.insert(id, e.clone());
        Some(e)
    }

    /// The entity `id` if it belongs to `collection_id`.
    pub fn entity_in(&mut self, collection_id: &str, id: &str) -> Option<&mut Entity> {
        self.entities
            .get_mut(id)
            .filter(|e| e.entity_collection_id == collection_id)
    }

    /// The first of `ids` that is not an existing asset.
    pub fn first_missing_asset<'a>(&self, ids: &'a [String]) -> Option<&'a str> {
        ids.iter()
            .find(|a| !self.assets.contains_key(a.as_str()))
            .map(String::as_str)
    }
}

/// Anything with an insertion sequence number.
pub(super) trait Sequenced {
    fn seq(&self) -> u64;
}

macro_rules! sequenced {
    ($($t:ty),*) => { $(impl Sequenced for $t { fn seq(&self) -> u64 { self.seq } })* };
}
sequenced!(Asset, Index, IndexedAsset, Collection, Entity);

/// Collects and sorts records newest first, the order the real API lists by default.
pub(super) fn newest_first<'a, T: Sequenced + 'a>(it: impl Iterator<Item = &'a T>) -> Vec<&'a T> {
    let mut v: Vec<&T> = it.collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.seq()));
    v
}

/// Removes duplicates, keeping first occurrences in order.
pub(super) fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Requested page of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PageReq {
    pub page: u64,
    pub limit: u64,
}

impl Default for PageReq {
    fn default() -> Self {
        Self { page: 1, limit: 10 }
    }
}

/// Builds `{"data": [...], "page_info": {...}}` for one page of `items`. A page past the end
/// is empty but still 200, since the official SDK stops iterating on an empty page.
pub(super) fn page_json<T: Serialize>(items: &[T], req: PageReq) -> Value {
    let total = items.len() as u64;
    let start = req.page.saturating_sub(1).saturating_mul(req.limit);
    let data: Vec<Value> = items
        .iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(usize::try_from(req.limit).unwrap_or(usize::MAX))
        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
        .collect();
    json!({
        "data": data,
        "page_info": {
            "limit_per_page": req.limit,
            "page": req.page,
            "total_page": total.div_ceil(req.limit),
            "total_results": total,
        }
    })
}

/// A new 24-hex-character id, the shape the real API uses.
pub(super) fn new_id() -> String {
    let bytes: [u8; 12] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MIME type guessed from a file name's extension.
pub(super) fn mime_for(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "mp4" => "video/mp4",
        "m4v" => "video/x-m4v",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "avi" => "video/x-msvideo",
        "mpeg" | "mpg" => "video/mpeg",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        _ => return None,
    })
}

/// The `asset_types` class for a MIME type.
pub(super) fn asset_type_of(mime: &str) -> Option<&'static str> {
    let top = mime.split('/').next().unwrap_or("");
    match top {
        "video" => Some("video"),
        "audio" => Some("audio"),
        "image" => Some("image"),
        _ if matches!(mime, "application/pdf" | "text/plain" | "text/markdown") => Some("document"),
        _ => None,
    }
}

/// The current UTC time as RFC 3339 (`YYYY-MM-DDTHH:MM:SSZ`).
pub(super) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Formats Unix seconds as RFC 3339 UTC (civil-from-days, H. Hinnant's algorithm).
pub(super) fn rfc3339(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(0);
    let rem = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
