//! The admin listener's service: `/healthz` (process alive), `/readyz` (ready to serve traffic:
//! upstream key loaded, not draining) and `/metrics` (Prometheus text).
//!
//! A check either fails readiness (503: take this replica out of the load balancer) or only
//! degrades it (200 with `"degraded": true` and the reason). The rule (docs/architecture.md,
//! "Readiness"): 503 only for what stops *this* replica serving at all — no upstream key,
//! draining. A cause every replica shares — the state store (Redis) down, the audit volume full,
//! a replaced certificate that does not load — degrades: each replica still serves (fail-closed
//! limits answer 503 `limits_unavailable` by themselves, audited calls 503 `audit_unavailable`,
//! TLS keeps the last good certificate), and failing readiness on every replica at once would
//! leave the Service with no endpoints, turning a partial failure into an outage.
//! `tl_gateway_readiness_degraded{check}` and the `TlGatewayDegraded` alert say which check.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::audit::AuditLog;
use crate::body::{self, GatewayBody};
use crate::credentials::UpstreamKey;
use crate::keys::Keyring;
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::store::RecordStore;
use crate::tls::ServerTls;

/// What `/readyz` checks.
#[derive(Debug)]
pub struct Readiness {
    upstream_key: Arc<UpstreamKey>,
    audit: Option<AuditLog>,
    store: StateStore,
    records: RecordStore,
    keyring: Arc<Keyring>,
    limits_fail_closed: Arc<AtomicBool>,
    tls: Option<Arc<ServerTls>>,
    draining: AtomicBool,
}

impl Readiness {
    /// Readiness of a gateway using this upstream key.
    pub fn new(
        upstream_key: Arc<UpstreamKey>,
        audit: Option<AuditLog>,
        store: StateStore,
        records: RecordStore,
        keyring: Arc<Keyring>,
        limits_fail_closed: Arc<AtomicBool>,
        tls: Option<Arc<ServerTls>>,
    ) -> Arc<Self> {
        Arc::new(Readiness {
            upstream_key,
            audit,
            store,
            records,
            keyring,
            limits_fail_closed,
            tls,
            draining: AtomicBool::new(false),
        })
    }

    /// Mark the gateway as shutting down: `/readyz` turns 503 so load balancers stop sending.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Each check by name and its state.
    pub fn checks(&self) -> Vec<(&'static str, Check)> {
        let shutdown = if self.draining.load(Ordering::SeqCst) {
            Check::Failed("shutting down".to_owned())
        } else {
            Check::Ok
        };
        let audit = match self.audit.as_ref().map(AuditLog::readiness) {
            Some(Err(why)) => Check::Degraded(format!("degraded: {why}")),
            _ => Check::Ok,
        };
        let upstream_key = match self.upstream_key.readiness() {
            Ok(()) => Check::Ok,
            Err(why) => Check::Failed(why),
        };
        // A store that does not answer is shared by every replica: degraded, never failed (limits
        // that fail closed refuse by themselves; the others let requests through).
        let state = match self.store.readiness() {
            Ok(()) => Check::Ok,
            Err(why) if self.limits_fail_closed.load(Ordering::Relaxed) => {
                Check::Degraded(format!(
                    "unavailable: {why}; limits that fail closed answer 503 limits_unavailable"
                ))
            }
            Err(why) => Check::Degraded(format!("unavailable: {why}")),
        };
        // A replaced certificate that does not load: the last good one still serves (and is
        // retried); someone must look, but this replica serves as well as any other.
        let tls = match self.tls.as_ref().map(|t| t.readiness()) {
            Some(Err(why)) => Check::Degraded(format!("serving the last good certificate: {why}")),
            _ => Check::Ok,
        };
        // The record store is shared by the replicas too: approvals cannot be asked for or used
        // while it is down (503 approvals_unavailable), everything else is served.
        let records = match self.records.readiness() {
            Ok(()) => Check::Ok,
            Err(why) => Check::Degraded(format!("unavailable: {why}")),
        };
        // Never having read the clients and keys stops this replica (its store keys would all be
        // refused); a snapshot that is only old is a shared cause (the store), already degraded.
        let keys = match self.keyring.loaded() {
            Some(_) => Check::Ok,
            None => Check::Failed("no key snapshot loaded from the store yet".into()),
        };
        vec![
            ("config", Check::Ok),
            ("store", records),
            ("keys", keys),
            ("tls", tls),
            ("upstream_key", upstream_key),
            ("audit", audit),
            ("state", state),
            ("shutdown", shutdown),
        ]
    }

    /// The checks, exported as `tl_gateway_readiness_degraded{check}` and `tl_gateway_ready`;
    /// whether the replica is ready.
    pub fn observe(&self, metrics: &Metrics) -> (bool, Vec<(&'static str, Check)>) {
        let checks = self.checks();
        if let Some(age) = self.keyring.loaded() {
            metrics.keys_snapshot_age.set(age.as_secs() as i64);
        }
        let ready = !checks.iter().any(|(_, c)| matches!(c, Check::Failed(_)));
        for (name, check) in &checks {
            metrics
                .readiness_degraded
                .with_label_values(&[name])
                .set(i64::from(matches!(check, Check::Degraded(_))));
        }
        metrics.ready.set(i64::from(ready));
        (ready, checks)
    }
}

/// The state of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Fine.
    Ok,
    /// Part of the gateway cannot work; the rest can (readiness stays 200, `"degraded": true`).
    Degraded(String),
    /// The replica should not get traffic (readiness 503).
    Failed(String),
}

impl Check {
    fn text(&self) -> String {
        match self {
            Check::Ok => "ok".to_owned(),
            Check::Degraded(why) | Check::Failed(why) => why.clone(),
        }
    }
}

/// Answer one admin request.
pub async fn handle<B>(
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    req: Request<B>,
) -> Result<Response<GatewayBody>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            let (ready, checks) = readiness.observe(&metrics);
            let degraded = checks.iter().any(|(_, c)| matches!(c, Check::Degraded(_)));
            let details: serde_json::Map<String, serde_json::Value> = checks
                .iter()
                .map(|(name, check)| ((*name).to_owned(), serde_json::Value::from(check.text())))
                .collect();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                serde_json::json!({ "ready": ready, "degraded": degraded, "checks": details }),
            )
        }
        (&Method::GET, "/metrics") => {
            readiness.observe(&metrics);
            let mut response = Response::new(body::full(metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "code": "route_unknown", "message": "admin endpoints: /healthz, /readyz, /metrics" }),
        ),
    };
    Ok(response)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
