//! Connection admission and lifetime: caps, deadlines and eviction for each listener.
//!
//! A connection that never sends a request, or stops sending them, must not hold a slot forever:
//!
//! - **first request deadline**: from accept to the first complete request head (HTTP/1) or the
//!   complete preface and first HEADERS (HTTP/2) — the moment the connection's service is first
//!   called — at most `first_request_timeout`; otherwise the connection is closed;
//! - **idle timeout**: a connection with no request in flight (a response body counts as in flight
//!   until it ends) for `idle_timeout` is shut down gracefully (HTTP/1: closed; HTTP/2: GOAWAY), and
//!   closed outright if it has not gone `close_grace` later;
//! - **age**: a connection older than `max_age` is shut down gracefully (HTTP/1: closed after the
//!   response in flight, which says `Connection: close`; HTTP/2: GOAWAY, streams in flight finish),
//!   so what was decided at its start — a client certificate since revoked — does not live on;
//! - **caps**: at most `max` connections per listener and optionally `per_ip` per client address;
//!   at the cap, the oldest connection that is not serving a request (silent first, then idle) is
//!   evicted for the newcomer, so silent sockets can never lock real clients out (nginx drains idle
//!   keep-alive connections the same way); only when every connection is busy does a newcomer wait.
//!
//! Each live connection has an [`Activity`] the listener's [`Admission`] can see; the connection's
//! service is wrapped in [`Tracked`], which counts requests in flight until their response body ends.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Caps and deadlines of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max: usize,
    /// Open connections per client IP address at most (`None`: no per-address cap).
    pub per_ip: Option<usize>,
    /// From accept to the first complete request head.
    pub first_request_timeout: Duration,
    /// With no request in flight for this long, the connection is shut down.
    pub idle_timeout: Duration,
    /// After a graceful shutdown for idleness, the connection is closed outright this much later.
    pub close_grace: Duration,
    /// A connection this old is shut down gracefully (`None`: no age limit).
    pub max_age: Option<Duration>,
}

/// Why a connection was refused or closed by the gateway (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `first_request_timeout`.
    FirstRequestTimeout,
    /// No request in flight for `idle_timeout`.
    IdleTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// Refused at accept: the client address already holds `per_ip` connections.
    PerIpLimit,
    /// Shut down gracefully at `max_age`.
    MaxAge,
}

impl CloseReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::FirstRequestTimeout => "first_request_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::PerIpLimit => "per_ip_limit",
            CloseReason::MaxAge => "max_age",
        }
    }

    /// Every label value (declared at zero so dashboards see them).
    pub const ALL: [CloseReason; 5] = [
        CloseReason::FirstRequestTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Evicted,
        CloseReason::PerIpLimit,
        CloseReason::MaxAge,
    ];
}

/// The metric handles a listener reports to, already labelled with the listener's name.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    listener: &'static str,
    closed: IntCounterVec,
    open: IntGaugeVec,
}

impl ConnectionMetrics {
    /// Report as `listener` into `closed{listener,reason}` and `open{listener}`.
    pub fn new(listener: &'static str, closed: IntCounterVec, open: IntGaugeVec) -> Self {
        for reason in CloseReason::ALL {
            closed.with_label_values(&[listener, reason.as_str()]);
        }
        open.with_label_values(&[listener]);
        ConnectionMetrics {
            listener,
            closed,
            open,
        }
    }

    fn closed(&self, reason: CloseReason) {
        self.closed
            .with_label_values(&[self.listener, reason.as_str()])
            .inc();
    }

    fn open(&self, delta: i64) {
        self.open.with_label_values(&[self.listener]).add(delta);
    }
}

/// What one connection is doing, shared between its task, its service and the listener.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    /// Milliseconds after `accepted` at which the last request ended.
    last_end_ms: AtomicU64,
    evicted: AtomicBool,
    /// The listener is shutting down: close gracefully.
    draining: AtomicBool,
    waker: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn start(self: &Arc<Self>) -> ActivityGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    fn has_requested(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// Ask the connection to close (at most once).
    fn evict(&self) -> bool {
        if self.evicted.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.waker.wake();
        true
    }

    /// When the connection becomes due for closing if nothing changes, and why.
    fn deadline(&self, limits: &ConnectionLimits) -> (Instant, Option<CloseReason>) {
        if !self.has_requested() {
            return (
                self.accepted + limits.first_request_timeout,
                Some(CloseReason::FirstRequestTimeout),
            );
        }
        if self.is_busy() {
            // Looked at again later; a request in flight never makes a connection idle.
            return (Instant::now() + limits.idle_timeout, None);
        }
        let last_end =
            self.accepted + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        (
            last_end + limits.idle_timeout,
            Some(CloseReason::IdleTimeout),
        )
    }
}

