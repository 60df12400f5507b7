//! The undo window: destructive calls held for a delay, cancellable, executed by exactly one
//! replica (docs/architecture.md, "Deferred calls").
//!
//! A policy rule may carry `defer: { delay, cancel_roles }` (see `policy`). A request every rule
//! admits and such a rule matches is not forwarded now:
//!
//! 1. **Scheduling** ([`layer`]): below policy, protection, approvals and the reference guard,
//!    just above the intent record, the request is recorded in the record store — canonical
//!    request, requester, the guard's listing of what it unlinks, the approval it used — and
//!    answered 202 Accepted `{"id": "dfr_…", "state": "scheduled", "execute_at": …}` with the
//!    header `x-tl-gateway-deferred-id`. Re-sending the identical request while it is scheduled
//!    answers the same id. Only routes without a request body can be deferred (`check` refuses
//!    others): the call is replayed from its canonical request alone.
//! 2. **Cancelling**: the requester, or a holder of one of the rules' `cancel_roles`, moves it
//!    scheduled → cancelled (`POST /tl-gateway/v1/deferred/{id}/cancel`, the CLI, the page).
//! 3. **Executing** ([`executor`]): when `execute_at` passes, one replica claims it (one
//!    compare-and-swap scheduled → executing in the store) and replays it through the whole request
//!    stack as its requester — policy, protection, limits and the reference guard judge it again,
//!    and the intent and outcome records are those of a direct call. Right before the intent the
//!    layer marks the claim `forwarding` (another swap). A claim whose replica died is taken over
//!    once its lease is over (at once on SQLite, which one replica owns): without the mark it is
//!    retried, with it it is reported `unresolved` and never forwarded again.
//!
//! Every transition is one compare-and-swap on the stored document, a chained audit record (phase
//! `deferred`) made durable before it is answered (or undone), a count in
//! `tl_gateway_deferred_total{rule,state}`, and for scheduled, cancelled and final states a
//! webhook notification (`deferred.scheduled`, `deferred.cancelled`, `deferred.executed`,
//! `deferred.refused`, `deferred.unresolved`).

pub mod executor;
pub mod layer;
mod model;

use self::model::*;
pub use self::model::{view, Deferred, Outcome, State};

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::approvals::notify::Notifier;
use crate::audit::AuditLog;
use crate::auth::Principal;
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::ext::ApprovalUsed;
use crate::guards::References;
use crate::ids::Role;
use crate::metrics::Metrics;
use crate::policy::DeferRequired;
use crate::store::{RecordStore, StoreError};
use crate::units::hex;

pub use layer::{DeferLayer, RecallScheduledLayer};

/// How long finished deferred calls are kept (for the API and the page).
pub const RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The index of every deferred call, by creation time.
const INDEX: &str = "deferred";

/// The index of the calls not yet final (scheduled or executing), by `execute_at`.
const DUE: &str = "deferred-due";

/// Deferred calls read per store round trip when listing.
const PAGE: usize = 100;

/// Deferred calls one listing request reads at most.
pub const LIST_BOUND: usize = 500;

/// How long an audit record of a transition may take to become durable.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who the audit records name for what the gateway does by itself (claims, executions).
pub const GATEWAY_ACTOR: &str = "gateway";

/// Default `deferred.max_schedules_per_client` (new deferred calls per requester per minute).
pub const DEFAULT_MAX_SCHEDULES_PER_CLIENT: u32 = 30;

/// The response header naming the deferred call of a 202.
pub const DEFERRED_ID_HEADER: &str = "x-tl-gateway-deferred-id";

/// Why an operation on a deferred call failed (converted to [`GatewayError`] for the API).
#[derive(Debug, thiserror::Error)]
pub enum DeferredError {
    /// No such deferred call (or not one the caller may see).
    #[error("no deferred call {0}")]
    NotFound(String),
    /// The caller may not cancel it.
    #[error("{0}")]
    Forbidden(String),
    /// It is no longer scheduled.
    #[error("deferred call {id} is {state}, not scheduled")]
    NotScheduled {
        /// The call.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transition's audit record could not be made durable; the transition was undone.
    #[error("the audit log cannot record this change, so it was not made ({0})")]
    Audit(String),
}

impl From<DeferredError> for GatewayError {
    fn from(error: DeferredError) -> Self {
        match error {
            DeferredError::NotFound(id) => GatewayError::DeferredNotFound(id),
            DeferredError::Forbidden(why) => GatewayError::PolicyDenied {
                rule: crate::ids::RuleId::builtin("defer.cancel_roles"),
                message: Some(why.into()),
            },
            DeferredError::NotScheduled { id, state } => {
                GatewayError::DeferredNotScheduled { id, state }
            }
            DeferredError::Store(e) => GatewayError::StoreUnavailable(e.to_string()),
            DeferredError::Audit(why) => GatewayError::AuditUnavailable(why),
        }
    }
}

/// The deferred calls: their store, and everything a transition touches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeferredCalls {
    store: RecordStore,
    /// Where the per-requester scheduling budget counts (`deferred.max_schedules_per_client`).
    budget: Option<crate::ratelimit::PerMinuteBudget>,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    notify: Option<Notifier>,
}

