//! Forwarding: the canonical request to the fixed upstream origin, over rustls, streamed both ways.
//!
//! Where a connection goes comes from configuration only (scheme, host, port); the request line's
//! target is the classified [`Operation`]'s path and query, in origin form, and `Host` is the
//! configured authority: the client's `Host` or target never chooses either. Requests go upstream
//! as HTTP/1.1 on connections owned by the serving worker that uses them ([`pool`]). No redirects
//! are followed and proxy environment variables are ignored.

pub mod pool;
pub mod settings;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use tower::Service;
use tracing::Instrument;

use self::pool::{Pools, SendError};

use crate::body::{self, GatewayBody};
use crate::classify::Operation;
use crate::error::{GatewayError, UpstreamFailure};
use crate::headers;
use crate::overload::{ClientBodyError, TimedBody};

/// `scheme://host[:port]` of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOrigin {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and optional port.
    pub authority: Authority,
}

impl std::fmt::Display for UpstreamOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl std::str::FromStr for UpstreamOrigin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{s:?} needs a scheme (https:// or http://)"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!(
                "{s:?}: only http and https upstreams are supported"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?} needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{s:?}: credentials in the URL are not allowed"));
        }
        let path = uri.path();
        if !(path.is_empty() || path == "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: give only scheme://host[:port]; request paths such as /v1.3/... are appended as classified"
            ));
        }
        Ok(UpstreamOrigin { scheme, authority })
    }
}

/// Upstream settings the forwarder needs (and nothing else from the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Fixed origin.
    pub origin: UpstreamOrigin,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving response headers.
    pub request_timeout: Duration,
    /// A response body that sends nothing for this long is aborted.
    pub body_idle_timeout: Duration,
    /// Requests to the upstream at once, at most.
    pub max_concurrency: Option<usize>,
    /// Wait for an upstream slot at most this long.
    pub queue_timeout: Duration,
    /// Separate connection pools: one per serving worker plus one for every other thread.
    pub pool_shards: usize,
    /// Idle connections each pool keeps (a burst's extra connections are closed afterwards).
    pub max_idle_per_pool: usize,
}

