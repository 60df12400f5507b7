//! The layer that gives every request its span and logs its response.

use crate::ext::{ErrorCode, RequestId, RequestScope};

/// Layer giving each request a span — `request` with `request_id`, `method` and `path`, and
/// `operation` and `client` recorded by the classifier and authentication as they learn them — and
/// logging its response at INFO (`finished processing request`, with `latency` and `status`).
///
/// It does what tower-http's `TraceLayer` was configured to do here, without wrapping the
/// response body: the body type stays the 16-byte [`GatewayBody`](crate::body::GatewayBody) box,
/// which hyper keeps inline in every connection (a wrapped body made each kept-alive connection
/// larger, and re-boxing it cost an allocation per request). Body-stream failures are logged
/// where they happen (the forwarder, the audit outcome), not here.
///
/// When traces are exported (`telemetry.otlp`), the span is declared with the fields the exported
/// span carries — `route`, `status`, `code`, `decision`, `rules` — and those are recorded; when
/// they are not, the span and its cost are exactly what they were before traces existed.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceRequestsLayer {
    export: bool,
}

impl TraceRequestsLayer {
    /// The layer; `export`: traces are exported, so record the exported span's fields.
    pub fn new(export: bool) -> Self {
        TraceRequestsLayer { export }
    }
}

impl<S> tower::Layer<S> for TraceRequestsLayer {
    type Service = TraceRequests<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceRequests {
            inner,
            export: self.export,
        }
    }
}

/// Service produced by [`TraceRequestsLayer`].
#[derive(Clone, Debug)]
pub struct TraceRequests<S> {
    inner: S,
    export: bool,
}

impl<S, B, ResB> tower::Service<http::Request<B>> for TraceRequests<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>>,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = Traced<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestScope>()
            .and_then(RequestScope::request_id)
            .map(RequestId::as_str)
            .unwrap_or("");
        let span = if self.export {
            tracing::info_span!(
                "request",
                otel.kind = "server",
                request_id = id,
                method = %req.method(),
                path = %Truncated(req.uri().path()),
                operation = tracing::field::Empty,
                client = tracing::field::Empty,
                route = tracing::field::Empty,
                status = tracing::field::Empty,
                code = tracing::field::Empty,
                decision = tracing::field::Empty,
                rules = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "request",
                request_id = id,
                method = %req.method(),
                path = %Truncated(req.uri().path()),
                operation = tracing::field::Empty,
                client = tracing::field::Empty,
            )
        };
        let scope = self
            .export
            .then(|| req.extensions().get::<RequestScope>().cloned())
            .flatten();
        // The layers below record into the span from their `call`, so it is entered there too.
        let inner = span.in_scope(|| self.inner.call(req));
        Traced {
            inner,
            span,
            started: std::time::Instant::now(),
            scope,
        }
    }
}

/// Longest request path written to a log line; a longer one is cut and marked.
pub const MAX_LOGGED_PATH: usize = 256;

/// A path as logged: at most [`MAX_LOGGED_PATH`] bytes (cut at a character boundary), then
/// `…[N bytes]` with the whole length. A 60 KB target cannot make 60 KB log lines (and costs no
/// allocation either way).
pub struct Truncated<'a>(pub &'a str);

impl std::fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        if text.len() <= MAX_LOGGED_PATH {
            return f.write_str(text);
        }
        let mut end = MAX_LOGGED_PATH;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}…[{} bytes]", &text[..end], text.len())
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`TraceRequests`]: polls the inner future inside the request's span and
    /// logs the response.
    pub struct Traced<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        started: std::time::Instant,
        // Only when traces are exported: where the route id is read at the end.
        scope: Option<RequestScope>,
    }
}

impl<F, ResB, E> std::future::Future for Traced<F>
where
    F: std::future::Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            if let Some(scope) = this.scope.as_ref() {
                record_outcome(this.span, scope, response);
            }
            tracing::info!(
                latency = %format_args!("{} ms", this.started.elapsed().as_millis()),
                status = response.status().as_u16(),
                "finished processing request"
            );
        }
        std::task::Poll::Ready(result)
    }
}

/// The exported span's outcome fields: route id, status, the gateway's error code.
fn record_outcome<B>(span: &tracing::Span, scope: &RequestScope, response: &http::Response<B>) {
    if let Some(route) = scope.route() {
        span.record("route", route);
    }
    let status = response.status();
    span.record("status", status.as_u16());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        span.record("code", *code);
    }
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_and_marked_and_short_ones_kept() {
        assert_eq!(Truncated("/v1.3/assets").to_string(), "/v1.3/assets");
        let long = format!("/tl-gateway/v1/approvals/{}", "a".repeat(60_000));
        let shown = Truncated(&long).to_string();
        assert!(shown.len() < MAX_LOGGED_PATH + 32, "{}", shown.len());
        assert!(
            shown.ends_with(&format!("…[{} bytes]", long.len())),
            "{shown}"
        );
        // Cut at a character boundary.
        let wide = "é".repeat(200);
        assert!(Truncated(&wide).to_string().starts_with(&"é".repeat(128)));
    }
}
