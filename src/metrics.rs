//! Prometheus metrics: an owned `Registry` (never the global default), the metric handles, the
//! request-metrics layer and the `/metrics` text (contract: architecture.md §6).
//!
//! Labels are bounded: route ids (or `unknown`), the seven accepted methods (or `other`), configured
//! client ids, rule ids, limit ids, error codes. Never raw paths or resource ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::{Method, Request, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};

use crate::audit::AuditStats;
use crate::reload::ReloadStats;

/// The route id of a request, filled in by the classifier for layers outside it.
#[derive(Clone, Debug, Default)]
pub struct RouteLabel(pub Arc<OnceLock<&'static str>>);

/// The error code of a response the gateway made itself (set by the rescue layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

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
    /// `tl_gateway_rejections_total{reason}`: requests refused before policy, by error code.
    pub rejections: IntCounterVec,
    /// `tl_gateway_rate_limited_total{limit}`.
    pub rate_limited: IntCounterVec,
    /// `tl_gateway_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,
    /// `tl_gateway_guard_lookups_total{result}`.
    pub guard_lookups: IntCounterVec,
    /// `tl_gateway_audit_write_errors_total`.
    pub audit_write_errors: IntCounter,
    /// `tl_gateway_audit_records_total`.
    pub audit_records: IntCounter,
    /// `tl_gateway_audit_fsync_duration_seconds`.
    pub audit_fsync: Histogram,
    /// `tl_gateway_audit_unresolved_intents`.
    pub unresolved_intents: IntGauge,
    /// `tl_gateway_audit_denials_coalesced_total`: denials folded into `denied_summary` records.
    pub audit_coalesced: IntCounter,
    /// `tl_gateway_audit_refusals_suppressed_total`: refusal records not written while the audit
    /// volume was below `audit.reserve`.
    pub audit_suppressed: IntCounter,
    /// `tl_gateway_audit_records_dropped_total`: records given up (refusals of a failed batch or a
    /// full queue; outcomes beyond what a dead disk may hold in memory).
    pub audit_dropped: IntCounter,
    /// `tl_gateway_audit_free_bytes`: free bytes on the audit volume.
    pub audit_free_bytes: IntGauge,
    /// `tl_gateway_audit_below_reserve`: 1 while the audit volume is below `audit.reserve`.
    pub audit_below_reserve: IntGauge,
    /// `tl_gateway_audit_writable`: 0 while the audit log refuses writes (deletes get 503).
    pub audit_writable: IntGauge,
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
    sources: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    audit: Option<Arc<AuditStats>>,
    reload: Option<Arc<ReloadStats>>,
    seen: Seen,
}

/// The values of the counters read from other modules at the previous scrape.
#[derive(Debug, Default)]
struct Seen {
    audit_records: u64,
    audit_write_errors: u64,
    audit_coalesced: u64,
    audit_suppressed: u64,
    audit_dropped: u64,
    reload_success: u64,
    reload_failure: u64,
}

