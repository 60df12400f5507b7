//! The gateway's own API on the client listener, under `/tl-gateway/` (a prefix the TwelveLabs API
//! never uses): JSON in and out, authenticated with the caller's personal key like any request.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /tl-gateway/v1/me` | `{client, roles, can_read_audit}` |
//! | `GET /tl-gateway/v1/approvals?state=pending&limit=N` | `{"approvals": [...]}`, newest first: approvers see all, others their own |
//! | `GET /tl-gateway/v1/approvals/{id}` | the approval |
//! | `POST /tl-gateway/v1/approvals/{id}/approve` · `/deny` | optional `{"comment": "..."}`; the approval after the decision |
//! | `POST /tl-gateway/v1/approvals/{id}/cancel` | the requester withdraws it |
//! | `GET /tl-gateway/v1/audit/recent?limit=N` | `{"records": [...]}`: the newest N (≤ 500) audit records of destructive calls on this replica, newest first, for roles in `ui.audit_roles` (others: 403 `policy_denied`) |
//! | `GET /tl-gateway/ui/` | the approvals page ([`crate::ui`]), no key needed |
//!
//! Errors are TwelveLabs-shaped: 401 `unauthorized`, 403 `approval_forbidden`, 404
//! `approval_not_found`, 409 `approval_not_pending`, 400 `parameter_invalid`, 503
//! `approvals_unavailable`. The layer sits outside classification, so these paths never reach the
//! route table, the policy or the upstream.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::{Layer, Service};

use super::{view, Approvals, State};
use crate::auth::{ClientKeys, Principal};
use crate::body::{self, GatewayBody};
use crate::error::GatewayError;
use crate::ext::{PeerCertificate, RequestScope};
use crate::ids::{Role, RuleId};

/// Every path of the gateway's own API starts with this.
pub const PREFIX: &str = "/tl-gateway/";

/// The largest request body the API reads (a comment).
const MAX_BODY: usize = 16 * 1024;

/// The longest comment kept.
const MAX_COMMENT: usize = 2000;

/// Most approvals one list returns.
const MAX_LIST: usize = 500;

/// Most audit records `audit/recent` returns.
const MAX_AUDIT_RECORDS: usize = 500;

/// What the API needs: the clients' keys, the approvals, and who may read the audit log.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Configured clients.
    pub clients: Arc<ClientKeys>,
    /// The approvals.
    pub approvals: Approvals,
    /// Roles that may read recent audit records (`ui.audit_roles`).
    pub audit_roles: Arc<[Role]>,
    /// The live audit file, when the audit log is on.
    pub audit_log: Option<PathBuf>,
}

/// Layer answering `/tl-gateway/…` itself and passing everything else on.
#[derive(Clone, Debug)]
pub struct GatewayApiLayer {
    settings: Arc<ApiSettings>,
}

impl GatewayApiLayer {
    /// The layer.
    pub fn new(settings: ApiSettings) -> Self {
        GatewayApiLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for GatewayApiLayer {
    type Service = GatewayApi<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GatewayApi {
            settings: self.settings.clone(),
            inner,
        }
    }
}

/// Service produced by [`GatewayApiLayer`].
#[derive(Clone, Debug)]
pub struct GatewayApi<S> {
    settings: Arc<ApiSettings>,
    inner: S,
}

type ApiFuture = Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, GatewayError>> + Send>>;

impl<S> Service<Request<GatewayBody>> for GatewayApi<S>
where
    S: Service<Request<GatewayBody>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = futures_util::future::Either<S::Future, ApiFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        if !req.uri().path().starts_with(PREFIX) {
            return futures_util::future::Either::Left(self.inner.call(req));
        }
        if let Some(scope) = req.extensions().get::<RequestScope>() {
            scope.set_route("tl_gateway.api");
        }
        let settings = self.settings.clone();
        futures_util::future::Either::Right(Box::pin(handle(settings, req)))
    }
}

/// The request body of approve, deny and cancel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    comment: Option<String>,
}