/// Why the forwarder could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for the upstream: {0}")]
pub struct ForwardSetupError(#[from] rustls::Error);

/// The innermost service: sends the canonical request upstream and streams the response back.
#[derive(Clone, Debug)]
pub struct Forwarder {
    /// Idle connections per serving worker (index [`crate::workers::current`]): an upstream
    /// connection is driven by the thread of the requests that use it, so no request wakes another
    /// thread.
    pools: Arc<Pools>,
    settings: Arc<UpstreamSettings>,
    host: HeaderValue,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl Forwarder {
    /// Build a forwarder with its own connection pool.
    pub fn new(settings: UpstreamSettings) -> Result<Self, ForwardSetupError> {
        let origin = &settings.origin;
        let https = origin.scheme == Scheme::HTTPS;
        let tls = if https {
            Some(crate::outbound::tls_config(&[b"http/1.1"])?)
        } else {
            None
        };
        let port = origin
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let pools = Arc::new(Pools::new(
            origin.authority.host(),
            port,
            tls,
            settings.connect_timeout,
            settings.pool_shards,
            settings.max_idle_per_pool,
        )?);
        let host = HeaderValue::from_str(settings.origin.authority.as_str())
            .map_err(|_| rustls::Error::General("upstream authority is not a valid Host".into()))?;
        let slots = settings
            .max_concurrency
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        Ok(Forwarder {
            pools,
            settings: Arc::new(settings),
            host,
            slots,
        })
    }

    /// The settings this forwarder was built with.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// A small GET of the gateway's own (reference lookups): at most `limit` body bytes are read.
    pub async fn fetch(
        &self,
        path_and_query: &str,
        key: HeaderValue,
        limit: usize,
    ) -> Result<(http::StatusCode, bytes::Bytes), GatewayError> {
        use http_body_util::BodyExt;
        let uri = PathAndQuery::try_from(path_and_query)
            .map(Uri::from)
            .map_err(|_| GatewayError::Internal("a lookup target does not form a URI"))?;
        let mut request = Request::get(uri)
            .header(header::HOST, self.host.clone())
            .header(crate::credentials::X_API_KEY.clone(), key)
            .header(header::ACCEPT, "application/json")
            .body(body::empty())
            .map_err(|_| GatewayError::Internal("a lookup request could not be built"))?;
        let span = tracing::trace_span!(
            "upstream",
            otel.kind = "client",
            status = tracing::field::Empty
        );
        inject_trace_context(&span, request.headers_mut());
        let recorded = span.clone();
        let timeout = self.settings.request_timeout;
        let exchange = async {
            let response = self.pools.send(request).await.map_err(|error| {
                GatewayError::UpstreamUnavailable(match error {
                    SendError::Connect(_) => UpstreamFailure::Connect,
                    SendError::Exchange(_) => UpstreamFailure::Exchange,
                })
            })?;
            let status = response.status();
            recorded.record("status", status.as_u16());
            let bytes = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|_| GatewayError::UpstreamUnavailable(UpstreamFailure::Exchange))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange.instrument(span))
            .await
            .map_err(|_| GatewayError::UpstreamTimeout(timeout.as_millis()))?
    }

    /// The request line's target: the canonical path and query, in origin form.
    fn upstream_uri(&self, operation: &Operation) -> Result<Uri, GatewayError> {
        PathAndQuery::try_from(operation.path_and_query())
            .map(Uri::from)
            .map_err(|_| GatewayError::Internal("the canonical target does not form a URI"))
    }
}

impl Service<Request<GatewayBody>> for Forwarder {
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response<GatewayBody>, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let uri = match parts.extensions.get::<Operation>() {
            // The canonical target is byte for byte the request's own: forward that (no copy).
            Some(operation) => match parts.uri.path_and_query() {
                // Already origin form (HTTP/1): kept as it is.
                Some(target)
                    if operation.target_is(target.as_str()) && parts.uri.scheme().is_none() =>
                {
                    Ok(std::mem::take(&mut parts.uri))
                }
                Some(target) if operation.target_is(target.as_str()) => {
                    Ok(Uri::from(target.clone()))
                }
                _ => self.upstream_uri(operation),
            },
            None => Err(GatewayError::Internal(
                "request reached the forwarder unclassified",
            )),
        };
        let uri = match uri {
            Ok(uri) => uri,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        parts.headers.insert(header::HOST, self.host.clone());
        // The gateway's own server already answered any 100-continue expectation.
        parts.headers.remove(header::EXPECT);
        // The upstream exchange's span (disabled, at no cost, unless traces are exported), whose
        // context the upstream receives as `traceparent`.
        let span = tracing::trace_span!(
            "upstream",
            otel.kind = "client",
            status = tracing::field::Empty
        );
        inject_trace_context(&span, &mut parts.headers);
        let upstream_request = Request::from_parts(parts, body);
        let timeout = self.settings.request_timeout;
        let idle = self.settings.body_idle_timeout;
        let queue_timeout = self.settings.queue_timeout;
        let pools = self.pools.clone();
        let slots = self.slots.clone();
        let recorded = span.clone();
        let exchange = async move {
            // Upstream back-pressure: wait (bounded) for a slot, held until the response headers.
            let _slot = match slots {
                None => None,
                Some(slots) => {
                    match tokio::time::timeout(queue_timeout, slots.acquire_owned()).await {
                        Ok(Ok(permit)) => Some(permit),
                        _ => return Err(GatewayError::UpstreamBusy),
                    }
                }
            };
            let response = match tokio::time::timeout(timeout, pools.send(upstream_request)).await {
                Err(_) => return Err(GatewayError::UpstreamTimeout(timeout.as_millis())),
                Ok(Err(error)) => {
                    if let Some(client) = ClientBodyError::find(&error) {
                        tracing::info!(error = %client, "request body failed on the client's side");
                        return Err(client.to_gateway_error());
                    }
                    let failure = match error {
                        SendError::Connect(_) => UpstreamFailure::Connect,
                        SendError::Exchange(_) => UpstreamFailure::Exchange,
                    };
                    tracing::warn!(kind = failure.as_str(), error = %ErrorChain(&error), "upstream request failed");
                    return Err(GatewayError::UpstreamUnavailable(failure));
                }
                Ok(Ok(response)) => response,
            };
            let (mut parts, body) = response.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            recorded.record("status", parts.status.as_u16());
            Ok(Response::from_parts(
                parts,
                body::boxed(TimedBody::upstream(body, idle)),
            ))
        };
        if span.is_disabled() {
            Box::pin(exchange)
        } else {
            Box::pin(exchange.instrument(span))
        }
    }
}

/// Write `span`'s context as `traceparent` (and `tracestate`) into an outgoing request's headers,
/// replacing any; nothing when the span is disabled (traces not exported).
fn inject_trace_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
        // The propagator writes an empty `tracestate` when there is none: not sent.
        if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
            headers.remove("tracestate");
        }
    }
}

/// Display an error with its sources, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
