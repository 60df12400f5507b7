//! Wire-level helpers shared by the router and the handlers: the TwelveLabs error type and
//! response builders, query-string and JSON body parsing, and the counting body stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};

use super::state::PageReq;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as a stream of data chunks.
pub(super) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// The response type of every handler.
pub(super) type Resp = Response<Full<Bytes>>;

/// What a handler returns: a response, or an error to render.
pub(super) type Reply = Result<Resp, ApiError>;

/// Largest JSON request body accepted.
const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest non-file multipart field accepted.
pub(super) const MAX_FORM_FIELD: usize = 64 * 1024;
/// `page_limit` ceiling of the real API.
const MAX_PAGE_LIMIT: u64 = 50;

/// Turns a body into a chunk stream that counts bytes into `counter`. It returns `Pending`
/// once after every chunk so a consumer that buffers until `Pending` (multer does) holds at
/// most one chunk, whatever the body implementation.
pub(super) fn counting_stream<B>(body: B, counter: Arc<AtomicU64>) -> BodyStream
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut inner = Box::pin(body.into_data_stream());
    let mut yield_next = false;
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        if yield_next {
            yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                yield_next = true;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }))
}

/// A TwelveLabs error: `{"code": ..., "message": ...}` with an HTTP status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with any status and code.
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 400 `parameter_invalid`.
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "parameter_invalid", message)
    }

    /// 400 `parameter_not_provided` for `param`.
    pub(super) fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "parameter_not_provided",
            format!("The {param} parameter is required."),
        )
    }

    /// 404 `resource_not_exist` for a `kind` ("asset", "index", ...) with `id`.
    pub(super) fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "resource_not_exist",
            format!("The {kind} {id} does not exist."),
        )
    }

    /// 405 with an `Allow` header listing `allow`.
    pub(super) fn method_not_allowed(method: &http::Method, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("Method {method} is not allowed on this endpoint."),
            )
        }
    }

    /// The human-readable message.
    pub(super) fn message(&self) -> &str {
        &self.message
    }

    /// Renders the flat TwelveLabs error body.
    pub(super) fn into_response(self) -> Resp {
        let body = json!({ "code": self.code, "message": self.message });
        let mut resp = json_response(self.status, &body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// A JSON response with `content-type: application/json`.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// 200 with a JSON body.
pub(super) fn ok_json(body: &Value) -> Reply {
    Ok(json_response(StatusCode::OK, body))
}

/// 200 with an empty body: the OpenAPI document declares no content for these successes.
pub(super) fn ok_empty() -> Reply {
    Ok(Response::new(Full::new(Bytes::new())))
}

/// Serializes a record (cannot fail for the emulator's plain types).
pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Decoded query string pairs, in order (keys may repeat).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string.
    pub(super) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Self(pairs)
    }

    /// The first value of `key`.
    pub(super) fn first(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter; comma-separated values are split too.
    pub(super) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// `page` (default 1) and `page_limit` (default 10, 1..=50); anything else is a 400.
    pub(super) fn page(&self) -> Result<PageReq, ApiError> {
        let mut req = PageReq::default();
        if let Some(v) = self.first("page") {
            req.page = v.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                ApiError::invalid("The page parameter must be an integer of at least 1.")
            })?;
        }
        if let Some(v) = self.first("page_limit") {
            req.limit = v
                .parse()
                .ok()
                .filter(|l| (1..=MAX_PAGE_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "The page_limit parameter must be an integer between 1 and {MAX_PAGE_LIMIT}."
                    ))
                })?;
        }
        Ok(req)
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, bad escapes kept literally).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if b.len() > i + 2
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                out.push(hex_val(b[i + 1]) << 4 | hex_val(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of an ASCII hex digit (callers check `is_ascii_hexdigit` first).
fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

// ---------- request bodies ----------

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes; `None` when it is empty.
pub(super) async fn read_json(mut body: BodyStream) -> Result<Option<Value>, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > MAX_JSON_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("The request body exceeds {MAX_JSON_BODY} bytes."),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON: {e}")))
}

/// Reads a JSON object body; an empty body counts as `{}`.
pub(super) async fn read_object(body: BodyStream) -> Result<Map<String, Value>, ApiError> {
    match read_json(body).await? {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ApiError::invalid("The request body must be a JSON object.")),
    }
}

/// A required non-empty string field.
pub(super) fn req_str(m: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    opt_str(m, key)?.ok_or_else(|| ApiError::missing(key))
}

/// An optional string field; when present it must be a non-empty string.
pub(super) fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!(
            "The {key} parameter must be a non-empty string."
        ))),
    }
}

/// An optional object field.
pub(super) fn opt_object(
    m: &Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(_) => Err(ApiError::invalid(format!(
            "The {key} parameter must be an object."
        ))),
    }
}

/// A required, non-empty array of non-empty strings.
pub(super) fn req_str_list(m: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    let items = match m.get(key) {
        None | Some(Value::Null) => return Err(ApiError::missing(key)),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "The {key} parameter must be a non-empty array of strings."
            )))
        }
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(ApiError::invalid(format!(
                "The {key} parameter must be a non-empty array of strings."
            ))),
        })
        .collect()
}

/// User metadata values are strings, numbers, booleans or arrays of strings; `null` is
/// allowed where it means "delete this key".
pub(super) fn check_metadata(m: &Map<String, Value>, allow_null: bool) -> Result<(), ApiError> {
    for (k, v) in m {
        let ok = match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
            Value::Null => allow_null,
            Value::Array(a) => a.iter().all(Value::is_string),
            Value::Object(_) => false,
        };
        if !ok {
            return Err(ApiError::invalid(format!(
                "The value of user_metadata key {k:?} must be a string, number, boolean or array of strings."
            )));
        }
    }
    Ok(())
}

/// Applies a PATCH-style metadata update: `null` deletes a key.
pub(super) fn merge_metadata(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        if v.is_null() {
            target.remove(&k);
        } else {
            target.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("x%2Fy"), "x/y");
        assert_eq!(percent_decode("bad%zzend%4"), "bad%zzend%4");
    }
}
