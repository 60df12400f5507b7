//! Listeners, the accept loop and shutdown: [`Gateway`] binds the client and admin listeners, hands
//! every accepted connection to a serving worker under the listener's admission (`connections`),
//! swaps in the stack the reloader builds, and drains on SIGTERM. The stack itself is composed in
//! `stack`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::admin::{self, Readiness};
use crate::approvals::notify::Notifier;
use crate::audit::reconcile::reconcile;
use crate::audit::AuditLog;
use crate::body::{self, GatewayBody};
use crate::config::{Config, ServerConfig};
use crate::connections::{
    self, AcceptBackoff, Admission, ConnectionLimits, ConnectionMetrics, Tracked,
};
use crate::credentials::{UpstreamKey, KEY_FILE_POLL};
use crate::ext::{PeerCertificate, RequestScope};
use crate::forward::{ForwardSetupError, Forwarder};
use crate::fragment::{FragmentInTarget, FragmentWatch, FragmentsSeen};
use crate::headers;
use crate::metrics::Metrics;
use crate::overload::TimedBody;
use crate::reload::{ReloadStats, Reloader};
use crate::stack::{build_stack, GatewayService, Shared, StackParts};
use crate::state::redis::RedisStore;
use crate::state::{StateSettings, StateStore};
use crate::store::RecordStore;
use crate::tls::ServerTls;
use crate::units::BodyRate;
use crate::workers::{self, Workers};

