//! Endpoint handlers. Each validates its input, then takes the store lock once, without
//! holding it across an await.

use std::sync::atomic::Ordering;

use http::{header, HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

use super::state::{
    asset_type_of, mime_for, newest_first, now_rfc3339, page_json, DeleteAssetError, NewAsset,
    Shared,
};
use super::wire::{
    check_metadata, json_response, merge_metadata, ok_empty, ok_json, opt_object, opt_str,
    read_object, req_str, req_str_list, to_json, ApiError, BodyStream, Query, Reply,
    MAX_FORM_FIELD,
};

// ---------- assets ----------

pub(super) fn list_assets(s: &Shared, q: &Query) -> Reply {
    let page = q.page()?;
    let ids = q.all("asset_ids");
    let types = q.all("asset_types");
    if let Some(bad) = types
        .iter()
        .find(|t| !matches!(**t, "image" | "video" | "audio" | "document"))
    {
        return Err(ApiError::invalid(format!(
            "The asset_types parameter contains an unknown type: {bad}."
        )));
    }
    let filename = q.first("filename").map(str::to_lowercase);
    let store = s.store();
    let items = newest_first(store.assets.values().filter(|a| {
        (ids.is_empty() || ids.contains(&a.id.as_str()))
            && (types.is_empty() || a.asset_type().is_some_and(|t| types.contains(&t)))
            && filename
                .as_ref()
                .is_none_or(|f| a.filename.to_lowercase().contains(f.as_str()))
    }));
    ok_json(&page_json(&items, page))
}

/// The parts of a `POST /assets` form other than the file contents.
#[derive(Default)]
struct AssetForm {
    method: Option<String>,
    url: Option<String>,
    filename: Option<String>,
    enable_hls: Option<String>,
    enable_thumbnail: Option<String>,
    user_metadata: Option<String>,
    file_name: Option<String>,
    file_type: Option<String>,
    file_size: Option<u64>,
}

fn multipart_error(e: multer::Error) -> ApiError {
    ApiError::invalid(format!("The multipart/form-data body is malformed: {e}"))
}

/// Reads a small text part, refusing anything larger than [`MAX_FORM_FIELD`].
async fn read_text_field(field: &mut multer::Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > MAX_FORM_FIELD {
            return Err(ApiError::invalid(format!(
                "The {name} field exceeds {MAX_FORM_FIELD} bytes."
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| ApiError::invalid(format!("The {name} field is not UTF-8.")))
}

/// `POST /assets`: the file part is streamed and counted chunk by chunk, never buffered.
pub(super) async fn create_asset(s: &Shared, headers: &HeaderMap, body: BodyStream) -> Reply {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            ApiError::invalid("The request must be multipart/form-data with a boundary.")
        })?;
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut form = AssetForm::default();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            form.file_name = field.file_name().map(str::to_owned);
            form.file_type = field.content_type().map(ToString::to_string);
            let mut size = 0u64;
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                let n = chunk.len() as u64;
                size += n;
                s.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
            }
            form.file_size = Some(size);
            continue;
        }
        let slot = match name.as_str() {
            "method" => &mut form.method,
            "url" => &mut form.url,
            "filename" => &mut form.filename,
            "enable_hls" => &mut form.enable_hls,
            "enable_thumbnail" => &mut form.enable_thumbnail,
            "user_metadata" => &mut form.user_metadata,
            _ => {
                // Unknown parts are drained, not stored.
                while field.chunk().await.map_err(multipart_error)?.is_some() {}
                continue;
            }
        };
        *slot = Some(read_text_field(&mut field, &name).await?);
    }
    let new = validate_asset_form(form)?;
    let asset = s.store().insert_asset(new);
    Ok(json_response(StatusCode::CREATED, &to_json(&asset)))
}

fn form_bool(v: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match v {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid(format!(
            "The {name} parameter must be true or false."
        ))),
    }
}

