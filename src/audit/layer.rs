//! The audit layers: which requests are audited, the durable intent before forwarding, and the
//! outcome (or denial) after.
//!
//! Two layers share one per-request [`Ticket`]:
//! - [`AuditLayer`] sits right after authentication. For an audited request it hands a ticket down,
//!   and afterwards writes a `denied` record if the request was refused before its intent (policy,
//!   rate limit, guard), or an `outcome` record when the response ends, fails, or the client goes
//!   away.
//! - [`IntentLayer`] sits after policy and guards, just before credentials and forwarding. It writes
//!   the `intent` record and waits until it is durable; if it cannot be, the request is refused with
//!   503 `audit_unavailable` and never forwarded.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::record::{rfc3339, Event, Phase};
use super::AuditLog;
use crate::auth::Principal;
use crate::body::{self, BoxError, GatewayBody};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::guards::Lookup;
use crate::metrics::Metrics;
use crate::policy::Decision;
use crate::request_id::RequestId;
use crate::routes::RouteId;
use crate::server::ClientAddr;

/// Which requests are audited: every destructive route, plus `audit.match` routes, plus
/// non-safe methods on unknown routes (when `routes.unknown: forward` lets them through).
#[derive(Debug, Clone, Default)]
pub struct AuditScope {
    /// Extra routes from `audit.match`.
    pub extra: BTreeSet<RouteId>,
}

impl AuditScope {
    /// Whether `op` is audited.
    pub fn covers(&self, op: &Operation) -> bool {
        match op.route {
            Some(route) => route.destructive || self.extra.contains(&route.id),
            None => !matches!(op.method, Method::GET | Method::HEAD | Method::OPTIONS),
        }
    }
}

/// One audited request's shared state.
#[derive(Debug)]
pub struct Ticket {
    log: AuditLog,
    metrics: Arc<Metrics>,
    base: Event,
    started: Instant,
    intent_requested: AtomicBool,
    intent_written: AtomicBool,
    /// Handed to the upstream (after the intent was durable).
    forwarded: AtomicBool,
    finished: AtomicBool,
    is_delete: bool,
}

impl Ticket {
    fn new(
        log: AuditLog,
        metrics: Arc<Metrics>,
        op: &Operation,
        principal: &Principal,
        id: Option<&RequestId>,
        peer: Option<&ClientAddr>,
    ) -> Self {
        let force =
            (op.route_id() == "assets.delete").then(|| op.query.bool("force").unwrap_or(false));
        Ticket {
            log,
            metrics,
            base: Event {
                time: String::new(),
                request_id: id.map(|i| i.as_str().to_owned()).unwrap_or_default(),
                // The gateway's own pairing id: a client chooses its request id, not this.
                audit_id: Some(format!("{:032x}", rand::random::<u128>())),
                phase: None,
                client: Some(principal.client.as_str().to_owned()),
                roles: principal
                    .roles
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
                client_ip: peer.map(|p| p.0.ip().to_string()),
                method: op.method.as_str().to_owned(),
                path: op.path.to_string(),
                operation: op.route_id().to_owned(),
                params: op
                    .params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                force,
                ..Event::default()
            },
            started: Instant::now(),
            intent_requested: AtomicBool::new(false),
            intent_written: AtomicBool::new(false),
            forwarded: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            is_delete: op.method == Method::DELETE,
        }
    }

    fn event(&self, phase: Phase) -> Event {
        let mut event = self.base.clone();
        event.time = rfc3339(SystemTime::now());
        event.phase = Some(phase);
        event
    }

    fn count(&self, outcome: &str) {
        if self.is_delete {
            let force = if self.base.force == Some(true) {
                "true"
            } else {
                "false"
            };
            let client = self.base.client.as_deref().unwrap_or("");
            self.metrics
                .deletions
                .with_label_values(&[&self.base.operation, client, force, outcome])
                .inc();
        }
    }

