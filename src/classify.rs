//! Classification: method + request target → the canonical [`Operation`], or a refusal.
//!
//! One strict parse per request, the same for HTTP/1.1 and HTTP/2 (docs/architecture.md, "Security principles"):
//!
//! - the path must be plain ASCII segments: percent escapes, `;`, `\`, dot or empty segments,
//!   non-ASCII, absolute- or authority-form targets are refused, never normalised;
//! - the path is matched against the TwelveLabs route table (literal segments before parameters);
//!   unknown API versions and unknown routes follow `routes.unknown` (safe methods only, by default);
//! - query parameters are read the way the most permissive common framework would: a boolean that
//!   any of them could read as true *is* true; anything whose reading is ambiguous (repeated, empty,
//!   padded, escaped, case-variant or array-syntax keys) is refused;
//! - method-override headers and parameters, and bodies on routes that take none, are refused.
//!
//! The upstream request is re-serialised from the `Operation` ([`Operation::path_and_query`]), so
//! what policy evaluated is exactly what is forwarded: a true boolean is sent as `true`, a false one
//! is omitted (every framework reads an absent flag as its default, false).

use std::collections::BTreeSet;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, Uri, Version};

use crate::error::GatewayError;
use crate::ext::RequestScope;
use crate::fragment::FragmentInTarget;
use crate::gate::{Admit, GateLayer};
use crate::routes::{BodyKind, Lookup, ParamKind, Route, RouteTable};

/// Headers some frameworks honour to change the method; always refused.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Query parameters some frameworks honour to change the method; always refused.
pub const METHOD_OVERRIDE_PARAMS: [&str; 2] = ["_method", "method_override"];

/// Spellings that a common framework reads as boolean true (compared case-insensitively):
/// Go `strconv.ParseBool`, pydantic/FastAPI, Spring, Rails, Django forms, `filter_var`.
pub const TRUE_SPELLINGS: [&str; 6] = ["true", "1", "t", "yes", "y", "on"];

/// Spellings that *no* common framework reads as true (compared exactly): the intersection of what
/// they read as false. Rails reads anything outside its own false list as true, so `no`, `False` or
/// `Off` are refused rather than guessed.
pub const FALSE_SPELLINGS: [&str; 7] = ["false", "FALSE", "0", "f", "F", "off", "OFF"];

/// What to do with requests for routes the table does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownRoutes {
    /// Forward GET, HEAD and OPTIONS; refuse every other method with 404.
    #[default]
    ForwardSafe,
    /// Refuse every unknown route with 404.
    Reject,
    /// Forward every method (not recommended: a destructive call on a new route escapes policy).
    Forward,
}

/// A canonical query parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    /// A boolean, already read conservatively.
    Bool(bool),
    /// Any other value, exactly as received (validated, not decoded).
    Raw(ShortStr),
}

/// A string kept inline when it is at most `N` bytes, on the heap otherwise: classifying a
/// typical request copies neither its path nor its query values to the heap.
#[derive(Clone)]
pub enum InlineStr<const N: usize> {
    /// Up to `N` bytes.
    Inline {
        /// Bytes used.
        len: u8,
        /// The UTF-8 text, then zeros.
        bytes: [u8; N],
    },
    /// Longer text.
    Heap(Box<str>),
}

/// A query value: page numbers, ids and names fit inline.
pub type ShortStr = InlineStr<22>;

/// A canonical path: every v1.3 route with 24-character ids fits inline (the longest, an item
/// collection's `items/remove`, is 102 bytes).
pub type PathStr = InlineStr<102>;

impl<const N: usize> From<&str> for InlineStr<N> {
    fn from(text: &str) -> Self {
        if text.len() <= N && N <= usize::from(u8::MAX) {
            let mut bytes = [0; N];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            InlineStr::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            InlineStr::Heap(text.into())
        }
    }
}

impl<const N: usize> std::ops::Deref for InlineStr<N> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so always UTF-8.
            InlineStr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            InlineStr::Heap(text) => text,
        }
    }
}

impl<const N: usize> PartialEq for InlineStr<N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<const N: usize> Eq for InlineStr<N> {}

