//! `guards.protected`: a legal hold on indexes, entity collections and assets
//! (docs/architecture.md, "Protected resources").
//!
//! A held resource is read-only through the gateway, whoever asks: every request on a known route
//! other than a read (GET, HEAD) whose path names a held `index_id`, `entity_collection_id` or
//! `asset_id` is refused with 403 `resource_protected`, and so is one whose body names a held
//! resource on a route that takes ids in its body ([`BODY_IDS`]). `allow_additions` lets new items
//! into a held index (`POST /indexes/{id}/indexed-assets`, `POST /tasks`) and nothing else.
//!
//! Bodies are read only while a hold is configured, only on the routes of [`BODY_IDS`], and only
//! as far as needed: a JSON body whole, up to [`JSON_LIMIT`]; a multipart upload up to its first
//! file part (at most [`FORM_HEAD_LIMIT`]), the rest streamed on. What was read is forwarded
//! byte for byte, followed by what was not.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BoxError, GatewayBody};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::gate::{Admit, AdmitAsync, AsyncGateLayer, GateLayer};
use crate::metrics::Metrics;
use crate::overload::ClientBodyError;

mod form;
mod json;

use form::{form_boundary, scan_form, Scan, Watch, Watched};
use json::{Strict, DUPLICATE};

/// `guards.protected`: resources under a legal hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedSettings {
    /// Index ids.
    pub indexes: Vec<String>,
    /// Entity collection ids.
    pub entity_collections: Vec<String>,
    /// Asset ids.
    pub assets: Vec<String>,
    /// Shown to a refused client after the protected id.
    pub message: Option<String>,
    /// Let new items into a held index (`POST /indexes/{id}/indexed-assets`, `POST /tasks`);
    /// default off.
    pub allow_additions: bool,
}

/// The rule id protection refuses under (denied records, `tl_gateway_policy_denials_total`).
pub const PROTECTED_RULE: &str = "guards.protected";

/// A JSON body on a route of [`BODY_IDS`] is read up to this many bytes; a longer one is refused
/// with 413 `request_body_too_large` (the API's own bodies that name resources are far smaller).
pub const JSON_LIMIT: usize = 64 * 1024;

/// A multipart upload of [`BODY_IDS`] is read up to its first file part, at most this far.
pub const FORM_HEAD_LIMIT: usize = 64 * 1024;

/// What kind of resource an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An index.
    Index,
    /// An entity collection.
    Collection,
    /// An asset.
    Asset,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Collection => "entity collection",
            Kind::Asset => "asset",
        }
    }
}

/// Where a route's body names resources: a field path (`[]` is every element of an array) and the
/// kind of id found there (any string at or below it).
pub type BodyField = (&'static [&'static str], Kind);

/// The routes whose request bodies name indexes, entity collections or assets
/// (/work/shared/twelvelabs-api.md): route id → fields. JSON unless the route is multipart, where
/// the field is a form field. Reads that name resources (`POST /search`, analyze, embed) change
/// nothing and are not listed.
pub const BODY_IDS: &[(&str, &[BodyField])] = &[
    (
        "indexes.indexed_assets.create",
        &[(&["asset_id"], Kind::Asset)],
    ),
    (
        "entity_collections.entities.create",
        &[(&["asset_ids"], Kind::Asset)],
    ),
    (
        "entity_collections.entities.bulk.create",
        &[(&["entities", "[]", "asset_ids"], Kind::Asset)],
    ),
    (
        "entity_collections.entities.assets.create",
        &[(&["asset_ids"], Kind::Asset)],
    ),
    (
        "entity_collections.entities.assets.delete",
        &[(&["asset_ids"], Kind::Asset)],
    ),
    (
        "knowledge_stores.items.create",
        &[(&["asset_id"], Kind::Asset)],
    ),
    ("tasks.create", &[(&["index_id"], Kind::Index)]),
];

/// The routes that add new items to the index in their path or body (`allow_additions`).
const ADDITIONS: [&str; 2] = ["indexes.indexed_assets.create", "tasks.create"];

