//! Prometheus metrics: an owned `Registry` (never the global default), the metric handles, the
//! request-metrics layer and the `/metrics` text (the metrics contract in docs/architecture.md).
//!
//! Labels are bounded: route ids (or `unknown`), the accepted methods (or `other`), configured
//! client ids, rule ids, limit ids, error codes, listener names. Never raw paths or resource ids.
//! Modules that count something get the handles they need and update them where it happens (the
//! audit writer its [`AuditMetrics`], the reloader `config_reloads`): nothing is copied at scrape
//! time, and this module imports none of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};

use crate::ext::{ErrorCode, RequestScope};

/// Kinds of failed exchanges with the upstream (`tl_gateway_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// TCP connect or TLS handshake failed.
    Connect,
    /// The exchange failed after connecting (reset, malformed response).
    Exchange,
    /// No response headers within `upstream.request_timeout`.
    Timeout,
    /// The client's own request body broke the exchange (not an upstream fault).
    ClientBody,
}

impl UpstreamErrorKind {
    /// Every kind.
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Exchange,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::ClientBody,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Exchange => "exchange",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::ClientBody => "client_body",
        }
    }
}

/// The audit log's metrics, updated by the writer and the audit layers where things happen.
#[derive(Debug, Clone)]
pub struct AuditMetrics {
    /// `tl_gateway_audit_records_total`.
    pub records: IntCounter,
    /// `tl_gateway_audit_write_errors_total`.
    pub write_errors: IntCounter,
    /// `tl_gateway_audit_fsync_duration_seconds`.
    pub fsync: Histogram,
    /// `tl_gateway_audit_unresolved_intents`.
    pub unresolved_intents: IntGauge,
    /// `tl_gateway_audit_denials_coalesced_total`: denials folded into `denied_summary` records.
    pub coalesced: IntCounter,
    /// `tl_gateway_audit_refusals_suppressed_total`: refusal records not written while the audit
    /// volume was below `audit.reserve`.
    pub suppressed: IntCounter,
    /// `tl_gateway_audit_records_dropped_total`: records given up (refusals of a failed batch or a
    /// full queue; outcomes beyond what a dead disk may hold in memory).
    pub dropped: IntCounter,
    /// `tl_gateway_audit_free_bytes`: free bytes on the audit volume.
    pub free_bytes: IntGauge,
    /// `tl_gateway_audit_below_reserve`: 1 while the audit volume is below `audit.reserve`.
    pub below_reserve: IntGauge,
    /// `tl_gateway_audit_writable`: 0 while the audit log refuses writes (deletes get 503).
    pub writable: IntGauge,
}

/// The state store's metrics (Redis), updated where it answers.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// `tl_gateway_state_store_requests_total{result}`: `ok`, `error`, `timeout`, `unavailable`.
    pub requests: IntCounterVec,
    /// `tl_gateway_state_store_duration_seconds`: one round trip.
    pub duration: Histogram,
    /// `tl_gateway_state_store_up`: 1 while the store answers (always, for the memory backend).
    pub up: IntGauge,
    /// `tl_gateway_state_memory_used_bytes`: the Redis server's `used_memory` (read every 10 s).
    pub memory_used: IntGauge,
    /// `tl_gateway_state_memory_max_bytes`: its `maxmemory` (0: no limit).
    pub memory_max: IntGauge,
}