/// How often approvals past their deadline are expired and the pending gauges refreshed.
const APPROVAL_SWEEP: Duration = Duration::from_secs(5);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The upstream client could not be built.
    #[error(transparent)]
    Forward(#[from] ForwardSetupError),
    /// The state store could not be set up.
    #[error("{0}")]
    State(String),
    /// The record store could not be opened (connected and migrated).
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The audit log could not be opened.
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A gateway with both listeners bound, ready to run.
pub struct Gateway {
    listener: TcpListener,
    admin_listener: TcpListener,
    stack: Arc<ArcSwap<GatewayService>>,
    readiness: Arc<Readiness>,
    shared: Shared,
    server: ServerConfig,
    config: Config,
    forwarder: Forwarder,
    config_path: Option<PathBuf>,
    reload_stats: Arc<ReloadStats>,
    tls: Option<Arc<ServerTls>>,
}

impl Gateway {
    /// Bind the client and admin listeners for this configuration.
    pub async fn bind(
        config: &Config,
        upstream_key: Arc<UpstreamKey>,
    ) -> Result<Gateway, StartError> {
        let metrics = Metrics::new();
        let tls = config
            .tls
            .clone()
            .map(|settings| ServerTls::load(settings, metrics.clone()))
            .transpose()
            .map_err(StartError::Tls)?;
        let audit = match &config.audit {
            None => None,
            Some(audit) => {
                let (log, unresolved) =
                    AuditLog::open(audit.settings.clone(), metrics.audit.clone()).map_err(
                        |source| StartError::Audit {
                            path: audit.settings.path.clone(),
                            source,
                        },
                    )?;
                for intent in &unresolved {
                    tracing::warn!(
                        request_id = %intent.request_id,
                        audit_id = intent.audit_id.as_deref().unwrap_or(""),
                        operation = %intent.operation,
                        params = ?intent.params,
                        client = intent.client.as_deref().unwrap_or(""),
                        seq = intent.seq,
                        why = %intent.why,
                        "unresolved audit intent: a destructive request was forwarded (or about to be) and whether it took effect is unknown"
                    );
                }
                Some((log, unresolved, audit.reconcile))
            }
        };
        let (audit, unresolved) = match audit {
            Some((log, unresolved, reconcile)) => {
                let unresolved = if reconcile { unresolved } else { Vec::new() };
                (Some(log), unresolved)
            }
            None => (None, Vec::new()),
        };
        let store = match &config.state {
            StateSettings::Memory => StateStore::memory(),
            StateSettings::Redis(redis) => StateStore::Redis(
                RedisStore::start(redis, metrics.store.clone())
                    .map_err(|e| StartError::State(e.to_string()))?,
            ),
        };
        let notify = match &config.approvals.notify {
            None => None,
            Some(settings) => {
                let base = crate::stack::gateway_url(config);
                Some(
                    Notifier::start(settings.clone(), &base, metrics.clone())
                        .map_err(|e| StartError::State(format!("approvals webhook: {e}")))?,
                )
            }
        };
        let records = RecordStore::open(&config.store, metrics.store_up.clone()).await?;
        if records.backend() == "memory" {
            tracing::warn!("store.backend is memory: approvals live in this process and are lost on restart; use store.backend: sqlite (one replica) or postgres (several)");
        }
        let shared = Shared::new(
            config,
            upstream_key.clone(),
            metrics,
            audit,
            store,
            records,
            notify,
        );
        // The key snapshot: read now (authentication of store keys starts with it), then kept
        // current in the background; a replica that could not read it is not ready until it does.
        if let Err(error) = shared.keyring.refresh().await {
            tracing::warn!(%error, "the key snapshot could not be read from the store yet; retrying (YAML clients work meanwhile)");
        }
        shared.keyring.watch(config.store.refresh_interval);
        shared
            .metrics
            .keys_refresh_interval
            .set(config.store.refresh_interval.as_secs() as i64);
        let parts = StackParts::from_config(config, &shared)?;
        let forwarder = parts.forwarder.clone();
        if let (Some(log), false) = (&shared.audit, unresolved.is_empty()) {
            // The forwarder's own upstream client and settings, with the real key.
            tokio::spawn(reconcile(
                log.clone(),
                unresolved,
                forwarder.clone(),
                upstream_key.clone(),
            ));
        }
        let listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin_listen).await?;
        let reload_stats: Arc<ReloadStats> = Arc::default();
        Ok(Gateway {
            listener,
            admin_listener,
            stack: Arc::new(ArcSwap::from_pointee(build_stack(parts))),
            readiness: Readiness::new(
                upstream_key,
                shared.audit.clone(),
                shared.store.clone(),
                shared.records.clone(),
                shared.keyring.clone(),
                shared.limits_fail_closed.clone(),
                tls.clone(),
            ),
            tls,
            shared,
            server: config.server.clone(),
            config: config.clone(),
            forwarder,
            config_path: None,
            reload_stats,
        })
    }

    /// The metrics registry (tests read counters from it).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Reload from `path` on SIGHUP or when the file changes.
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Reload counters (applied / refused).
    pub fn reload_stats(&self) -> Arc<ReloadStats> {
        self.reload_stats.clone()
    }

    /// The bound client-facing address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serve until `shutdown` resolves, then drain in-flight requests for up to `shutdown_grace`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let audit = self.shared.audit.clone();
        let key_watcher = self.shared.upstream_key.watch(KEY_FILE_POLL);
        let config_watcher = self.config_path.map(|path| {
            Reloader::new(
                path,
                self.config.clone(),
                self.forwarder,
                self.stack.clone(),
                self.shared.clone(),
                self.reload_stats.clone(),
            )
            .spawn()
        });
        tracing::info!(
            listen = %display_addr(self.listener.local_addr()),
            admin = %display_addr(self.admin_listener.local_addr()),
            upstream = %self.config.upstream.origin,
            clients = self.config.clients.len(),
            rules = self.config.policy.rules.len(),
            "tl-gateway serving"
        );
        let approvals = self.shared.approvals.clone();
        let sweeper = tokio::spawn(async move {
            // Expire what is due and refresh the pending gauges.
            let mut tick = tokio::time::interval(APPROVAL_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = approvals.sweep().await {
                    tracing::debug!(%error, "approvals sweep failed; next try in a few seconds");
                }
            }
        });
        // Deferred calls: claimed when due and replayed through the current stack.
        let executor_stack = self.stack.clone();
        let executor = crate::deferred::executor::Executor::new(
            self.shared.deferred.clone(),
            move |req| {
                let service: GatewayService = GatewayService::clone(&executor_stack.load());
                Box::pin(service.oneshot(req))
            },
            crate::stack::deferred_lease(&self.config),
        )
        .spawn();
        let readiness = self.readiness.clone();
        // A draining replica claims no more deferred calls (those it runs finish on their own tasks).
        let stop_executor = executor.abort_handle();
        tokio::spawn(async move {
            shutdown.await;
            stop_executor.abort();
            tracing::info!("shutdown requested: draining in-flight requests");
            readiness.set_draining();
            let _ = stop_tx.send(true);
        });

        // The admin listener outlives the drain so probes see `/readyz` turn 503 meanwhile.
        let admin_readiness = self.readiness.clone();
        let admin_metrics = self.shared.metrics.clone();
        let admin_settings = ListenerSettings::new(
            "admin",
            &self.server,
            self.server.admin_max_connections,
            &self.shared.metrics,
        );
        let admin = tokio::spawn(serve_connections(
            self.admin_listener,
            admin_settings,
            None,
            None,
            std::future::pending::<()>(),
            move |_peer, _fragments, _certificate| {
                let readiness = admin_readiness.clone();
                let metrics = admin_metrics.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    admin::handle(readiness.clone(), metrics.clone(), req)
                })
            },
        ));

        let stack = self.stack.clone();
        let idle = self.server.body_idle_timeout;
        let min_rate = self.server.min_body_rate;
        let workers = Workers::start(workers::count(self.server.worker_threads))?;
        tracing::debug!(workers = workers.len(), "serving workers started");
        let client_settings = ListenerSettings::new(
            "client",
            &self.server,
            self.server.max_connections,
            &self.shared.metrics,
        );
        let tls_watcher = self.tls.as_ref().map(ServerTls::watch);
        let result = serve_connections(
            self.listener,
            client_settings,
            Some(&workers),
            self.tls.clone(),
            wait_for(stop_rx),
            move |peer, fragments, certificate| {
                let stack = stack.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let service: GatewayService = GatewayService::clone(&stack.load());
                    service.oneshot(edge(
                        req,
                        peer,
                        &fragments,
                        certificate.as_deref(),
                        idle,
                        min_rate,
                    ))
                })
            },
        )
        .await;
        workers.stop().await;
        admin.abort();
        sweeper.abort();
        executor.abort();
        for watcher in key_watcher
            .into_iter()
            .chain(config_watcher)
            .chain(tls_watcher)
        {
            watcher.abort();
        }
        // The last requests' outcomes are queued by now: make them durable before the process ends.
        if let Some(audit) = &audit {
            match audit.flush().await {
                Ok(()) => tracing::info!("audit log flushed"),
                Err(error) => tracing::error!(%error, "could not flush the audit log at shutdown"),
            }
        }
        result
    }
}