/// What the layer hands over to schedule a call.
#[derive(Debug)]
pub struct Request<'a> {
    /// What defers it.
    pub required: &'a DeferRequired,
    /// Who asks.
    pub principal: &'a Principal,
    /// What is asked.
    pub op: &'a Operation,
    /// Its request id.
    pub request_id: &'a str,
    /// The reference guard's listing, for a forced asset delete.
    pub references: Option<References>,
    /// The approval it used.
    pub approval: Option<&'a ApprovalUsed>,
}

impl DeferredCalls {
    /// Deferred calls kept in `store`.
    pub fn new(
        store: RecordStore,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
        notify: Option<Notifier>,
    ) -> Self {
        DeferredCalls {
            store,
            budget: None,
            audit,
            metrics,
            notify,
        }
    }

    /// Bound how often one requester may schedule: at most `per_minute` new deferred calls a
    /// minute, counted in `state` (shared by the replicas on Redis). Rate limits are spent when a
    /// call is executed; this keeps scheduling itself — store writes and an fsync'd audit record
    /// each — from being flooded.
    pub fn with_budget(mut self, state: crate::state::StateStore, per_minute: u32) -> Self {
        self.budget = Some(crate::ratelimit::PerMinuteBudget::new(
            state,
            per_minute,
            "deferred.max_schedules_per_client",
            "defers:",
        ));
        self
    }

    /// Take one scheduling from `requester`'s budget, or refuse with 429.
    async fn spend(&self, requester: &str) -> Result<(), GatewayError> {
        match &self.budget {
            None => Ok(()),
            Some(budget) => {
                budget
                    .spend(requester, GatewayError::StoreUnavailable)
                    .await
            }
        }
    }

    /// The record store (the executor claims through it).
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// A deferred call as stored (the raw text is what a compare-and-swap must match).
    pub async fn load(&self, id: &str) -> Result<Option<(String, Deferred)>, StoreError> {
        let Some(raw) = self.store.get(&doc_key(id)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_str(&raw).ok().map(|d| (raw, d)))
    }

    /// Record a call to run after its delay, or find the requester's identical one still
    /// scheduled (a re-send gets the same id). Durable — store and audit — before it is answered.
    /// The call `principal` scheduled for exactly `op`, if it is still scheduled: what an identical
    /// re-send gets again ([`RecallScheduledLayer`](layer::RecallScheduledLayer)).
    pub async fn scheduled_for(
        &self,
        principal: &Principal,
        op: &crate::classify::Operation,
    ) -> Result<Option<Deferred>, StoreError> {
        let target = op.path_and_query();
        let sha = hex(&Sha256::digest(
            format!("{} {target}", op.method.as_str()).as_bytes(),
        ));
        let requester = principal.client.as_str();
        let Some(id) = self.store.get(&request_key(requester, &sha)).await? else {
            return Ok(None);
        };
        Ok(self.load(&id).await?.map(|(_, d)| d).filter(|d| {
            d.state == State::Scheduled && d.requester == requester && d.request_sha256 == sha
        }))
    }

