//! The gateway's own API under `/tl-gateway/v1/` (a prefix the TwelveLabs API never uses): JSON in
//! and out, errors in the TwelveLabs shape.
//!
//! Its routes are in the route table ([`crate::routes::gateway`], ids `gateway.*`), so a call is
//! classified, authenticated, capped per client, judged by policy, rate limited, measured and (when
//! it changes something) audited exactly like a TwelveLabs call (docs/architecture.md, "The
//! request path"); at the bottom of the stack [`Dispatch`] hands it to [`GatewayApi`] instead of
//! the upstream.
//!
//! | route id | method and path | answer |
//! |---|---|---|
//! | `gateway.me` | `GET /tl-gateway/v1/me` | `{client, roles, can_read_audit, can_manage_keys, keys, auth, csrf_token}` (`csrf_token` only for a signed-in session) |
//! | `gateway.approvals.list` | `GET /tl-gateway/v1/approvals?state=&limit=&cursor=` | `{"approvals": [...], "next_cursor"}`, newest first: approvers see all, others their own; one page, never the whole store |
//! | `gateway.approvals.retrieve` | `GET /tl-gateway/v1/approvals/{id}` | the approval |
//! | `gateway.approvals.approve` · `.deny` | `POST /tl-gateway/v1/approvals/{id}/approve` · `/deny` | optional `{"comment": "..."}`; the approval after the decision |
//! | `gateway.approvals.cancel` | `POST /tl-gateway/v1/approvals/{id}/cancel` | the requester withdraws it |
//! | `gateway.deferred.list` | `GET /tl-gateway/v1/deferred?state=&limit=` | `{"deferred": [...]}`, newest first: the calls the caller may cancel (or, for `ui.audit_roles`, all) |
//! | `gateway.deferred.retrieve` | `GET /tl-gateway/v1/deferred/{id}` | the deferred call |
//! | `gateway.deferred.cancel` | `POST /tl-gateway/v1/deferred/{id}/cancel` | the requester or a `cancel_roles` holder cancels it (403 `policy_denied`, 409 `deferred_not_scheduled`) |
//! | `gateway.audit.recent` | `GET /tl-gateway/v1/audit/recent?limit=N` | `{"records": [...]}`: the newest N (≤ 500) audit records of this replica, newest first, for roles in `ui.audit_roles` (others: 403 `policy_denied`) |
//!
//! Errors: 403 `approval_forbidden`, 404 `approval_not_found`, 409 `approval_not_pending`, 400
//! `parameter_invalid`, 503 `approvals_unavailable`; and every error of the stack above it.

pub mod clients;
pub mod deferred;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::Service;

use crate::approvals::{view, Approvals, Cursor, State};
use crate::auth::{judged, Principal};
use crate::body::{self, GatewayBody};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::ids::{Role, RuleId};
use crate::overload::ClientBodyError;
use crate::routes::gateway::ids;

/// The largest request body the API reads (a comment).
const MAX_BODY: usize = 16 * 1024;

/// The longest comment kept.
const MAX_COMMENT: usize = 2000;

/// Most approvals one list returns.
const MAX_LIST: usize = 500;

/// Most audit records `audit/recent` returns.
const MAX_AUDIT_RECORDS: usize = 500;

/// What the API needs: the approvals, and who may read the audit log.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// The approvals.
    pub approvals: Approvals,
    /// The deferred calls.
    pub deferred: crate::deferred::DeferredCalls,
    /// Roles that may read recent audit records (`ui.audit_roles`).
    pub audit_roles: Arc<[Role]>,
    /// Roles that approve for some policy rule: their holders list every approval (those they
    /// may see are shown), everybody else only their own.
    pub approver_roles: Arc<[Role]>,
    /// The live audit file, when the audit log is on.
    pub audit_log: Option<PathBuf>,
    /// Clients and keys (YAML and store).
    pub keyring: Arc<crate::keys::Keyring>,
    /// The `keys:` section.
    pub keys: crate::keys::KeySettings,
}

/// The service answering gateway API calls (route ids `gateway.*`) at the bottom of the stack.
#[derive(Clone, Debug)]
pub struct GatewayApi {
    settings: Arc<ApiSettings>,
}

impl GatewayApi {
    /// The API with these settings.
    pub fn new(settings: ApiSettings) -> Self {
        GatewayApi {
            settings: Arc::new(settings),
        }
    }
}

/// The response future of [`GatewayApi`].
pub type ApiFuture =
    Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, GatewayError>> + Send>>;

impl Service<Request<GatewayBody>> for GatewayApi {
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> ApiFuture {
        Box::pin(handle(self.settings.clone(), req))
    }
}

/// The innermost service: gateway API calls go to the [`GatewayApi`], everything else to the
/// upstream (credentials and forwarder). Judged and audited alike above it.
#[derive(Clone, Debug)]
pub struct Dispatch<U> {
    api: GatewayApi,
    upstream: U,
}