fn validate_asset_form(form: AssetForm) -> Result<NewAsset, ApiError> {
    let method = form.method.ok_or_else(|| ApiError::missing("method"))?;
    let enable_hls = form_bool(form.enable_hls.as_deref(), "enable_hls")?;
    let enable_thumbnail = form_bool(form.enable_thumbnail.as_deref(), "enable_thumbnail")?;
    let user_metadata = match form.user_metadata.as_deref() {
        None | Some("") => Map::new(),
        Some(raw) => match serde_json::from_str(raw) {
            Ok(Value::Object(m)) => {
                check_metadata(&m, false)?;
                m
            }
            _ => {
                return Err(ApiError::invalid(
                    "The user_metadata parameter must be a JSON-encoded object.",
                ))
            }
        },
    };
    let explicit_name = form.filename.filter(|f| !f.trim().is_empty());
    let (filename, size) = match method.as_str() {
        "direct" => {
            let size = form.file_size.ok_or_else(|| ApiError::missing("file"))?;
            let name = explicit_name
                .or(form.file_name)
                .unwrap_or_else(|| "upload".into());
            (name, Some(size))
        }
        "url" => {
            let url = form
                .url
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(|| ApiError::missing("url"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ApiError::invalid(
                    "The url parameter must be an http(s) URL.",
                ));
            }
            let from_url = url
                .split(['?', '#'])
                .next()
                .and_then(|u| u.rsplit('/').next())
                .filter(|seg| !seg.is_empty() && !seg.contains(':'))
                .map(str::to_owned);
            (
                explicit_name
                    .or(from_url)
                    .unwrap_or_else(|| "remote".into()),
                None,
            )
        }
        _ => {
            return Err(ApiError::invalid(
                "The method parameter must be one of: direct, url.",
            ))
        }
    };
    // The file name's extension wins over the part's declared type, as clients often send
    // application/octet-stream.
    let file_type = mime_for(&filename)
        .map(str::to_owned)
        .or(form.file_type.filter(|t| asset_type_of(t).is_some()))
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut new = NewAsset::new(&method, &filename, &file_type, size);
    new.user_metadata = user_metadata;
    new.enable_hls = enable_hls;
    new.enable_thumbnail = enable_thumbnail;
    Ok(new)
}

pub(super) fn get_asset(s: &Shared, id: &str) -> Reply {
    let store = s.store();
    let asset = store
        .assets
        .get(id)
        .ok_or_else(|| ApiError::not_found("asset", id))?;
    ok_json(&to_json(asset))
}

/// `DELETE /assets/{id}`: 409 while indexed assets reference it, unless `force=true`.
pub(super) fn delete_asset(s: &Shared, id: &str, q: &Query) -> Reply {
    let force = match q.first("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "The force parameter must be true or false.",
            ))
        }
    };
    match s.store().delete_asset(id, force) {
        Ok(()) => ok_empty(),
        Err(DeleteAssetError::NotFound) => Err(ApiError::not_found("asset", id)),
        Err(DeleteAssetError::Referenced(n)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "asset_referenced",
            format!(
                "The asset {id} cannot be deleted because {n} indexed asset(s) are referencing it. \
                 Set the force query parameter to true to override."
            ),
        )),
    }
}

pub(super) fn list_asset_indexed(s: &Shared, id: &str, q: &Query) -> Reply {
    let page = q.page()?;
    let store = s.store();
    if !store.assets.contains_key(id) {
        return Err(ApiError::not_found("asset", id));
    }
    let items: Vec<Value> = store
        .indexed_referencing(id)
        .into_iter()
        .map(|ia| {
            let name = store
                .indexes
                .get(&ia.index_id)
                .map(|i| i.name.as_str())
                .unwrap_or_default();
            json!({ "_id": ia.id, "index": { "_id": ia.index_id, "name": name } })
        })
        .collect();
    ok_json(&page_json(&items, page))
}

pub(super) fn list_asset_entities(s: &Shared, id: &str, q: &Query) -> Reply {
    let page = q.page()?;
    let store = s.store();
    if !store.assets.contains_key(id) {
        return Err(ApiError::not_found("asset", id));
    }
    ok_json(&page_json(&store.entities_referencing(id), page))
}

/// `PUT` replaces, `PATCH` merges (`null` deletes a key), `DELETE` clears.
pub(super) async fn asset_metadata(
    s: &Shared,
    id: &str,
    method: &Method,
    body: BodyStream,
) -> Reply {
    let update = if method == Method::DELETE {
        None
    } else {
        let obj = read_object(body).await?;
        let m =
            opt_object(&obj, "user_metadata")?.ok_or_else(|| ApiError::missing("user_metadata"))?;
        check_metadata(&m, true)?;
        Some(m)
    };
    let mut store = s.store();
    let asset = store
        .assets
        .get_mut(id)
        .ok_or_else(|| ApiError::not_found("asset", id))?;
    match update {
        None => asset.user_metadata.clear(),
        Some(m) if method == Method::PUT => {
            asset.user_metadata = m.into_iter().filter(|(_, v)| !v.is_null()).collect();
        }
        Some(m) => merge_metadata(&mut asset.user_metadata, m),
    }
    ok_empty()
}