/// Protected resources, compiled: what a request may not touch, whoever sends it.
#[derive(Debug, Default)]
pub struct Protection {
    indexes: HashSet<String>,
    collections: HashSet<String>,
    assets: HashSet<String>,
    message: Option<String>,
    allow_additions: bool,
}

/// What protects a resource a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// `index`, `entity collection` or `asset`.
    pub kind: &'static str,
    /// The protected id.
    pub id: String,
}

impl Protection {
    /// Compile `guards.protected`.
    pub fn new(settings: &ProtectedSettings) -> Self {
        Protection {
            indexes: settings.indexes.iter().cloned().collect(),
            collections: settings.entity_collections.iter().cloned().collect(),
            assets: settings.assets.iter().cloned().collect(),
            message: settings.message.clone(),
            allow_additions: settings.allow_additions,
        }
    }

    /// Whether nothing is protected.
    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty() && self.collections.is_empty() && self.assets.is_empty()
    }

    /// Whether a forced asset delete needs the reference lookup to be judged (some index or
    /// entity collection is protected).
    pub fn needs_lookup(&self) -> bool {
        !self.indexes.is_empty() || !self.collections.is_empty()
    }

    fn held(&self, kind: Kind) -> &HashSet<String> {
        match kind {
            Kind::Index => &self.indexes,
            Kind::Collection => &self.collections,
            Kind::Asset => &self.assets,
        }
    }

    /// Whether `allow_additions` lets `op` add to a held index.
    fn adds(&self, op: &Operation) -> bool {
        self.allow_additions && op.route.is_some_and(|r| ADDITIONS.contains(&r.id.as_str()))
    }

    /// What the request's path shows it touches, if protected: any known route other than a read
    /// (GET, HEAD) whose `index_id`, `entity_collection_id` or `asset_id` is protected — except,
    /// with `allow_additions`, adding to a held index. A request on a route the gateway does not
    /// know (`routes.unknown: forward`) with a method that is not safe is refused when any of its
    /// path segments is a protected id: what it does cannot be judged.
    pub fn protected_in_path(&self, op: &Operation) -> Option<Protected> {
        if self.is_empty() {
            return None;
        }
        match op.route {
            // HEAD is classified as the GET route.
            Some(route) if route.method == Method::GET => None,
            Some(_) => [
                ("index_id", Kind::Index),
                ("entity_collection_id", Kind::Collection),
                ("asset_id", Kind::Asset),
            ]
            .into_iter()
            .filter(|(_, kind)| !(*kind == Kind::Index && self.adds(op)))
            .find_map(|(param, kind)| {
                op.param(param)
                    .filter(|id| self.held(kind).contains(*id))
                    .map(|id| Protected {
                        kind: kind.name(),
                        id: id.to_owned(),
                    })
            }),
            None if crate::routes::is_safe(&op.method) => None,
            None => op.path.split('/').find_map(|segment| {
                [Kind::Index, Kind::Collection, Kind::Asset]
                    .into_iter()
                    .find(|kind| self.held(*kind).contains(segment))
                    .map(|kind| Protected {
                        kind: kind.name(),
                        id: segment.to_owned(),
                    })
            }),
        }
    }

    /// The body fields of `op`'s route that can name a held resource (none on the hot path:
    /// reads, routes without such fields, kinds nothing of is held, additions allowed).
    pub fn body_fields(&self, op: &Operation) -> &'static [BodyField] {
        let Some(route) = op.route else { return &[] };
        if route.method == Method::GET || route.body == crate::routes::BodyKind::None {
            return &[];
        }
        let Some((_, fields)) = BODY_IDS.iter().find(|(id, _)| *id == route.id.as_str()) else {
            return &[];
        };
        let needed = fields.iter().any(|(_, kind)| {
            !(self.held(*kind).is_empty() || *kind == Kind::Index && self.adds(op))
        });
        if needed {
            fields
        } else {
            &[]
        }
    }

    /// The first held id among `ids` of `kind`.
    fn find_held<'a>(
        &self,
        kind: Kind,
        mut ids: impl Iterator<Item = &'a str>,
    ) -> Option<Protected> {
        ids.find(|id| self.held(kind).contains(*id))
            .map(|id| Protected {
                kind: kind.name(),
                id: id.to_owned(),
            })
    }

    /// What a forced asset delete would unlink that is protected, if anything.
    pub fn protected_in_references(&self, references: &super::References) -> Option<Protected> {
        references
            .indexed_assets
            .iter()
            .find(|a| self.indexes.contains(&a.index_id))
            .map(|a| Protected {
                kind: "index",
                id: a.index_id.clone(),
            })
            .or_else(|| {
                references
                    .entities
                    .iter()
                    .find(|e| self.collections.contains(&e.collection_id))
                    .map(|e| Protected {
                        kind: "entity collection",
                        id: e.collection_id.clone(),
                    })
            })
    }

    /// The refusal for a request touching `protected`.
    pub fn refusal(&self, protected: Protected, how: &str) -> GatewayError {
        let mut message = format!("{} {} is protected: {how}", protected.kind, protected.id);
        if let Some(extra) = &self.message {
            message.push_str(". ");
            message.push_str(extra);
        }
        GatewayError::ResourceProtected {
            id: protected.id,
            message: Arc::from(message),
        }
    }

    /// A refusal naming no id: the request could not be shown to stay clear of the hold.
    fn refusal_unknown(&self, why: &str) -> GatewayError {
        let mut message = why.to_owned();
        if let Some(extra) = &self.message {
            message.push_str(". ");
            message.push_str(extra);
        }
        GatewayError::ResourceProtected {
            id: "unknown".into(),
            message: Arc::from(message),
        }
    }

    /// Refuse a forced delete whose references reach into a protected index or collection — or
    /// could: a listing cut short by `max_pages`, or an item without its index or collection id,
    /// cannot show that it does not.
    pub fn check_references(&self, references: &super::References) -> Result<(), GatewayError> {
        if self.needs_lookup() {
            let unknown = !references.complete
                || references
                    .indexed_assets
                    .iter()
                    .any(|a| a.index_id.is_empty())
                || references
                    .entities
                    .iter()
                    .any(|e| e.collection_id.is_empty());
            if unknown {
                return Err(self.refusal_unknown("this forced delete may reach a protected index or entity collection: its references could not all be listed (guards.force_delete.max_pages) or named"));
            }
        }
        match self.protected_in_references(references) {
            None => Ok(()),
            Some(protected) => {
                let how = match protected.kind {
                    "index" => "this forced delete would unlink an indexed asset in it",
                    _ => "this forced delete would unlink an entity in it",
                };
                Err(self.refusal(protected, how))
            }
        }
    }

    /// Judge a JSON body of a route with `fields`: a held id at any of them refuses (403); a body
    /// that is not one JSON value, or has a repeated key, cannot be judged (400).
    pub fn check_json(&self, fields: &[BodyField], bytes: &[u8]) -> Result<(), GatewayError> {
        let value: Strict = serde_json::from_slice(bytes).map_err(|error| {
            if error.to_string().starts_with(DUPLICATE) {
                GatewayError::RequestAmbiguous("a key repeated in a JSON object of the request body")
            } else {
                GatewayError::RequestBodyInvalid(format!(
                    "the request body is not valid JSON ({error}), so it cannot be checked against guards.protected"
                ))
            }
        })?;
        for (path, kind) in fields {
            let mut ids = Vec::new();
            value.strings_at(path, &mut ids);
            if let Some(protected) = self.find_held(*kind, ids.into_iter()) {
                return Err(self.refusal(
                    protected,
                    "a request naming it in its body cannot change it through this gateway",
                ));
            }
        }
        Ok(())
    }
}