/// How much a monotonic source counter grew since it was last seen.
fn advance(seen: &mut u64, now: &AtomicU64) -> u64 {
    let now = now.load(Ordering::Relaxed);
    let delta = now.saturating_sub(*seen);
    *seen = (*seen).max(now);
    delta
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "tl_gateway_requests_total",
            "Requests by route id, method and status class.",
            &["operation", "method", "status_class"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tl_gateway_request_duration_seconds",
                "Time from request to response headers, by route id.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["operation"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("unique metric name");
        let audit_fsync = Histogram::with_opts(
            HistogramOpts::new(
                "tl_gateway_audit_fsync_duration_seconds",
                "Duration of each audit fdatasync.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(audit_fsync.clone()))
            .expect("unique metric name");
        let audit_write_errors = IntCounter::new(
            "tl_gateway_audit_write_errors_total",
            "Audit records that could not be written.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(audit_write_errors.clone()))
            .expect("unique metric name");
        let audit_records =
            IntCounter::new("tl_gateway_audit_records_total", "Audit records written.")
                .expect("valid metric definition");
        registry
            .register(Box::new(audit_records.clone()))
            .expect("unique metric name");
        let unresolved_intents = IntGauge::new(
            "tl_gateway_audit_unresolved_intents",
            "Intents without an outcome found in the audit log at start-up (a crash mid-request).",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(unresolved_intents.clone()))
            .expect("unique metric name");
        let build_info = IntGaugeVec::new(
            Opts::new("tl_gateway_build_info", "Build information."),
            &["version"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric name");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "tl_gateway_open_connections",
                "Open connections by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(open_connections.clone()))
            .expect("unique metric name");
        Arc::new(Metrics {
            requests,
            request_duration,
            deletions: counter_vec(
                &registry,
                "tl_gateway_deletions_total",
                "Destructive calls by route id, client, force and outcome.",
                &["operation", "client", "force", "outcome"],
            ),
            policy_denials: counter_vec(
                &registry,
                "tl_gateway_policy_denials_total",
                "Requests denied by policy, by rule.",
                &["rule"],
            ),
            dry_run_denials: counter_vec(
                &registry,
                "tl_gateway_policy_dry_run_denials_total",
                "Requests a dry-run rule would have denied, by rule.",
                &["rule"],
            ),
            client_denials: counter_vec(
                &registry,
                "tl_gateway_client_denials_total",
                "Refusals of authenticated requests by client and reason.",
                &["client", "reason"],
            ),
            rejections: counter_vec(
                &registry,
                "tl_gateway_rejections_total",
                "Requests the gateway refused itself, by error code.",
                &["reason"],
            ),
            rate_limited: counter_vec(
                &registry,
                "tl_gateway_rate_limited_total",
                "Requests refused by a rate limit.",
                &["limit"],
            ),
            upstream_errors: counter_vec(
                &registry,
                "tl_gateway_upstream_errors_total",
                "Failed exchanges with the upstream, by kind.",
                &["kind"],
            ),
            guard_lookups: counter_vec(
                &registry,
                "tl_gateway_guard_lookups_total",
                "Reference lookups before forced asset deletes, by result.",
                &["result"],
            ),
            audit_write_errors,
            audit_records,
            audit_fsync,
            unresolved_intents,
            audit_coalesced: counter(
                &registry,
                "tl_gateway_audit_denials_coalesced_total",
                "Denials folded into denied_summary records (beyond audit.max_denied_per_client).",
            ),
            audit_suppressed: counter(
                &registry,
                "tl_gateway_audit_refusals_suppressed_total",
                "Refusal records not written while the audit volume was below audit.reserve.",
            ),
            audit_dropped: counter(
                &registry,
                "tl_gateway_audit_records_dropped_total",
                "Audit records given up (refusals of a failed batch or full queue; outcomes a dead disk could not take).",
            ),
            audit_free_bytes: gauge(
                &registry,
                "tl_gateway_audit_free_bytes",
                "Free bytes on the audit volume.",
            ),
            audit_below_reserve: gauge(
                &registry,
                "tl_gateway_audit_below_reserve",
                "1 while the audit volume has less than audit.reserve free.",
            ),
            audit_writable: gauge(
                &registry,
                "tl_gateway_audit_writable",
                "0 while the audit log refuses writes (audited requests get 503 audit_unavailable).",
            ),
            config_reloads: counter_vec(
                &registry,
                "tl_gateway_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            build_info,
            connections_closed: counter_vec(
                &registry,
                "tl_gateway_connections_closed_total",
                "Connections the gateway closed or refused itself, by listener and reason.",
                &["listener", "reason"],
            ),
            open_connections,
            accept_errors: counter_vec(
                &registry,
                "tl_gateway_accept_errors_total",
                "Failed accepts by listener (e.g. out of file descriptors).",
                &["listener"],
            ),
            registry,
            sources: Mutex::new(Sources::default()),
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
        }
        for kind in ["connect", "exchange", "timeout", "client_body"] {
            self.upstream_errors.with_label_values(&[kind]);
        }
        for result in ["ok", "failed"] {
            self.guard_lookups.with_label_values(&[result]);
        }
        for reason in [
            "request_ambiguous",
            "route_unknown",
            "method_not_allowed",
            "unauthorized",
        ] {
            self.rejections.with_label_values(&[reason]);
        }
    }

    /// Read audit counters from this sink at each scrape.
    pub fn watch_audit(&self, stats: Arc<AuditStats>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.audit = Some(stats);
        }
    }

    /// Read reload counters at each scrape.
    pub fn watch_reloads(&self, stats: Arc<ReloadStats>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.reload = Some(stats);
        }
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.sync();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn sync(&self) {
        let Ok(mut sources) = self.sources.lock() else {
            return;
        };
        let Sources {
            audit,
            reload,
            seen,
        } = &mut *sources;
        if let Some(audit) = audit {
            self.audit_records
                .inc_by(advance(&mut seen.audit_records, &audit.records));
            self.audit_write_errors
                .inc_by(advance(&mut seen.audit_write_errors, &audit.write_errors));
            self.audit_coalesced
                .inc_by(advance(&mut seen.audit_coalesced, &audit.coalesced));
            self.audit_suppressed.inc_by(advance(
                &mut seen.audit_suppressed,
                &audit.suppressed_below_reserve,
            ));
            self.audit_dropped
                .inc_by(advance(&mut seen.audit_dropped, &audit.dropped));
            self.unresolved_intents
                .set(audit.unresolved_intents.load(Ordering::Relaxed) as i64);
            self.audit_free_bytes.set(
                audit
                    .free_bytes
                    .load(Ordering::Relaxed)
                    .min(i64::MAX as u64) as i64,
            );
            self.audit_below_reserve
                .set(i64::from(audit.below_reserve.load(Ordering::Relaxed)));
            self.audit_writable
                .set(i64::from(!audit.unwritable.load(Ordering::Relaxed)));
            if let Ok(mut samples) = audit.fsync_micros.lock() {
                for micros in samples.drain(..) {
                    self.audit_fsync.observe(micros as f64 / 1e6);
                }
            }
        }
        if let Some(reload) = reload {
            let success = advance(&mut seen.reload_success, &reload.success);
            let failure = advance(&mut seen.reload_failure, &reload.failure);
            self.config_reloads
                .with_label_values(&["success"])
                .inc_by(success);
            self.config_reloads
                .with_label_values(&["failure"])
                .inc_by(failure);
        }
    }
}

/// The method as a bounded label.
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
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let label = RouteLabel::default();
        req.extensions_mut().insert(label.clone());
        let method = method_label(req.method());
        let metrics = self.metrics.clone();
        Box::pin(self.inner.call(req).map(move |result| {
            if let Ok(response) = &result {
                let operation = label.0.get().copied().unwrap_or("unknown");
                let class = match response.status().as_u16() {
                    100..=199 => "1xx",
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                metrics
                    .requests
                    .with_label_values(&[operation, method, class])
                    .inc();
                metrics
                    .request_duration
                    .with_label_values(&[operation])
                    .observe(started.elapsed().as_secs_f64());
                if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
                    metrics.rejections.with_label_values(&[code]).inc();
                }
            }
            result
        }))
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