impl<const N: usize> std::fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl<const N: usize> std::fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// A canonical query: parameters in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Keys the route declares are its `&'static` names (no copy); others are copied. Two pairs
    /// fit without a heap allocation.
    pairs: smallvec::SmallVec<[(std::borrow::Cow<'static, str>, ParamValue); 2]>,
}

impl Query {
    /// The boolean reading of `name`, if present and boolean.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.pairs.iter().find_map(|(k, v)| match v {
            ParamValue::Bool(b) if &**k == name => Some(*b),
            _ => None,
        })
    }

    /// The first raw value of `name`.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find_map(|(k, v)| match v {
            ParamValue::Raw(s) if &**k == name => Some(&**s),
            _ => None,
        })
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| &**k == name)
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.pairs.iter().map(|(k, v)| (&**k, v))
    }

    /// The query string sent upstream: true booleans as `true`, false ones omitted.
    pub fn serialize(&self) -> Option<String> {
        let mut out = String::new();
        self.write_to(&mut out);
        (!out.is_empty()).then_some(out)
    }

    /// The pieces of [`Query::serialize`], in order, to `out`.
    fn write_to(&self, out: &mut impl TargetSink) {
        let mut first = true;
        for (key, value) in &self.pairs {
            let value = match value {
                ParamValue::Bool(true) => "true",
                ParamValue::Bool(false) => continue,
                ParamValue::Raw(raw) => raw,
            };
            if !first {
                out.put("&");
            }
            first = false;
            out.put(key);
            out.put("=");
            out.put(value);
        }
    }
}

/// The canonical form of a request: what policy judges and what is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Exact method.
    pub method: Method,
    /// The matched route; `None` for an unknown route forwarded under `routes.unknown`.
    pub route: Option<&'static Route>,
    /// Canonical path, e.g. `/v1.3/assets/6298d673f1090f1100476d4c`.
    pub path: PathStr,
    /// Path parameters, e.g. `asset_id`.
    pub params: Vec<(&'static str, Box<str>)>,
    /// Canonical query.
    pub query: Query,
}

impl Operation {
    /// The route id, or `unknown`.
    pub fn route_id(&self) -> &'static str {
        self.route.map_or("unknown", |r| r.id.as_str())
    }

    /// Whether this is a call to the gateway's own API (`/tl-gateway/v1/…`): answered by the
    /// gateway, never forwarded.
    pub fn is_gateway(&self) -> bool {
        self.route.is_some_and(Route::is_gateway)
    }

    /// The API version segment of the path (`v1.3`).
    pub fn version(&self) -> &str {
        self.path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
    }

    /// Whether this is the route `id`.
    pub fn is(&self, id: crate::routes::RouteId) -> bool {
        self.route.is_some_and(|r| r.id == id)
    }

    /// A path parameter by name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| &**v)
    }

    /// Path plus `?query`, as sent upstream.
    pub fn path_and_query(&self) -> String {
        let mut out = String::with_capacity(self.path.len() + 64);
        self.write_target(&mut out);
        out
    }

    /// Whether `target` (a path and query) is exactly [`Operation::path_and_query`]: then the
    /// request's own target can be forwarded as it is, without building the same bytes again.
    pub fn target_is(&self, target: &str) -> bool {
        let mut compare = Compare {
            rest: target,
            equal: true,
        };
        self.write_target(&mut compare);
        compare.equal && compare.rest.is_empty()
    }

    fn write_target(&self, out: &mut impl TargetSink) {
        out.put(&self.path);
        if self
            .query
            .pairs
            .iter()
            .any(|(_, v)| *v != ParamValue::Bool(false))
        {
            out.put("?");
            self.query.write_to(out);
        }
    }
}

/// Where the pieces of a canonical target go: a string being built, or a comparison.
trait TargetSink {
    fn put(&mut self, piece: &str);
}

impl TargetSink for String {
    fn put(&mut self, piece: &str) {
        self.push_str(piece);
    }
}

/// Compares the pieces with a given target as they come, allocating nothing.
struct Compare<'a> {
    rest: &'a str,
    equal: bool,
}

impl TargetSink for Compare<'_> {
    fn put(&mut self, piece: &str) {
        match self.rest.strip_prefix(piece) {
            Some(rest) if self.equal => self.rest = rest,
            _ => self.equal = false,
        }
    }
}

/// Settings of the classifier.
#[derive(Debug, Clone)]
pub struct ClassifySettings {
    /// API versions forwarded (first path segment), e.g. `v1.3`.
    pub api_versions: Vec<String>,
    /// Treatment of unknown routes.
    pub unknown_routes: UnknownRoutes,
    /// Query keys that policy rules name: no repeats, case variants or array syntax.
    pub rule_keys: BTreeSet<String>,
    /// Of those, the keys compared as booleans: read exactly like a route boolean.
    pub rule_bool_keys: BTreeSet<String>,
    /// Longest request target (path and query) accepted; longer gets 414.
    pub max_target_length: usize,
}

