//! Reconciliation at start-up: asset deletes the last run left unresolved (an intent without a
//! settling outcome) are resolved by asking the upstream whether the asset still exists, with the
//! forwarder's own upstream client and settings; a `reconciled` record names the intent it settles.
//!
//! Only a clear answer resolves an intent: 404 (the delete took effect) or 2xx (it did not). Any
//! other status or a failed lookup leaves it unresolved for the next start.

use std::sync::Arc;
use std::time::SystemTime;

use http::StatusCode;

use super::record::{Event, Phase};
use super::{AuditLog, Unresolved};
use crate::credentials::UpstreamKey;
use crate::forward::Forwarder;
use crate::routes::ids::ASSETS_DELETE;
use crate::units::rfc3339;

/// Largest answer read from the asset lookup.
const LOOKUP_LIMIT: usize = 64 * 1024;

/// Resolve the unresolved asset deletes among `unresolved`; each resolution is a durable record.
pub async fn reconcile(
    log: AuditLog,
    unresolved: Vec<Unresolved>,
    forwarder: Forwarder,
    key: Arc<UpstreamKey>,
) {
    for intent in unresolved
        .into_iter()
        .filter(|i| i.operation == ASSETS_DELETE.as_str())
    {
        let Some(value) = key.current() else {
            tracing::warn!("no upstream key loaded: unresolved intents stay unresolved");
            return;
        };
        // An asset delete's path is the asset's own path.
        let (status, verdict) = match forwarder.fetch(&intent.path, value, LOOKUP_LIMIT).await {
            Ok((status, _)) if status == StatusCode::NOT_FOUND => {
                (404, "asset is gone: the delete took effect")
            }
            Ok((status, _)) if status.is_success() => (
                status.as_u16(),
                "asset still exists: the delete did not take effect",
            ),
            Ok((status, _)) => {
                // Neither answer proves anything: leave the intent unresolved for the next start.
                tracing::warn!(request_id = %intent.request_id, status = status.as_u16(), "could not reconcile an unresolved intent");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, request_id = %intent.request_id, "could not reconcile an unresolved intent");
                continue;
            }
        };
        let event = Event {
            time: rfc3339(SystemTime::now()),
            request_id: intent.request_id.clone(),
            audit_id: intent.audit_id.clone(),
            phase: Some(Phase::Reconciled),
            client: intent.client.clone(),
            method: http::Method::DELETE.as_str().to_owned(),
            path: intent.path.clone(),
            operation: intent.operation.clone(),
            params: intent.params.clone(),
            status: Some(status),
            error: Some(verdict.into()),
            resolves: Some(intent.key().to_owned()),
            ..Default::default()
        };
        match log.write_durable(event).await {
            Ok(_) => {
                tracing::info!(request_id = %intent.request_id, verdict, "unresolved intent reconciled")
            }
            Err(error) => tracing::error!(%error, "could not record a reconciliation"),
        }
    }
}