    /// Write the outcome once: final status, whether the upstream answered (`answered`: the status
    /// is the upstream's), and for failures why.
    fn finish(&self, status: u16, error: Option<&str>, answered: bool) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        let forwarded = self.forwarded.load(Ordering::SeqCst);
        let mut event = self.event(Phase::Outcome);
        event.decision = Some("allow".into());
        event.status = Some(status);
        event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        event.error = error.map(str::to_owned);
        event.forwarded = Some(forwarded);
        event.upstream_status = answered.then_some(status);
        let outcome = match (status, error) {
            (_, Some(e)) if e.starts_with("client_disconnected") => "client_disconnected",
            (200..=299, None) => "success",
            (400..=499, None) => "upstream_rejected",
            _ => "upstream_failed",
        };
        self.count(outcome);
        self.log.write(event);
    }

    /// Write a `denied` record for a refusal before the intent.
    fn denied(&self, error: &GatewayError) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        if let GatewayError::AuditUnavailable(_) = error {
            // The sink is what failed: counted, and the error is in the gateway's log. The intent
            // may still reach the file later: say the request was never forwarded.
            self.count("audit_unavailable");
            if self.intent_requested.load(Ordering::SeqCst) {
                let mut event = self.event(Phase::Outcome);
                event.decision = Some("allow".into());
                event.status = Some(error.status().as_u16());
                event.error = Some(error.code().to_owned());
                event.forwarded = Some(false);
                self.log.write(event);
            }
            return;
        }
        let mut event = self.event(Phase::Denied);
        event.decision = Some("deny".into());
        event.status = Some(error.status().as_u16());
        event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        event.error = Some(error.code().to_owned());
        match error {
            GatewayError::PolicyDenied { rule, .. } => event.rule = Some(rule.as_str().to_owned()),
            GatewayError::TooManyRequests { limit, .. } => {
                event.rule = Some(limit.as_str().to_owned())
            }
            _ => {}
        }
        self.count("denied");
        self.log.denied(event);
    }
}

/// Layer that audits destructive requests (outer part: denials and outcomes).
#[derive(Clone, Debug)]
pub struct AuditLayer {
    log: Option<AuditLog>,
    scope: Arc<AuditScope>,
    metrics: Arc<Metrics>,
}

impl AuditLayer {
    /// Audit into `log` (with `None`, destructive requests pass unaudited: no `audit:` configured).
    pub fn new(log: Option<AuditLog>, scope: Arc<AuditScope>, metrics: Arc<Metrics>) -> Self {
        AuditLayer {
            log,
            scope,
            metrics,
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            log: self.log.clone(),
            scope: self.scope.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Service produced by [`AuditLayer`].
#[derive(Clone, Debug)]
pub struct Audit<S> {
    inner: S,
    log: Option<AuditLog>,
    scope: Arc<AuditScope>,
    metrics: Arc<Metrics>,
}

/// Writes `client_disconnected` if the request future is dropped after its intent.
struct DropGuard(Option<Arc<Ticket>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(ticket) = self.0.take() {
            if ticket.intent_written.load(Ordering::SeqCst) {
                // Forwarded, no answer seen: whether it took effect is unknown.
                ticket.finish(499, Some("client_disconnected"), false);
            } else if ticket.intent_requested.load(Ordering::SeqCst) {
                // The intent may become durable although the request is never forwarded: say so,
                // or the next start would report it as unresolved.
                ticket.finish(499, Some("client_disconnected_before_forwarding"), false);
            }
        }
    }
}

impl<S> Service<Request<GatewayBody>> for Audit<S>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    /// Requests outside the audit scope pass through without a box of their own.
    type Future =
        Either<S::Future, BoxFuture<'static, Result<Response<GatewayBody>, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<GatewayBody>) -> Self::Future {
        let ticket = match (
            &self.log,
            req.extensions().get::<Operation>(),
            req.extensions().get::<Principal>(),
        ) {
            (Some(log), Some(op), Some(principal)) if self.scope.covers(op) => {
                Some(Arc::new(Ticket::new(
                    log.clone(),
                    self.metrics.clone(),
                    op,
                    principal,
                    req.extensions().get::<RequestId>(),
                    req.extensions().get::<ClientAddr>(),
                )))
            }
            _ => None,
        };
        let Some(ticket) = ticket else {
            return Either::Left(self.inner.call(req));
        };
        req.extensions_mut().insert(ticket.clone());
        // A combinator rather than an async block (see error.rs); the closure owns the drop guard,
        // so dropping the future before completion (client gone) still writes the outcome.
        let guard = DropGuard(Some(ticket.clone()));
        Either::Right(Box::pin(self.inner.call(req).map(move |result| {
            let mut guard = guard;
            guard.0 = None;
            let intent = ticket.intent_written.load(Ordering::SeqCst);
            match result {
                Ok(response) if intent => {
                    let status = response.status().as_u16();
                    Ok(response.map(|inner| {
                        body::boxed(OutcomeBody {
                            inner,
                            ticket,
                            status,
                        })
                    }))
                }
                Ok(response) => Ok(response),
                Err(error) => {
                    if intent {
                        if never_sent(&error) {
                            ticket.forwarded.store(false, Ordering::SeqCst);
                        }
                        ticket.finish(error.status().as_u16(), Some(error.code()), false);
                    } else {
                        ticket.denied(&error);
                    }
                    Err(error)
                }
            }
        })))
    }
}