impl Default for ClassifySettings {
    fn default() -> Self {
        ClassifySettings {
            api_versions: vec!["v1.3".to_owned()],
            unknown_routes: UnknownRoutes::default(),
            rule_keys: BTreeSet::new(),
            rule_bool_keys: BTreeSet::new(),
            max_target_length: 8192,
        }
    }
}

/// The request classifier: a pure function of the request head and its settings.
#[derive(Debug, Clone)]
pub struct Classifier {
    table: &'static RouteTable,
    settings: ClassifySettings,
}

type Reject = GatewayError;
const fn ambiguous(what: &'static str) -> Reject {
    GatewayError::RequestAmbiguous(what)
}

impl Classifier {
    /// A classifier over the TwelveLabs v1.3 route table.
    pub fn new(settings: ClassifySettings) -> Self {
        Classifier {
            table: RouteTable::v1_3(),
            settings,
        }
    }

    /// Classify a request head; `has_body` says whether a non-empty body follows.
    pub fn classify(
        &self,
        method: &Method,
        version: Version,
        uri: &Uri,
        headers: &HeaderMap,
        has_body: bool,
    ) -> Result<Operation, GatewayError> {
        let method = classify_method(method)?;
        let target_length = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
        if target_length > self.settings.max_target_length {
            return Err(GatewayError::TargetTooLong(self.settings.max_target_length));
        }
        if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
            // Absolute-form targets could name another origin; real SDKs send origin-form.
            return Err(ambiguous(
                "absolute-form request targets are not accepted; send the path only",
            ));
        }
        // Compared after normalising `_` and `.` to `-`, as Rack, PHP and Django read header names.
        if headers.keys().any(|name| {
            METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|t| crate::headers::normalised_eq(name.as_str(), t))
        }) {
            return Err(ambiguous("method-override headers are not accepted"));
        }
        if has_body && matches!(method, Method::GET | Method::HEAD) {
            // Whether a server reads a GET body (as parameters, even) differs: never forwarded.
            return Err(ambiguous("a request body on a GET or HEAD request"));
        }
        let path = uri.path();
        let segments = split_path(path)?;
        let (version_segment, rest) = segments
            .as_slice()
            .split_first()
            .ok_or(GatewayError::RouteUnknown)?;
        let known_version = self
            .settings
            .api_versions
            .iter()
            .any(|v| v == version_segment);
        let gateway = *version_segment == crate::routes::gateway::FIRST_SEGMENT;
        let table = if gateway {
            RouteTable::gateway()
        } else {
            self.table
        };
        let lookup = if gateway || (known_version && *version_segment == RouteTable::VERSION) {
            match table.lookup(&method, rest) {
                // A bad id in the segments kept is refused however long the path is; a path
                // longer than any route matches none.
                bad @ Lookup::BadParam { .. } => bad,
                _ if segments.overflow => Lookup::NotFound,
                found => found,
            }
        } else {
            Lookup::NotFound
        };
        let (route, params) = match lookup {
            Lookup::Found { route, params } => (
                Some(route),
                params.into_iter().map(|(k, v)| (k, Box::from(v))).collect(),
            ),
            Lookup::MethodNotAllowed { allowed } => {
                return Err(GatewayError::MethodNotAllowed { method, allowed })
            }
            Lookup::BadParam { .. } => {
                return Err(ambiguous("a path parameter that is not a plain id"))
            }
            Lookup::NotFound => {
                let safe = crate::routes::is_safe(&method);
                // The gateway's own prefix is never forwarded, whatever `routes.unknown` says.
                let forward = !gateway
                    && known_version
                    && match self.settings.unknown_routes {
                        UnknownRoutes::ForwardSafe => safe,
                        UnknownRoutes::Reject => false,
                        UnknownRoutes::Forward => true,
                    };
                if !forward {
                    return Err(GatewayError::RouteUnknown);
                }
                (None, Vec::new())
            }
        };
        if let Some(route) = route {
            if route.body == BodyKind::None && has_body {
                return Err(ambiguous("a request body on a route that takes none"));
            }
        }
        let query = match uri.query() {
            None => Query::default(),
            Some(raw) => self.parse_query(raw, &method, route)?,
        };
        Ok(Operation {
            method,
            route,
            path: path.into(),
            params,
            query,
        })
    }

    fn parse_query(
        &self,
        raw: &str,
        method: &Method,
        route: Option<&'static Route>,
    ) -> Result<Query, GatewayError> {
        if raw.is_empty() {
            return Err(ambiguous(
                "an empty query string ('?' with nothing after it)",
            ));
        }
        let mut query = Query::default();
        for piece in raw.split('&') {
            if piece.is_empty() {
                return Err(ambiguous(
                    "an empty query parameter ('&&' or a leading or trailing '&')",
                ));
            }
            let Some((key, value)) = piece.split_once('=') else {
                return Err(ambiguous(
                    "a query parameter without '=' (some frameworks read a bare key as true)",
                ));
            };
            let word = |s: &str| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if !word(key) {
                // One exception: the object-typed list filters of GET routes, which the official SDK
                // sends as `duration[gte]=5` or `user_metadata[owner]=x`.
                let filter = key
                    .strip_suffix(']')
                    .and_then(|k| k.split_once('['))
                    .filter(|(base, sub)| word(base) && word(sub))
                    .and_then(|(base, _)| route.and_then(|r| r.query_param(base)))
                    .filter(|p| {
                        p.kind == ParamKind::Text
                            && matches!(*method, Method::GET | Method::HEAD)
                            && !self.settings.rule_keys.contains(p.name)
                    });
                match filter {
                    Some(_) if !query.contains(key) => {
                        query.pairs.push((key.to_owned().into(), ParamValue::Raw(plain_value(value)?.into())));
                        continue;
                    }
                    Some(_) => return Err(ambiguous("a repeated query parameter")),
                    None => {
                        return Err(ambiguous(
                            "a query parameter name with characters other than letters, digits and '_' (escapes, array or dot syntax, padding)",
                        ))
                    }
                }
            }
            if METHOD_OVERRIDE_PARAMS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(key))
            {
                return Err(ambiguous("method-override parameters are not accepted"));
            }
            let declared = route.and_then(|r| r.query_param(key));
            if declared.is_none() {
                let case_variant = route
                    .is_some_and(|r| r.query.iter().any(|p| p.name.eq_ignore_ascii_case(key)))
                    || self
                        .settings
                        .rule_keys
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(key) && k != key);
                if case_variant {
                    return Err(ambiguous("a case variant of a known query parameter name"));
                }
                if route.is_some() && !crate::routes::is_safe(method) {
                    return Err(ambiguous("a query parameter this route does not take"));
                }
            }
            let kind = declared.map(|p| p.kind).unwrap_or(ParamKind::Text);
            let strict = kind != ParamKind::List || self.settings.rule_keys.contains(key);
            if strict && query.contains(key) {
                return Err(ambiguous("a repeated query parameter"));
            }
            let value = match kind {
                ParamKind::Bool => ParamValue::Bool(read_bool(value)?),
                ParamKind::Integer => {
                    if value.is_empty()
                        || value.len() > 18
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(ambiguous(
                            "an integer query parameter that is not plain digits",
                        ));
                    }
                    ParamValue::Raw(value.into())
                }
                // A key a boolean rule predicate reads: exactly as strict as a route boolean.
                _ if self.settings.rule_bool_keys.contains(key) => {
                    ParamValue::Bool(read_bool(value)?)
                }
                // A key a text rule predicate compares: escapes could spell the same value two ways.
                _ if self.settings.rule_keys.contains(key)
                    && value.bytes().any(|b| matches!(b, b'%' | b'+')) =>
                {
                    return Err(ambiguous(
                        "an escaped value of a query parameter a policy rule compares",
                    ));
                }
                _ => ParamValue::Raw(plain_value(value)?.into()),
            };
            let key = match declared {
                Some(param) => std::borrow::Cow::Borrowed(param.name),
                None => std::borrow::Cow::Owned(key.to_owned()),
            };
            query.pairs.push((key, value));
        }
        Ok(query)
    }
}