impl StoreMetrics {
    /// Count one request with its result.
    pub fn count(&self, result: &str) {
        self.requests.with_label_values(&[result]).inc();
    }
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `tl_gateway_requests_total{operation,method,status_class}`.
    pub requests: IntCounterVec,
    /// `tl_gateway_request_duration_seconds{operation}` (to response headers).
    pub request_duration: HistogramVec,
    /// `tl_gateway_deletions_total{operation,client,force,outcome}`.
    pub deletions: IntCounterVec,
    /// `tl_gateway_policy_denials_total{rule}`.
    pub policy_denials: IntCounterVec,
    /// `tl_gateway_policy_dry_run_denials_total{rule}`.
    pub dry_run_denials: IntCounterVec,
    /// `tl_gateway_client_denials_total{client,reason}`: refusals per client (probing shows here).
    pub client_denials: IntCounterVec,
    /// `tl_gateway_rejections_total{reason}`: requests refused by the gateway itself, by error code.
    pub rejections: IntCounterVec,
    /// `tl_gateway_rate_limited_total{limit}`.
    pub rate_limited: IntCounterVec,
    /// `tl_gateway_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,
    /// `tl_gateway_guard_lookups_total{result}`.
    pub guard_lookups: IntCounterVec,
    /// The audit log's metrics.
    pub audit: AuditMetrics,
    /// The state store's metrics.
    pub store: StoreMetrics,
    /// `tl_gateway_rate_limit_store_fallbacks_total{limit,action}`: limits that could not be
    /// checked because the store did not answer, and what they did (`allow`, `deny`).
    pub store_fallbacks: IntCounterVec,
    /// `tl_gateway_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `tl_gateway_build_info{version}` = 1.
    pub build_info: IntGaugeVec,
    /// `tl_gateway_connections_closed_total{listener,reason}`: connections the gateway closed or
    /// refused itself (deadlines, eviction at the cap, per-address cap).
    pub connections_closed: IntCounterVec,
    /// `tl_gateway_open_connections{listener}`.
    pub open_connections: IntGaugeVec,
    /// `tl_gateway_accept_errors_total{listener}`: failed accepts (e.g. out of file descriptors).
    pub accept_errors: IntCounterVec,
    /// `tl_gateway_client_key_expiry_timestamp_seconds{client,label}`: when each expiring key expires.
    pub client_key_expiry: IntGaugeVec,
    /// `tl_gateway_client_last_seen_timestamp_seconds{client}`: each client's last authenticated request.
    pub client_last_seen: IntGaugeVec,
    /// `tl_gateway_tls_certificate_expiry_timestamp_seconds`: the served certificate's notAfter.
    pub tls_certificate_expiry: IntGauge,
    /// `tl_gateway_tls_reloads_total{result}`: certificate reloads (`success`, `failure`).
    pub tls_reloads: IntCounterVec,
    /// `tl_gateway_tls_handshake_failures_total{reason}`: connections refused before HTTP
    /// (`plain_http`, `handshake`, `timeout`).
    pub tls_handshake_failures: IntCounterVec,
    /// `tl_gateway_approvals_total{rule,state}`: approvals reaching each state.
    pub approvals: IntCounterVec,
    /// `tl_gateway_approvals_pending`: approvals waiting for a decision (refreshed every few seconds).
    pub approvals_pending: IntGauge,
    /// `tl_gateway_deferred_total{rule,state}`: deferred calls reaching each state.
    pub deferred: IntCounterVec,
    /// `tl_gateway_deferred_scheduled`: deferred calls waiting for their time (refreshed by the
    /// executor every second).
    pub deferred_scheduled: IntGauge,
    /// `tl_gateway_approvals_oldest_pending_seconds`: how long the oldest pending approval has waited.
    pub approvals_oldest_pending: IntGauge,
    /// `tl_gateway_approval_notifications_total{result}`: webhook notifications (`sent`,
    /// `retried`, `failed`, `dropped`).
    pub approval_notifications: IntCounterVec,
    /// `tl_gateway_readiness_degraded{check}`: 1 while that readiness check is degraded (the
    /// replica serves, part of it cannot work), refreshed on every `/readyz` and scrape.
    pub readiness_degraded: IntGaugeVec,
    /// `tl_gateway_ready`: 1 while `/readyz` answers 200.
    pub ready: IntGauge,
    /// `tl_gateway_store_up`: 1 while the record store (approvals) answers.
    pub store_up: IntGauge,
    /// `tl_gateway_key_events_total{event}`: changes made through the keys API.
    pub key_events: IntCounterVec,
    /// `tl_gateway_keys_snapshot_age_seconds`: since the key snapshot was last read from the store
    /// (refreshed on every scrape).
    pub keys_snapshot_age: IntGauge,
    /// `tl_gateway_keys_refresh_interval_seconds`: `store.refresh_interval` (for the alert).
    pub keys_refresh_interval: IntGauge,
}

