//! The TwelveLabs v1.3 route table and a segment-trie matcher over it.
//!
//! Every operation of the official SDK (twelvelabs 1.3.6) is one `Route`: method, wire template with the
//! SDK's snake_case parameter names, documented query parameters, body kind and whether it destroys data.
//! Matching tries literal segments before parameters and never backtracks, so
//! `/assets/multipart-uploads` can never be read as an asset id.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use http::Method;
use ParamKind::{Bool, Integer, List, Number, Text};

pub mod gateway;

/// Stable route id, e.g. "assets.delete".
/// The methods the gateway accepts at all, matched exactly (hyper also accepts `delete` or
/// `DELETEX` as extension methods; those, TRACE and CONNECT are refused).
pub const ACCEPTED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Whether `method` is one of the [`ACCEPTED_METHODS`], exactly.
pub fn is_accepted(method: &Method) -> bool {
    ACCEPTED_METHODS.contains(method)
}

/// Safe methods (read-only by definition): forwarded on unknown routes under `forward_safe`, never
/// audited on unknown routes, never with a body for GET and HEAD.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Route ids the gateway's own code refers to (the rest appear only in the table and in
/// configuration).
pub mod ids {
    use super::RouteId;
    /// `DELETE /assets/{asset_id}` (the one route with `force`).
    pub const ASSETS_DELETE: RouteId = RouteId("assets.delete");
    /// `GET /assets/{asset_id}`.
    pub const ASSETS_RETRIEVE: RouteId = RouteId("assets.retrieve");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub &'static str);

impl RouteId {
    /// The id as a string.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// How a query parameter is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `true`/`false`.
    Bool,
    /// A whole number.
    Integer,
    /// A decimal number.
    Number,
    /// Free text; also object-typed filters such as `duration`, which SDKs send as `duration[gte]=5`.
    Text,
    /// May repeat (e.g. `asset_ids`).
    List,
}

/// One documented query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryParam {
    /// Wire name of the parameter.
    pub name: &'static str,
    /// How its value is typed.
    pub kind: ParamKind,
}

/// What request body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// `application/json`.
    Json,
    /// `multipart/form-data`.
    Multipart,
}

/// One TwelveLabs v1.3 operation.
#[derive(Debug)]
pub struct Route {
    /// Stable id, e.g. "assets.delete".
    pub id: RouteId,
    /// HTTP method, matched exactly.
    pub method: Method,
    /// Wire template with SDK (snake_case) parameter names, including the version: "/v1.3/assets/{asset_id}".
    pub template: &'static str,
    /// Documented query parameters.
    pub query: &'static [QueryParam],
    /// Request body kind.
    pub body: BodyKind,
    /// Deletes, overwrites or irreversibly cancels data (all DELETEs plus docs/architecture.md, "The TwelveLabs API surface").
    pub destructive: bool,
}

/// Routes are identified by their id.
impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Route {}

impl Route {
    /// The documented query parameter called `name`, if any.
    pub fn query_param(&self, name: &str) -> Option<&QueryParam> {
        self.query.iter().find(|p| p.name == name)
    }

    /// Names of the path parameters in order, e.g. ["asset_id"].
    pub fn path_params(&self) -> Vec<&'static str> {
        self.template.split('/').filter_map(param_name).collect()
    }
}

/// Result of looking up a path (segments after the version) and method.
#[derive(Debug)]
pub enum Lookup<'t, 'a> {
    /// The route, with each path parameter's name and value in order.
    Found {
        /// The matched route (the GET route for HEAD).
        route: &'t Route,
        /// Path parameters in template order.
        params: Vec<(&'static str, &'a str)>,
    },
    /// The path is known but not for this method.
    MethodNotAllowed {
        /// Methods the path accepts (HEAD included where GET exists).
        allowed: Vec<Method>,
    },
    /// No route has this path.
    NotFound,
    /// A segment in a parameter position is not a valid id.
    BadParam {
        /// Name of the offending parameter.
        name: &'static str,
    },
}

/// The route table and its segment trie.
#[derive(Debug)]
pub struct RouteTable {
    routes: &'static [Route],
    nodes: Vec<Node>,
    ids: HashMap<&'static str, usize>,
}

/// One trie node: a path prefix.
#[derive(Debug, Default)]
struct Node {
    /// Literal segment → child node.
    literals: HashMap<&'static str, usize>,
    /// Parameter name and child node; tried only when no literal matches.
    param: Option<(&'static str, usize)>,
    /// Methods served at exactly this prefix, in `method_rank` order, with their route index.
    methods: Vec<(Method, usize)>,
}

impl RouteTable {
    /// The API version (first path segment) this table describes.
    pub const VERSION: &'static str = "v1.3";

    /// The TwelveLabs v1.3 table (built once, e.g. in a std::sync::OnceLock).
    pub fn v1_3() -> &'static RouteTable {
        static TABLE: OnceLock<RouteTable> = OnceLock::new();
        TABLE.get_or_init(|| RouteTable::build(ROUTES))
    }

    fn build(routes: &'static [Route]) -> RouteTable {
        let mut nodes = vec![Node::default()];
        let mut ids = HashMap::new();
        for (idx, route) in routes.iter().enumerate() {
            ids.entry(route.id.as_str()).or_insert(idx);
            let mut at = 0;
            for seg in template_segments(route.template) {
                let name = param_name(seg);
                let existing = match name {
                    Some(_) => nodes[at].param.map(|(_, child)| child),
                    None => nodes[at].literals.get(seg).copied(),
                };
                at = match existing {
                    Some(child) => child,
                    None => {
                        let fresh = nodes.len();
                        nodes.push(Node::default());
                        match name {
                            // A name clash at one position keeps the first name; a test checks there is none.
                            Some(name) => nodes[at].param = Some((name, fresh)),
                            None => {
                                nodes[at].literals.insert(seg, fresh);
                            }
                        }
                        fresh
                    }
                };
            }
            let node = &mut nodes[at];
            if !node.methods.iter().any(|(m, _)| *m == route.method) {
                node.methods.push((route.method.clone(), idx));
                node.methods.sort_by_key(|(m, _)| method_rank(m));
            }
        }
        RouteTable { routes, nodes, ids }
    }