/// The protection layers: what the path shows (a plain gate), then what the body names (only for
/// the routes of [`BODY_IDS`]); after policy, before approvals. Both refuse with 403
/// `resource_protected`; references are checked by the guard once listed.
#[derive(Clone, Debug)]
pub struct ProtectResources {
    protection: Arc<Protection>,
    metrics: Arc<Metrics>,
}

/// The two protection layers, path gate outermost.
pub type ProtectLayers =
    tower::layer::util::Stack<AsyncGateLayer<ProtectBodies>, GateLayer<ProtectResources>>;

impl ProtectResources {
    /// The layers (none when nothing is protected).
    pub fn layer(protection: Arc<Protection>, metrics: Arc<Metrics>) -> Option<ProtectLayers> {
        (!protection.is_empty()).then(|| {
            tower::layer::util::Stack::new(
                AsyncGateLayer::new(ProtectBodies {
                    protection: protection.clone(),
                    metrics: metrics.clone(),
                }),
                GateLayer::new(ProtectResources {
                    protection,
                    metrics,
                }),
            )
        })
    }
}

impl<B> Admit<B> for ProtectResources {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        let Some(op) = req.extensions().get::<Operation>() else {
            return Err(GatewayError::Internal(
                "protection could not be checked: request not classified",
            ));
        };
        match self.protection.protected_in_path(op) {
            None => Ok(()),
            Some(protected) => {
                count_protected(&self.metrics);
                tracing::info!(protected = %protected.id, kind = protected.kind, operation = op.route_id(), "refused: protected resource");
                Err(self.protection.refusal(
                    protected,
                    "it cannot be deleted or changed through this gateway",
                ))
            }
        }
    }
}

