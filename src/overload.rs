//! Overload protection: a global in-flight limit that sheds load with 503 `overloaded`, a per-client
//! in-flight cap (429 `too_many_requests`), body idle timeouts for both directions, and a minimum
//! rate for request bodies.
//!
//! Request bodies are wrapped once at the edge in [`ClientBody`], which turns every failure of the
//! client's body (malformed chunking, a connection cut mid-upload, idle or too slow) into a
//! [`ClientBodyError`]; the forwarder recognises it in the upstream client's error and answers 400
//! `request_body_invalid` or 408 `request_body_timeout` instead of blaming the upstream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, Either, Ready};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::auth::{ClientSettings, Principal};
use crate::body::BoxError;
use crate::error::GatewayError;
use crate::ids::ClientId;
use crate::units::BodyRate;

/// The global in-flight limit: tower's concurrency limit (on the semaphore every stack built from
/// one start-up shares) with load shedding, so a request beyond `server.max_in_flight` is refused at
/// once with 503 `overloaded` instead of queueing; the permit is held until response headers.
/// Neither tower layer allocates on the admitted path.
pub type InFlightLimitLayer = tower::layer::util::Stack<
    tower::limit::GlobalConcurrencyLimitLayer,
    tower::layer::util::Stack<
        tower::load_shed::LoadShedLayer,
        tower::util::MapErrLayer<fn(tower::BoxError) -> GatewayError>,
    >,
>;

/// The in-flight limit on `permits` (see [`InFlightLimitLayer`]).
pub fn in_flight_limit(permits: Arc<Semaphore>) -> InFlightLimitLayer {
    use tower::layer::util::Stack;
    Stack::new(
        tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(permits),
        Stack::new(
            tower::load_shed::LoadShedLayer::new(),
            tower::util::MapErrLayer::new(shed_error as fn(tower::BoxError) -> GatewayError),
        ),
    )
}

/// Errors out of the load shedder: its own refusal, or the stack's error passed through.
fn shed_error(error: tower::BoxError) -> GatewayError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return GatewayError::Overloaded;
    }
    match error.downcast::<GatewayError>() {
        Ok(error) => *error,
        Err(_) => GatewayError::Internal("an unexpected error type below the in-flight limit"),
    }
}

