//! Overload protection: a global in-flight limit that sheds load with 503 `overloaded`, a per-client
//! in-flight cap (429 `too_many_requests`), body idle timeouts for both directions, and a minimum
//! rate for request bodies.
//!
//! Request bodies are wrapped once at the edge in [`ClientBody`], which turns every failure of the
//! client's body (malformed chunking, a connection cut mid-upload, idle or too slow) into a
//! [`ClientBodyError`]; the forwarder recognises it in the upstream client's error and answers 400
//! `request_body_invalid` or 408 `request_body_timeout` instead of blaming the upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, Either, Map, Ready};
use futures_util::FutureExt;
use std::collections::HashMap;
use std::sync::Mutex;

use http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::auth::Principal;
use crate::body::BoxError;
use crate::config::{BodyRate, ClientConfig, ClientId};
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

/// Why a client's request body failed (the client's fault, not the upstream's).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Nothing arrived for `server.body_idle_timeout`.
    #[error("the request body sent nothing for {} s", .0.as_secs_f64())]
    Idle(Duration),
    /// Less than `server.min_body_rate` arrived while the gateway waited for it.
    #[error("the request body arrived slower than {} bytes/s over {} s (server.min_body_rate)", .0.bytes_per_second, .0.window.as_secs())]
    TooSlow(BodyRate),
    /// The client went away before its body was complete.
    #[error("the client disconnected before its request body was complete")]
    Aborted,
    /// The body was malformed (e.g. bad chunked encoding).
    #[error("the request body is malformed: {0}")]
    Invalid(BoxError),
}

impl ClientBodyError {
    /// Find a client body error in an error's source chain.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<ClientBodyError>() {
                return Some(found);
            }
            current = error.source();
        }
        None
    }

    /// The gateway's answer to a request whose body failed like this.
    pub fn to_gateway_error(&self) -> GatewayError {
        match self {
            ClientBodyError::Idle(_) | ClientBodyError::TooSlow(_) => {
                GatewayError::RequestBodyTimeout(self.to_string())
            }
            ClientBodyError::Invalid(_) => GatewayError::RequestBodyInvalid(self.to_string()),
            ClientBodyError::Aborted => GatewayError::ClientDisconnected,
        }
    }
}

/// A client's request body: idle timeout, minimum rate, and errors marked as the client's.
///
/// The rate only counts time spent waiting for the client: while the upstream is slow to take the
/// body, the gateway does not read it, and that time is not the client's.
pub struct ClientBody<B> {
    inner: B,
    idle: Duration,
    rate: Option<BodyRate>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the current wait for the client began.
    waiting_since: Option<tokio::time::Instant>,
    /// Waiting time and bytes in the current rate window.
    window_waited: Duration,
    window_bytes: u64,
}

impl<B> ClientBody<B> {
    /// Wrap a client's body.
    pub fn new(inner: B, idle: Duration, rate: Option<BodyRate>) -> Self {
        ClientBody {
            inner,
            idle,
            rate,
            sleep: None,
            waiting_since: None,
            window_waited: Duration::ZERO,
            window_bytes: 0,
        }
    }

    /// When the current wait fails: (deadline, error) for the idle limit or the rate window.
    fn deadline(&self, since: tokio::time::Instant) -> (tokio::time::Instant, bool) {
        let idle = since + self.idle;
        match self.rate {
            Some(rate) if self.window_bytes < required(rate) => {
                let window_end = since + rate.window.saturating_sub(self.window_waited);
                if window_end < idle {
                    (window_end, true)
                } else {
                    (idle, false)
                }
            }
            _ => (idle, false),
        }
    }
}

/// Whether a body error means the client went away (EOF or reset mid-body), not malformed data.
fn is_cut_off(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
        if hyper.is_incomplete_message() || hyper.is_canceled() {
            return true;
        }
    }
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            );
        }
        current = error.source();
    }
    false
}

fn required(rate: BodyRate) -> u64 {
    rate.bytes_per_second
        .saturating_mul(rate.window.as_secs().max(1))
}

