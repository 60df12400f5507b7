//! The W3C trace context a request brings (`traceparent`, `tracestate`): honoured only from the
//! clients `telemetry.trust_traceparent_from` names, otherwise ignored and stripped before the
//! request is forwarded. Placed just after the policy layer, where the client and the decision
//! are known, it also records the decision and the matching rule ids on the request span.
//!
//! The gateway's own `traceparent` is written by the forwarder (`forward::inject_trace_context`),
//! inside the `upstream` span, only when traces are exported.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::Request;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::Principal;
use crate::ids::ClientId;
use crate::policy::Decision;

/// `traceparent` (W3C Trace Context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The layer's settings: who is trusted, and whether traces are exported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContextSettings {
    /// Clients (by id) whose `traceparent`/`tracestate` the gateway continues.
    pub trusted: Vec<ClientId>,
    /// Whether `telemetry.otlp` is configured.
    pub export: bool,
}

/// Layer applying [`TraceContextSettings`] to each request.
#[derive(Clone, Debug, Default)]
pub struct TraceContextLayer {
    settings: Arc<TraceContextSettings>,
}

impl TraceContextLayer {
    /// The layer for `settings`.
    pub fn new(settings: TraceContextSettings) -> Self {
        TraceContextLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> tower::Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContext {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// Service produced by [`TraceContextLayer`].
#[derive(Clone, Debug)]
pub struct TraceContext<S> {
    inner: S,
    settings: Arc<TraceContextSettings>,
}

impl<S, B> tower::Service<Request<B>> for TraceContext<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let settings = &*self.settings;
        let trusted = !settings.trusted.is_empty()
            && req
                .extensions()
                .get::<Principal>()
                .is_some_and(|p| settings.trusted.contains(&p.client));
        if settings.export {
            let span = tracing::Span::current();
            if trusted {
                let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
                if parent.span().span_context().is_valid() {
                    // The request span has not started yet (it starts with its first child).
                    let _ = span.set_parent(parent);
                }
            }
            if let Some(decision) = req.extensions().get::<Decision>() {
                span.record("decision", "allow");
                span.record("rules", rule_list(decision).as_str());
            }
            // The forwarder writes the gateway's own context in their place.
            strip(req.headers_mut());
        } else if !trusted {
            strip(req.headers_mut());
        }
        self.inner.call(req)
    }
}

/// Remove a client's trace context headers.
fn strip(headers: &mut http::HeaderMap) {
    headers.remove(&TRACEPARENT);
    headers.remove(&TRACESTATE);
}

/// The matching rule ids, comma-separated.
fn rule_list(decision: &Decision) -> String {
    let mut list = String::new();
    for rule in &decision.matched {
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(rule.as_str());
    }
    list
}