pin_project_lite::pin_project! {
    /// A response future holding a semaphore permit until the response (headers) is there.
    pub struct Held<F> {
        #[pin]
        inner: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Held<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        this.permit.take();
        Poll::Ready(output)
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

/// The upstream's response body stalled (sent nothing for the body idle timeout).
#[derive(Debug, thiserror::Error)]
#[error("the upstream's response body sent nothing for {} s", .0.as_secs_f64())]
pub struct UpstreamBodyIdle(pub Duration);

/// Whose body a [`TimedBody`] carries: failures are that side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A client's request body: errors become [`ClientBodyError`]s.
    Client,
    /// The upstream's response body: its errors pass through; idleness is [`UpstreamBodyIdle`].
    Upstream,
}

/// A body with deadlines: an idle timeout both ways, and for a client's request body a minimum
/// rate, with every failure marked as the client's.
///
/// The timer is armed only when the body first has to wait, so the common small, already-complete
/// body costs no timer at all. The rate only counts time spent waiting for the sender: while the
/// receiver is slow to take the body, it is not read, and that time is not the sender's.
pub struct TimedBody<B> {
    inner: B,
    side: Side,
    idle: Duration,
    rate: Option<BodyRate>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the current wait for the sender began.
    waiting_since: Option<tokio::time::Instant>,
    /// Waiting time and bytes in the current rate window.
    window_waited: Duration,
    window_bytes: u64,
}

impl<B> TimedBody<B> {
    /// A client's request body: idle timeout and minimum rate.
    pub fn client(inner: B, idle: Duration, rate: Option<BodyRate>) -> Self {
        TimedBody::new(inner, Side::Client, idle, rate)
    }

    /// The upstream's response body: idle timeout.
    pub fn upstream(inner: B, idle: Duration) -> Self {
        TimedBody::new(inner, Side::Upstream, idle, None)
    }

    fn new(inner: B, side: Side, idle: Duration, rate: Option<BodyRate>) -> Self {
        TimedBody {
            inner,
            side,
            idle,
            rate,
            sleep: None,
            waiting_since: None,
            window_waited: Duration::ZERO,
            window_bytes: 0,
        }
    }

    /// When the current wait fails: (deadline, whether it is the rate window's end).
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

    /// The error a stall ends the body with.
    fn stalled(&self, rate_window: bool) -> BoxError {
        match (self.side, rate_window, self.rate) {
            (Side::Client, true, Some(rate)) => Box::new(ClientBodyError::TooSlow(rate)),
            (Side::Client, _, _) => Box::new(ClientBodyError::Idle(self.idle)),
            (Side::Upstream, _, _) => Box::new(UpstreamBodyIdle(self.idle)),
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

impl<B> Body for TimedBody<B>
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
                            return Poll::Ready(Some(Err(self.stalled(true))));
                        }
                        self.window_waited = Duration::ZERO;
                        self.window_bytes = 0;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                Poll::Ready(Some(Err(match self.side {
                    Side::Upstream => error,
                    Side::Client if is_cut_off(&*error) => Box::new(ClientBodyError::Aborted),
                    Side::Client => Box::new(ClientBodyError::Invalid(error)),
                })))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let since = *self
                    .waiting_since
                    .get_or_insert_with(tokio::time::Instant::now);
                let (deadline, rate_window) = self.deadline(since);
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
                    Poll::Ready(()) => Poll::Ready(Some(Err(self.stalled(rate_window)))),
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
    /// Clients issued at runtime (the record store): the default cap, made on first use.
    runtime: Mutex<HashMap<ClientId, Arc<Semaphore>>>,
}

impl ClientSlots {
    /// Caps of `default` requests per client unless a client sets its own.
    pub fn new(default: usize) -> Arc<Self> {
        Arc::new(ClientSlots {
            default: default.max(1),
            slots: Mutex::new(HashMap::new()),
            runtime: Mutex::new(HashMap::new()),
        })
    }

    /// The cap of a client the configuration does not name (issued at runtime).
    fn runtime_slot(&self, client: &ClientId) -> (usize, Arc<Semaphore>) {
        let mut runtime = self.runtime.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = runtime
            .entry(client.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.default)))
            .clone();
        (self.default, slot)
    }

    /// The caps for these clients.
    pub fn build(
        &self,
        clients: &[ClientSettings],
    ) -> Arc<HashMap<ClientId, (usize, Arc<Semaphore>)>> {
        // A poisoned registry still holds the counts: keep them (fail closed, never uncapped).
        let mut kept = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
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
    slots: Arc<ClientSlots>,
}

impl ClientInFlightLayer {
    /// Enforce the caps of `slots` for `clients` (the configured ones; clients issued at runtime
    /// get the default cap).
    pub fn new(slots: Arc<ClientSlots>, clients: &[ClientSettings]) -> Self {
        ClientInFlightLayer {
            caps: slots.build(clients),
            slots,
        }
    }
}

impl<S> Layer<S> for ClientInFlightLayer {
    type Service = ClientInFlight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientInFlight {
            inner,
            caps: self.caps.clone(),
            slots: self.slots.clone(),
        }
    }
}

/// Service produced by [`ClientInFlightLayer`].
#[derive(Clone, Debug)]
pub struct ClientInFlight<S> {
    inner: S,
    caps: Arc<HashMap<ClientId, (usize, Arc<Semaphore>)>>,
    slots: Arc<ClientSlots>,
}

impl<S, B> Service<Request<B>> for ClientInFlight<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<Held<S::Future>, Ready<Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(principal) = req.extensions().get::<Principal>() else {
            return Either::Right(future::ready(Err(GatewayError::Internal(
                "the per-client in-flight cap could not be checked: request not authenticated",
            ))));
        };
        let (cap, slots) = match self.caps.get(&principal.client) {
            Some((cap, slots)) => (*cap, slots.clone()),
            None => self.slots.runtime_slot(&principal.client),
        };
        match slots.try_acquire_owned() {
            Ok(permit) => Either::Left(Held {
                inner: self.inner.call(req),
                permit: Some(permit),
            }),
            Err(_) => Either::Right(future::ready(Err(GatewayError::ClientInFlight {
                client: principal.client.clone(),
                cap,
            }))),
        }
    }
}
