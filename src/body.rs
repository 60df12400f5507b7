//! The one body type that flows through the stack, both ways, and the deadlines bodies carry.
//!
//! A client's request body is wrapped once at the edge in a [`TimedBody`] and carried as it is;
//! every other body is boxed once. Bodies are streamed; nothing in the request path collects one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Sleep;

use crate::units::BodyRate;

/// Boxed error type used by bodies and the upstream client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The request and response body type of every layer.
///
/// The two bodies every proxied exchange has — the client's request body and the upstream's
/// response body — are held as they are (no box per request); any other body is boxed.
pub struct GatewayBody {
    kind: Kind,
}

enum Kind {
    Client(TimedBody<Incoming>),
    Upstream(TimedBody<ReturnToPool>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl GatewayBody {
    /// A client's request body with its deadlines (the edge's wrapping).
    pub fn client(body: TimedBody<Incoming>) -> Self {
        GatewayBody {
            kind: Kind::Client(body),
        }
    }

    /// An upstream response body with its deadline (the forwarder's wrapping).
    pub fn upstream(body: TimedBody<ReturnToPool>) -> Self {
        GatewayBody {
            kind: Kind::Upstream(body),
        }
    }
}

impl Default for GatewayBody {
    fn default() -> Self {
        empty()
    }
}

impl std::fmt::Debug for GatewayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Client(_) => "GatewayBody::Client",
            Kind::Upstream(_) => "GatewayBody::Upstream",
            Kind::Boxed(_) => "GatewayBody::Boxed",
        })
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Client(body) => Pin::new(body).poll_frame(cx),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Client(body) => body.is_end_stream(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Client(body) => body.size_hint(),
            Kind::Upstream(body) => body.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
        }
    }
}

/// Where an upstream connection goes back when the response it carried has been read to its
/// end: the forwarder's per-worker pool (`forward::pool`).
pub trait ConnectionPool: Send + Sync {
    /// Keep `sender` for reuse in `shard`, if it is still usable and there is room.
    fn put(self: Arc<Self>, shard: usize, sender: SendRequest<GatewayBody>);
}

/// A connection lent to one exchange, and the pool it returns to.
pub struct Checkout {
    /// The connection.
    pub sender: SendRequest<GatewayBody>,
    /// Its pool.
    pub pool: Arc<dyn ConnectionPool>,
    /// Which of the pool's shards (serving workers) it belongs to.
    pub shard: usize,
}

/// An upstream response body that gives its connection back to its pool when it has been read
/// to its end; dropped early or failed, the connection is closed instead. (The pool makes it;
/// it is defined here so that [`GatewayBody`] carries it without a box.)
pub struct ReturnToPool {
    inner: Incoming,
    connection: Option<Checkout>,
}

impl ReturnToPool {
    /// `inner`, whose connection is `checkout`; an already complete body returns it at once.
    pub fn new(inner: Incoming, checkout: Checkout) -> Self {
        let mut body = ReturnToPool {
            inner,
            connection: Some(checkout),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(checkout) = self.connection.take() {
            checkout.pool.put(checkout.shard, checkout.sender);
        }
    }
}

impl Body for ReturnToPool {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Err(_)) => self.connection = None,
            Some(Ok(_)) => {
                if self.inner.is_end_stream() {
                    self.release();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Box any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> GatewayBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    GatewayBody {
        kind: Kind::Boxed(body.map_err(Into::into).boxed_unsync()),
    }
}

/// A complete in-memory body (only for small gateway-made responses).
pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    boxed(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> GatewayBody {
    boxed(Empty::new())
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
