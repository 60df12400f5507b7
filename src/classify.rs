//! Classification: method + request target → the canonical [`Operation`], or a refusal.
//!
//! One strict parse per request, the same for HTTP/1.1 and HTTP/2. Anything a server could read more
//! than one way is refused, never normalised: percent escapes, `;`, `\`, dot or empty segments,
//! non-ASCII, absolute- or authority-form targets, method-override headers. The upstream request is
//! later built from the `Operation`, so what was evaluated is what is forwarded.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::{Method, Request, Version};
use tower::{Layer, Service};

use crate::error::GatewayError;

/// API versions the gateway forwards.
pub const API_VERSIONS: [&str; 1] = ["v1.3"];

/// Headers and parameters some frameworks honour to change the method; always refused.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The canonical form of a request: what policy judges and what is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Exact method.
    pub method: Method,
    /// Canonical path, e.g. `/v1.3/assets/6298d673f1090f1100476d4c`.
    pub path: Arc<str>,
    /// Canonical query string without `?`, if any.
    pub query: Option<Arc<str>>,
}

impl Operation {
    /// Path plus `?query`, as sent upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.to_string(),
        }
    }
}

/// Classify a request head. Pure: no I/O.
pub fn classify(
    method: &Method,
    version: Version,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<Operation, GatewayError> {
    let method = classify_method(method)?;
    if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        // Absolute-form targets could name another origin; real SDKs send origin-form.
        return Err(GatewayError::RequestAmbiguous(
            "absolute-form request targets are not accepted; send the path only",
        ));
    }
    if METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name))
    {
        return Err(GatewayError::RequestAmbiguous(
            "method-override headers are not accepted",
        ));
    }
    let path = classify_path(uri.path())?;
    let query = match uri.query() {
        None => None,
        Some("") => {
            return Err(GatewayError::RequestAmbiguous(
                "an empty query string ('?' with nothing after it)",
            ))
        }
        Some(q) => Some(classify_query(q)?),
    };
    Ok(Operation {
        method,
        path: path.into(),
        query: query.map(Into::into),
    })
}

fn classify_method(method: &Method) -> Result<Method, GatewayError> {
    // Matched exactly: hyper accepts `delete` or `DELETEX` as extension methods.
    const ALLOWED: [Method; 7] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if ALLOWED.contains(method) {
        Ok(method.clone())
    } else {
        Err(GatewayError::MethodNotAllowed(method.clone()))
    }
}

fn classify_path(path: &str) -> Result<&str, GatewayError> {
    let ambiguous = GatewayError::RequestAmbiguous;
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ambiguous(
            "the request target must be a path starting with /",
        ));
    };
    if rest.is_empty() {
        return Err(GatewayError::RouteUnknown);
    }
    for byte in rest.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'/' => {}
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
    let mut segments = rest.split('/');
    for segment in segments.clone() {
        match segment {
            "" => return Err(ambiguous("an empty path segment ('//' or a trailing '/')")),
            "." | ".." => return Err(ambiguous("a dot segment ('.' or '..') in the path")),
            _ => {}
        }
    }
    match segments.next() {
        Some(version) if API_VERSIONS.contains(&version) => Ok(path),
        _ => Err(GatewayError::RouteUnknown),
    }
}

fn classify_query(query: &str) -> Result<&str, GatewayError> {
    // Full canonicalisation of parameters comes with the route table; here only unambiguous bytes pass.
    for byte in query.bytes() {
        if !(0x21..=0x7e).contains(&byte) || byte == b'#' {
            return Err(GatewayError::RequestAmbiguous(
                "a character that is not printable ASCII in the query",
            ));
        }
    }
    Ok(query)
}

/// Layer that classifies every request and inserts its [`Operation`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassifyLayer;

impl ClassifyLayer {
    /// Create the layer.
    pub fn new() -> Self {
        ClassifyLayer
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify { inner }
    }
}

/// Service produced by [`ClassifyLayer`].
#[derive(Clone, Debug)]
pub struct Classify<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Classify<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<S::Future, Ready<Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match classify(req.method(), req.version(), req.uri(), req.headers()) {
            Ok(operation) => {
                req.extensions_mut().insert(operation);
                Either::Left(self.inner.call(req))
            }
            Err(error) => Either::Right(future::ready(Err(error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, target: &str) -> Result<Operation, GatewayError> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        classify(
            &method,
            Version::HTTP_11,
            &target.parse().unwrap(),
            &http::HeaderMap::new(),
        )
    }

    #[test]
    fn plain_sdk_targets_are_accepted_unchanged() {
        let cases = [
            (
                "GET",
                "/v1.3/assets?page=1&page_limit=10",
                "/v1.3/assets",
                Some("page=1&page_limit=10"),
            ),
            (
                "DELETE",
                "/v1.3/assets/6298d673f1090f1100476d4c?force=true",
                "/v1.3/assets/6298d673f1090f1100476d4c",
                Some("force=true"),
            ),
            (
                "POST",
                "/v1.3/connections:authorize",
                "/v1.3/connections:authorize",
                None,
            ),
        ];
        for (method, target, path, query) in cases {
            let op = run(method, target).unwrap();
            assert_eq!(&*op.path, path);
            assert_eq!(op.query.as_deref(), query);
            assert_eq!(op.path_and_query(), target);
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            "/v1.3/assets/a%2Fb",
            "/v1.3/assets/%61",
            "/v1.3/assets/a;force=true",
            "/v1.3/assets/./a",
            "/v1.3/assets/../indexes/x",
            "/v1.3//assets",
            "/v1.3/assets/",
            "/v1.3/assets/a*",
            "/v1.3/assets?",
        ];
        for target in cases {
            assert!(
                matches!(
                    run("DELETE", target),
                    Err(GatewayError::RequestAmbiguous(_))
                ),
                "{target}"
            );
        }
    }

    #[test]
    fn unknown_versions_are_unknown_routes() {
        for target in ["/v1.2/assets", "/assets/abc", "/"] {
            assert!(
                matches!(run("GET", target), Err(GatewayError::RouteUnknown)),
                "{target}"
            );
        }
    }

    #[test]
    fn only_exact_known_methods_pass() {
        for method in ["TRACE", "CONNECT", "delete", "DELETEX", "PROPFIND"] {
            assert!(
                matches!(
                    run(method, "/v1.3/assets"),
                    Err(GatewayError::MethodNotAllowed(_))
                ),
                "{method}"
            );
        }
    }

    #[test]
    fn absolute_form_and_method_override_are_refused() {
        let absolute = classify(
            &Method::GET,
            Version::HTTP_11,
            &"http://evil.example/v1.3/assets".parse().unwrap(),
            &http::HeaderMap::new(),
        );
        assert!(matches!(absolute, Err(GatewayError::RequestAmbiguous(_))));
        let mut headers = http::HeaderMap::new();
        headers.insert("x-http-method-override", "DELETE".parse().unwrap());
        let overridden = classify(
            &Method::POST,
            Version::HTTP_11,
            &"/v1.3/assets".parse().unwrap(),
            &headers,
        );
        assert!(matches!(overridden, Err(GatewayError::RequestAmbiguous(_))));
    }
}