    pub async fn schedule(&self, asked: Request<'_>) -> Result<Deferred, GatewayError> {
        let method = asked.op.method.as_str().to_owned();
        let target = asked.op.path_and_query();
        let sha = hex(&Sha256::digest(format!("{method} {target}").as_bytes()));
        let requester = asked.principal.client.as_str();
        let key = request_key(requester, &sha);
        let unavailable = |e: StoreError| GatewayError::StoreUnavailable(e.to_string());
        for attempt in 0..8 {
            let found = self.store.get(&key).await.map_err(unavailable)?;
            if let Some(id) = &found {
                if let Some((_, existing)) = self.load(id).await.map_err(unavailable)? {
                    if existing.state == State::Scheduled
                        && existing.requester == requester
                        && existing.request_sha256 == sha
                    {
                        return Ok(existing);
                    }
                }
            }
            if attempt == 0 {
                // A new call costs (a re-send of a scheduled one does not).
                self.spend(requester).await?;
            }
            let created = now_ms();
            let due = created + asked.required.delay.as_millis() as u64;
            let deferred = Deferred {
                id: new_id(),
                state: State::Scheduled,
                requester: requester.to_owned(),
                rule: asked.required.rule.as_str().to_owned(),
                method: method.clone(),
                target: target.clone(),
                request_sha256: sha.clone(),
                request_id: asked.request_id.to_owned(),
                created_at: time_of(created),
                execute_at: time_of(due),
                cancel_roles: asked
                    .required
                    .cancel_roles
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
                references: asked.references.clone(),
                approval_id: asked.approval.map(|a| a.id.clone()),
                approvers: asked
                    .approval
                    .map(|a| a.approvers.clone())
                    .unwrap_or_default(),
                cancelled_by: None,
                outcome: None,
                claim: None,
                lease_until_ms: 0,
                forwarding: false,
                attempts: 0,
                created_ms: created,
                execute_at_ms: due,
            };
            let text = serde_json::to_string(&deferred).map_err(|e| {
                GatewayError::StoreUnavailable(format!(
                    "a deferred call could not be serialised: {e}"
                ))
            })?;
            let doc = doc_key(&deferred.id);
            let ttl = retention_of(&deferred);
            self.store
                .insert(&doc, &text, ttl)
                .await
                .map_err(unavailable)?;
            // The document first, then the pointer: racing re-sends agree on one id.
            let claimed = match &found {
                None => self.store.insert(&key, &deferred.id, ttl).await,
                Some(old) => self.store.swap(&key, old, &deferred.id, ttl).await,
            };
            match claimed {
                Ok(true) => {}
                Ok(false) => {
                    let _ = self.store.remove(&doc, &text).await;
                    continue;
                }
                Err(error) => {
                    let _ = self.store.remove(&doc, &text).await;
                    return Err(unavailable(error));
                }
            }
            let indexed = async {
                self.store
                    .index_add(DUE, &deferred.id, deferred.execute_at_ms)
                    .await?;
                self.store
                    .index_add(INDEX, &deferred.id, deferred.created_ms)
                    .await
            };
            let recorded = match indexed.await {
                Ok(()) => self
                    .audit_durably(&deferred, requester, None)
                    .await
                    .map_err(GatewayError::AuditUnavailable),
                Err(error) => Err(unavailable(error)),
            };
            if let Err(error) = recorded {
                // Not recorded, so not scheduled: nothing stays behind to run.
                let _ = self
                    .store
                    .index_remove(DUE, std::slice::from_ref(&deferred.id))
                    .await;
                let _ = self.store.remove(&key, &deferred.id).await;
                let _ = self.store.remove(&doc, &text).await;
                return Err(error);
            }
            self.announce(&deferred, requester);
            return Ok(deferred);
        }
        Err(GatewayError::StoreUnavailable(
            "the deferred call changed too often while being scheduled; retry".into(),
        ))
    }

    /// Store `new` in place of `raw` atomically, make its audit record durable (or undo it),
    /// count and announce it; the new raw text, or `None` if `raw` was no longer there.
    pub(crate) async fn transition(
        &self,
        raw: &str,
        new: &Deferred,
        actor: &str,
        comment: Option<&str>,
    ) -> Result<Option<String>, DeferredError> {
        let text = serde_json::to_string(new).map_err(|e| {
            StoreError::Failed(format!("a deferred call could not be serialised: {e}"))
        })?;
        let key = doc_key(&new.id);
        if !self.store.swap(&key, raw, &text, retention_of(new)).await? {
            return Ok(None);
        }
        let old: Option<Deferred> = serde_json::from_str(raw).ok();
        // A new state, or a new claim (a take-over), is recorded; the forwarding mark is not (the
        // intent record follows it at once).
        let moved = old
            .as_ref()
            .is_none_or(|o| o.state != new.state || o.claim != new.claim);
        if moved {
            if let Err(why) = self.audit_durably(new, actor, comment).await {
                // Not recorded, so not done: put it back.
                let _ = self
                    .store
                    .swap(
                        &key,
                        &text,
                        raw,
                        old.as_ref().map_or(RETENTION, retention_of),
                    )
                    .await;
                return Err(DeferredError::Audit(why));
            }
        }
        if new.state.is_final() {
            // Best effort: a stale entry is dropped when the executor reads its document.
            let _ = self
                .store
                .index_remove(DUE, std::slice::from_ref(&new.id))
                .await;
        }
        if moved {
            self.announce(new, actor);
        }
        Ok(Some(text))
    }