/// Held while a request is in flight (until its response body ends or is dropped).
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let elapsed = self.0.accepted.elapsed().as_millis() as u64;
        self.0.last_end_ms.fetch_max(elapsed, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admission control of one listener: the caps, and the live connections eviction can pick from.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    live: Mutex<VecDeque<Weak<Activity>>>,
    metrics: ConnectionMetrics,
}

/// A connection's place on its listener; released when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Ticket {
    /// The connection's activity record.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// When the connection must have sent its first request (a TLS handshake counts against it).
    pub fn first_request_deadline(&self) -> Instant {
        self.activity.accepted + self.admission.limits.first_request_timeout
    }

    /// Run `setup` — what a connection does before HTTP, such as its TLS handshake — unless the
    /// listener asks the connection to close first (evicted for a newcomer at the cap, or
    /// draining): then `None`, and the connection's place is free at once. Without this, a
    /// connection silent before its handshake would keep its place until the first-request
    /// deadline even after being chosen for eviction.
    pub async fn unless_closed<F: Future>(&self, setup: F) -> Option<F::Output> {
        let mut setup = std::pin::pin!(setup);
        let activity = &self.activity;
        std::future::poll_fn(|cx| {
            activity.waker.register(cx.waker());
            if activity.evicted.load(Ordering::Acquire) || activity.draining.load(Ordering::Acquire)
            {
                return Poll::Ready(None);
            }
            setup.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.metrics.open(-1);
        if self.admission.limits.per_ip.is_some() {
            if let Ok(mut counts) = self.admission.per_ip.lock() {
                if let Some(count) = counts.get_mut(&self.ip) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&self.ip);
                    }
                }
            }
        }
    }
}

impl Admission {
    /// Admission for a listener with these limits.
    pub fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Arc<Self> {
        Arc::new(Admission {
            permits: Arc::new(Semaphore::new(limits.max.max(1))),
            limits,
            per_ip: Mutex::new(HashMap::new()),
            live: Mutex::new(VecDeque::new()),
            metrics,
        })
    }

    /// The limits.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Admit a connection from `ip`: `None` if its address is over `per_ip`. At the cap, evicts the
    /// oldest connection not serving a request and waits for its place.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        if let Some(per_ip) = self.limits.per_ip {
            let Ok(mut counts) = self.per_ip.lock() else {
                return None;
            };
            let count = counts.entry(ip).or_insert(0);
            if *count >= per_ip {
                self.metrics.closed(CloseReason::PerIpLimit);
                return None;
            }
            *count += 1;
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.evict_one() {
                    self.metrics.closed(CloseReason::Evicted);
                }
                match self.permits.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => {
                        self.release_ip(ip);
                        return None;
                    }
                }
            }
        };
        let activity = Arc::new(Activity::new());
        if let Ok(mut live) = self.live.lock() {
            if live.len() >= self.limits.max.saturating_mul(2) {
                live.retain(|w| w.strong_count() > 0);
            }
            live.push_back(Arc::downgrade(&activity));
        }
        self.metrics.open(1);
        Some(Ticket {
            admission: self.clone(),
            ip,
            activity,
            _permit: permit,
        })
    }

    fn release_ip(&self, ip: IpAddr) {
        if self.limits.per_ip.is_some() {
            if let Ok(mut counts) = self.per_ip.lock() {
                if let Some(count) = counts.get_mut(&ip) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&ip);
                    }
                }
            }
        }
    }

    /// Evict the oldest connection that has sent no request, else the oldest idle one.
    fn evict_one(&self) -> bool {
        let Ok(mut live) = self.live.lock() else {
            return false;
        };
        live.retain(|w| w.strong_count() > 0);
        let candidates = || {
            live.iter()
                .filter_map(Weak::upgrade)
                .filter(|a| !a.evicted.load(Ordering::Acquire))
        };
        let silent = candidates().find(|a| !a.has_requested());
        let chosen = silent.or_else(|| candidates().find(|a| !a.is_busy()));
        chosen.is_some_and(|a| a.evict())
    }

    /// Ask every live connection to shut down gracefully (HTTP/1: close once idle; HTTP/2: GOAWAY).
    pub fn drain(&self) {
        if let Ok(live) = self.live.lock() {
            for activity in live.iter().filter_map(Weak::upgrade) {
                activity.draining.store(true, Ordering::Release);
                activity.waker.wake();
            }
        }
    }

    /// Wait until every admitted connection has ended, at most `grace`; `false` on timeout.
    pub async fn drained(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.limits.max.max(1)).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.permits.acquire_many(all))
            .await
            .is_ok()
    }

    /// Count a connection the watchdog closed.
    pub fn closed(&self, reason: CloseReason) {
        self.metrics.closed(reason);
    }
}