async fn handle(
    settings: Arc<ApiSettings>,
    req: Request<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let path = req.uri().path().to_owned();
    if crate::ui::is_page(&path) {
        if let Some(scope) = req.extensions().get::<RequestScope>() {
            scope.set_route("tl_gateway.ui");
        }
        return crate::ui::serve(req.method(), &path);
    }
    let rest = path
        .strip_prefix("/tl-gateway/v1/")
        .ok_or(GatewayError::RouteUnknown)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    let caller = authenticate(&settings.clients, &req)?;
    let approvals = &settings.approvals;
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["me"]) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "client": caller.client.as_str(),
                "roles": caller.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "can_read_audit": caller.roles.iter().any(|r| settings.audit_roles.contains(r)),
            }),
        )),
        (Method::GET, ["approvals"]) => {
            let query = Query::parse(req.uri().query())?;
            let state = match query.get("state") {
                None | Some("") | Some("all") => None,
                Some(name) => Some(State::parse(name).ok_or_else(|| {
                    GatewayError::ParameterInvalid(format!(
                        "state {name:?} is not one of pending, approved, denied, expired, used, cancelled"
                    ))
                })?),
            };
            let limit = query.limit(100, MAX_LIST)?;
            let list = approvals.list(&caller, state, limit).await?;
            let items: Vec<serde_json::Value> = list.iter().map(|a| view(a, &caller)).collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "approvals": items }),
            ))
        }
        (Method::GET, ["approvals", id]) => {
            let approval = approvals
                .load(id)
                .await?
                .map(|(_, a)| a)
                .filter(|a| a.visible_to(&caller))
                .ok_or_else(|| GatewayError::ApprovalNotFound((*id).to_owned()))?;
            Ok(json(StatusCode::OK, &view(&approval, &caller)))
        }
        (Method::POST, ["approvals", id, action @ ("approve" | "deny" | "cancel")]) => {
            let id = (*id).to_owned();
            let action = *action;
            let body = read_decision(req).await?;
            let result = match action {
                "cancel" => approvals.cancel(&id, &caller).await,
                _ => {
                    approvals
                        .decide(&id, &caller, action == "approve", body.comment)
                        .await
                }
            };
            let approval = result?;
            Ok(json(StatusCode::OK, &view(&approval, &caller)))
        }
        (Method::GET, ["audit", "recent"]) => {
            if !caller
                .roles
                .iter()
                .any(|r| settings.audit_roles.contains(r))
            {
                return Err(GatewayError::PolicyDenied {
                    rule: RuleId::builtin("ui.audit_roles"),
                    message: Some(
                        format!(
                            "reading the audit log needs one of the roles [{}]",
                            settings
                                .audit_roles
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                        .into(),
                    ),
                });
            }
            let query = Query::parse(req.uri().query())?;
            let limit = query.limit(50, MAX_AUDIT_RECORDS)?;
            let records = match settings.audit_log.clone() {
                None => Vec::new(),
                Some(live) => tokio::task::spawn_blocking(move || {
                    crate::audit::recent(&live, limit, |record| {
                        // Calls, not approval bookkeeping (the approvals tabs show that).
                        record.get("phase").and_then(|p| p.as_str()) != Some("approval")
                    })
                })
                .await
                .map_err(|e| GatewayError::AuditUnavailable(format!("reading the audit log: {e}")))?
                .map_err(|e| {
                    GatewayError::AuditUnavailable(format!("the audit log could not be read: {e}"))
                })?,
            };
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "records": records }),
            ))
        }
        (_, ["me"] | ["approvals"] | ["approvals", _] | ["audit", "recent"]) => {
            Err(GatewayError::MethodNotAllowed {
                method,
                allowed: vec![Method::GET],
            })
        }
        (_, ["approvals", _, "approve" | "deny" | "cancel"]) => {
            Err(GatewayError::MethodNotAllowed {
                method,
                allowed: vec![Method::POST],
            })
        }
        _ => Err(GatewayError::RouteUnknown),
    }
}

/// The caller, by the same rules as every request (one key, `x-api-key` or Bearer, constant-time;
/// or a verified client certificate).
fn authenticate(keys: &ClientKeys, req: &Request<GatewayBody>) -> Result<Principal, GatewayError> {
    keys.identify(req.headers(), req.extensions().get::<PeerCertificate>())
}

/// An optional small JSON body `{"comment": "..."}`.
async fn read_decision(req: Request<GatewayBody>) -> Result<DecisionBody, GatewayError> {
    let too_big = || {
        GatewayError::ParameterInvalid(format!(
            "the body must be JSON of at most {MAX_BODY} bytes: {{\"comment\": \"...\"}}"
        ))
    };
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            GatewayError::RequestBodyInvalid(format!("the request body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY {
                return Err(too_big());
            }
            bytes.extend_from_slice(&data);
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    let mut body: DecisionBody = serde_json::from_slice(&bytes).map_err(|e| {
        GatewayError::ParameterInvalid(format!(
            "the body must be {{\"comment\": \"...\"}} (or empty): {e}"
        ))
    })?;
    if let Some(comment) = &mut body.comment {
        if comment.chars().count() > MAX_COMMENT {
            return Err(GatewayError::ParameterInvalid(format!(
                "the comment is longer than {MAX_COMMENT} characters"
            )));
        }
        if comment.trim().is_empty() {
            body.comment = None;
        }
    }
    Ok(body)
}

/// The query of an API request: each key at most once.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, GatewayError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(GatewayError::ParameterInvalid(format!(
                    "query parameter {key:?} is repeated"
                )));
            }
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(GatewayError::ParameterInvalid(format!(
                    "query parameter {key:?} has an unexpected value"
                )));
            }
            pairs.push((key.to_owned(), value.to_owned()));
        }
        Ok(Query(pairs))
    }

    /// `limit`: `default` when absent, else a number from 1 to `max`.
    fn limit(&self, default: usize, max: usize) -> Result<usize, GatewayError> {
        match self.get("limit") {
            None => Ok(default),
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    GatewayError::ParameterInvalid(format!(
                        "limit must be a number from 1 to {max}"
                    ))
                }),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A JSON answer that no cache keeps.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
