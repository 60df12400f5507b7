//! The admin listener's service: `/healthz` (process alive), `/readyz` (ready to serve traffic:
//! upstream key loaded, audit sink writable, not draining) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::audit::AuditLog;
use crate::body::{self, GatewayBody};
use crate::credentials::UpstreamKey;
use crate::metrics::Metrics;

/// What `/readyz` checks.
#[derive(Debug)]
pub struct Readiness {
    upstream_key: Arc<UpstreamKey>,
    audit: Option<AuditLog>,
    draining: AtomicBool,
}

impl Readiness {
    /// Readiness of a gateway using this upstream key.
    pub fn new(upstream_key: Arc<UpstreamKey>, audit: Option<AuditLog>) -> Arc<Self> {
        Arc::new(Readiness {
            upstream_key,
            audit,
            draining: AtomicBool::new(false),
        })
    }

    /// Mark the gateway as shutting down: `/readyz` turns 503 so load balancers stop sending.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Each check by name: `Ok` or why not.
    pub fn checks(&self) -> Vec<(&'static str, Result<(), String>)> {
        let shutdown = if self.draining.load(Ordering::SeqCst) {
            Err("shutting down".to_owned())
        } else {
            Ok(())
        };
        vec![
            ("config", Ok(())),
            ("upstream_key", self.upstream_key.readiness()),
            (
                "audit",
                self.audit.as_ref().map_or(Ok(()), AuditLog::readiness),
            ),
            ("shutdown", shutdown),
        ]
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
            let ready = checks.iter().all(|(_, result)| result.is_ok());
            let details: serde_json::Map<String, serde_json::Value> = checks
                .into_iter()
                .map(|(name, result)| {
                    let text = match result {
                        Ok(()) => "ok".to_owned(),
                        Err(why) => why,
                    };
                    (name.to_owned(), serde_json::Value::from(text))
                })
                .collect();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                serde_json::json!({ "ready": ready, "checks": details }),
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