pin_project_lite::pin_project! {
    /// A connection driven under its ticket's deadlines and eviction, shut down gracefully (with
    /// `graceful`, hyper's `graceful_shutdown`) once its listener drains ([`Admission::drain`]).
    /// Resolves to the connection's result, or `None` if the watchdog closed it (dropping it closes
    /// the socket).
    ///
    /// A hand-written future rather than an `async fn`: the connection is by far the largest part of
    /// an idle connection's state, and an `async fn` taking it by value (then pinning it) kept it in
    /// the task twice over.
    pub struct Watched<C, G> {
        #[pin]
        connection: C,
        #[pin]
        timer: Sleep,
        ticket: Ticket,
        graceful: G,
        drained: bool,
        // When the connection reaches `max_age`, until it has been asked to close for it.
        age_due: Option<Instant>,
        hard_deadline: Option<Instant>,
    }
}

/// Watch `connection` (see [`Watched`]).
pub fn watch<C, G>(connection: C, ticket: Ticket, graceful: G) -> Watched<C, G>
where
    C: Future,
    G: Fn(Pin<&mut C>),
{
    let limits = &ticket.admission.limits;
    let (first, _) = ticket.activity.deadline(limits);
    let age_due = limits.max_age.map(|age| ticket.activity.accepted + age);
    Watched {
        connection,
        timer: tokio::time::sleep_until(age_due.map_or(first, |due| due.min(first))),
        ticket,
        graceful,
        drained: false,
        age_due,
        hard_deadline: None,
    }
}

impl<C, G> Future for Watched<C, G>
where
    C: Future,
    G: Fn(Pin<&mut C>),
{
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let activity = &this.ticket.activity;
        activity.waker.register(cx.waker());
        loop {
            if activity.evicted.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            if !*this.drained && activity.draining.load(Ordering::Acquire) {
                *this.drained = true;
                (this.graceful)(this.connection.as_mut());
                continue;
            }
            if let Poll::Ready(result) = this.connection.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if this.hard_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(None);
            }
            if this.age_due.is_some_and(|due| now >= due) {
                // Graceful, with no hard deadline of its own: a long response may finish (the idle
                // timeout and the drain still apply).
                *this.age_due = None;
                this.ticket.admission.closed(CloseReason::MaxAge);
                (this.graceful)(this.connection.as_mut());
                continue;
            }
            let limits = &this.ticket.admission.limits;
            let (due, reason) = activity.deadline(limits);
            match reason {
                Some(CloseReason::FirstRequestTimeout) if now >= due => {
                    this.ticket
                        .admission
                        .closed(CloseReason::FirstRequestTimeout);
                    return Poll::Ready(None);
                }
                Some(reason) if now >= due && this.hard_deadline.is_none() => {
                    this.ticket.admission.closed(reason);
                    let hard = now + limits.close_grace;
                    *this.hard_deadline = Some(hard);
                    this.timer.as_mut().reset(hard);
                    (this.graceful)(this.connection.as_mut());
                }
                _ => {
                    let next = [*this.hard_deadline, *this.age_due]
                        .into_iter()
                        .flatten()
                        .fold(due, Instant::min);
                    this.timer.as_mut().reset(next);
                }
            }
        }
    }
}

