//! The admin listener's service: `/healthz` (process alive), `/readyz` (ready to serve traffic:
//! upstream key loaded, not draining) and `/metrics` (Prometheus text).
//!
//! A check either fails readiness (503: take this replica out of the load balancer) or only
//! degrades it (200 with `"degraded": true`). An audit sink that refuses writes degrades: audited
//! requests get 503 `audit_unavailable` and are never forwarded, but everything else still works,
//! and taking every replica whose disk filled out of the load balancer would turn a full audit
//! volume into an outage for all traffic. The `TLGatewayAuditUnwritable` alert fires instead.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::audit::AuditLog;
use crate::body::{self, GatewayBody};
use crate::credentials::UpstreamKey;
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::tls::ServerTls;

/// What `/readyz` checks.
#[derive(Debug)]
pub struct Readiness {
    upstream_key: Arc<UpstreamKey>,
    audit: Option<AuditLog>,
    store: StateStore,
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
        limits_fail_closed: Arc<AtomicBool>,
        tls: Option<Arc<ServerTls>>,
    ) -> Arc<Self> {
        Arc::new(Readiness {
            upstream_key,
            audit,
            store,
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
        // A store that does not answer fails readiness only if some limit then refuses requests;
        // with every limit `on_unavailable: allow` the gateway still serves everything.
        let state = match self.store.readiness() {
            Ok(()) => Check::Ok,
            Err(why) if self.limits_fail_closed.load(Ordering::Relaxed) => {
                Check::Failed(format!("unavailable: {why}"))
            }
            Err(why) => Check::Degraded(format!("unavailable: {why}")),
        };
        // A replaced certificate that does not load: the last good one serves, but someone must
        // look (and a rolling update should not proceed).
        let tls = match self.tls.as_ref().map(|t| t.readiness()) {
            Some(Err(why)) => Check::Failed(why),
            _ => Check::Ok,
        };
        vec![
            ("config", Check::Ok),
            ("tls", tls),
            ("upstream_key", upstream_key),
            ("audit", audit),
            ("state", state),
            ("shutdown", shutdown),
        ]
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
            let checks = readiness.checks();
            let ready = !checks.iter().any(|(_, c)| matches!(c, Check::Failed(_)));
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