    /// All routes, in table order.
    pub fn routes(&self) -> &[Route] {
        self.routes
    }

    /// The route with this id.
    pub fn by_id(&self, id: &str) -> Option<&Route> {
        self.ids.get(id).and_then(|&i| self.routes.get(i))
    }

    /// Routes whose template has the same shape as `template` (literal segments equal, parameters in the same
    /// positions, parameter names ignored, so both "/v1.3/indexes/{index_id}" and "/v1.3/indexes/{index-id}" work),
    /// optionally restricted to one method.
    pub fn by_template(&self, template: &str, method: Option<&Method>) -> Vec<&Route> {
        self.routes
            .iter()
            .filter(|r| method.is_none_or(|m| r.method == *m))
            .filter(|r| same_shape(r.template, template))
            .collect()
    }

    /// Look up `segments` (the path split on '/', WITHOUT the leading "v1.3" segment) for `method`.
    /// HEAD is looked up as GET (the returned route is the GET route).
    pub fn lookup<'t, 'a>(&'t self, method: &Method, segments: &[&'a str]) -> Lookup<'t, 'a> {
        let mut at = 0;
        let mut params = Vec::new();
        for &seg in segments {
            let Some(node) = self.nodes.get(at) else {
                return Lookup::NotFound;
            };
            // Literal first and no backtracking: a literal match commits to that branch.
            if let Some(&child) = node.literals.get(seg) {
                at = child;
            } else if let Some((name, child)) = node.param {
                let valid = if name == "client_id" {
                    crate::ids::is_client_id(seg)
                } else {
                    valid_param(seg)
                };
                if !valid {
                    return Lookup::BadParam { name };
                }
                params.push((name, seg));
                at = child;
            } else {
                return Lookup::NotFound;
            }
        }
        let Some(node) = self.nodes.get(at) else {
            return Lookup::NotFound;
        };
        if node.methods.is_empty() {
            return Lookup::NotFound;
        }
        let wanted = if *method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let found = node.methods.iter().find(|(m, _)| m == wanted);
        match found.and_then(|&(_, i)| self.routes.get(i)) {
            Some(route) => Lookup::Found { route, params },
            None => {
                let mut allowed = Vec::with_capacity(node.methods.len() + 1);
                for (m, _) in &node.methods {
                    allowed.push(m.clone());
                    if *m == Method::GET {
                        allowed.push(Method::HEAD);
                    }
                }
                Lookup::MethodNotAllowed { allowed }
            }
        }
    }
}

/// Whether a path segment is an acceptable id for a parameter: 1..=256 chars of [A-Za-z0-9._~-], not "." or "..".
pub fn valid_param(segment: &str) -> bool {
    (1..=256).contains(&segment.len())
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// The parameter name of a template segment `{name}`, or `None` for a literal.
fn param_name(seg: &str) -> Option<&str> {
    seg.strip_prefix('{')?.strip_suffix('}')
}

/// Segments of a template after the leading "/v1.3".
fn template_segments(template: &'static str) -> impl Iterator<Item = &'static str> {
    template.split('/').skip(2)
}

/// Whether two templates have the same literals and parameter positions.
fn same_shape(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                let same = match (param_name(x), param_name(y)) {
                    (Some(_), Some(_)) => true,
                    (None, None) => x == y,
                    _ => false,
                };
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Order in which `MethodNotAllowed` lists methods.
fn method_rank(m: &Method) -> u8 {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        _ => 6,
    }
}

/// Shorthand for the query lists below.
const fn q(name: &'static str, kind: ParamKind) -> QueryParam {
    QueryParam { name, kind }
}

// The OpenAPI types range/metadata filters (`duration`, `fps`, `user_metadata`, ...) as objects. ParamKind has
// no object kind; SDKs flatten them into bracketed keys (`duration[gte]=5`), so the value is opaque text.
const OBJECT: ParamKind = Text;

const NO_Q: &[QueryParam] = &[];
const PAGED: &[QueryParam] = &[q("page", Integer), q("page_limit", Integer)];
const SORTED: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("sort_by", Text),
    q("sort_option", Text),
];
const INDEXES_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("sort_by", Text),
    q("sort_option", Text),
    q("index_name", Text),
    q("model_options", Text),
    q("model_family", Text),
    q("created_at", Text),
    q("updated_at", Text),
];
const INDEXED_ASSETS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("sort_by", Text),
    q("sort_option", Text),
    q("status", List),
    q("filename", Text),
    q("duration", OBJECT),
    q("fps", OBJECT),
    q("width", OBJECT),
    q("height", OBJECT),
    q("size", OBJECT),
    q("created_at", Text),
    q("updated_at", Text),
    q("user_metadata", OBJECT),
];
// Same as indexed assets but without `status` (per the OpenAPI).
const VIDEOS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("sort_by", Text),
    q("sort_option", Text),
    q("filename", Text),
    q("duration", OBJECT),
    q("fps", OBJECT),
    q("width", OBJECT),
    q("height", OBJECT),
    q("size", OBJECT),
    q("created_at", Text),
    q("updated_at", Text),
    q("user_metadata", OBJECT),
];
const INDEXED_ITEM: &[QueryParam] = &[q("embedding_option", List), q("transcription", Bool)];
const ASSETS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("asset_ids", List),
    q("asset_types", List),
    q("filename", Text),
];
const ASSET_DELETE: &[QueryParam] = &[q("force", Bool)];
// SDK-only route; the SDK types `include` as a sequence of "words" | "sentences" | "utterances".
const TRANSCRIPTION: &[QueryParam] = &[q("include", List)];
const TASKS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("sort_by", Text),
    q("sort_option", Text),
    q("index_id", Text),
    q("status", List),
    q("filename", Text),
    q("duration", Number),
    q("width", Integer),
    q("height", Integer),
    q("created_at", Text),
    q("updated_at", Text),
];
const ENTITY_COLLECTIONS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("name", Text),
    q("sort_by", Text),
    q("sort_option", Text),
];
const ENTITIES_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("name", Text),
    q("status", Text),
    q("sort_by", Text),
    q("sort_option", Text),
];
const SEARCH_PAGE: &[QueryParam] = &[q("include_user_metadata", Bool)];
const EMBED_TASKS_LIST: &[QueryParam] = &[
    q("started_at", Text),
    q("ended_at", Text),
    q("status", Text),
    q("page", Integer),
    q("page_limit", Integer),
];
const EMBED_TASK: &[QueryParam] = &[q("embedding_option", List)];
const BATCHES_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("status", List),
    q("analysis_mode", List),
];
// `video_id` is only in the OpenAPI, not in SDK 1.3.6; kept so clients of either can use it.
const ANALYZE_TASKS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("status", Text),
    q("video_url", Text),
    q("asset_id", Text),
    q("video_id", Text),
    q("analysis_mode", Text),
];
const KS_ITEMS_LIST: &[QueryParam] = &[
    q("page", Integer),
    q("page_limit", Integer),
    q("sort_by", Text),
    q("sort_option", Text),
    q("status", List),
];

