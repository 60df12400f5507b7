//! The deferred calls' part of the gateway API (`/tl-gateway/v1/deferred…`): list, retrieve and
//! cancel. Visible to the requester, to holders of the call's `cancel_roles` and to readers of the
//! audit log (`ui.audit_roles`); cancelled by the requester or a `cancel_roles` holder only.

use http::{Response, StatusCode};

use super::{json, limit, ApiSettings};
use crate::auth::Principal;
use crate::body::GatewayBody;
use crate::classify::Operation;
use crate::deferred::{view, State};
use crate::error::GatewayError;
use crate::routes::gateway::ids;
use crate::routes::RouteId;

/// Most deferred calls one list returns.
const MAX_LIST: usize = 500;

/// Answer `gateway.deferred.list`, `.retrieve` or `.cancel`.
pub async fn handle(
    settings: &ApiSettings,
    op: &Operation,
    caller: &Principal,
    route: RouteId,
) -> Result<Response<GatewayBody>, GatewayError> {
    let calls = &settings.deferred;
    let id = op.param("deferred_id").unwrap_or_default().to_owned();
    match route {
        ids::DEFERRED_LIST => {
            let state = match op.query.text("state") {
                None | Some("") | Some("all") => None,
                Some(name) => Some(State::parse(name).ok_or_else(|| {
                    GatewayError::ParameterInvalid(format!(
                        "state {name:?} is not one of scheduled, cancelled, executing, executed, refused, unresolved"
                    ))
                })?),
            };
            let limit = limit(op, 100, MAX_LIST)?;
            let list = calls
                .list(caller, &settings.audit_roles, state, limit)
                .await?;
            let items: Vec<serde_json::Value> = list.iter().map(|d| view(d, caller)).collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "deferred": items }),
            ))
        }
        ids::DEFERRED_RETRIEVE => {
            let deferred = calls
                .load(&id)
                .await
                .map_err(|e| GatewayError::StoreUnavailable(e.to_string()))?
                .map(|(_, d)| d)
                .filter(|d| d.visible_to(caller, &settings.audit_roles))
                .ok_or(GatewayError::DeferredNotFound(id))?;
            Ok(json(StatusCode::OK, &view(&deferred, caller)))
        }
        _ => {
            // Whoever may not cancel it is refused (403 `policy_denied`), seen or not.
            let deferred = calls.cancel(&id, caller).await?;
            Ok(json(StatusCode::OK, &view(&deferred, caller)))
        }
    }
}