/// Where a request enters: box the body once, note the peer, drop hop-by-hop headers before any
/// layer adds its own.
fn edge(
    req: Request<Incoming>,
    peer: SocketAddr,
    fragments: &FragmentsSeen,
    certificate: Option<&PeerCertificate>,
    idle: Duration,
    min_rate: Option<BodyRate>,
) -> Request<GatewayBody> {
    let mut req = req.map(|b| body::boxed(TimedBody::client(b, idle, min_rate)));
    headers::remove_hop_by_hop(req.headers_mut());
    req.extensions_mut().insert(RequestScope::new(peer));
    if let Some(certificate) = certificate {
        req.extensions_mut().insert(certificate.clone());
    }
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    if fragments.take(target) {
        req.extensions_mut().insert(FragmentInTarget);
    }
    req
}

fn display_addr(result: std::io::Result<SocketAddr>) -> String {
    result.map_or_else(|e| format!("<{e}>"), |a| a.to_string())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// One listener's serving settings: protocol limits and connection admission.
struct ListenerSettings {
    name: &'static str,
    admission: Arc<Admission>,
    max_header_size: u64,
    shutdown_grace: Duration,
    accept_errors: prometheus::IntCounter,
}

impl ListenerSettings {
    fn new(name: &'static str, server: &ServerConfig, max: usize, metrics: &Metrics) -> Self {
        let limits = ConnectionLimits {
            max,
            per_ip: if name == "client" {
                server.max_connections_per_ip
            } else {
                None
            },
            first_request_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            close_grace: server.header_read_timeout.min(Duration::from_secs(5)),
            max_age: server.max_connection_age,
        };
        let connection_metrics = ConnectionMetrics::new(
            name,
            metrics.connections_closed.clone(),
            metrics.open_connections.clone(),
        );
        ListenerSettings {
            name,
            admission: Admission::new(limits, connection_metrics),
            max_header_size: server.max_header_size,
            shutdown_grace: server.shutdown_grace,
            accept_errors: metrics.accept_errors.with_label_values(&[name]),
        }
    }
}

/// Accept connections until `shutdown`, serving each with a service made for its peer.
///
/// Every connection is admitted by the listener's [`Admission`] (caps, eviction) and driven under
/// [`connections::watch`] (first-request deadline, idle timeout, graceful drain). With `workers`,
/// each connection is served on the next serving worker's runtime (see [`crate::workers`]);
/// without, on the caller's.
async fn serve_connections<F, S, B>(
    listener: TcpListener,
    settings: ListenerSettings,
    workers: Option<&Workers>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
    make_service: F,
) -> std::io::Result<()>
where
    F: Fn(SocketAddr, Arc<FragmentsSeen>, Option<Arc<PeerCertificate>>) -> S
        + Send
        + Sync
        + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header-read timer: the connection watchdog enforces the first-request deadline
    // from accept (hyper's starts only once its HTTP/1 parser runs) and the idle timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_size.max(8192) as usize);
    let idle = settings.admission.limits().idle_timeout;
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(idle.min(Duration::from_secs(20))))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(settings.max_header_size.min(u64::from(u32::MAX)) as u32);
    let builder = Arc::new(builder);
    let make_service = Arc::new(make_service);
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    // Typically EMFILE: back off (growing to a second) instead of spinning.
                    settings.accept_errors.inc();
                    let (delay, log) = backoff.failed();
                    if let Some(errors) = log {
                        tracing::warn!(listener = settings.name, %error, errors, retry_in_ms = delay.as_millis() as u64, "accept failed");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let ticket = tokio::select! {
            ticket = settings.admission.admit(peer.ip()) => ticket,
            () = &mut shutdown => break,
        };
        let Some(ticket) = ticket else {
            tracing::debug!(listener = settings.name, %peer, "connection refused: per-address cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let make_service = make_service.clone();
        let tls = tls.clone();
        let serve = move |stream: TcpStream| async move {
            let fragments = Arc::new(FragmentsSeen::default());
            match tls {
                None => {
                    let service = Tracked::new(
                        make_service(peer, fragments.clone(), None),
                        ticket.activity().clone(),
                    );
                    let io = FragmentWatch::new(stream, fragments);
                    drive(&builder, io, service, ticket, peer).await;
                }
                Some(tls) => {
                    // Boxed: a TLS connection's state (rustls, the handshake) would otherwise size
                    // every plain connection's task as well.
                    Box::pin(async move {
                        // The handshake counts against the first-request deadline.
                        // An eviction (a newcomer at the cap) or a drain ends it as it would a
                        // silent plain connection.
                        let deadline = ticket.first_request_deadline();
                        let Some(Some((stream, certificate))) =
                            ticket.unless_closed(tls.accept(stream, deadline)).await
                        else {
                            return;
                        };
                        let service = Tracked::new(
                            make_service(peer, fragments.clone(), certificate.map(Arc::new)),
                            ticket.activity().clone(),
                        );
                        let io = FragmentWatch::new(stream, fragments);
                        drive(&builder, io, service, ticket, peer).await;
                    })
                    .await
                }
            }
        };
        match workers {
            None => drop(tokio::spawn(serve(stream))),
            // The connection moves to a worker's reactor: deregistered here, registered there.
            Some(workers) => match stream.into_std() {
                Ok(stream) => workers.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve(stream).await,
                        Err(error) => {
                            tracing::warn!(%peer, %error, "could not hand a connection to a worker")
                        }
                    }
                }),
                Err(error) => {
                    tracing::warn!(%peer, %error, "could not hand a connection to a worker")
                }
            },
        }
    }
    drop(listener);
    settings.admission.drain();
    if settings.admission.drained(settings.shutdown_grace).await {
        tracing::info!(listener = settings.name, "all connections drained");
    } else {
        tracing::warn!(
            listener = settings.name,
            grace_ms = settings.shutdown_grace.as_millis() as u64,
            "shutdown grace period expired with requests still in flight"
        );
    }
    Ok(())
}

/// Serve one connection's HTTP under the connection watchdog (deadlines, drain).
async fn drive<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    ticket: connections::Ticket,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let graceful = |c: std::pin::Pin<&mut _>| auto::Connection::graceful_shutdown(c);
    match connections::watch(connection, ticket, graceful).await {
        Some(Err(error)) => {
            tracing::debug!(%peer, error = %error, "connection ended with an error")
        }
        Some(Ok(())) => {}
        None => tracing::debug!(%peer, "connection closed by the gateway"),
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
