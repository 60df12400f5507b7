//! Upstream connections owned by the serving worker that uses them.
//!
//! Each serving worker (`crate::workers`) has its own list of idle HTTP/1.1 connections made with
//! hyper's low-level client (`hyper::client::conn::http1`). A connection's `Connection` future is
//! spawned on the worker that opened it, and only that worker's requests use it, so a request and
//! its upstream exchange never wake another thread, and no pool task, pool lock contention or
//! connection hand-off sits between them (the hyper-util pooled client it replaces dispatched
//! every request through its own pool bookkeeping: a boxed response future of 3 KiB, an
//! extensions map for connection metadata, a waiter list per host).
//!
//! What the pooled client gave is kept: the connect timeout, at most
//! `upstream.max_idle_connections` idle connections per worker, TLS with rustls (webpki roots,
//! ALPN `http/1.1`), and reuse only of a connection whose previous exchange ended cleanly — the
//! response body read to its end (a [`ReturnToPool`] body hands the connection back at that
//! moment) with the request body fully sent (the connection says it is ready again); a connection
//! whose response failed or was dropped half-read is closed. A request that a reused connection
//! could not even start (the upstream closed it while idle) is sent once more on a new one;
//! after that, an error is the caller's.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::GatewayBody;

/// An idle connection is not reused after this long (the upstream may have forgotten it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a connection that finished its response but not yet its request may take to become
/// reusable before it is closed instead.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The upstream's name did not resolve, or no address accepted in time.
    #[error("connect: {0}")]
    Tcp(std::io::Error),
    /// The connect timeout passed.
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (e.g. the certificate did not verify).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// hyper refused the connection.
    #[error("http handshake: {0}")]
    Handshake(hyper::Error),
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed during the exchange.
    #[error(transparent)]
    Exchange(hyper::Error),
}

/// How connections to the upstream are made.
struct Connector {
    /// Host name or address as DNS takes it (no brackets).
    host: String,
    port: u16,
    /// For `https`: the rustls connector and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Connector {
    async fn connect(&self) -> Result<SendRequest<GatewayBody>, ConnectError> {
        let tcp = self.tcp().await?;
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                // The handshake has its own connect_timeout: a stalled one is a connect failure.
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
                .map_err(ConnectError::Tls)?;
                handshake(tls).await
            }
        }
    }

    /// Resolve, then try each address in turn, each with an equal share of what is left of
    /// `connect_timeout` (as hyper-util's connector does), so one silent address cannot use it all.
    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout_at(
            deadline,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
        .map_err(ConnectError::Tcp)?
        .collect();
        let mut last = None;
        for (i, addr) in addrs.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / (addrs.len() - i) as u32;
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(error)) => last = Some(error),
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{addr}: no answer within {share:?}"),
                    ))
                }
            }
        }
        if addrs.is_empty() {
            return Err(ConnectError::Tcp(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolved to no address", self.host),
            )));
        }
        Err(ConnectError::Tcp(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolved to no address", self.host),
            )
        })))
    }
}

/// The HTTP/1.1 handshake on a connected stream; its connection future runs on this thread.
async fn handshake<T>(io: T) -> Result<SendRequest<GatewayBody>, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// One idle connection.
struct Idle {
    sender: SendRequest<GatewayBody>,
    since: Instant,
}

/// The idle connections of every serving worker, and how to make more.
pub struct Pools {
    shards: Box<[Mutex<Vec<Idle>>]>,
    connector: Connector,
    max_idle: usize,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("shards", &self.shards.len())
            .field("connector", &self.connector)
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl Pools {
    /// Pools for `shards` workers (index [`crate::workers::current`] modulo `shards`) to
    /// `host:port`, over TLS when `tls` is given.
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        shards: usize,
        max_idle: usize,
    ) -> Result<Pools, rustls::Error> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = ServerName::try_from(host.clone()).map_err(|_| {
                    rustls::Error::General(format!("{host:?} is not a valid TLS server name"))
                })?;
                Some((TlsConnector::from(config), name))
            }
        };
        Ok(Pools {
            shards: (0..shards.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            connector: Connector {
                host,
                port,
                tls,
                connect_timeout,
            },
            max_idle,
        })
    }

    fn shard(&self) -> usize {
        crate::workers::current() % self.shards.len()
    }

    /// Send `request` (origin-form target, `Host` set) on an idle connection of this worker, or a
    /// new one. The response's body gives the connection back once it has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<GatewayBody>,
    ) -> Result<Response<ReturnToPool>, SendError> {
        let shard = self.shard();
        if let Some(mut sender) = self.take_idle(shard) {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(response, sender, shard)),
                Err(mut error) => match error.take_message() {
                    // Never written to the connection (it closed while idle): try a new one.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Exchange(error.into_error())),
                },
            }
        }
        let mut sender = self.connector.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Exchange)?;
        Ok(self.wrap(response, sender, shard))
    }

    fn wrap(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<GatewayBody>,
        shard: usize,
    ) -> Response<ReturnToPool> {
        response.map(|body| {
            let mut body = ReturnToPool {
                inner: body,
                connection: Some(Checkout {
                    sender,
                    pools: self.clone(),
                    shard,
                }),
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    /// The most recently used idle connection of `shard` that can take a request.
    fn take_idle(&self, shard: usize) -> Option<SendRequest<GatewayBody>> {
        let mut idle = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
            // Closed by the upstream, failed, or idle too long: dropping it closes it.
        }
        None
    }

    /// Keep a connection whose exchange ended cleanly, if there is room.
    fn put(self: Arc<Self>, shard: usize, mut sender: SendRequest<GatewayBody>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            // The response ended before the request body was sent, or the connection has not
            // yet noticed: keep it only once it says it is ready again.
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(SETTLE_TIMEOUT, sender.ready()).await {
                    self.keep(shard, sender);
                }
            });
            return;
        }
        self.keep(shard, sender);
    }

    fn keep(&self, shard: usize, sender: SendRequest<GatewayBody>) {
        let mut idle = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.max_idle {
            // Make room from connections that closed or aged while idle.
            idle.retain(|entry| !entry.sender.is_closed() && entry.since.elapsed() < IDLE_TIMEOUT);
        }
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// A connection lent to one exchange.
struct Checkout {
    sender: SendRequest<GatewayBody>,
    pools: Arc<Pools>,
    shard: usize,
}

/// An upstream response body that gives its connection back to the worker's pool when it has
/// been read to its end; dropped early or failed, the connection is closed instead.
pub struct ReturnToPool {
    inner: Incoming,
    connection: Option<Checkout>,
}

impl ReturnToPool {
    fn release(&mut self) {
        if let Some(checkout) = self.connection.take() {
            checkout.pools.put(checkout.shard, checkout.sender);
        }
    }
}

impl Body for ReturnToPool {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
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