/// Read a boolean value conservatively: every spelling a common framework reads as true is true;
/// empty, padded, escaped or unknown spellings are refused.
pub fn read_bool(value: &str) -> Result<bool, GatewayError> {
    if value.is_empty() {
        return Err(ambiguous("an empty boolean query parameter"));
    }
    if value
        .bytes()
        .any(|b| matches!(b, b'%' | b'+' | b' ' | b'\t'))
    {
        return Err(ambiguous("an escaped or padded boolean query parameter"));
    }
    if TRUE_SPELLINGS.iter().any(|s| s.eq_ignore_ascii_case(value)) {
        Ok(true)
    } else if FALSE_SPELLINGS.contains(&value) {
        Ok(false)
    } else {
        Err(ambiguous(
            "a boolean query parameter that is neither true nor a false spelling every framework agrees on (false, 0, f, off)",
        ))
    }
}

/// A raw value: printable ASCII without `#`, with well-formed percent escapes only.
fn plain_value(value: &str) -> Result<&str, GatewayError> {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                if hex.is_none() {
                    return Err(ambiguous("a malformed percent-escape in the query"));
                }
                i += 3;
            }
            b'#' | b';' => return Err(ambiguous("'#' or ';' in the query")),
            0x21..=0x7e => i += 1,
            _ => {
                return Err(ambiguous(
                    "a character that is not printable ASCII in the query",
                ))
            }
        }
    }
    Ok(value)
}