// ---------- indexes ----------

pub(super) fn list_indexes(s: &Shared, q: &Query) -> Reply {
    let page = q.page()?;
    let name = q.first("index_name");
    let store = s.store();
    let items: Vec<Value> = newest_first(
        store
            .indexes
            .values()
            .filter(|i| name.is_none_or(|n| i.name == n)),
    )
    .into_iter()
    .map(|i| store.index_json(i))
    .collect();
    ok_json(&page_json(&items, page))
}

pub(super) async fn create_index(s: &Shared, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let name = req_str(&obj, "index_name")?;
    let models = match obj.get("models") {
        None | Some(Value::Null) => return Err(ApiError::missing("models")),
        Some(Value::Array(ms))
            if !ms.is_empty()
                && ms
                    .iter()
                    .all(|m| m.get("model_name").is_some_and(Value::is_string)) =>
        {
            ms.clone()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "The models parameter must be a non-empty array of objects with a model_name.",
            ))
        }
    };
    let addons = match obj.get("addons") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            return Err(ApiError::invalid(
                "The addons parameter must be an array of strings.",
            ))
        }
    };
    let mut store = s.store();
    if store.index_name_taken(&name, None) {
        return Err(name_taken(&name));
    }
    let id = store.insert_index(&name, models, addons);
    Ok(json_response(StatusCode::CREATED, &json!({ "_id": id })))
}

fn name_taken(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "index_name_already_exists",
        format!("An index named {name:?} already exists."),
    )
}

pub(super) fn get_index(s: &Shared, id: &str) -> Reply {
    let store = s.store();
    let index = store
        .indexes
        .get(id)
        .ok_or_else(|| ApiError::not_found("index", id))?;
    ok_json(&store.index_json(index))
}

pub(super) async fn rename_index(s: &Shared, id: &str, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let name = req_str(&obj, "index_name")?;
    let mut store = s.store();
    if !store.indexes.contains_key(id) {
        return Err(ApiError::not_found("index", id));
    }
    if store.index_name_taken(&name, Some(id)) {
        return Err(name_taken(&name));
    }
    if let Some(index) = store.indexes.get_mut(id) {
        index.name = name;
        index.updated_at = now_rfc3339();
    }
    ok_empty()
}

pub(super) fn delete_index(s: &Shared, id: &str) -> Reply {
    if s.store().delete_index(id) {
        ok_empty()
    } else {
        Err(ApiError::not_found("index", id))
    }
}

// ---------- indexed assets ----------

pub(super) fn list_indexed(s: &Shared, index_id: &str, q: &Query) -> Reply {
    let page = q.page()?;
    let statuses = q.all("status");
    let filename = q.first("filename");
    let store = s.store();
    if !store.indexes.contains_key(index_id) {
        return Err(ApiError::not_found("index", index_id));
    }
    let items = newest_first(store.indexed.values().filter(|ia| {
        ia.index_id == index_id
            && (statuses.is_empty() || statuses.contains(&ia.status.as_str()))
            && filename.is_none_or(|f| ia.system_metadata.filename == f)
    }));
    ok_json(&page_json(&items, page))
}

pub(super) async fn create_indexed(s: &Shared, index_id: &str, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let asset_id = req_str(&obj, "asset_id")?;
    if !matches!(
        obj.get("enable_video_stream"),
        None | Some(Value::Null | Value::Bool(_))
    ) {
        return Err(ApiError::invalid(
            "The enable_video_stream parameter must be a boolean.",
        ));
    }
    let user_metadata = opt_object(&obj, "user_metadata")?.unwrap_or_default();
    check_metadata(&user_metadata, false)?;
    let mut store = s.store();
    if !store.indexes.contains_key(index_id) {
        return Err(ApiError::not_found("index", index_id));
    }
    match store.assets.get(&asset_id) {
        None => return Err(ApiError::not_found("asset", &asset_id)),
        Some(a) if a.status != "ready" => {
            return Err(ApiError::invalid(format!(
                "The asset {asset_id} is not ready (status {}).",
                a.status
            )))
        }
        Some(_) => {}
    }
    let ia = store
        .insert_indexed(index_id, &asset_id, user_metadata)
        .ok_or_else(|| ApiError::not_found("asset", &asset_id))?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({ "_id": ia.id, "asset_id": ia.asset_id }),
    ))
}

pub(super) fn get_indexed(s: &Shared, index_id: &str, id: &str) -> Reply {
    let store = s.store();
    let ia = store
        .indexed_in(index_id, id)
        .ok_or_else(|| ApiError::not_found("indexed asset", id))?;
    ok_json(&to_json(ia))
}

