//! The deferred layer: below the reference guard, just above the intent record.
//!
//! - A request whose [`Decision`] carries `defer` is recorded ([`DeferredCalls::schedule`]) and
//!   answered 202 Accepted with the deferred call (header `x-tl-gateway-deferred-id`) instead of
//!   going on to the intent and the upstream.
//! - A deferred call replayed by the executor ([`Replay`]) is marked `forwarding` under its claim
//!   in the store, then goes on to the intent record and the forwarder like any request: the mark
//!   is what tells a replica taking over a dead claim that it may have been forwarded.
//! - Every other request passes unboxed, without a store call.

use std::sync::atomic::Ordering;

use futures_util::future::{BoxFuture, Either};
use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::{Deferred, DeferredCalls, DEFERRED_ID_HEADER};
use crate::auth::judged;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::ext::{ApprovalUsed, Replay, RequestScope};
use crate::guards::Lookup;
use crate::policy::Decision;

const UNJUDGED: &str =
    "a deferred call could not be scheduled: request not classified, authenticated or judged";

/// The layer (see the module documentation).
#[derive(Clone, Debug)]
pub struct DeferLayer {
    calls: DeferredCalls,
}

impl DeferLayer {
    /// The layer scheduling into, and marking in, `calls`.
    pub fn new(calls: DeferredCalls) -> Self {
        DeferLayer { calls }
    }
}

impl<S> Layer<S> for DeferLayer {
    type Service = Defer<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Defer {
            calls: self.calls.clone(),
            inner,
        }
    }
}

/// Service produced by [`DeferLayer`].
#[derive(Clone, Debug)]
pub struct Defer<S> {
    calls: DeferredCalls,
    inner: S,
}

impl<S, B> Service<Request<B>> for Defer<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future =
        Either<S::Future, BoxFuture<'static, Result<Response<GatewayBody>, GatewayError>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let calls = self.calls.clone();
        if let Some(replay) = req.extensions().get::<Replay>().cloned() {
            // The ready service goes with the request; this one keeps a fresh clone.
            let mut inner = self.inner.clone();
            std::mem::swap(&mut self.inner, &mut inner);
            return Either::Right(Box::pin(async move {
                calls.mark_forwarding(&replay.id, &replay.claim).await?;
                replay.forwarding.store(true, Ordering::SeqCst);
                inner.call(req).await
            }));
        }
        let Some(required) = req
            .extensions()
            .get::<Decision>()
            .and_then(|d| d.defer.clone())
        else {
            return Either::Left(self.inner.call(req));
        };
        Either::Right(Box::pin(async move {
            let (op, principal) = judged(&req, UNJUDGED)?;
            let request_id = req
                .extensions()
                .get::<RequestScope>()
                .and_then(|s| s.request_id().map(|id| id.as_str().to_owned()))
                .unwrap_or_default();
            let deferred = calls
                .schedule(super::Request {
                    required: &required,
                    principal,
                    op,
                    request_id: &request_id,
                    references: req
                        .extensions()
                        .get::<Lookup>()
                        .map(|l| l.references.clone()),
                    approval: req.extensions().get::<ApprovalUsed>(),
                })
                .await?;
            Ok(accepted(&deferred))
        }))
    }
}

/// Above the approvals and the rate limits: an identical re-send of a call that is still scheduled
/// gets the same id again (202), without asking for another approval (the one it used is spent)
/// or spending limits again (they were met when it was scheduled). Requests no `defer` rule
/// holds, and replays, pass unboxed, without a store call.
#[derive(Clone, Debug)]
pub struct RecallScheduledLayer {
    calls: DeferredCalls,
}

impl RecallScheduledLayer {
    /// The layer looking scheduled calls up in `calls`.
    pub fn new(calls: DeferredCalls) -> Self {
        RecallScheduledLayer { calls }
    }
}

impl<S> Layer<S> for RecallScheduledLayer {
    type Service = RecallScheduled<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecallScheduled {
            calls: self.calls.clone(),
            inner,
        }
    }
}

/// Service produced by [`RecallScheduledLayer`].
#[derive(Clone, Debug)]
pub struct RecallScheduled<S> {
    calls: DeferredCalls,
    inner: S,
}

impl<S, B> Service<Request<B>> for RecallScheduled<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future =
        Either<S::Future, BoxFuture<'static, Result<Response<GatewayBody>, GatewayError>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deferring = req
            .extensions()
            .get::<Decision>()
            .is_some_and(|d| d.defer.is_some());
        if !deferring || req.extensions().get::<Replay>().is_some() {
            return Either::Left(self.inner.call(req));
        }
        let calls = self.calls.clone();
        // The ready service goes with the request; this one keeps a fresh clone.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        Either::Right(Box::pin(async move {
            let (op, principal) = judged(&req, UNJUDGED)?;
            let found = calls
                .scheduled_for(principal, op)
                .await
                .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?;
            match found {
                Some(deferred) => Ok(accepted(&deferred)),
                None => inner.call(req).await,
            }
        }))
    }
}

/// The 202 Accepted answer to a deferred request: the call in TwelveLabs' style.
pub fn accepted(deferred: &Deferred) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "id": deferred.id,
        "state": deferred.state.as_str(),
        "execute_at": deferred.execute_at,
        "rule": deferred.rule,
        "message": format!(
            "held by rule '{}' until {}: cancel it with `tl-gateway deferred cancel {}` (or POST /tl-gateway/v1/deferred/{}/cancel) before then",
            deferred.rule, deferred.execute_at, deferred.id, deferred.id
        ),
    });
    let mut response = Response::new(crate::body::full(body.to_string()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&deferred.id) {
        headers.insert(DEFERRED_ID_HEADER, value);
    }
    response
}