impl<U> Dispatch<U> {
    /// Dispatch between `api` and `upstream`.
    pub fn new(api: GatewayApi, upstream: U) -> Self {
        Dispatch { api, upstream }
    }
}

impl<U> Service<Request<GatewayBody>> for Dispatch<U>
where
    U: Service<Request<GatewayBody>, Response = Response<GatewayBody>, Error = GatewayError>,
{
    type Response = Response<GatewayBody>;
    type Error = GatewayError;
    type Future = futures_util::future::Either<U::Future, ApiFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.upstream.poll_ready(cx)
    }

    fn call(&mut self, req: Request<GatewayBody>) -> Self::Future {
        use futures_util::future::Either;
        if req
            .extensions()
            .get::<Operation>()
            .is_some_and(Operation::is_gateway)
        {
            Either::Right(self.api.call(req))
        } else {
            Either::Left(self.upstream.call(req))
        }
    }
}

/// The request body of approve, deny and cancel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    comment: Option<String>,
}

const UNJUDGED: &str = "the gateway API was reached by a request not classified or authenticated";

async fn handle(
    settings: Arc<ApiSettings>,
    req: Request<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (op, caller) = judged(&req, UNJUDGED)?;
    let (op, caller) = (op.clone(), caller.clone());
    let route = op.route.map(|r| r.id).ok_or(GatewayError::RouteUnknown)?;
    let approvals = &settings.approvals;
    let approval_id = || op.param("approval_id").unwrap_or_default().to_owned();
    let csrf = req
        .extensions()
        .get::<crate::ui::oidc::session::SessionCsrf>()
        .map(|c| c.0.clone());
    match route {
        ids::ME => {
            let keys = match clients::view_of(&settings, caller.client.as_str()).await {
                Ok(view) => view["keys"].clone(),
                Err(GatewayError::StoreUnavailable(_)) => serde_json::Value::Null,
                Err(_) => serde_json::json!([]),
            };
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "client": caller.client.as_str(),
                    "roles": caller.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    "can_read_audit": can_read_audit(&settings, &caller),
                    "can_manage_keys": caller.roles.iter().any(|r| settings.keys.admin_roles.contains(r)),
                    "keys": keys,
                    // How this call authenticated, and for a signed-in person the token every
                    // state-changing call of the page sends in x-tl-gateway-csrf.
                    "auth": caller.credential.as_ref().map(|c| c.method()),
                    "csrf_token": csrf.as_deref(),
                }),
            ))
        }
        ids::CLIENTS_LIST => clients::list(&settings, &caller).await,
        ids::CLIENTS_CREATE => {
            let body = read_json::<clients::CreateBody>(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &clients::create(&settings, &caller, body).await?,
            ))
        }
        ids::CLIENTS_RETRIEVE => {
            let id = op.param("client_id").unwrap_or_default();
            if id != caller.client.as_str() {
                clients::require_admin(&settings, &caller)?;
            }
            Ok(json(
                StatusCode::OK,
                &clients::view_of(&settings, id).await?,
            ))
        }
        ids::CLIENTS_UPDATE => {
            let id = op.param("client_id").unwrap_or_default().to_owned();
            let body = read_json::<clients::UpdateBody>(req).await?;
            Ok(json(
                StatusCode::OK,
                &clients::update(&settings, &caller, &id, body).await?,
            ))
        }
        ids::KEYS_ISSUE => {
            let id = op.param("client_id").unwrap_or_default().to_owned();
            let body = read_json::<clients::KeyBody>(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &clients::issue(&settings, &caller, &id, body).await?,
            ))
        }
        ids::KEYS_REVOKE => {
            let id = op.param("client_id").unwrap_or_default();
            let label = op.param("label").unwrap_or_default();
            Ok(json(
                StatusCode::OK,
                &clients::revoke(&settings, &caller, id, label).await?,
            ))
        }
        ids::KEYS_ROTATE => {
            let body = read_json::<clients::KeyBody>(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &clients::rotate(&settings, &caller, body).await?,
            ))
        }
        ids::APPROVALS_LIST => {
            let state = match op.query.text("state") {
                None | Some("") | Some("all") => None,
                Some(name) => Some(State::parse(name).ok_or_else(|| {
                    GatewayError::ParameterInvalid(format!(
                        "state {name:?} is not one of pending, approved, denied, expired, used, cancelled"
                    ))
                })?),
            };
            let limit = limit(&op, 100, MAX_LIST)?;
            let cursor = match op.query.text("cursor") {
                None => None,
                Some(text) => Some(Cursor::parse(text).ok_or_else(|| {
                    GatewayError::ParameterInvalid(
                        "cursor is not one this API gave out (next_cursor of a listing)".into(),
                    )
                })?),
            };
            let everyone = caller
                .roles
                .iter()
                .any(|r| settings.approver_roles.contains(r));
            let (list, next) = approvals
                .list(&caller, state, limit, cursor.as_ref(), everyone)
                .await?;
            let items: Vec<serde_json::Value> = list.iter().map(|a| view(a, &caller)).collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "approvals": items,
                    "next_cursor": next.map(|c| c.to_string()),
                }),
            ))
        }
        ids::APPROVALS_RETRIEVE => {
            let id = approval_id();
            let approval = approvals
                .load(&id)
                .await?
                .map(|(_, a)| a)
                .filter(|a| a.visible_to(&caller))
                .ok_or(GatewayError::ApprovalNotFound(id))?;
            Ok(json(StatusCode::OK, &view(&approval, &caller)))
        }
        ids::APPROVALS_APPROVE | ids::APPROVALS_DENY | ids::APPROVALS_CANCEL => {
            let id = approval_id();
            let body = read_decision(req).await?;
            let approval = if route == ids::APPROVALS_CANCEL {
                approvals.cancel(&id, &caller).await?
            } else {
                approvals
                    .decide(&id, &caller, route == ids::APPROVALS_APPROVE, body.comment)
                    .await?
            };
            Ok(json(StatusCode::OK, &view(&approval, &caller)))
        }
        ids::DEFERRED_LIST | ids::DEFERRED_RETRIEVE | ids::DEFERRED_CANCEL => {
            deferred::handle(&settings, &op, &caller, route).await
        }
        ids::AUDIT_RECENT => {
            if !can_read_audit(&settings, &caller) {
                return Err(GatewayError::PolicyDenied {
                    rule: RuleId::builtin("ui.audit_roles"),
                    message: Some(
                        format!(
                            "reading the audit log needs one of the roles [{}]",
                            clients::role_list(&settings.audit_roles)
                        )
                        .into(),
                    ),
                });
            }
            let limit = limit(&op, 50, MAX_AUDIT_RECORDS)?;
            // `?phase=intent,outcome`: only those phases (destructive calls stay findable however
            // much else was recorded since); by default every phase but approval bookkeeping.
            let phases: Option<Vec<String>> = match op.query.text("phase") {
                None => None,
                Some(list) => {
                    let phases: Vec<String> = list.split(',').map(str::to_owned).collect();
                    const KNOWN: [&str; 8] = [
                        "intent",
                        "outcome",
                        "denied",
                        "denied_summary",
                        "reconciled",
                        "approval",
                        "admin",
                        "deferred",
                    ];
                    if let Some(bad) = phases.iter().find(|p| !KNOWN.contains(&p.as_str())) {
                        return Err(GatewayError::ParameterInvalid(format!(
                            "phase {bad:?} is not one of {}",
                            KNOWN.join(", ")
                        )));
                    }
                    Some(phases)
                }
            };
            let records = match settings.audit_log.clone() {
                None => Vec::new(),
                Some(live) => tokio::task::spawn_blocking(move || {
                    crate::audit::recent(&live, limit, |record| {
                        let phase = record.get("phase").and_then(|p| p.as_str());
                        match &phases {
                            Some(wanted) => phase.is_some_and(|p| wanted.iter().any(|w| w == p)),
                            // Calls, not approval bookkeeping (the approvals tabs show that).
                            None => phase != Some("approval"),
                        }
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
        _ => Err(GatewayError::RouteUnknown),
    }
}

fn can_read_audit(settings: &ApiSettings, caller: &Principal) -> bool {
    caller
        .roles
        .iter()
        .any(|r| settings.audit_roles.contains(r))
}

/// `limit`: `default` when absent, else a number from 1 to `max`.
fn limit(op: &Operation, default: usize, max: usize) -> Result<usize, GatewayError> {
    match op.query.text("limit") {
        None => Ok(default),
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                GatewayError::ParameterInvalid(format!("limit must be a number from 1 to {max}"))
            }),
    }
}

/// An optional small JSON body `{"comment": "..."}`.
async fn read_decision(req: Request<GatewayBody>) -> Result<DecisionBody, GatewayError> {
    let mut body: DecisionBody = read_json(req).await?;
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

/// A small JSON body (empty: the type's default). A body that stalls or arrives too slowly is the
/// client's 408, as on every other route.
async fn read_json<T: serde::de::DeserializeOwned + Default>(
    req: Request<GatewayBody>,
) -> Result<T, GatewayError> {
    let too_big = || {
        GatewayError::ParameterInvalid(format!("the body must be JSON of at most {MAX_BODY} bytes"))
    };
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match ClientBodyError::find(&*e) {
            Some(failure) => failure.to_gateway_error(),
            None => {
                GatewayError::RequestBodyInvalid(format!("the request body could not be read: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY {
                return Err(too_big());
            }
            bytes.extend_from_slice(&data);
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::ParameterInvalid(format!("the body could not be read: {e}")))
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