/// `safe` or `destructive` in the table below.
macro_rules! destructive {
    (safe) => {
        false
    };
    (destructive) => {
        true
    };
}

/// One line per route: method, template after "/v1.3", id, query list, body kind, destructive flag.
macro_rules! route_table {
    ($($method:ident $template:literal $id:literal $query:ident $body:ident $destr:ident;)*) => {
        &[$(Route {
            id: RouteId($id),
            method: Method::$method,
            template: concat!("/v1.3", $template),
            query: $query,
            body: BodyKind::$body,
            destructive: destructive!($destr),
        },)*]
    };
}

/// Every v1.3 operation, grouped as in the TwelveLabs API reference (docs/architecture.md, "The TwelveLabs API surface").
static ROUTES: &[Route] = route_table! {
    // Columns: method, template after "/v1.3", id, query parameters, body kind, destructive.
    // Indexes
    GET    "/indexes"                                                                             "indexes.list"                                   INDEXES_LIST            None      safe;
    POST   "/indexes"                                                                             "indexes.create"                                 NO_Q                    Json      safe;
    GET    "/indexes/{index_id}"                                                                  "indexes.retrieve"                               NO_Q                    None      safe;
    PUT    "/indexes/{index_id}"                                                                  "indexes.update"                                 NO_Q                    Json      safe;
    DELETE "/indexes/{index_id}"                                                                  "indexes.delete"                                 NO_Q                    None      destructive;
    // Indexed assets
    GET    "/indexes/{index_id}/indexed-assets"                                                   "indexes.indexed_assets.list"                    INDEXED_ASSETS_LIST     None      safe;
    POST   "/indexes/{index_id}/indexed-assets"                                                   "indexes.indexed_assets.create"                  NO_Q                    Json      safe;
    GET    "/indexes/{index_id}/indexed-assets/{indexed_asset_id}"                                "indexes.indexed_assets.retrieve"                INDEXED_ITEM            None      safe;
    PATCH  "/indexes/{index_id}/indexed-assets/{indexed_asset_id}"                                "indexes.indexed_assets.update"                  NO_Q                    Json      destructive;
    DELETE "/indexes/{index_id}/indexed-assets/{indexed_asset_id}"                                "indexes.indexed_assets.delete"                  NO_Q                    None      destructive;
    // Indexed videos (legacy)
    GET    "/indexes/{index_id}/videos"                                                           "indexes.videos.list"                            VIDEOS_LIST             None      safe;
    GET    "/indexes/{index_id}/videos/{video_id}"                                                "indexes.videos.retrieve"                        INDEXED_ITEM            None      safe;
    PATCH  "/indexes/{index_id}/videos/{video_id}"                                                "indexes.videos.update"                          NO_Q                    Json      destructive;
    DELETE "/indexes/{index_id}/videos/{video_id}"                                                "indexes.videos.delete"                          NO_Q                    None      destructive;
    // Assets
    GET    "/assets"                                                                              "assets.list"                                    ASSETS_LIST             None      safe;
    POST   "/assets"                                                                              "assets.create"                                  NO_Q                    Multipart safe;
    GET    "/assets/{asset_id}"                                                                   "assets.retrieve"                                NO_Q                    None      safe;
    DELETE "/assets/{asset_id}"                                                                   "assets.delete"                                  ASSET_DELETE            None      destructive;
    GET    "/assets/{asset_id}/entities"                                                          "assets.entities.list"                           PAGED                   None      safe;
    GET    "/assets/{asset_id}/indexed-assets"                                                    "assets.indexed_assets.list"                     PAGED                   None      safe;
    GET    "/assets/{asset_id}/transcription"                                                     "assets.transcription.retrieve"                  TRANSCRIPTION           None      safe;
    PUT    "/assets/{asset_id}/user-metadata"                                                     "assets.user_metadata.replace"                   NO_Q                    Json      destructive;
    PATCH  "/assets/{asset_id}/user-metadata"                                                     "assets.user_metadata.update"                    NO_Q                    Json      destructive;
    DELETE "/assets/{asset_id}/user-metadata"                                                     "assets.user_metadata.delete"                    NO_Q                    None      destructive;
    // Multipart uploads
    GET    "/assets/multipart-uploads"                                                            "multipart_uploads.list"                         PAGED                   None      safe;
    POST   "/assets/multipart-uploads"                                                            "multipart_uploads.create"                       NO_Q                    Json      safe;
    GET    "/assets/multipart-uploads/{upload_id}"                                                "multipart_uploads.retrieve"                     PAGED                   None      safe;
    POST   "/assets/multipart-uploads/{upload_id}"                                                "multipart_uploads.complete"                     NO_Q                    Json      safe;
    POST   "/assets/multipart-uploads/{upload_id}/presigned-urls"                                 "multipart_uploads.presigned_urls.create"        NO_Q                    Json      safe;
    // Tasks (legacy)
    GET    "/tasks"                                                                               "tasks.list"                                     TASKS_LIST              None      safe;
    POST   "/tasks"                                                                               "tasks.create"                                   NO_Q                    Multipart safe;
    GET    "/tasks/{task_id}"                                                                     "tasks.retrieve"                                 NO_Q                    None      safe;
    DELETE "/tasks/{task_id}"                                                                     "tasks.delete"                                   NO_Q                    None      destructive;
    // Entity collections / entities
    GET    "/entity-collections"                                                                  "entity_collections.list"                        ENTITY_COLLECTIONS_LIST None      safe;
    POST   "/entity-collections"                                                                  "entity_collections.create"                      NO_Q                    Json      safe;
    GET    "/entity-collections/{entity_collection_id}"                                           "entity_collections.retrieve"                    NO_Q                    None      safe;
    PATCH  "/entity-collections/{entity_collection_id}"                                           "entity_collections.update"                      NO_Q                    Json      safe;
    DELETE "/entity-collections/{entity_collection_id}"                                           "entity_collections.delete"                      NO_Q                    None      destructive;
    GET    "/entity-collections/{entity_collection_id}/entities"                                  "entity_collections.entities.list"               ENTITIES_LIST           None      safe;
    POST   "/entity-collections/{entity_collection_id}/entities"                                  "entity_collections.entities.create"             NO_Q                    Json      safe;
    POST   "/entity-collections/{entity_collection_id}/entities/bulk"                             "entity_collections.entities.bulk.create"        NO_Q                    Json      safe;
    GET    "/entity-collections/{entity_collection_id}/entities/{entity_id}"                      "entity_collections.entities.retrieve"           NO_Q                    None      safe;
    PATCH  "/entity-collections/{entity_collection_id}/entities/{entity_id}"                      "entity_collections.entities.update"             NO_Q                    Json      destructive;
    DELETE "/entity-collections/{entity_collection_id}/entities/{entity_id}"                      "entity_collections.entities.delete"             NO_Q                    None      destructive;
    POST   "/entity-collections/{entity_collection_id}/entities/{entity_id}/assets"               "entity_collections.entities.assets.create"      NO_Q                    Json      safe;
    DELETE "/entity-collections/{entity_collection_id}/entities/{entity_id}/assets"               "entity_collections.entities.assets.delete"      NO_Q                    Json      destructive;
    // Search
    POST   "/search"                                                                              "search.create"                                  NO_Q                    Multipart safe;
    GET    "/search/{page_token}"                                                                 "search.retrieve"                                SEARCH_PAGE             None      safe;
    // Embed v1 (legacy) and v2
    POST   "/embed"                                                                               "embed.create"                                   NO_Q                    Multipart safe;
    POST   "/embed-v2"                                                                            "embed_v2.create"                                NO_Q                    Json      safe;
    GET    "/embed-v2/tasks"                                                                      "embed_v2.tasks.list"                            EMBED_TASKS_LIST        None      safe;
    POST   "/embed-v2/tasks"                                                                      "embed_v2.tasks.create"                          NO_Q                    Json      safe;
    GET    "/embed-v2/tasks/{task_id}"                                                            "embed_v2.tasks.retrieve"                        NO_Q                    None      safe;
    GET    "/embed/tasks"                                                                         "embed.tasks.list"                               EMBED_TASKS_LIST        None      safe;
    POST   "/embed/tasks"                                                                         "embed.tasks.create"                             NO_Q                    Multipart safe;
    GET    "/embed/tasks/{task_id}"                                                               "embed.tasks.retrieve"                           EMBED_TASK              None      safe;
    GET    "/embed/tasks/{task_id}/status"                                                        "embed.tasks.status.retrieve"                    NO_Q                    None      safe;
    // Analyze: sync, batches, async tasks
    POST   "/analyze"                                                                             "analyze.create"                                 NO_Q                    Json      safe;
    GET    "/analyze/batches"                                                                     "analyze.batches.list"                           BATCHES_LIST            None      safe;
    POST   "/analyze/batches"                                                                     "analyze.batches.create"                         NO_Q                    Json      safe;
    GET    "/analyze/batches/{batch_id}"                                                          "analyze.batches.retrieve"                       NO_Q                    None      safe;
    DELETE "/analyze/batches/{batch_id}"                                                          "analyze.batches.delete"                         NO_Q                    None      destructive;
    POST   "/analyze/batches/{batch_id}/cancel"                                                   "analyze.batches.cancel"                         NO_Q                    None      destructive;
    GET    "/analyze/batches/{batch_id}/results"                                                  "analyze.batches.results.list"                   NO_Q                    None      safe;
    GET    "/analyze/tasks"                                                                       "analyze.tasks.list"                             ANALYZE_TASKS_LIST      None      safe;
    POST   "/analyze/tasks"                                                                       "analyze.tasks.create"                           NO_Q                    Json      safe;
    GET    "/analyze/tasks/{task_id}"                                                             "analyze.tasks.retrieve"                         NO_Q                    None      safe;
    DELETE "/analyze/tasks/{task_id}"                                                             "analyze.tasks.delete"                           NO_Q                    None      destructive;
    POST   "/analyze/tasks/{task_id}/cancel"                                                      "analyze.tasks.cancel"                           NO_Q                    None      destructive;
    // Knowledge stores, item collections, items
    GET    "/knowledge-stores"                                                                    "knowledge_stores.list"                          SORTED                  None      safe;
    POST   "/knowledge-stores"                                                                    "knowledge_stores.create"                        NO_Q                    Json      safe;
    GET    "/knowledge-stores/{knowledge_store_id}"                                               "knowledge_stores.retrieve"                      NO_Q                    None      safe;
    PATCH  "/knowledge-stores/{knowledge_store_id}"                                               "knowledge_stores.update"                        NO_Q                    Json      destructive;
    DELETE "/knowledge-stores/{knowledge_store_id}"                                               "knowledge_stores.delete"                        NO_Q                    None      destructive;
    GET    "/knowledge-stores/{knowledge_store_id}/item-collections"                              "knowledge_stores.item_collections.list"         SORTED                  None      safe;
    POST   "/knowledge-stores/{knowledge_store_id}/item-collections"                              "knowledge_stores.item_collections.create"       NO_Q                    Json      safe;
    GET    "/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}"              "knowledge_stores.item_collections.retrieve"     NO_Q                    None      safe;
    PATCH  "/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}"              "knowledge_stores.item_collections.update"       NO_Q                    Json      safe;
    DELETE "/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}"              "knowledge_stores.item_collections.delete"       NO_Q                    None      destructive;
    GET    "/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}/items"        "knowledge_stores.item_collections.items.list"   PAGED                   None      safe;
    POST   "/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}/items/add"    "knowledge_stores.item_collections.items.add"    NO_Q                    Json      safe;
    POST   "/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}/items/remove" "knowledge_stores.item_collections.items.remove" NO_Q                    Json      destructive;
    GET    "/knowledge-stores/{knowledge_store_id}/items"                                         "knowledge_stores.items.list"                    KS_ITEMS_LIST           None      safe;
    POST   "/knowledge-stores/{knowledge_store_id}/items"                                         "knowledge_stores.items.create"                  NO_Q                    Json      safe;
    GET    "/knowledge-stores/{knowledge_store_id}/items/{item_id}"                               "knowledge_stores.items.retrieve"                NO_Q                    None      safe;
    DELETE "/knowledge-stores/{knowledge_store_id}/items/{item_id}"                               "knowledge_stores.items.delete"                  NO_Q                    None      destructive;
    POST   "/knowledge-stores/{knowledge_store_id}/search"                                        "knowledge_stores.search.create"                 NO_Q                    Json      safe;
    // Responses (Jockey agent)
    POST   "/responses"                                                                           "responses.create"                               NO_Q                    Json      safe;
    // Data connectors / imports
    GET    "/connections"                                                                         "connections.list"                               PAGED                   None      safe;
    GET    "/connections/redirect-uris"                                                           "connections.redirect_uris.list"                 PAGED                   None      safe;
    POST   "/connections/redirect-uris"                                                           "connections.redirect_uris.create"               NO_Q                    Json      safe;
    DELETE "/connections/redirect-uris/{redirect_uri_id}"                                         "connections.redirect_uris.delete"               NO_Q                    None      destructive;
    GET    "/connections/{connection_id}"                                                         "connections.retrieve"                           NO_Q                    None      safe;
    DELETE "/connections/{connection_id}"                                                         "connections.delete"                             NO_Q                    None      destructive;
    GET    "/connections/{connection_id}/imports"                                                 "connections.imports.list"                       PAGED                   None      safe;
    POST   "/connections/{connection_id}/imports"                                                 "connections.imports.create"                     NO_Q                    Json      safe;
    GET    "/connections/{connection_id}/imports/{import_id}"                                     "connections.imports.retrieve"                   NO_Q                    None      safe;
    POST   "/connections/{connection_id}/picker-token"                                            "connections.picker_token.create"                NO_Q                    None      safe;
    POST   "/connections:authorize"                                                               "connections.authorize"                          NO_Q                    Json      safe;
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    fn table() -> &'static RouteTable {
        RouteTable::v1_3()
    }

    fn segs(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    fn m(name: &str) -> Method {
        Method::from_bytes(name.as_bytes()).expect("test method")
    }

    /// A lookup outcome in the notation of the `lookups` table.
    fn render(got: &Lookup<'_, '_>) -> String {
        match got {
            Lookup::Found { route, params } => {
                let mut out = route.id.to_string();
                for (name, value) in params {
                    out.push_str(&format!(" {name}={value}"));
                }
                out
            }
            Lookup::MethodNotAllowed { allowed } => {
                let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                format!("405 {}", names.join(" "))
            }
            Lookup::NotFound => "404".to_owned(),
            Lookup::BadParam { name } => format!("400 {name}"),
        }
    }

    /// `METHOD path -> outcome`: a route id with its params, `405` with the allowed methods, `404`, or `400`
    /// with the bad parameter.
    const LOOKUPS: &[&str] = &[
        "GET assets -> assets.list",
        "POST assets -> assets.create",
        "GET assets/a1 -> assets.retrieve asset_id=a1",
        "DELETE assets/a1 -> assets.delete asset_id=a1",
        "GET assets/a1/entities -> assets.entities.list asset_id=a1",
        "GET assets/a1/indexed-assets -> assets.indexed_assets.list asset_id=a1",
        "GET assets/a1/transcription -> assets.transcription.retrieve asset_id=a1",
        "PUT assets/a1/user-metadata -> assets.user_metadata.replace asset_id=a1",
        "PATCH assets/a1/user-metadata -> assets.user_metadata.update asset_id=a1",
        "DELETE assets/a1/user-metadata -> assets.user_metadata.delete asset_id=a1",
        // Literal before parameter, and no backtracking into {asset_id}.
        "GET assets/multipart-uploads -> multipart_uploads.list",
        "DELETE assets/multipart-uploads -> 405 GET HEAD POST",
        "PUT assets/multipart-uploads/user-metadata -> 405 GET HEAD POST",
        "GET assets/multipart-uploads/entities -> multipart_uploads.retrieve upload_id=entities",
        "GET assets/multipart-uploads/u1/entities -> 404",
        "POST assets/multipart-uploads/u1 -> multipart_uploads.complete upload_id=u1",
        "POST assets/multipart-uploads/u1/presigned-urls -> multipart_uploads.presigned_urls.create upload_id=u1",
        "GET connections/redirect-uris -> connections.redirect_uris.list",
        "DELETE connections/redirect-uris -> 405 GET HEAD POST",
        "DELETE connections/redirect-uris/r1 -> connections.redirect_uris.delete redirect_uri_id=r1",
        "GET connections/redirect-uris/imports -> 405 DELETE",
        "DELETE connections/c1 -> connections.delete connection_id=c1",
        "GET connections/c1/imports/i1 -> connections.imports.retrieve connection_id=c1 import_id=i1",
        "POST connections:authorize -> connections.authorize",
        "GET connections:authorize -> 405 POST",
        "POST connections:revoke -> 404",
        // HEAD is looked up as GET.
        "HEAD assets/a1 -> assets.retrieve asset_id=a1",
        "HEAD assets/a1/user-metadata -> 405 PUT PATCH DELETE",
        // Methods match exactly; any other method on a known path is 405.
        "delete assets/a1 -> 405 GET HEAD DELETE",
        "DELETEX assets/a1 -> 405 GET HEAD DELETE",
        "OPTIONS assets -> 405 GET HEAD POST",
        "TRACE indexes/i1 -> 405 GET HEAD PUT DELETE",
        "DELETE indexes/i1 -> indexes.delete index_id=i1",
        "GET indexes/i1/indexed-assets/ia1 -> indexes.indexed_assets.retrieve index_id=i1 indexed_asset_id=ia1",
        "DELETE indexes/i1/indexed-assets/ia1 -> indexes.indexed_assets.delete index_id=i1 indexed_asset_id=ia1",
        "DELETE indexes/i1/videos/v1 -> indexes.videos.delete index_id=i1 video_id=v1",
        "DELETE entity-collections/e1/entities/n1/assets -> entity_collections.entities.assets.delete entity_collection_id=e1 entity_id=n1",
        "POST entity-collections/e1/entities/bulk -> entity_collections.entities.bulk.create entity_collection_id=e1",
        "GET entity-collections/e1/entities/bulk -> 405 POST",
        "POST search -> search.create",
        "GET search/tok-1 -> search.retrieve page_token=tok-1",
        "POST embed-v2 -> embed_v2.create",
        "GET embed/tasks/t1/status -> embed.tasks.status.retrieve task_id=t1",
        "POST analyze/batches/b1/cancel -> analyze.batches.cancel batch_id=b1",
        "POST analyze/tasks/t1/cancel -> analyze.tasks.cancel task_id=t1",
        "POST knowledge-stores/k1/item-collections/c1/items/remove -> knowledge_stores.item_collections.items.remove knowledge_store_id=k1 collection_id=c1",
        // Unknown paths.
        "GET / -> 404",
        "GET v1.3/assets -> 404",
        "GET nope -> 404",
        "GET Assets -> 404",
        "GET assets/a1/nope -> 404",
        "DELETE assets/a1/user-metadata/x -> 404",
        // Bad ids in parameter positions.
        "DELETE assets/.. -> 400 asset_id",
        "DELETE assets/. -> 400 asset_id",
        "DELETE assets/a%2Fb -> 400 asset_id",
        "DELETE assets/a;force=true -> 400 asset_id",
        "DELETE assets/a\\b -> 400 asset_id",
        "DELETE assets/\u{e9} -> 400 asset_id",
        "GET indexes/i1/videos/v:1 -> 400 video_id",
        "GET indexes/*/videos -> 400 index_id",
    ];

    #[test]
    fn lookups() {
        for line in LOOKUPS {
            let (request, want) = line.split_once(" -> ").expect("`request -> outcome`");
            let (method, path) = request.split_once(' ').expect("`METHOD path`");
            let got = table().lookup(&m(method), &segs(path));
            assert_eq!(render(&got), want, "{request}");
        }
    }

    #[test]
    fn every_route_is_reachable_with_its_own_param_names() {
        for route in table().routes() {
            let template = route
                .template
                .strip_prefix("/v1.3/")
                .expect("versioned template");
            let values: Vec<String> = (0..route.path_params().len())
                .map(|i| format!("p{i}"))
                .collect();
            let mut next = values.iter();
            let path: Vec<&str> = template
                .split('/')
                .map(|s| match param_name(s) {
                    Some(_) => next.next().map_or("", String::as_str),
                    None => s,
                })
                .collect();
            let mut methods = vec![route.method.clone()];
            if route.method == Method::GET {
                methods.push(Method::HEAD);
            }
            for method in methods {
                match table().lookup(&method, &path) {
                    Lookup::Found { route: r, params } => {
                        assert_eq!(r.id, route.id, "{method} {template}");
                        let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
                        assert_eq!(names, route.path_params(), "{}", route.id);
                        let got: Vec<&str> = params.iter().map(|(_, v)| *v).collect();
                        assert!(
                            got.iter().copied().eq(values.iter().map(String::as_str)),
                            "{}",
                            route.id
                        );
                    }
                    other => panic!("{method} {template}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn valid_params() {
        let long_ok = "a".repeat(256);
        let long_bad = "a".repeat(257);
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("6650a0b1c2d3e4f5a6b7c8d9", true),
            ("A-z_0.9~", true),
            ("...", true),
            (".a", true),
            (&long_ok, true),
            ("", false),
            (".", false),
            ("..", false),
            (&long_bad, false),
            ("a/b", false),
            ("a%2e", false),
            ("a b", false),
            ("a:b", false),
            ("a;b", false),
            ("a\\b", false),
            ("a*", false),
            ("a\0", false),
            ("\u{e9}", false),
            ("a?b", false),
            ("a#b", false),
            ("{asset_id}", false),
        ];
        for (segment, want) in cases {
            assert_eq!(valid_param(segment), *want, "{segment:?}");
        }
    }

    #[test]
    fn by_template_ignores_param_names() {
        // `METHOD template -> ids`, `*` for any method.
        let cases = [
            "* /v1.3/indexes/{index_id} -> indexes.delete indexes.retrieve indexes.update",
            "* /v1.3/indexes/{index-id} -> indexes.delete indexes.retrieve indexes.update",
            "DELETE /v1.3/indexes/{index-id} -> indexes.delete",
            "DELETE /v1.3/indexes/{x}/videos/{video-id} -> indexes.videos.delete",
            "PATCH /v1.3/indexes/{index-id}/indexed-assets/{indexed-asset-id} -> indexes.indexed_assets.update",
            "GET /v1.3/search/{page-token} -> search.retrieve",
            "DELETE /v1.3/assets/{asset_id} -> assets.delete",
            "* /v1.3/assets/multipart-uploads -> multipart_uploads.create multipart_uploads.list",
            "POST /v1.3/connections:authorize -> connections.authorize",
            "POST /v1.3/assets/{asset_id} ->",
            "* /indexes/{index_id} ->",
            "* /v1.3/indexes/{index_id}/ ->",
            "* /v1.3/indexes/index_id ->",
            "* /v1.3/nope ->",
        ];
        for case in cases {
            let (request, want) = case.split_once(" ->").expect("`request -> ids`");
            let (method, template) = request.split_once(' ').expect("`METHOD template`");
            let method = (method != "*").then(|| m(method));
            let mut ids: Vec<&str> = table()
                .by_template(template, method.as_ref())
                .iter()
                .map(|r| r.id.as_str())
                .collect();
            ids.sort_unstable();
            assert_eq!(ids.join(" "), want.trim(), "{request}");
        }
    }

    #[test]
    fn ids_and_method_templates_are_unique() {
        let routes = table().routes();
        assert_eq!(routes.len(), 99);
        let ids: HashSet<_> = routes.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), routes.len(), "duplicate route id");
        let pairs: HashSet<_> = routes
            .iter()
            .map(|r| (r.method.clone(), r.template))
            .collect();
        assert_eq!(pairs.len(), routes.len(), "duplicate (method, template)");
        for r in routes {
            assert_eq!(
                table().by_id(r.id.as_str()).map(|x| x.template),
                Some(r.template)
            );
            assert!(r.template.starts_with("/v1.3/"), "{}", r.id);
        }
        assert!(table().by_id("assets.nope").is_none());
    }

    #[test]
    fn named_ids() {
        let cases = [
            "assets.list GET /v1.3/assets",
            "assets.create POST /v1.3/assets",
            "assets.retrieve GET /v1.3/assets/{asset_id}",
            "assets.delete DELETE /v1.3/assets/{asset_id}",
            "assets.entities.list GET /v1.3/assets/{asset_id}/entities",
            "assets.indexed_assets.list GET /v1.3/assets/{asset_id}/indexed-assets",
            "assets.transcription.retrieve GET /v1.3/assets/{asset_id}/transcription",
            "assets.user_metadata.replace PUT /v1.3/assets/{asset_id}/user-metadata",
            "assets.user_metadata.update PATCH /v1.3/assets/{asset_id}/user-metadata",
            "assets.user_metadata.delete DELETE /v1.3/assets/{asset_id}/user-metadata",
            "multipart_uploads.list GET /v1.3/assets/multipart-uploads",
            "multipart_uploads.create POST /v1.3/assets/multipart-uploads",
            "multipart_uploads.retrieve GET /v1.3/assets/multipart-uploads/{upload_id}",
            "multipart_uploads.complete POST /v1.3/assets/multipart-uploads/{upload_id}",
            "multipart_uploads.presigned_urls.create POST /v1.3/assets/multipart-uploads/{upload_id}/presigned-urls",
            "indexes.indexed_assets.delete DELETE /v1.3/indexes/{index_id}/indexed-assets/{indexed_asset_id}",
            "indexes.videos.delete DELETE /v1.3/indexes/{index_id}/videos/{video_id}",
            "entity_collections.entities.assets.delete DELETE /v1.3/entity-collections/{entity_collection_id}/entities/{entity_id}/assets",
            "connections.authorize POST /v1.3/connections:authorize",
            "analyze.batches.cancel POST /v1.3/analyze/batches/{batch_id}/cancel",
            "analyze.tasks.cancel POST /v1.3/analyze/tasks/{task_id}/cancel",
            "knowledge_stores.item_collections.items.remove POST /v1.3/knowledge-stores/{knowledge_store_id}/item-collections/{collection_id}/items/remove",
            "search.create POST /v1.3/search",
            "search.retrieve GET /v1.3/search/{page_token}",
            "embed_v2.create POST /v1.3/embed-v2",
            "embed.tasks.status.retrieve GET /v1.3/embed/tasks/{task_id}/status",
        ];
        for case in cases {
            let id = case.split(' ').next().unwrap_or_default();
            let r = table().by_id(id).unwrap_or_else(|| panic!("missing {id}"));
            assert_eq!(format!("{} {} {}", r.id, r.method, r.template), case);
        }
    }

    #[test]
    fn destructive_routes() {
        let deletes: Vec<&Route> = table()
            .routes()
            .iter()
            .filter(|r| r.method == Method::DELETE)
            .collect();
        assert_eq!(deletes.len(), 16);
        for r in &deletes {
            assert!(r.destructive, "{} is a DELETE", r.id);
        }
        // docs/architecture.md, "The TwelveLabs API surface", destructive non-DELETE calls.
        let mut others: Vec<&str> = table()
            .routes()
            .iter()
            .filter(|r| r.destructive && r.method != Method::DELETE)
            .map(|r| r.id.as_str())
            .collect();
        others.sort_unstable();
        assert_eq!(
            others,
            [
                "analyze.batches.cancel",
                "analyze.tasks.cancel",
                "assets.user_metadata.replace",
                "assets.user_metadata.update",
                "entity_collections.entities.update",
                "indexes.indexed_assets.update",
                "indexes.videos.update",
                "knowledge_stores.item_collections.items.remove",
                "knowledge_stores.update",
            ]
        );
        assert!(
            !table()
                .by_id("indexes.update")
                .is_some_and(|r| r.destructive),
            "rename is not destructive"
        );
    }

    #[test]
    fn only_asset_delete_takes_query_params_among_deletes() {
        let delete = table().by_id("assets.delete").expect("assets.delete");
        assert_eq!(
            delete.query,
            &[QueryParam {
                name: "force",
                kind: ParamKind::Bool
            }]
        );
        assert_eq!(
            delete.query_param("force").map(|p| p.kind),
            Some(ParamKind::Bool)
        );
        assert!(delete.query_param("Force").is_none());
        for r in table()
            .routes()
            .iter()
            .filter(|r| r.method == Method::DELETE && r.id != delete.id)
        {
            assert!(r.query.is_empty(), "{} has query params", r.id);
        }
    }

    #[test]
    fn bodies_and_path_params() {
        let body = |id: &str| table().by_id(id).map(|r| r.body);
        let mut multipart: Vec<_> = table()
            .routes()
            .iter()
            .filter(|r| r.body == BodyKind::Multipart)
            .map(|r| r.id.as_str())
            .collect();
        multipart.sort_unstable();
        assert_eq!(
            multipart,
            [
                "assets.create",
                "embed.create",
                "embed.tasks.create",
                "search.create",
                "tasks.create"
            ]
        );
        assert_eq!(
            body("entity_collections.entities.assets.delete"),
            Some(BodyKind::Json)
        );
        assert_eq!(body("assets.delete"), Some(BodyKind::None));
        assert_eq!(body("analyze.tasks.cancel"), Some(BodyKind::None));
        for r in table().routes().iter().filter(|r| r.method == Method::GET) {
            assert_eq!(r.body, BodyKind::None, "{}", r.id);
        }
        let params = |id: &str| {
            table()
                .by_id(id)
                .map(|r| r.path_params())
                .unwrap_or_default()
        };
        assert_eq!(params("assets.list"), Vec::<&str>::new());
        assert_eq!(params("assets.delete"), ["asset_id"]);
        assert_eq!(
            params("knowledge_stores.item_collections.items.remove"),
            ["knowledge_store_id", "collection_id"]
        );
        assert_eq!(params("connections.authorize"), Vec::<&str>::new());
    }

    /// Query type as the OpenAPI declares it, mapped to a `ParamKind`.
    fn openapi_kind(doc: &serde_json::Value, schema: &serde_json::Value) -> Option<ParamKind> {
        let schema = resolve(doc, schema);
        let ty = match schema.get("type")? {
            serde_json::Value::String(s) => s.as_str(),
            // OpenAPI 3.1 allows ["string", "null"].
            serde_json::Value::Array(types) => types
                .iter()
                .filter_map(|t| t.as_str())
                .find(|t| *t != "null")?,
            _ => return None,
        };
        Some(match ty {
            "boolean" => ParamKind::Bool,
            "integer" => ParamKind::Integer,
            "number" => ParamKind::Number,
            "string" => ParamKind::Text,
            "array" => ParamKind::List,
            "object" => OBJECT,
            _ => return None,
        })
    }

    fn resolve<'v>(
        doc: &'v serde_json::Value,
        mut v: &'v serde_json::Value,
    ) -> &'v serde_json::Value {
        while let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            v = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    #[test]
    fn matches_openapi() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/twelvelabs-openapi.json"
        );
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("OpenAPI cross-check needs {path} in CI: {e}")
            }
            Err(e) => {
                println!("OpenAPI cross-check did not run: cannot read {path}: {e}");
                return;
            }
        };
        let doc: serde_json::Value = serde_json::from_str(&text).expect("OpenAPI document is JSON");
        let paths = doc
            .get("paths")
            .and_then(|p| p.as_object())
            .expect("OpenAPI has paths");
        let mut seen = BTreeSet::new();
        let mut operations = 0;
        for (raw, item) in paths {
            let item = resolve(&doc, item);
            let common = item
                .get("parameters")
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            // Kebab parameter names become the SDK's snake_case ones; the template gains the version prefix.
            let normalised: Vec<String> = raw
                .split('/')
                .map(|s| match param_name(s) {
                    Some(name) => format!("{{{}}}", name.replace('-', "_")),
                    None => s.to_owned(),
                })
                .collect();
            let template = format!("/v1.3{}", normalised.join("/"));
            for (verb, op) in item.as_object().expect("path item is an object") {
                // Path items also hold `parameters`, `summary` and the like.
                if !matches!(
                    verb.as_str(),
                    "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
                ) {
                    continue;
                }
                let method =
                    Method::from_bytes(verb.to_ascii_uppercase().as_bytes()).expect("HTTP method");
                operations += 1;
                let found = table().by_template(&template, Some(&method));
                let [route] = found.as_slice() else {
                    panic!("{method} {raw}: {} table routes", found.len());
                };
                assert_eq!(
                    route.template, template,
                    "{}: parameter names differ",
                    route.id
                );
                assert!(seen.insert(route.id), "{} matched twice", route.id);

                let own = op
                    .get("parameters")
                    .and_then(|p| p.as_array())
                    .cloned()
                    .unwrap_or_default();
                let mut want = BTreeMap::new();
                for p in common.iter().chain(own.iter()).map(|p| resolve(&doc, p)) {
                    if p.get("in").and_then(|i| i.as_str()) != Some("query") {
                        continue;
                    }
                    let name = p
                        .get("name")
                        .and_then(|n| n.as_str())
                        .expect("parameter name");
                    let schema = p.get("schema").expect("parameter schema");
                    let kind = openapi_kind(&doc, schema)
                        .unwrap_or_else(|| panic!("{}: untyped query {name}", route.id));
                    want.insert(name.to_owned(), format!("{kind:?}"));
                }
                let have: BTreeMap<String, String> = route
                    .query
                    .iter()
                    .map(|p| (p.name.to_owned(), format!("{:?}", p.kind)))
                    .collect();
                assert_eq!(
                    have.len(),
                    route.query.len(),
                    "{}: repeated query name",
                    route.id
                );
                assert_eq!(have, want, "{}: query parameters", route.id);

                let body = match op.get("requestBody").map(|b| resolve(&doc, b)) {
                    None => BodyKind::None,
                    Some(b) => {
                        let content = b
                            .get("content")
                            .and_then(|c| c.as_object())
                            .expect("requestBody content");
                        let types: Vec<&str> = content.keys().map(String::as_str).collect();
                        match types.as_slice() {
                            ["application/json"] => BodyKind::Json,
                            ["multipart/form-data"] => BodyKind::Multipart,
                            other => panic!("{}: unexpected body types {other:?}", route.id),
                        }
                    }
                };
                assert_eq!(route.body, body, "{}: body kind", route.id);
            }
        }
        assert_eq!(operations, 97, "OpenAPI operation count changed");
        let extra: Vec<&str> = table()
            .routes()
            .iter()
            .filter(|r| !seen.contains(&r.id))
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(
            extra,
            ["assets.transcription.retrieve", "analyze.tasks.cancel"],
            "routes beyond the OpenAPI"
        );
    }
}