impl<B> Body for ClientBody<B>
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
                let now = tokio::time::Instant::now();
                if let Some(since) = self.waiting_since.take() {
                    self.window_waited += now.duration_since(since);
                }
                self.window_bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(rate) = self.rate {
                    if self.window_waited >= rate.window {
                        if self.window_bytes < required(rate) {
                            return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooSlow(
                                rate,
                            )))));
                        }
                        self.window_waited = Duration::ZERO;
                        self.window_bytes = 0;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                let error = if is_cut_off(&*error) {
                    ClientBodyError::Aborted
                } else {
                    ClientBodyError::Invalid(error)
                };
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let since = *self
                    .waiting_since
                    .get_or_insert_with(tokio::time::Instant::now);
                let (deadline, rate_limited) = self.deadline(since);
                let sleep = match self.sleep.as_mut() {
                    Some(sleep) => {
                        if sleep.deadline() != deadline {
                            sleep.as_mut().reset(deadline);
                        }
                        sleep
                    }
                    None => self
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let error = match (rate_limited, self.rate) {
                            (true, Some(rate)) => ClientBodyError::TooSlow(rate),
                            _ => ClientBodyError::Idle(self.idle),
                        };
                        Poll::Ready(Some(Err(Box::new(error))))
                    }
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

/// Per-client in-flight caps, kept across reloads (a client's cap that does not change keeps its
/// requests counted).
#[derive(Debug, Default)]
pub struct ClientSlots {
    default: usize,
    slots: Mutex<HashMap<ClientId, (usize, Arc<Semaphore>)>>,
}

impl ClientSlots {
    /// Caps of `default` requests per client unless a client sets its own.
    pub fn new(default: usize) -> Arc<Self> {
        Arc::new(ClientSlots {
            default: default.max(1),
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The caps for these clients.
    pub fn build(
        &self,
        clients: &[ClientConfig],
    ) -> Arc<HashMap<ClientId, (usize, Arc<Semaphore>)>> {
        let Ok(mut kept) = self.slots.lock() else {
            // Fail closed: with the registry unusable, every client gets a fresh cap.
            return Arc::new(
                clients
                    .iter()
                    .map(|c| {
                        let cap = c.max_in_flight.unwrap_or(self.default);
                        (c.id.clone(), (cap, Arc::new(Semaphore::new(cap))))
                    })
                    .collect(),
            );
        };
        let mut next = HashMap::with_capacity(clients.len());
        for client in clients {
            let cap = client.max_in_flight.unwrap_or(self.default);
            let slot = match kept.get(&client.id) {
                Some((kept_cap, semaphore)) if *kept_cap == cap => semaphore.clone(),
                _ => Arc::new(Semaphore::new(cap)),
            };
            next.insert(client.id.clone(), (cap, slot));
        }
        *kept = next.clone();
        Arc::new(next)
    }
}

/// Layer refusing a client's requests beyond its in-flight cap with 429 `too_many_requests`.
#[derive(Clone, Debug)]
pub struct ClientInFlightLayer {
    caps: Arc<HashMap<ClientId, (usize, Arc<Semaphore>)>>,
}

impl ClientInFlightLayer {
    /// Enforce these caps (from [`ClientSlots::build`]).
    pub fn new(caps: Arc<HashMap<ClientId, (usize, Arc<Semaphore>)>>) -> Self {
        ClientInFlightLayer { caps }
    }
}

impl<S> Layer<S> for ClientInFlightLayer {
    type Service = ClientInFlight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientInFlight {
            inner,
            caps: self.caps.clone(),
        }
    }
}

/// Service produced by [`ClientInFlightLayer`].
#[derive(Clone, Debug)]
pub struct ClientInFlight<S> {
    inner: S,
    caps: Arc<HashMap<ClientId, (usize, Arc<Semaphore>)>>,
}

impl<S, B> Service<Request<B>> for ClientInFlight<S>
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
        let Some(principal) = req.extensions().get::<Principal>() else {
            return Either::Right(future::ready(Err(GatewayError::Internal(
                "the per-client in-flight cap could not be checked: request not authenticated",
            ))));
        };
        let Some((cap, slots)) = self.caps.get(&principal.client) else {
            return Either::Right(future::ready(Err(GatewayError::Internal(
                "the per-client in-flight cap could not be checked: unknown client",
            ))));
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let release: Release<Result<S::Response, GatewayError>> = Box::new(move |result| {
                    drop::<OwnedSemaphorePermit>(permit);
                    result
                });
                Either::Left(self.inner.call(req).map(release))
            }
            Err(_) => Either::Right(future::ready(Err(GatewayError::ClientInFlight {
                client: principal.client.clone(),
                cap: *cap,
            }))),
        }
    }
}
