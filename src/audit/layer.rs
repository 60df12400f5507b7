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

use super::record::{Event, Phase};
use super::AuditLog;
use crate::auth::{Credential, Principal};
use crate::body::{self, BoxError, GatewayBody};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::ext::{ApprovalUsed, RequestScope};
use crate::gate::{AdmitAsync, AsyncGateLayer};
use crate::guards::Lookup;
use crate::metrics::Metrics;
use crate::policy::Decision;
use crate::routes::ids::ASSETS_DELETE;
use crate::routes::{RouteId, RouteTable};
use crate::units::rfc3339;

/// Which requests are audited: every destructive route, plus `audit.match` routes, plus
/// non-safe methods on unknown routes (when `routes.unknown: forward` lets them through).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditScope {
    /// Extra routes from `audit.match`.
    pub extra: BTreeSet<RouteId>,
}

/// One `audit.match` entry as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMatch {
    /// Exact method.
    pub method: Option<Method>,
    /// Route template.
    pub path: Option<String>,
    /// Route id.
    pub operation: Option<String>,
}

impl AuditScope {
    /// Compile `audit.match` entries; `Err((index, why))` for one that names no route.
    pub fn compile<'a>(
        matches: impl Iterator<Item = &'a ScopeMatch>,
    ) -> Result<AuditScope, (usize, String)> {
        let table = RouteTable::v1_3();
        let mut scope = AuditScope::default();
        for (i, m) in matches.enumerate() {
            let routes: Vec<_> = match (&m.operation, &m.path) {
                (Some(op), _) => table.by_id(op).into_iter().collect(),
                (None, Some(path)) => table.by_template(path, m.method.as_ref()),
                (None, None) => table
                    .routes()
                    .iter()
                    .filter(|r| m.method.as_ref().is_some_and(|m| *m == r.method))
                    .collect(),
            };
            if routes.is_empty() {
                return Err((i, "matches no TwelveLabs v1.3 route".into()));
            }
            scope.extend(routes.into_iter().map(|r| r.id));
        }
        Ok(scope)
    }

    fn extend(&mut self, routes: impl Iterator<Item = RouteId>) {
        self.extra.extend(routes);
    }

    /// Whether `op` is audited.
    pub fn covers(&self, op: &Operation) -> bool {
        match op.route {
            Some(route) => route.destructive || self.extra.contains(&route.id),
            None => !crate::routes::is_safe(&op.method),
        }
    }
}

/// How a permitted, audited request ended.
#[derive(Debug, Clone, Copy)]
enum Ending<'a> {
    /// The upstream answered with `status`; its body ended (or broke).
    Answered { status: u16, body_error: bool },
    /// The upstream answered, then the client went away mid-response.
    ClientLeftDuringResponse { status: u16 },
    /// The client went away before any answer.
    ClientLeft,
    /// The gateway failed the request after its intent (upstream error, timeout, …).
    Failed(&'a GatewayError),
}

/// The `outcome` label of `tl_gateway_deletions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered 2xx.
    Success,
    /// The upstream answered 4xx.
    UpstreamRejected,
    /// The upstream answered 5xx, broke the exchange or did not answer in time.
    UpstreamFailed,
    /// The client went away.
    ClientDisconnected,
    /// Refused before forwarding (policy, limits, guards).
    Denied,
    /// The intent could not be made durable.
    AuditUnavailable,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamRejected => "upstream_rejected",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::Denied => "denied",
            Outcome::AuditUnavailable => "audit_unavailable",
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
    /// A call of the gateway's own API: its answer, error or not, is the definitive outcome.
    is_gateway: bool,
}

/// How a caller authenticated, as audit record fields (`key_label`, `certificate`, `auth`,
/// `issuer`, `subject`): request records and the keys API's `admin` records alike.
#[derive(Debug, Default)]
pub struct CredentialFields {
    /// The key's label.
    pub key_label: Option<String>,
    /// The client certificate's SHA-256.
    pub certificate: Option<String>,
    /// `key`, `certificate` or `oidc`.
    pub auth: Option<String>,
    /// For `oidc`: the issuer.
    pub issuer: Option<String>,
    /// For `oidc`: the subject.
    pub subject: Option<String>,
}

