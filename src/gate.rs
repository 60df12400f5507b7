//! Gates: the shape most layers of the request path share. A gate looks at a request and either
//! lets it through — perhaps adding a typed extension (`Operation`, `Principal`, `Decision`) — or
//! refuses it with a [`GatewayError`]. Classification, authentication, rate limits and policy are
//! gates; each implements [`Admit`] and is wrapped in [`GateLayer`], so none repeats the `Layer` /
//! `Service` plumbing and none boxes a future: a refusal is a ready error, an admitted request is the
//! inner service's own future (tower-http's `ValidateRequest` has the same shape, but answers
//! refusals with a response where this stack carries errors to one rescue layer).
//!
//! ```
//! use http::Request;
//! use tl_gateway::error::GatewayError;
//! use tl_gateway::gate::{Admit, GateLayer};
//!
//! #[derive(Clone)]
//! struct NoTrace;
//! impl<B> Admit<B> for NoTrace {
//!     fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
//!         if req.method() == http::Method::TRACE {
//!             return Err(GatewayError::RequestAmbiguous("TRACE"));
//!         }
//!         Ok(())
//!     }
//! }
//! let layer = GateLayer::new(NoTrace);
//! # let _ = layer;
//! ```

use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use crate::error::GatewayError;

/// A check a request must pass.
pub trait Admit<B> {
    /// Let the request through (possibly adding extensions) or refuse it.
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError>;
}

/// Layer wrapping a service in a [`Gate`].
#[derive(Clone, Debug)]
pub struct GateLayer<A> {
    admit: A,
}

impl<A> GateLayer<A> {
    /// A layer applying `admit` to every request.
    pub fn new(admit: A) -> Self {
        GateLayer { admit }
    }
}

impl<A: Clone, S> Layer<S> for GateLayer<A> {
    type Service = Gate<A, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            admit: self.admit.clone(),
            inner,
        }
    }
}

/// Service produced by [`GateLayer`].
#[derive(Clone, Debug)]
pub struct Gate<A, S> {
    admit: A,
    inner: S,
}

impl<A, S, B> Service<Request<B>> for Gate<A, S>
where
    A: Admit<B>,
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<S::Future, Ready<Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.admit.admit(&mut req) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(error) => Either::Right(future::ready(Err(error))),
        }
    }
}

/// A check that has to wait (for I/O: a lookup, a durable write) before it lets a request
/// through, and only for the requests it concerns.
pub trait AdmitAsync<B>: Clone + Send + 'static {
    /// Whether this request concerns the check; the others pass straight through, unboxed.
    fn concerns(&self, req: &Request<B>) -> bool;

    /// Check a request it concerns, possibly adding extensions; `Err` refuses it.
    fn admit(
        self,
        req: Request<B>,
    ) -> impl std::future::Future<Output = Result<Request<B>, GatewayError>> + Send;
}

/// Layer wrapping a service in an [`AsyncGate`].
#[derive(Clone, Debug)]
pub struct AsyncGateLayer<A> {
    admit: A,
}

impl<A> AsyncGateLayer<A> {
    /// A layer applying `admit` to the requests it concerns.
    pub fn new(admit: A) -> Self {
        AsyncGateLayer { admit }
    }
}

impl<A: Clone, S> Layer<S> for AsyncGateLayer<A> {
    type Service = AsyncGate<A, S>;
    fn layer(&self, inner: S) -> Self::Service {
        AsyncGate {
            admit: self.admit.clone(),
            inner,
        }
    }
}

/// Service produced by [`AsyncGateLayer`].
#[derive(Clone, Debug)]
pub struct AsyncGate<A, S> {
    admit: A,
    inner: S,
}

impl<A, S, B> Service<Request<B>> for AsyncGate<A, S>
where
    A: AdmitAsync<B>,
    S: Service<Request<B>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    /// Requests the check does not concern pass through without a box of their own.
    type Future = Either<
        S::Future,
        futures_util::future::BoxFuture<'static, Result<S::Response, GatewayError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.admit.concerns(&req) {
            return Either::Left(self.inner.call(req));
        }
        // The ready service goes with the request; this one keeps a fresh clone (tower's rule for
        // calling a service after an await).
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let admit = self.admit.clone();
        Either::Right(Box::pin(async move {
            let req = admit.admit(req).await?;
            inner.call(req).await
        }))
    }
}