pub(super) async fn patch_indexed(s: &Shared, index_id: &str, id: &str, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let patch = opt_object(&obj, "user_metadata")?;
    if let Some(p) = &patch {
        check_metadata(p, true)?;
    }
    let mut store = s.store();
    if store.indexed_in(index_id, id).is_none() {
        return Err(ApiError::not_found("indexed asset", id));
    }
    if let (Some(ia), Some(p)) = (store.indexed.get_mut(id), patch) {
        merge_metadata(&mut ia.user_metadata, p);
        ia.updated_at = now_rfc3339();
    }
    ok_empty()
}

pub(super) fn delete_indexed(s: &Shared, index_id: &str, id: &str) -> Reply {
    let mut store = s.store();
    if store.indexed_in(index_id, id).is_none() {
        return Err(ApiError::not_found("indexed asset", id));
    }
    store.indexed.remove(id);
    ok_empty()
}

// ---------- entity collections ----------

pub(super) fn list_collections(s: &Shared, q: &Query) -> Reply {
    let page = q.page()?;
    let name = q.first("name");
    let store = s.store();
    let items = newest_first(
        store
            .collections
            .values()
            .filter(|c| name.is_none_or(|n| c.name == n)),
    );
    ok_json(&page_json(&items, page))
}

pub(super) async fn create_collection(s: &Shared, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let name = req_str(&obj, "name")?;
    let description = opt_str(&obj, "description")?;
    let c = s.store().insert_collection(&name, description);
    Ok(json_response(StatusCode::CREATED, &to_json(&c)))
}

pub(super) fn get_collection(s: &Shared, id: &str) -> Reply {
    let store = s.store();
    let c = store
        .collections
        .get(id)
        .ok_or_else(|| ApiError::not_found("entity collection", id))?;
    ok_json(&to_json(c))
}

pub(super) async fn patch_collection(s: &Shared, id: &str, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let name = opt_str(&obj, "name")?;
    let description = opt_str(&obj, "description")?;
    let mut store = s.store();
    let c = store
        .collections
        .get_mut(id)
        .ok_or_else(|| ApiError::not_found("entity collection", id))?;
    if let Some(n) = name {
        c.name = n;
    }
    if description.is_some() {
        c.description = description;
    }
    c.updated_at = now_rfc3339();
    ok_json(&to_json(c))
}

/// Deleting a collection also deletes its entities (the API leaves this unstated).
pub(super) fn delete_collection(s: &Shared, id: &str) -> Reply {
    if s.store().delete_collection(id) {
        ok_empty()
    } else {
        Err(ApiError::not_found("entity collection", id))
    }
}

// ---------- entities ----------

pub(super) fn list_entities(s: &Shared, collection_id: &str, q: &Query) -> Reply {
    let page = q.page()?;
    let name = q.first("name");
    let status = q.first("status");
    let store = s.store();
    if !store.collections.contains_key(collection_id) {
        return Err(ApiError::not_found("entity collection", collection_id));
    }
    let items = newest_first(store.entities.values().filter(|e| {
        e.entity_collection_id == collection_id
            && name.is_none_or(|n| e.name == n)
            && status.is_none_or(|st| e.status == st)
    }));
    ok_json(&page_json(&items, page))
}

/// The validated fields of an entity to create.
struct EntitySpec {
    name: String,
    description: Option<String>,
    metadata: Map<String, Value>,
    asset_ids: Vec<String>,
}

fn entity_spec(obj: &Map<String, Value>) -> Result<EntitySpec, ApiError> {
    Ok(EntitySpec {
        name: req_str(obj, "name")?,
        description: opt_str(obj, "description")?,
        metadata: opt_object(obj, "metadata")?.unwrap_or_default(),
        asset_ids: req_str_list(obj, "asset_ids")?,
    })
}

fn missing_asset(id: &str) -> ApiError {
    ApiError::invalid(format!("The asset {id} does not exist."))
}

pub(super) async fn create_entity(s: &Shared, collection_id: &str, body: BodyStream) -> Reply {
    let obj = read_object(body).await?;
    let spec = entity_spec(&obj)?;
    let mut store = s.store();
    if !store.collections.contains_key(collection_id) {
        return Err(ApiError::not_found("entity collection", collection_id));
    }
    if let Some(bad) = store.first_missing_asset(&spec.asset_ids) {
        return Err(missing_asset(bad));
    }
    let e = store
        .insert_entity(
            collection_id,
            &spec.name,
            spec.description,
            spec.metadata,
            spec.asset_ids,
        )
        .ok_or_else(|| ApiError::not_found("entity collection", collection_id))?;
    Ok(json_response(StatusCode::CREATED, &to_json(&e)))
}