impl CredentialFields {
    /// The fields for `credential`.
    pub fn of(credential: Option<&Credential>) -> Self {
        let mut fields = CredentialFields {
            auth: credential.map(|c| c.method().to_owned()),
            ..CredentialFields::default()
        };
        match credential {
            Some(Credential::Key { label }) => fields.key_label = Some(label.to_string()),
            Some(Credential::Certificate { sha256 }) => {
                fields.certificate = Some(sha256.to_string())
            }
            Some(Credential::Oidc { issuer, subject }) => {
                fields.issuer = Some(issuer.to_string());
                fields.subject = Some(subject.to_string());
            }
            None => {}
        }
        fields
    }
}

impl Ticket {
    fn new(
        log: AuditLog,
        metrics: Arc<Metrics>,
        op: &Operation,
        principal: &Principal,
        scope: Option<&RequestScope>,
    ) -> Self {
        let id = scope.and_then(RequestScope::request_id);
        let CredentialFields {
            key_label,
            certificate,
            auth,
            issuer,
            subject,
        } = CredentialFields::of(principal.credential.as_ref());
        let force = op
            .is(ASSETS_DELETE)
            .then(|| op.query.bool("force").unwrap_or(false));
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
                client_ip: scope
                    .and_then(RequestScope::client_addr)
                    .map(|addr| addr.ip().to_string()),
                key_label,
                certificate,
                auth,
                issuer,
                subject,
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
            is_gateway: op.is_gateway(),
        }
    }

    fn event(&self, phase: Phase) -> Event {
        let mut event = self.base.clone();
        event.time = rfc3339(SystemTime::now());
        event.phase = Some(phase);
        event
    }

    fn count(&self, outcome: Outcome) {
        if self.is_delete {
            let force = if self.base.force == Some(true) {
                "true"
            } else {
                "false"
            };
            let client = self.base.client.as_deref().unwrap_or("");
            self.metrics
                .deletions
                .with_label_values(&[&self.base.operation, client, force, outcome.as_str()])
                .inc();
        }
    }

    /// Write the outcome once.
    fn finish(&self, ending: Ending<'_>) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        let forwarded = self.forwarded.load(Ordering::SeqCst);
        let (status, error, answered) = match ending {
            Ending::Answered { status, body_error } => {
                (status, body_error.then_some("upstream_body_error"), true)
            }
            Ending::ClientLeftDuringResponse { status } => {
                (status, Some("client_disconnected"), true)
            }
            Ending::ClientLeft if forwarded => (499, Some("client_disconnected"), false),
            // The intent may become durable although the request is never forwarded: say so, or
            // the next start would report it as unresolved.
            Ending::ClientLeft => (499, Some("client_disconnected_before_forwarding"), false),
            // The gateway's API answered itself: nothing is left unknown.
            Ending::Failed(error) => (error.status().as_u16(), Some(error.code()), self.is_gateway),
        };
        let mut event = self.event(Phase::Outcome);
        event.decision = Some("allow".into());
        event.status = Some(status);
        event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        event.error = error.map(str::to_owned);
        event.forwarded = Some(forwarded);
        event.upstream_status = answered.then_some(status);
        let outcome = match ending {
            Ending::ClientLeft | Ending::ClientLeftDuringResponse { .. } => {
                Outcome::ClientDisconnected
            }
            Ending::Answered {
                status: 200..=299,
                body_error: false,
            } => Outcome::Success,
            Ending::Answered {
                status: 400..=499,
                body_error: false,
            } => Outcome::UpstreamRejected,
            Ending::Answered { .. } | Ending::Failed(_) => Outcome::UpstreamFailed,
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
            self.count(Outcome::AuditUnavailable);
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
            GatewayError::TooManyRequests { limit, .. }
            | GatewayError::LimitsUnavailable { limit, .. } => {
                event.rule = Some(limit.as_str().to_owned())
            }
            GatewayError::ApprovalRequired { id, rule, .. } => {
                event.rule = Some(rule.as_str().to_owned());
                event.approval_id = Some(id.clone());
            }
            GatewayError::ResourceProtected { id, .. } => {
                event.rule = Some(crate::guards::PROTECTED_RULE.to_owned());
                event.protected = Some(id.clone());
            }
            _ => {}
        }
        self.count(Outcome::Denied);
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
            if ticket.intent_requested.load(Ordering::SeqCst) {
                ticket.finish(Ending::ClientLeft);
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
                    req.extensions().get::<RequestScope>(),
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
                        if error.is_before_forwarding() {
                            ticket.forwarded.store(false, Ordering::SeqCst);
                        }
                        ticket.finish(Ending::Failed(&error));
                    } else {
                        ticket.denied(&error);
                    }
                    Err(error)
                }
            }
        })))
    }
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
            Poll::Ready(None) => self.ticket.finish(Ending::Answered {
                status: self.status,
                body_error: false,
            }),
            Poll::Ready(Some(Err(_))) => self.ticket.finish(Ending::Answered {
                status: self.status,
                body_error: true,
            }),
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
            self.ticket.finish(Ending::Answered {
                status: self.status,
                body_error: false,
            });
        } else {
            self.ticket.finish(Ending::ClientLeftDuringResponse {
                status: self.status,
            });
        }
    }
}