pub(super) fn count_protected(metrics: &Metrics) {
    metrics
        .policy_denials
        .with_label_values(&[PROTECTED_RULE])
        .inc();
}

/// The body half of protection: reads the body of a route of [`BODY_IDS`] as far as needed.
#[derive(Clone, Debug)]
pub struct ProtectBodies {
    protection: Arc<Protection>,
    metrics: Arc<Metrics>,
}

impl AdmitAsync<GatewayBody> for ProtectBodies {
    fn concerns(&self, req: &Request<GatewayBody>) -> bool {
        req.extensions()
            .get::<Operation>()
            .is_some_and(|op| !self.protection.body_fields(op).is_empty())
    }

    async fn admit(self, req: Request<GatewayBody>) -> Result<Request<GatewayBody>, GatewayError> {
        let fields = match req.extensions().get::<Operation>() {
            Some(op) => self.protection.body_fields(op),
            None => return Ok(req),
        };
        let multipart = req
            .extensions()
            .get::<Operation>()
            .and_then(|op| op.route)
            .is_some_and(|r| r.body == crate::routes::BodyKind::Multipart);
        let (parts, body) = req.into_parts();
        let result = if multipart {
            self.check_form(fields, &parts.headers, body).await
        } else {
            self.check_json(fields, &parts.headers, body).await
        };
        match result {
            Ok(body) => Ok(Request::from_parts(parts, body)),
            Err(error) => {
                if let GatewayError::ResourceProtected { id, .. } = &error {
                    count_protected(&self.metrics);
                    let operation = parts.extensions.get::<Operation>().map(Operation::route_id);
                    tracing::info!(protected = %id, operation, "refused: protected resource named in the body");
                }
                Err(error)
            }
        }
    }
}