pub(super) async fn create_entities_bulk(
    s: &Shared,
    collection_id: &str,
    body: BodyStream,
) -> Reply {
    let obj = read_object(body).await?;
    let specs = match obj.get("entities") {
        None | Some(Value::Null) => return Err(ApiError::missing("entities")),
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "The entities parameter must be a non-empty array.",
            ))
        }
    };
    let mut store = s.store();
    if !store.collections.contains_key(collection_id) {
        return Err(ApiError::not_found("entity collection", collection_id));
    }
    let (mut created, mut errors) = (Vec::new(), Vec::new());
    for (i, item) in specs.iter().enumerate() {
        let spec = item
            .as_object()
            .ok_or_else(|| ApiError::invalid("Each entity must be an object."))
            .and_then(entity_spec)
            .and_then(|sp| match store.first_missing_asset(&sp.asset_ids) {
                Some(bad) => Err(missing_asset(bad)),
                None => Ok(sp),
            });
        let inserted = spec.and_then(|sp| {
            store
                .insert_entity(
                    collection_id,
                    &sp.name,
                    sp.description,
                    sp.metadata,
                    sp.asset_ids,
                )
                .ok_or_else(|| ApiError::not_found("entity collection", collection_id))
        });
        match inserted {
            Ok(e) => created.push(json!({ "_id": e.id, "name": e.name, "status": e.status })),
            Err(err) => errors.push(json!({
                "entity_index": i,
                "entity_name": item.get("name").and_then(Value::as_str),
                "error_reason": err.message(),
            })),
        }
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "success_count": created.len(),
            "failed_count": errors.len(),
            "entities": created,
            "errors": errors,
        }),
    ))
}

pub(super) fn get_entity(s: &Shared, collection_id: &str, id: &str) -> Reply {
    let mut store = s.store();
    let e = store
        .entity_in(collection_id, id)
        .ok_or_else(|| ApiError::not_found("entity", id))?;
    ok_json(&to_json(e))
}

/// `metadata`, when given, replaces the entity's metadata in full.
pub(super) async fn patch_entity(
    s: &Shared,
    collection_id: &str,
    id: &str,
    body: BodyStream,
) -> Reply {
    let obj = read_object(body).await?;
    let name = opt_str(&obj, "name")?;
    let description = opt_str(&obj, "description")?;
    let metadata = opt_object(&obj, "metadata")?;
    let mut store = s.store();
    let e = store
        .entity_in(collection_id, id)
        .ok_or_else(|| ApiError::not_found("entity", id))?;
    if let Some(n) = name {
        e.name = n;
    }
    if description.is_some() {
        e.description = description;
    }
    if let Some(m) = metadata {
        e.metadata = m;
    }
    e.updated_at = now_rfc3339();
    ok_json(&to_json(e))
}

pub(super) fn delete_entity(s: &Shared, collection_id: &str, id: &str) -> Reply {
    let mut store = s.store();
    if store.entity_in(collection_id, id).is_none() {
        return Err(ApiError::not_found("entity", id));
    }
    store.entities.remove(id);
    ok_empty()
}

/// `POST` links assets to an entity, `DELETE` unlinks them; the last asset cannot go.
pub(super) async fn link_assets(
    s: &Shared,
    collection_id: &str,
    id: &str,
    body: BodyStream,
    add: bool,
) -> Reply {
    let obj = read_object(body).await?;
    let ids = req_str_list(&obj, "asset_ids")?;
    let mut store = s.store();
    if add {
        if let Some(bad) = store.first_missing_asset(&ids) {
            return Err(missing_asset(bad));
        }
    }
    let e = store
        .entity_in(collection_id, id)
        .ok_or_else(|| ApiError::not_found("entity", id))?;
    if add {
        for a in ids {
            if !e.asset_ids.contains(&a) {
                e.asset_ids.push(a);
            }
        }
    } else {
        let remaining: Vec<String> = e
            .asset_ids
            .iter()
            .filter(|a| !ids.contains(a))
            .cloned()
            .collect();
        if remaining.is_empty() {
            return Err(ApiError::invalid(
                "An entity must keep at least one asset; the last asset cannot be removed.",
            ));
        }
        e.asset_ids = remaining;
    }
    e.updated_at = now_rfc3339();
    ok_json(&to_json(e))
}