/// The intent layer (inner part): makes the intent record durable before anything is forwarded,
/// or refuses the request with 503 `audit_unavailable`. Requests without a ticket pass unboxed.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordIntent;

impl RecordIntent {
    /// The layer.
    pub fn layer() -> AsyncGateLayer<RecordIntent> {
        AsyncGateLayer::new(RecordIntent)
    }
}

impl<B: Send + 'static> AdmitAsync<B> for RecordIntent {
    fn concerns(&self, req: &Request<B>) -> bool {
        req.extensions().get::<Arc<Ticket>>().is_some()
    }

    async fn admit(self, req: Request<B>) -> Result<Request<B>, GatewayError> {
        let Some(ticket) = req.extensions().get::<Arc<Ticket>>().cloned() else {
            return Ok(req);
        };
        let mut event = ticket.event(Phase::Intent);
        event.decision = Some("allow".into());
        if let Some(decision) = req.extensions().get::<Decision>() {
            event.rule = decision.rule.as_ref().map(|r| r.as_str().to_owned());
        }
        if let Some(replay) = req.extensions().get::<crate::ext::Replay>() {
            event.deferred_id = Some(replay.id.clone());
        }
        if let Some(used) = req.extensions().get::<ApprovalUsed>() {
            event.approval_id = Some(used.id.clone());
            event.approvers = Some(used.approvers.clone());
        }
        if let Some(lookup) = req.extensions().get::<Lookup>() {
            event.references = Some(lookup.references.clone());
            event.error = lookup.failed.as_ref().map(|code| {
                format!("reference lookup failed ({code}); forwarded under on_error: allow")
            });
        }
        ticket.intent_requested.store(true, Ordering::SeqCst);
        // The write and its fsync, as a child span when traces are exported.
        let span = tracing::trace_span!("audit_intent");
        let written = if span.is_disabled() {
            ticket.log.write_durable(event).await
        } else {
            tracing::Instrument::instrument(ticket.log.write_durable(event), span).await
        };
        match written {
            Ok(_) => {
                ticket.intent_written.store(true, Ordering::SeqCst);
                ticket.forwarded.store(true, Ordering::SeqCst);
                Ok(req)
            }
            Err(error) => {
                tracing::error!(%error, operation = %ticket.base.operation, "audit intent not durable; refusing the request");
                Err(GatewayError::AuditUnavailable(error.to_string()))
            }
        }
    }
}
