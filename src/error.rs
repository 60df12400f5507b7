//! `GatewayError` and the one rescue layer that turns it into a TwelveLabs-shaped response.
//!
//! Every response the gateway itself makes has the body
//! `{"code": "<snake_case>", "message": "<human text>", "request_id": "<id>"}` so the official SDKs
//! surface it. Messages never echo request headers or secrets.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{self, GatewayBody};
use crate::ext::{ErrorCode, RequestScope};
use crate::ids::{ClientId, RuleId};
use crate::metrics::{Metrics, UpstreamErrorKind};
use crate::request_id::RequestId;
use crate::units::Rate;

/// Why the gateway refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No personal key in `x-api-key` or `Authorization: Bearer`.
    #[error("missing API key: send your personal key in the x-api-key header or as Authorization: Bearer")]
    MissingCredentials,
    /// The presented key matches no configured client.
    #[error("invalid API key")]
    InvalidCredentials,
    /// More than one credential, or credentials that disagree.
    #[error("ambiguous credentials: send exactly one personal key, in x-api-key or Authorization: Bearer")]
    ConflictingCredentials,
    /// The key is configured but past its `expires`.
    #[error("key '{label}' of client {client} expired at {at}; use its successor (tl-gateway keygen makes one)")]
    KeyExpired {
        /// Whose key.
        client: ClientId,
        /// Its label.
        label: String,
        /// When it expired (RFC 3339).
        at: String,
    },
    /// A verified client certificate that names no configured client, and no key.
    #[error("the client certificate identifies no configured client: send your personal key, or ask for the certificate to be configured (clients[].cert_sha256 or cert_subject)")]
    CertificateUnknown,
    /// The client certificate's names (CN, SANs) match more than one configured client.
    #[error("the client certificate's names match more than one configured client (clients[].cert_subject); configure it by clients[].cert_sha256")]
    CertificateAmbiguous,
    /// The client certificate and the key name different clients.
    #[error("the client certificate and the API key belong to different clients")]
    CredentialsDisagree,
    /// The method is refused for this target; `allowed` lists what the route takes (may be empty).
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// The refused method.
        method: Method,
        /// Methods the target accepts.
        allowed: Vec<Method>,
    },
    /// A policy rule refused the principal.
    #[error("denied by policy rule '{rule}'{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    PolicyDenied {
        /// The first rule that refused.
        rule: RuleId,
        /// The rule's message for the client.
        message: Option<Arc<str>>,
    },
    /// The request could be read more than one way; refused rather than guessed.
    #[error("ambiguous request: {0}")]
    RequestAmbiguous(&'static str),
    /// No TwelveLabs route matches and the configuration refuses unknown routes.
    #[error("unknown route")]
    RouteUnknown,
    /// The gateway holds no usable upstream key.
    #[error("the gateway has no upstream API key loaded")]
    UpstreamKeyMissing,
    /// The upstream could not be reached or broke the exchange.
    #[error("the TwelveLabs API could not be reached ({0})")]
    UpstreamUnavailable(UpstreamFailure),
    /// The upstream did not answer in time.
    #[error("the TwelveLabs API did not answer within {0} ms")]
    UpstreamTimeout(u128),
    /// More requests are in flight than the gateway accepts at once.
    #[error("the gateway is overloaded; retry shortly")]
    Overloaded,
    /// No upstream slot became free within `upstream.queue_timeout`.
    #[error("too many requests to the TwelveLabs API are in flight; retry shortly")]
    UpstreamBusy,
    /// The request target is longer than `server.max_target_length`.
    #[error("the request target is longer than {0} bytes")]
    TargetTooLong(usize),
    /// A rate limit refused the request.
    #[error("rate limit '{limit}' exceeded ({rate}, burst {burst}); retry in {retry_after} s")]
    TooManyRequests {
        /// The limit's id.
        limit: RuleId,
        /// Whole seconds until a request would be admitted.
        retry_after: u64,
        /// The limit's rate.
        rate: Rate,
        /// The limit's burst.
        burst: u32,
    },
    /// The state store did not answer and a matching limit fails closed (`on_unavailable: deny`).
    #[error("rate limit '{limit}' could not be checked: the shared state store did not answer; refusing the request (on_unavailable: deny). The gateway's log has the details under this request id")]
    LimitsUnavailable {
        /// The limit.
        limit: RuleId,
        /// What the store said.
        reason: String,
    },
    /// The audit intent could not be made durable; the request was not forwarded. (The detail is
    /// for the gateway's log only.)
    #[error("the audit log cannot record this request, so it was not forwarded. The gateway's log has the details under this request id")]
    AuditUnavailable(String),
    /// The reference lookup before a forced delete failed and `on_error` is deny.
    #[error("the reference lookup before this forced delete failed (status {0}); refusing it (guards.force_delete.on_error: deny)")]
    GuardLookupFailed(u16),
    /// The client already has its cap of requests in flight.
    #[error("client '{client}' already has {cap} requests in flight (its cap: clients[].max_in_flight or server.max_in_flight_per_client); retry when one finishes")]
    ClientInFlight {
        /// The client.
        client: ClientId,
        /// Its cap.
        cap: usize,
    },
    /// The client's request body was malformed or cut off.
    #[error("{0}")]
    RequestBodyInvalid(String),
    /// The client went away mid-request (nobody reads this answer; it is for logs and audit).
    #[error("the client disconnected before its request was complete")]
    ClientDisconnected,
    /// The client's request body stalled or arrived too slowly.
    #[error("{0}")]
    RequestBodyTimeout(String),
    /// A policy rule asks for a second person's approval, and the request holds none (yet).
    #[error("{message}")]
    ApprovalRequired {
        /// The pending approval (also in the `x-tl-gateway-approval-id` header).
        id: String,
        /// The rule that asks for it.
        rule: RuleId,
        /// What to do next: the id, who may approve, the command.
        message: String,
    },
    /// The requester already has this many approvals pending.
    #[error("you already have {0} approvals pending (approvals.max_pending_per_client): cancel one, or wait for a decision")]
    ApprovalsPendingCap(usize),
    /// The approvals could not be read or written in the state store. (The detail is for the
    /// gateway's log only.)
    #[error("approvals could not be checked: their store did not answer; the request was not forwarded. The gateway's log has the details under this request id")]
    ApprovalsUnavailable(String),
    /// The request touches a resource under `guards.protected`.
    #[error("{message}")]
    ResourceProtected {
        /// The protected id.
        id: String,
        /// What is protected and why.
        message: Arc<str>,
    },
    /// The gateway API: the caller may not do this to this approval.
    #[error("{0}")]
    ApprovalForbidden(String),
    /// The gateway API: no such approval (or not one the caller may see).
    #[error("no approval {0}")]
    ApprovalNotFound(String),
    /// The gateway API: the approval was already decided, used, expired or cancelled.
    #[error("approval {id} is {state}, no longer pending")]
    ApprovalNotPending {
        /// The approval.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The gateway API: a parameter or body that cannot be read.
    #[error("{0}")]
    ParameterInvalid(String),
    /// A bug: an invariant of the stack did not hold.
    #[error("internal gateway error: {0}")]
    Internal(&'static str),
    /// The connection's client certificate is past its notAfter (it was valid at the handshake).
    #[error("the client certificate expired at {at}: reconnect with its renewed certificate")]
    CertificateExpired {
        /// When it expired (RFC 3339).
        at: String,
    },
    /// The request body is longer than the gateway reads to check it (`guards.protected`).
    #[error("{0}")]
    RequestBodyTooLarge(String),
    /// The key was revoked (at runtime, through the keys API).
    #[error(
        "key '{label}' of client {client} was revoked; ask for a new one (tl-gateway keys issue)"
    )]
    KeyRevoked {
        /// Whose key.
        client: ClientId,
        /// Its label.
        label: String,
    },
    /// The key's client is disabled.
    #[error("client {client} is disabled (key '{label}'); ask an admin to enable it")]
    ClientDisabled {
        /// The client.
        client: ClientId,
        /// The key presented.
        label: String,
    },
    /// The keys API: a client with this id exists (in the configuration or the store).
    #[error("client {0} already exists")]
    ClientExists(String),
    /// The keys API: no such client.
    #[error("no client {0}")]
    ClientNotFound(String),
    /// The keys API: a client from the configuration file cannot be changed through the API.
    #[error("client {0} is configured in the YAML file: change it there (clients[])")]
    ClientReadOnly(String),
    /// The deferred API: no such deferred call (or not one the caller may see).
    #[error("no deferred call {0}")]
    DeferredNotFound(String),
    /// The deferred API: the call is no longer scheduled (it ran, is running, or was cancelled).
    #[error("deferred call {id} is {state}, no longer scheduled")]
    DeferredNotScheduled {
        /// The deferred call.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The record store could not take a change (the detail is for the log only).
    #[error("the change could not be stored: the record store did not answer; nothing was changed. The gateway's log has the details under this request id")]
    StoreUnavailable(String),
    /// A state-changing call carried the session cookie without the session's CSRF token in
    /// `x-tl-gateway-csrf` (a cross-site request, or a page that lost it).
    #[error("this call changes something: send the session's CSRF token (csrf_token of GET /tl-gateway/v1/me) in the x-tl-gateway-csrf header")]
    CsrfFailed,
    /// The page's session ended (signed out, expired, or unknown to the store).
    #[error("{0}: sign in again")]
    SessionEnded(&'static str),
    /// Signing in with the identity provider failed: a forged or stale `state`, a code used before,
    /// an ID token that does not verify. The message says which; the detail is for the log.
    #[error("sign-in failed: {message}; start again at /tl-gateway/ui/login")]
    SignInFailed {
        /// What was wrong, for the person.
        message: &'static str,
        /// What the provider or the verifier said, for the log only.
        detail: String,
    },
    /// The identity provider could not be reached (discovery, keys or token endpoint).
    #[error("the identity provider did not answer; try again shortly. The gateway's log has the details under this request id")]
    SignInUnavailable(String),
}

/// What went wrong talking to the upstream (bounded set: used as a metric label later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// TCP connect or TLS handshake failed.
    Connect,
    /// The exchange failed after connecting (reset, malformed response).
    Exchange,
}

impl UpstreamFailure {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Exchange => "exchange",
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GatewayError {
    /// HTTP status of the gateway's response.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::MissingCredentials
            | GatewayError::InvalidCredentials
            | GatewayError::ConflictingCredentials
            | GatewayError::KeyExpired { .. }
            | GatewayError::CertificateUnknown
            | GatewayError::CertificateAmbiguous
            | GatewayError::CredentialsDisagree => StatusCode::UNAUTHORIZED,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PolicyDenied { .. } => StatusCode::FORBIDDEN,
            GatewayError::RequestAmbiguous(_) => StatusCode::BAD_REQUEST,
            GatewayError::RouteUnknown => StatusCode::NOT_FOUND,
            GatewayError::UpstreamKeyMissing => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::AuditUnavailable(_) | GatewayError::LimitsUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Overloaded | GatewayError::UpstreamBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::TargetTooLong(_) => StatusCode::URI_TOO_LONG,
            GatewayError::GuardLookupFailed(_) => StatusCode::BAD_GATEWAY,
            GatewayError::ClientInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::RequestBodyInvalid(_) => StatusCode::BAD_REQUEST,
            GatewayError::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request".
            GatewayError::ClientDisconnected => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            GatewayError::ApprovalRequired { .. }
            | GatewayError::ResourceProtected { .. }
            | GatewayError::ApprovalForbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::ApprovalsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ApprovalsPendingCap(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::ApprovalNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::ApprovalNotPending { .. } => StatusCode::CONFLICT,
            GatewayError::ParameterInvalid(_) => StatusCode::BAD_REQUEST,
            GatewayError::CertificateExpired { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::RequestBodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::KeyRevoked { .. } | GatewayError::ClientDisabled { .. } => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::ClientExists(_) | GatewayError::ClientReadOnly(_) => StatusCode::CONFLICT,
            GatewayError::ClientNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::CsrfFailed => StatusCode::FORBIDDEN,
            GatewayError::SessionEnded(_) | GatewayError::SignInFailed { .. } => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::SignInUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::DeferredNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::DeferredNotScheduled { .. } => StatusCode::CONFLICT,
        }
    }

    /// TwelveLabs-style snake_case error code (the errors contract in docs/architecture.md).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingCredentials
            | GatewayError::InvalidCredentials
            | GatewayError::ConflictingCredentials
            | GatewayError::CertificateUnknown
            | GatewayError::CertificateAmbiguous
            | GatewayError::CredentialsDisagree => "unauthorized",
            GatewayError::KeyExpired { .. } => "key_expired",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::PolicyDenied { .. } => "policy_denied",
            GatewayError::RequestAmbiguous(_) => "request_ambiguous",
            GatewayError::RouteUnknown => "route_unknown",
            GatewayError::UpstreamKeyMissing => "upstream_unavailable",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::Internal(_) => "internal_error",
            GatewayError::AuditUnavailable(_) => "audit_unavailable",
            GatewayError::LimitsUnavailable { .. } => "limits_unavailable",
            GatewayError::TooManyRequests { .. } => "too_many_requests",
            GatewayError::Overloaded | GatewayError::UpstreamBusy => "overloaded",
            GatewayError::TargetTooLong(_) => "request_target_too_long",
            GatewayError::GuardLookupFailed(_) => "upstream_unavailable",
            GatewayError::ClientInFlight { .. } => "too_many_requests",
            GatewayError::RequestBodyInvalid(_) => "request_body_invalid",
            GatewayError::RequestBodyTimeout(_) => "request_body_timeout",
            GatewayError::ClientDisconnected => "client_disconnected",
            GatewayError::ApprovalRequired { .. } => "approval_required",
            GatewayError::ApprovalsUnavailable(_) => "approvals_unavailable",
            GatewayError::ApprovalsPendingCap(_) => "too_many_requests",
            GatewayError::ResourceProtected { .. } => "resource_protected",
            GatewayError::ApprovalForbidden(_) => "approval_forbidden",
            GatewayError::ApprovalNotFound(_) => "approval_not_found",
            GatewayError::ApprovalNotPending { .. } => "approval_not_pending",
            GatewayError::ParameterInvalid(_) => "parameter_invalid",
            GatewayError::CertificateExpired { .. } => "certificate_expired",
            GatewayError::RequestBodyTooLarge(_) => "request_body_too_large",
            GatewayError::KeyRevoked { .. } => "key_revoked",
            GatewayError::ClientDisabled { .. } => "client_disabled",
            GatewayError::ClientExists(_) => "client_exists",
            GatewayError::ClientNotFound(_) => "client_not_found",
            GatewayError::ClientReadOnly(_) => "client_read_only",
            GatewayError::StoreUnavailable(_) => "store_unavailable",
            GatewayError::CsrfFailed => "csrf_failed",
            GatewayError::SessionEnded(_) => "session_expired",
            GatewayError::SignInFailed { .. } => "sign_in_failed",
            GatewayError::SignInUnavailable(_) => "sign_in_unavailable",
            GatewayError::DeferredNotFound(_) => "deferred_not_found",
            GatewayError::DeferredNotScheduled { .. } => "deferred_not_scheduled",
        }
    }

    /// Whether the request certainly never reached the upstream: refused by a check below the
    /// approvals layer, or the connection to the upstream could not even be opened. The one "was
    /// it forwarded" predicate: an approval used by such a request is given back, and its audit
    /// outcome says `forwarded: false`.
    pub fn is_before_forwarding(&self) -> bool {
        matches!(
            self,
            GatewayError::TooManyRequests { .. }
                | GatewayError::LimitsUnavailable { .. }
                | GatewayError::GuardLookupFailed(_)
                | GatewayError::PolicyDenied { .. }
                | GatewayError::ResourceProtected { .. }
                | GatewayError::AuditUnavailable(_)
                | GatewayError::UpstreamKeyMissing
                | GatewayError::UpstreamBusy
                | GatewayError::UpstreamUnavailable(UpstreamFailure::Connect)
        )
    }

    /// What went wrong inside, for the gateway's log only: never in a response (it may name a
    /// store's address, a file or a script).
    pub fn detail(&self) -> Option<&str> {
        match self {
            GatewayError::LimitsUnavailable { reason, .. } => Some(reason),
            GatewayError::AuditUnavailable(why)
            | GatewayError::ApprovalsUnavailable(why)
            | GatewayError::StoreUnavailable(why)
            | GatewayError::SignInUnavailable(why) => Some(why),
            GatewayError::SignInFailed { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// Build the TwelveLabs-shaped response for this error.
    pub fn into_response(self, request_id: Option<&RequestId>) -> Response<GatewayBody> {
        let mut response = error_response(
            self.status(),
            self.code(),
            &self.to_string(),
            request_id.map(RequestId::as_str),
        );
        match &self {
            GatewayError::TooManyRequests { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            GatewayError::ClientInFlight { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::ApprovalsPendingCap(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            GatewayError::ApprovalRequired { id, .. } => {
                if let Ok(value) = HeaderValue::from_str(id) {
                    response.headers_mut().insert(APPROVAL_ID_HEADER, value);
                }
            }
            _ => {}
        }
        if let GatewayError::MethodNotAllowed { allowed, .. } = &self {
            // RFC 9110 requires Allow on 405.
            let list = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(value) = HeaderValue::from_str(&list) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        response
    }
}

/// The header naming the approval an `approval_required` answer created or found.
pub const APPROVAL_ID_HEADER: &str = "x-tl-gateway-approval-id";

/// A TwelveLabs-shaped error response: `{"code", "message", "request_id"}`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&str>,
) -> Response<GatewayBody> {
    let mut body = serde_json::json!({ "code": code, "message": message });
    if let Some(id) = request_id {
        body["request_id"] = serde_json::Value::from(id);
    }
    let mut response = Response::new(body::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl GatewayError {
    /// The upstream-error kind this error counts as, if any.
    pub fn upstream_error_kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            GatewayError::UpstreamUnavailable(UpstreamFailure::Connect) => {
                Some(UpstreamErrorKind::Connect)
            }
            GatewayError::UpstreamUnavailable(UpstreamFailure::Exchange) => {
                Some(UpstreamErrorKind::Exchange)
            }
            GatewayError::UpstreamTimeout(_) => Some(UpstreamErrorKind::Timeout),
            // The exchange failed because of the client's body: its own kind, so the
            // upstream-error alert does not fire for client mistakes.
            GatewayError::RequestBodyInvalid(_)
            | GatewayError::RequestBodyTimeout(_)
            | GatewayError::ClientDisconnected => Some(UpstreamErrorKind::ClientBody),
            _ => None,
        }
    }
}

/// The rescue layer: the one place a [`GatewayError`] becomes a response.
#[derive(Clone, Debug)]
pub struct RescueLayer {
    metrics: Arc<Metrics>,
}

impl RescueLayer {
    /// Create the layer; upstream failures are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RescueLayer { metrics }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            metrics: self.metrics.clone(),
            not_ready: None,
        }
    }
}

/// Service produced by [`RescueLayer`].
#[derive(Debug)]
pub struct Rescue<S> {
    inner: S,
    metrics: Arc<Metrics>,
    /// An error the inner service reported from `poll_ready`: the next request gets it as its
    /// answer rather than it being dropped.
    not_ready: Option<GatewayError>,
}

impl<S: Clone> Clone for Rescue<S> {
    fn clone(&self) -> Self {
        Rescue {
            inner: self.inner.clone(),
            metrics: self.metrics.clone(),
            not_ready: None,
        }
    }
}

impl<S> Service<Request<GatewayBody>> for Rescue<S>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                // Never swallowed: the request this readiness was for is answered with it.
                self.not_ready = Some(error);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        let request_id = req
            .extensions()
            .get::<RequestScope>()
            .and_then(RequestScope::request_id)
            .cloned();
        let state = match self.not_ready.take() {
            Some(error) => RescueState::Failed { error: Some(error) },
            None => RescueState::Called {
                inner: self.inner.call(req),
            },
        };
        RescueFuture {
            state,
            request_id,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Rescue`].
    pub struct RescueFuture<F> {
        #[pin]
        state: RescueState<F>,
        request_id: Option<RequestId>,
        metrics: Arc<Metrics>,
    }
}

pin_project_lite::pin_project! {
    #[project = RescueStateProj]
    enum RescueState<F> {
        Called { #[pin] inner: F },
        Failed { error: Option<GatewayError> },
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<GatewayBody>, GatewayError>>,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            RescueStateProj::Called { inner } => std::task::ready!(inner.poll(cx)),
            RescueStateProj::Failed { error } => Err(error
                .take()
                .unwrap_or(GatewayError::Internal("a rescue future was polled twice"))),
        };
        Poll::Ready(Ok(result.unwrap_or_else(|error| {
            rescue(error, this.request_id.as_ref(), this.metrics)
        })))
    }
}

/// Turn an error into its response: logged, counted, TwelveLabs-shaped.
fn rescue(
    error: GatewayError,
    request_id: Option<&RequestId>,
    metrics: &Metrics,
) -> Response<GatewayBody> {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(
            code = error.code(),
            status = status.as_u16(),
            %error,
            detail = error.detail().unwrap_or_default(),
            "request failed"
        );
    } else {
        tracing::info!(code = error.code(), status = status.as_u16(), %error, "request refused");
    }
    if let Some(kind) = error.upstream_error_kind() {
        metrics.upstream_error(kind);
    }
    if let GatewayError::PolicyDenied { rule, .. } = &error {
        // For the exported request span (a field it alone declares; otherwise nothing recorded).
        let span = tracing::Span::current();
        span.record("decision", "deny");
        span.record("rules", rule.as_str());
    }
    let code = error.code();
    let mut response = error.into_response(request_id);
    response.extensions_mut().insert(ErrorCode(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_has_twelvelabs_shape() {
        let id = RequestId::from_static("req-1");
        let response = GatewayError::InvalidCredentials.into_response(Some(&id));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["code"], "unauthorized");
        assert_eq!(json["message"], "invalid API key");
        assert_eq!(json["request_id"], "req-1");
    }

    #[tokio::test]
    async fn a_readiness_error_below_the_rescue_layer_answers_the_request() {
        use tower::ServiceExt;
        #[derive(Clone)]
        struct Broken;
        impl Service<Request<GatewayBody>> for Broken {
            type Response = Response<GatewayBody>;
            type Error = GatewayError;
            type Future = futures_util::future::Ready<Result<Response<GatewayBody>, GatewayError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
                Poll::Ready(Err(GatewayError::Overloaded))
            }
            fn call(&mut self, _: Request<GatewayBody>) -> Self::Future {
                panic!("called although not ready")
            }
        }
        let service = RescueLayer::new(Metrics::new()).layer(Broken);
        let response = service.oneshot(Request::new(body::empty())).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["code"], "overloaded");
    }

    #[test]
    fn statuses_and_codes_follow_the_contract() {
        let cases = [
            (GatewayError::MissingCredentials, 401, "unauthorized"),
            (
                GatewayError::MethodNotAllowed {
                    method: Method::TRACE,
                    allowed: vec![],
                },
                405,
                "method_not_allowed",
            ),
            (
                GatewayError::RequestAmbiguous("x"),
                400,
                "request_ambiguous",
            ),
            (GatewayError::RouteUnknown, 404, "route_unknown"),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Connect),
                502,
                "upstream_unavailable",
            ),
            (GatewayError::UpstreamTimeout(5), 504, "upstream_timeout"),
            (
                GatewayError::PolicyDenied {
                    rule: "r1".parse().unwrap(),
                    message: Some("ask an admin".into()),
                },
                403,
                "policy_denied",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.code(), code, "{error}");
        }
    }
}