fn classify_method(method: &Method) -> Result<Method, GatewayError> {
    if crate::routes::is_accepted(method) {
        Ok(method.clone())
    } else {
        Err(GatewayError::MethodNotAllowed {
            method: method.clone(),
            allowed: Vec::new(),
        })
    }
}

/// Split a path into segments, refusing anything a server could read another way.
fn split_path(path: &str) -> Result<Segments<'_>, GatewayError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ambiguous(
            "the request target must be a path starting with /",
        ));
    };
    if rest.is_empty() {
        return Err(GatewayError::RouteUnknown);
    }
    // `@` and `+` only in the gateway's own API (client ids that are e-mail addresses): its
    // paths are read by this parser alone and never forwarded; a TwelveLabs path keeps the
    // narrower set, since servers disagree on what `+` in a path means.
    let own_api = rest
        .split('/')
        .next()
        .is_some_and(|first| first == crate::routes::gateway::FIRST_SEGMENT);
    for byte in rest.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'/' => {}
            b'@' | b'+' if own_api => {}
            b'%' => return Err(ambiguous("percent-escapes in the path")),
            b';' => return Err(ambiguous("';' in the path")),
            b'\\' => return Err(ambiguous("backslash in the path")),
            _ => {
                return Err(ambiguous(
                    "a character outside [A-Za-z0-9._~:-] in the path",
                ))
            }
        }
    }
    let mut segments = Segments {
        items: [""; Segments::MAX],
        len: 0,
        overflow: false,
    };
    for segment in rest.split('/') {
        match segment {
            "" => return Err(ambiguous("an empty path segment ('//' or a trailing '/')")),
            "." | ".." => return Err(ambiguous("a dot segment ('.' or '..') in the path")),
            _ => {}
        }
        if segments.len < Segments::MAX {
            segments.items[segments.len] = segment;
            segments.len += 1;
        } else {
            segments.overflow = true;
        }
    }
    Ok(segments)
}

/// A path's segments, kept on the stack: every one is checked, the first [`Segments::MAX`] kept
/// (no TwelveLabs route is nearly that long, so a longer path matches no route).
struct Segments<'a> {
    items: [&'a str; Segments::MAX],
    len: usize,
    overflow: bool,
}

impl<'a> Segments<'a> {
    const MAX: usize = 16;

    fn as_slice(&self) -> &[&'a str] {
        &self.items[..self.len]
    }
}

/// The classification layer: every request becomes its canonical [`Operation`], or is refused.
#[derive(Clone, Debug)]
pub struct Classify {
    classifier: Arc<Classifier>,
}

impl Classify {
    /// The layer classifying with `classifier`.
    pub fn layer(classifier: Arc<Classifier>) -> GateLayer<Classify> {
        GateLayer::new(Classify { classifier })
    }
}

impl<B: http_body::Body> Admit<B> for Classify {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        if req.extensions().get::<FragmentInTarget>().is_some() {
            // The parser dropped it; the wire had it (see `fragment`).
            return Err(ambiguous("a #fragment in the request target"));
        }
        let has_body = !req.body().is_end_stream();
        let operation = self.classifier.classify(
            req.method(),
            req.version(),
            req.uri(),
            req.headers(),
            has_body,
        )?;
        tracing::Span::current().record("operation", operation.route_id());
        if let Some(scope) = req.extensions().get::<RequestScope>() {
            scope.set_route(operation.route_id());
        }
        req.extensions_mut().insert(operation);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