    /// The `deferred` audit record of a change, durable before it is answered.
    async fn audit_durably(
        &self,
        deferred: &Deferred,
        actor: &str,
        comment: Option<&str>,
    ) -> Result<(), String> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        let mut event = event_of(deferred, actor);
        event.comment = comment.map(str::to_owned);
        match tokio::time::timeout(AUDIT_TIMEOUT, log.write_durable(event)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the audit log did not answer in time".into()),
        }
    }

    /// Count, log and notify a recorded change.
    fn announce(&self, deferred: &Deferred, actor: &str) {
        self.metrics
            .deferred
            .with_label_values(&[&deferred.rule, deferred.state.as_str()])
            .inc();
        tracing::info!(
            deferred_id = %deferred.id,
            state = deferred.state.as_str(),
            requester = %deferred.requester,
            by = actor,
            rule = %deferred.rule,
            target = %deferred.target,
            "deferred call {}",
            deferred.state.as_str()
        );
        if deferred.state == State::Executing {
            return;
        }
        if let Some(notify) = &self.notify {
            let body = serde_json::json!({
                "event": format!("deferred.{}", deferred.state.as_str()),
                "id": deferred.id,
                "state": deferred.state.as_str(),
                "rule": deferred.rule,
                "requester": deferred.requester,
                "by": actor,
                "method": deferred.method,
                "target": deferred.target,
                "execute_at": deferred.execute_at,
                "references": deferred.references.as_ref().map(|r| r.indexed_assets.len() + r.entities.len()),
                "cancelled_by": deferred.cancelled_by,
                "outcome": deferred.outcome,
            });
            notify.send_other(
                body,
                &format!("/tl-gateway/ui/#/deferred/{}", deferred.id),
                &format!("/tl-gateway/v1/deferred/{}", deferred.id),
            );
        }
    }

    /// Cancel a scheduled call as `caller` (its requester, or a holder of a cancel role).
    pub async fn cancel(&self, id: &str, caller: &Principal) -> Result<Deferred, DeferredError> {
        for _ in 0..8 {
            let Some((raw, deferred)) = self.load(id).await? else {
                return Err(DeferredError::NotFound(id.to_owned()));
            };
            if !deferred.may_cancel(caller) {
                return Err(DeferredError::Forbidden(format!(
                    "cancelling deferred call {id} is for its requester or a role in [{}]",
                    deferred.cancel_roles.join(", ")
                )));
            }
            if deferred.state != State::Scheduled {
                return Err(DeferredError::NotScheduled {
                    id: id.to_owned(),
                    state: deferred.state.as_str(),
                });
            }
            let mut next = deferred.clone();
            next.state = State::Cancelled;
            next.cancelled_by = Some(caller.client.as_str().to_owned());
            if self
                .transition(&raw, &next, caller.client.as_str(), None)
                .await?
                .is_some()
            {
                return Ok(next);
            }
        }
        Err(DeferredError::Store(StoreError::Failed(
            "the deferred call changed too often; retry".into(),
        )))
    }

    /// One page of the calls `caller` may see, newest first, optionally only in `state`: at most
    /// `limit`, reading at most [`LIST_BOUND`] calls (never the whole store).
    pub async fn list(
        &self,
        caller: &Principal,
        audit_roles: &[Role],
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<Deferred>, DeferredError> {
        let mut found = Vec::new();
        let mut before: Option<(u64, String)> = None;
        let mut read = 0;
        loop {
            let page = self
                .store
                .index_page(INDEX, before.as_ref().map(|(s, m)| (*s, m.as_str())), PAGE)
                .await?;
            let keys: Vec<String> = page.iter().map(|(id, _)| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            let mut gone = Vec::new();
            for ((id, _), doc) in page.iter().zip(docs) {
                read += 1;
                let Some(deferred) = doc.and_then(|d| serde_json::from_str::<Deferred>(&d).ok())
                else {
                    gone.push(id.clone());
                    continue;
                };
                if deferred.visible_to(caller, audit_roles)
                    && state.is_none_or(|s| s == deferred.state)
                {
                    found.push(deferred);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            // Documents past their retention are gone: drop them from the index.
            self.store.index_remove(INDEX, &gone).await?;
            if page.len() < PAGE || read >= LIST_BOUND {
                return Ok(found);
            }
            before = page.last().map(|(id, score)| (*score, id.clone()));
        }
    }

    /// Mark `id` as forwarding under `claim` (the deferred layer, right before the intent
    /// record): refused unless the document is still executing under this very claim.
    pub async fn mark_forwarding(&self, id: &str, claim: &str) -> Result<(), GatewayError> {
        let loaded = match self.load(id).await {
            Ok(loaded) => loaded,
            Err(error) => return Err(GatewayError::StoreUnavailable(error.to_string())),
        };
        let Some((raw, deferred)) = loaded else {
            return Err(GatewayError::DeferredNotFound(id.to_owned()));
        };
        if deferred.state != State::Executing
            || deferred.claim.as_deref() != Some(claim)
            || deferred.forwarding
        {
            return Err(GatewayError::DeferredNotScheduled {
                id: id.to_owned(),
                state: deferred.state.as_str(),
            });
        }
        let mut next = deferred;
        next.forwarding = true;
        match self.transition(&raw, &next, GATEWAY_ACTOR, None).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(GatewayError::DeferredNotScheduled {
                id: id.to_owned(),
                state: "claimed elsewhere",
            }),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests;