impl ProtectBodies {
    async fn check_json(
        &self,
        fields: &[BodyField],
        headers: &HeaderMap,
        mut body: GatewayBody,
    ) -> Result<GatewayBody, GatewayError> {
        if let Some(media) = headers.get(header::CONTENT_TYPE) {
            let media = media.to_str().unwrap_or_default();
            let essence = media.split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(GatewayError::RequestBodyInvalid(format!(
                    "this route takes an application/json body (content-type {media:?}); guards.protected checks it"
                )));
            }
        }
        if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
            if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
                return Err(GatewayError::RequestBodyInvalid(
                    "an encoded (compressed) JSON body cannot be checked against guards.protected; send it unencoded".into(),
                ));
            }
        }
        if declared_length(headers).is_some_and(|n| n > JSON_LIMIT as u64) {
            return Err(too_large());
        }
        let mut bytes = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(body_error)?;
            match frame.into_data() {
                Ok(data) => {
                    if bytes.len() + data.len() > JSON_LIMIT {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&data);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        let bytes = bytes.freeze();
        self.protection.check_json(fields, &bytes)?;
        Ok(Replay::body(bytes, None, trailers))
    }

    async fn check_form(
        &self,
        fields: &[BodyField],
        headers: &HeaderMap,
        mut body: GatewayBody,
    ) -> Result<GatewayBody, GatewayError> {
        let boundary = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(form_boundary)
            .ok_or_else(|| {
                GatewayError::RequestBodyInvalid(
                    "this route takes a multipart/form-data body with a boundary; guards.protected checks its fields".into(),
                )
            })?;
        let names: Vec<(&'static str, Kind)> = fields
            .iter()
            .filter_map(|(path, kind)| path.first().map(|name| (*name, *kind)))
            .collect();
        let mut head = BytesMut::new();
        let mut ended = false;
        let form = loop {
            match scan_form(&head, &boundary, ended) {
                Scan::More if ended => break None,
                Scan::More => {}
                Scan::Done(form) => break Some(form),
                Scan::Malformed(why) => return Err(GatewayError::RequestBodyInvalid(why.into())),
            }
            if head.len() > FORM_HEAD_LIMIT {
                return Err(self.protection.refusal_unknown(&format!(
                    "the form fields before the first file part exceed {} KiB, so the index this upload goes to cannot be checked against guards.protected",
                    FORM_HEAD_LIMIT / 1024
                )));
            }
            match body.frame().await {
                None => ended = true,
                Some(frame) => {
                    if let Ok(data) = frame.map_err(body_error)?.into_data() {
                        head.extend_from_slice(&data);
                    }
                    // Trailers of a form upload: not forwarded (none is defined).
                }
            }
        };
        let form = form.unwrap_or_default();
        for (name, kind) in names.iter().copied() {
            let values: Vec<&str> = form
                .fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.is_empty() && !self.protection.held(kind).is_empty() {
                return Err(self.protection.refusal_unknown(&format!(
                    "the upload names no {name} before its first file part, so it cannot be checked against the {} under guards.protected; send {name} first",
                    match kind {
                        Kind::Index => "indexes",
                        Kind::Collection => "entity collections",
                        Kind::Asset => "assets",
                    }
                )));
            }
            if let Some(protected) = self.protection.find_held(kind, values.into_iter()) {
                return Err(self.protection.refusal(
                    protected,
                    "nothing can be added to it through this gateway (guards.protected.allow_additions is off)",
                ));
            }
        }
        // The rest is watched for a checked field coming again after the file part.
        let mut watch = Watch::new(&boundary, names.iter().map(|(name, _)| *name).collect());
        if let Some(file_at) = form.file_at {
            watch
                .feed(&head[file_at..])
                .map_err(|why| GatewayError::RequestBodyInvalid(why.into()))?;
        }
        let rest = (!ended).then(|| {
            crate::body::boxed(Watched {
                inner: body,
                watch,
                failed: false,
            })
        });
        Ok(Replay::body(head.freeze(), rest, None))
    }
}

/// The request's own `Content-Length`, if it sent one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn too_large() -> GatewayError {
    GatewayError::RequestBodyTooLarge(format!(
        "the request body is longer than {} KiB; on this route the gateway reads it to check it against guards.protected",
        JSON_LIMIT / 1024
    ))
}

/// The gateway's answer to a client body that failed while protection read it.
fn body_error(error: BoxError) -> GatewayError {
    match ClientBodyError::find(&*error) {
        Some(client) => client.to_gateway_error(),
        None => GatewayError::RequestBodyInvalid(format!("the request body failed: {error}")),
    }
}

/// A request body replayed: the bytes protection read, then the rest of the client's body (not
/// read), then the trailers protection saw.
struct Replay {
    head: Option<Bytes>,
    rest: Option<GatewayBody>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    fn body(head: Bytes, rest: Option<GatewayBody>, trailers: Option<HeaderMap>) -> GatewayBody {
        crate::body::boxed(Replay {
            head: (!head.is_empty()).then_some(head),
            rest,
            trailers,
        })
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(rest) = self.rest.as_mut() {
            match std::task::ready!(Pin::new(rest).poll_frame(cx)) {
                Some(frame) => return Poll::Ready(Some(frame)),
                None => self.rest = None,
            }
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let mut hint = match &self.rest {
            Some(rest) => rest.size_hint(),
            None => SizeHint::with_exact(0),
        };
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + head);
        }
        hint.set_lower(hint.lower() + head);
        hint
    }
}

#[cfg(test)]
mod tests;
