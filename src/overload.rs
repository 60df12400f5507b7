//! Overload protection: a global in-flight limit that sheds load with 503 `overloaded`, and body
//! idle timeouts for both directions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, Either, Map, Ready};
use futures_util::FutureExt;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::body::BoxError;
use crate::error::GatewayError;

/// Layer refusing requests beyond `max_in_flight` at once (held until response headers).
#[derive(Clone, Debug)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    /// At most `max_in_flight` requests at once; the rest get 503 `overloaded` immediately.
    pub fn new(max_in_flight: usize) -> Self {
        InFlightLimitLayer {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// Service produced by [`InFlightLimitLayer`].
#[derive(Clone, Debug)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

type Release<T> = Box<dyn FnOnce(T) -> T + Send>;

impl<S, B> Service<Request<B>> for InFlightLimit<S>
where
    S: Service<Request<B>, Error = GatewayError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    #[allow(clippy::type_complexity)]
    type Future = Either<
        Map<S::Future, Release<Result<S::Response, GatewayError>>>,
        Ready<Result<S::Response, GatewayError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let release: Release<Result<S::Response, GatewayError>> = Box::new(move |result| {
                    drop::<OwnedSemaphorePermit>(permit);
                    result
                });
                Either::Left(self.inner.call(req).map(release))
            }
            Err(_) => Either::Right(future::ready(Err(GatewayError::Overloaded))),
        }
    }
}

/// A body that fails if no frame arrives for `timeout` (a stalled peer).
///
/// The timer is armed only when the body first has to wait, so the common small, already-complete
/// body costs no timer at all.
pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleTimeout<B> {
    /// Wrap `inner`.
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
        }
    }
}

/// The error an idle body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct BodyIdle(pub Duration);

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                if let Some(sleep) = self.sleep.as_mut() {
                    sleep.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
