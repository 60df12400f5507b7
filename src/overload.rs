//! Overload protection: a global in-flight limit that sheds load with 503 `overloaded`, a per-client
//! in-flight cap (429 `too_many_requests`), and the answer to a request body that failed.
//!
//! Body idle timeouts for both directions and the minimum rate for request bodies are kept by
//! [`TimedBody`](crate::body::TimedBody) (in `body`, beside the body type that carries it); a
//! request body is wrapped in one once at the edge, which turns every failure of the client's body
//! (malformed chunking, a connection cut mid-upload, idle or too slow) into a [`ClientBodyError`];
//! the forwarder recognises it in the upstream client's error and answers 400
//! `request_body_invalid` or 408 `request_body_timeout` instead of blaming the upstream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::auth::{ClientSettings, Principal};
use crate::body::ClientBodyError;
use crate::error::GatewayError;
use crate::ids::ClientId;

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

/// How request-body failures are answered (the type lives with the body, in `body`).
impl ClientBodyError {
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
        let Some((cap, slots)) = self.caps.get(&principal.client) else {
            return Either::Right(future::ready(Err(GatewayError::Internal(
                "the per-client in-flight cap could not be checked: unknown client",
            ))));
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => Either::Left(Held {
                inner: self.inner.call(req),
                permit: Some(permit),
            }),
            Err(_) => Either::Right(future::ready(Err(GatewayError::ClientInFlight {
                client: principal.client.clone(),
                cap: *cap,
            }))),
        }
    }
}