/// A connection's service wrapped so its requests count as activity until their response ends.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// Wrap `inner` for the connection whose activity this is.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S, ReqB, ResB> hyper::service::Service<Request<ReqB>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<TrackedBody<ResB>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<ReqB>) -> Self::Future {
        let guard = self.activity.start();
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Tracked`]: hands the activity guard to the response body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<ActivityGuard>,
    }
}

impl<F, ResB, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<TrackedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|response| {
            response.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            })
        }))
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: Option<ActivityGuard>,
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Ended: the connection is idle from now on, even if hyper keeps the body a while.
            self._guard = None;
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

/// Exponential backoff for a listener whose `accept` fails (typically EMFILE: out of descriptors).
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    errors: u64,
    last_log: Option<Instant>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            delay: Duration::ZERO,
            errors: 0,
            last_log: None,
        }
    }
}

impl AcceptBackoff {
    /// Shortest and longest wait after a failed accept.
    pub const MIN: Duration = Duration::from_millis(5);
    /// Longest wait.
    pub const MAX: Duration = Duration::from_secs(1);

    /// A failed accept: how long to wait before the next, and whether to log now (at most once per
    /// second, with the number of errors since the last log line).
    pub fn failed(&mut self) -> (Duration, Option<u64>) {
        self.errors += 1;
        self.delay = (self.delay * 2).clamp(Self::MIN, Self::MAX);
        let now = Instant::now();
        let log = match self.last_log {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => None,
            _ => {
                self.last_log = Some(now);
                Some(std::mem::take(&mut self.errors))
            }
        };
        (self.delay, log)
    }

    /// A successful accept resets the backoff.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> ConnectionLimits {
        ConnectionLimits {
            max,
            per_ip: Some(2),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            close_grace: Duration::from_secs(1),
            max_age: None,
        }
    }

    fn admission(max: usize) -> Arc<Admission> {
        let closed =
            IntCounterVec::new(prometheus::Opts::new("c", "c"), &["listener", "reason"]).unwrap();
        let open = IntGaugeVec::new(prometheus::Opts::new("o", "o"), &["listener"]).unwrap();
        Admission::new(limits(max), ConnectionMetrics::new("test", closed, open))
    }

    #[tokio::test]
    async fn the_per_ip_cap_refuses_and_frees_its_slot_when_a_connection_ends() {
        let admission = admission(10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = admission.admit(ip).await.unwrap();
        let _b = admission.admit(ip).await.unwrap();
        assert!(
            admission.admit(ip).await.is_none(),
            "third from one address"
        );
        assert!(admission.admit("10.0.0.2".parse().unwrap()).await.is_some());
        drop(a);
        assert!(admission.admit(ip).await.is_some(), "slot freed");
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_silent_connection_is_evicted_before_an_idle_one() {
        let admission = admission(2);
        let idle = admission.admit("10.0.0.1".parse().unwrap()).await.unwrap();
        drop(idle.activity().start()); // one request, ended: idle
        let silent = admission.admit("10.0.0.2".parse().unwrap()).await.unwrap();
        assert!(admission.evict_one());
        assert!(silent.activity().evicted.load(Ordering::Acquire));
        assert!(!idle.activity().evicted.load(Ordering::Acquire));
        // The silent one is already asked to go; next comes the idle one.
        assert!(admission.evict_one());
        assert!(idle.activity().evicted.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_connection_serving_a_request_is_never_evicted() {
        let admission = admission(1);
        let busy = admission.admit("10.0.0.1".parse().unwrap()).await.unwrap();
        let _guard = busy.activity().start();
        assert!(!admission.evict_one());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_requests() {
        let l = limits(1);
        let activity = Arc::new(Activity::new());
        let (due, reason) = activity.deadline(&l);
        assert_eq!(reason, Some(CloseReason::FirstRequestTimeout));
        assert_eq!(due, activity.accepted + l.first_request_timeout);
        let guard = activity.start();
        assert_eq!(activity.deadline(&l).1, None, "busy is never idle");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(guard);
        let (due, reason) = activity.deadline(&l);
        assert_eq!(reason, Some(CloseReason::IdleTimeout));
        assert_eq!(
            due,
            activity.accepted + Duration::from_secs(5) + l.idle_timeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_at_its_max_age_is_shut_down_gracefully_once() {
        let closed =
            IntCounterVec::new(prometheus::Opts::new("c", "c"), &["listener", "reason"]).unwrap();
        let open = IntGaugeVec::new(prometheus::Opts::new("o", "o"), &["listener"]).unwrap();
        let admission = Admission::new(
            ConnectionLimits {
                max_age: Some(Duration::from_secs(30)),
                ..limits(4)
            },
            ConnectionMetrics::new("test", closed.clone(), open),
        );
        let ticket = admission.admit("10.0.0.1".parse().unwrap()).await.unwrap();
        // A request in flight: the connection is neither silent nor idle, only old.
        let _busy = ticket.activity().start();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(watch(
            std::future::pending::<()>(),
            ticket,
            move |_: Pin<&mut std::future::Pending<()>>| {
                counted.fetch_add(1, Ordering::Relaxed);
            },
        ));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(
            closed.with_label_values(&["test", "max_age"]).get(),
            1,
            "counted"
        );
        // The response in flight may finish: no hard close, and no second request to close.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(!task.is_finished());
        task.abort();
    }

    #[test]
    fn accept_backoff_grows_to_a_second_and_logs_at_most_once_a_second() {
        let mut backoff = AcceptBackoff::default();
        let (first, log) = backoff.failed();
        assert_eq!(first, AcceptBackoff::MIN);
        assert_eq!(log, Some(1));
        let mut last = first;
        let mut logged = 0;
        for _ in 0..20 {
            let (delay, log) = backoff.failed();
            assert!(delay >= last);
            last = delay;
            logged += usize::from(log.is_some());
        }
        assert_eq!(last, AcceptBackoff::MAX);
        assert_eq!(logged, 0, "within the same second");
        backoff.succeeded();
        assert_eq!(backoff.failed().0, AcceptBackoff::MIN);
    }
}