/// Errors that prove the request never left the gateway (so the upstream cannot have acted on it).
fn never_sent(error: &GatewayError) -> bool {
    matches!(
        error,
        GatewayError::UpstreamUnavailable(crate::error::UpstreamFailure::Connect)
            | GatewayError::UpstreamBusy
            | GatewayError::UpstreamKeyMissing
    )
}

/// Streams the response and writes the outcome when it ends, fails or is dropped.
struct OutcomeBody {
    inner: GatewayBody,
    ticket: Arc<Ticket>,
    status: u16,
}

impl Body for OutcomeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ticket.finish(self.status, None, true),
            Poll::Ready(Some(Err(_))) => {
                self.ticket
                    .finish(self.status, Some("upstream_body_error"), true)
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OutcomeBody {
    fn drop(&mut self) {
        // The upstream has answered either way: its status settles the intent.
        if self.inner.is_end_stream() {
            self.ticket.finish(self.status, None, true);
        } else {
            self.ticket
                .finish(self.status, Some("client_disconnected"), true);
        }
    }
}

/// Layer that makes the intent durable before forwarding (inner part).
#[derive(Clone, Copy, Debug, Default)]
pub struct IntentLayer;

impl<S> Layer<S> for IntentLayer {
    type Service = Intent<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Intent { inner }
    }
}

/// Service produced by [`IntentLayer`].
#[derive(Clone, Debug)]
pub struct Intent<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Intent<S>
where
    S: Service<Request<B>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    /// Requests without a ticket pass through without a box of their own.
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(ticket) = req.extensions().get::<Arc<Ticket>>().cloned() else {
            return Either::Left(self.inner.call(req));
        };
        let mut event = ticket.event(Phase::Intent);
        event.decision = Some("allow".into());
        if let Some(decision) = req.extensions().get::<Decision>() {
            event.rule = decision.rule.as_ref().map(|r| r.as_str().to_owned());
        }
        if let Some(lookup) = req.extensions().get::<Lookup>() {
            event.references = Some(lookup.references.clone());
            event.error = lookup.failed.as_ref().map(|code| {
                format!("reference lookup failed ({code}); forwarded under on_error: allow")
            });
        }
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        Either::Right(Box::pin(async move {
            ticket.intent_requested.store(true, Ordering::SeqCst);
            match ticket.log.write_durable(event).await {
                Ok(_) => {
                    ticket.intent_written.store(true, Ordering::SeqCst);
                    ticket.forwarded.store(true, Ordering::SeqCst);
                    inner.call(req).await
                }
                Err(error) => {
                    tracing::error!(%error, operation = %ticket.base.operation, "audit intent not durable; refusing the request");
                    Err(GatewayError::AuditUnavailable(error))
                }
            }
        }))
    }
}