/// Registers metrics in one registry.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("unique metric name");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric definition"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
        )
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric definition"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
        )
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid metric definition"),
        )
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let request_duration = r.register(
            HistogramVec::new(
                HistogramOpts::new(
                    "tl_gateway_request_duration_seconds",
                    "Time from request to response headers, by route id.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ]),
                &["operation"],
            )
            .expect("valid metric definition"),
        );
        let audit = AuditMetrics {
            records: r.counter("tl_gateway_audit_records_total", "Audit records written."),
            write_errors: r.counter(
                "tl_gateway_audit_write_errors_total",
                "Audit records that could not be written.",
            ),
            fsync: r.histogram(
                "tl_gateway_audit_fsync_duration_seconds",
                "Duration of each audit fdatasync.",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ],
            ),
            unresolved_intents: r.gauge(
                "tl_gateway_audit_unresolved_intents",
                "Intents without a settling record found in the audit log at start-up (a crash mid-request, or an answer never seen).",
            ),
            coalesced: r.counter(
                "tl_gateway_audit_denials_coalesced_total",
                "Denials folded into denied_summary records (beyond audit.max_denied_per_client).",
            ),
            suppressed: r.counter(
                "tl_gateway_audit_refusals_suppressed_total",
                "Refusal records not written while the audit volume was below audit.reserve.",
            ),
            dropped: r.counter(
                "tl_gateway_audit_records_dropped_total",
                "Audit records given up (refusals of a failed batch or full queue; outcomes a dead disk could not take).",
            ),
            free_bytes: r.gauge(
                "tl_gateway_audit_free_bytes",
                "Free bytes on the audit volume.",
            ),
            below_reserve: r.gauge(
                "tl_gateway_audit_below_reserve",
                "1 while the audit volume has less than audit.reserve free.",
            ),
            writable: r.gauge(
                "tl_gateway_audit_writable",
                "0 while the audit log refuses writes (audited requests get 503 audit_unavailable).",
            ),
        };
        audit.writable.set(1);
        let build_info = r.gauge_vec("tl_gateway_build_info", "Build information.", &["version"]);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let config_reloads = r.counter_vec(
            "tl_gateway_config_reloads_total",
            "Configuration reloads by result.",
            &["result"],
        );
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let store = StoreMetrics {
            requests: r.counter_vec(
                "tl_gateway_state_store_requests_total",
                "Requests to the state store (Redis), by result.",
                &["result"],
            ),
            duration: r.histogram(
                "tl_gateway_state_store_duration_seconds",
                "Time of one state-store round trip.",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ],
            ),
            up: r.gauge(
                "tl_gateway_state_store_up",
                "1 while the state store answers (the Redis probe), 0 while it does not.",
            ),
            memory_used: r.gauge(
                "tl_gateway_state_memory_used_bytes",
                "The Redis server's used_memory (INFO memory, read every 10 s; 0 on the memory backend).",
            ),
            memory_max: r.gauge(
                "tl_gateway_state_memory_max_bytes",
                "The Redis server's maxmemory (0: none, or the memory backend). Near it, writes fail (noeviction) and limits follow on_unavailable.",
            ),
        };
        for result in ["ok", "error", "timeout", "unavailable"] {
            store.requests.with_label_values(&[result]);
        }
        store.up.set(1);
        Arc::new(Metrics {
            requests: r.counter_vec(
                "tl_gateway_requests_total",
                "Requests by route id, method and status class.",
                &["operation", "method", "status_class"],
            ),
            request_duration,
            deletions: r.counter_vec(
                "tl_gateway_deletions_total",
                "Destructive calls by route id, client, force and outcome.",
                &["operation", "client", "force", "outcome"],
            ),
            policy_denials: r.counter_vec(
                "tl_gateway_policy_denials_total",
                "Requests denied by policy, by rule.",
                &["rule"],
            ),
            dry_run_denials: r.counter_vec(
                "tl_gateway_policy_dry_run_denials_total",
                "Requests a dry-run rule would have denied, by rule.",
                &["rule"],
            ),
            client_denials: r.counter_vec(
                "tl_gateway_client_denials_total",
                "Refusals of authenticated requests by client and reason.",
                &["client", "reason"],
            ),
            rejections: r.counter_vec(
                "tl_gateway_rejections_total",
                "Requests the gateway refused itself, by error code.",
                &["reason"],
            ),
            rate_limited: r.counter_vec(
                "tl_gateway_rate_limited_total",
                "Requests refused by a rate limit.",
                &["limit"],
            ),
            upstream_errors: r.counter_vec(
                "tl_gateway_upstream_errors_total",
                "Failed exchanges with the upstream, by kind.",
                &["kind"],
            ),
            guard_lookups: r.counter_vec(
                "tl_gateway_guard_lookups_total",
                "Reference lookups before forced asset deletes, by result.",
                &["result"],
            ),
            audit,
            store,
            store_fallbacks: r.counter_vec(
                "tl_gateway_rate_limit_store_fallbacks_total",
                "Limits not checked because the state store did not answer, by limit and action taken.",
                &["limit", "action"],
            ),
            config_reloads,
            build_info,
            connections_closed: r.counter_vec(
                "tl_gateway_connections_closed_total",
                "Connections the gateway closed or refused itself, by listener and reason.",
                &["listener", "reason"],
            ),
            client_key_expiry: r.gauge_vec(
                "tl_gateway_client_key_expiry_timestamp_seconds",
                "When each personal key with an expiry expires (Unix seconds), by client and key label.",
                &["client", "label"],
            ),
            client_last_seen: r.gauge_vec(
                "tl_gateway_client_last_seen_timestamp_seconds",
                "When each client last made an authenticated request (Unix seconds; 0: not since start).",
                &["client"],
            ),
            tls_certificate_expiry: r.gauge(
                "tl_gateway_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the client listener serves expires (Unix seconds; 0 without TLS).",
            ),
            tls_reloads: r.counter_vec(
                "tl_gateway_tls_reloads_total",
                "Reloads of the TLS certificate, key and client CA files, by result.",
                &["result"],
            ),
            tls_handshake_failures: r.counter_vec(
                "tl_gateway_tls_handshake_failures_total",
                "Connections to the TLS listener refused before HTTP, by reason (plain_http, handshake, timeout).",
                &["reason"],
            ),
            approvals: r.counter_vec(
                "tl_gateway_approvals_total",
                "Approvals reaching each state (pending, approved, denied, expired, used, cancelled), by rule.",
                &["rule", "state"],
            ),
            approvals_pending: r.gauge(
                "tl_gateway_approvals_pending",
                "Approvals waiting for a decision.",
            ),
            deferred: r.counter_vec(
                "tl_gateway_deferred_total",
                "Deferred calls reaching each state (scheduled, cancelled, executing, executed, refused, unresolved), by rule.",
                &["rule", "state"],
            ),
            deferred_scheduled: r.gauge(
                "tl_gateway_deferred_scheduled",
                "Deferred calls scheduled and not yet due or claimed.",
            ),
            approvals_oldest_pending: r.gauge(
                "tl_gateway_approvals_oldest_pending_seconds",
                "Age of the oldest approval waiting for a decision (0: none).",
            ),
            approval_notifications: r.counter_vec(
                "tl_gateway_approval_notifications_total",
                "Approval webhook notifications by result (sent, retried, failed, dropped).",
                &["result"],
            ),
            open_connections: r.gauge_vec(
                "tl_gateway_open_connections",
                "Open connections by listener.",
                &["listener"],
            ),
            accept_errors: r.counter_vec(
                "tl_gateway_accept_errors_total",
                "Failed accepts by listener (e.g. out of file descriptors).",
                &["listener"],
            ),
            readiness_degraded: r.gauge_vec(
                "tl_gateway_readiness_degraded",
                "1 while a readiness check is degraded: the replica still serves, part of it cannot work (the check names which).",
                &["check"],
            ),
            ready: r.gauge(
                "tl_gateway_ready",
                "1 while /readyz answers 200 (0: draining, no upstream key).",
            ),
            store_up: r.gauge(
                "tl_gateway_store_up",
                "1 while the record store (approvals, clients and keys; memory, SQLite or PostgreSQL) answers.",
            ),
            key_events: r.counter_vec(
                "tl_gateway_key_events_total",
                "Changes made through the keys API, by event (client_created, client_updated, client_disabled, client_enabled, key_issued, key_revoked, key_rotated).",
                &["event"],
            ),
            keys_snapshot_age: r.gauge(
                "tl_gateway_keys_snapshot_age_seconds",
                "Seconds since this replica last read every client and key from the store (authentication uses that snapshot).",
            ),
            keys_refresh_interval: r.gauge(
                "tl_gateway_keys_refresh_interval_seconds",
                "store.refresh_interval: the key snapshot is read again at least this often.",
            ),
            registry,
        })
    }

    /// Create the series a configuration can produce, at zero, so dashboards and alerts see them
    /// before the first event (`rule`, `limit` and the bounded `kind`/`result` label values).
    pub fn declare<'a>(
        &self,
        rules: impl Iterator<Item = &'a str>,
        limits: impl Iterator<Item = &'a str>,
    ) {
        for rule in rules {
            self.policy_denials.with_label_values(&[rule]);
            self.dry_run_denials.with_label_values(&[rule]);
        }
        for limit in limits {
            self.rate_limited.with_label_values(&[limit]);
            for action in ["allow", "deny"] {
                self.store_fallbacks.with_label_values(&[limit, action]);
            }
        }
        for kind in UpstreamErrorKind::ALL {
            self.upstream_errors.with_label_values(&[kind.as_str()]);
        }
        for result in ["ok", "failed"] {
            self.guard_lookups.with_label_values(&[result]);
        }
        for result in ["sent", "retried", "failed", "dropped"] {
            self.approval_notifications.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            self.tls_reloads.with_label_values(&[result]);
        }
        for reason in ["plain_http", "handshake", "timeout"] {
            self.tls_handshake_failures.with_label_values(&[reason]);
        }
        for reason in [
            "request_ambiguous",
            "route_unknown",
            "method_not_allowed",
            "unauthorized",
            "key_expired",
        ] {
            self.rejections.with_label_values(&[reason]);
        }
    }

    /// Count a failed exchange with the upstream.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// Register a metric owned elsewhere (e.g. the trace exporter's drop counter, which exists
    /// before the registry does). A second registration of the same name is ignored.
    pub fn register_external<M: prometheus::core::Collector + 'static>(&self, metric: M) {
        let _ = self.registry.register(Box::new(metric));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The method as a bounded label: one of the accepted methods, or `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The status class label of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Layer recording request count and latency by route id and status class.
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// Record into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = RecordMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Service produced by [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct RecordMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResB> Service<Request<B>> for RecordMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let scope = RequestScope::of(&mut req);
        MetricsFuture {
            method: method_label(req.method()),
            inner: self.inner.call(req),
            started: Instant::now(),
            scope,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RecordMetrics`]: counts the response when its headers are there.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: &'static str,
        scope: RequestScope,
        metrics: Arc<Metrics>,
    }
}

impl<F, ResB, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let operation = this.scope.route().unwrap_or("unknown");
            let class = status_class(response.status().as_u16());
            this.metrics
                .requests
                .with_label_values(&[operation, this.method, class])
                .inc();
            this.metrics
                .request_duration
                .with_label_values(&[operation])
                .observe(this.started.elapsed().as_secs_f64());
            if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
                this.metrics.rejections.with_label_values(&[code]).inc();
            }
        }
        Poll::Ready(result)
    }
}

/// The value of one series in a text exposition, e.g. `tl_gateway_requests_total{...}` (tests).
#[doc(hidden)]
pub fn counter_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
