//! Two-person approval for destructive calls: deny, approve, re-send.
//!
//! A policy rule may carry `approval:` (see `policy`). A request that such a rule matches, and that
//! every rule admits, is not forwarded until someone else approves it:
//!
//! 1. **Asking.** The first time, the gateway records a *pending* approval bound to the requester and
//!    to a SHA-256 of the exact canonical request (method and canonical target), and answers 403
//!    `approval_required` with its id (also in `x-tl-gateway-approval-id`). Re-sending the identical
//!    request while it is pending gets the same id.
//! 2. **Deciding.** Clients holding one of the rule's `approver_roles` — never the requester —
//!    approve or deny it through the gateway's own API ([`api`]: `/tl-gateway/v1/approvals…`, the
//!    CLI, the page). With `approvals: N`, N distinct approvers are needed.
//! 3. **Using.** Within `use_within` of the approval, the requester re-sends the identical request:
//!    it passes that rule **exactly once** — the transition approved → used is one atomic
//!    compare-and-swap in the state store, so two racing copies (even on two replicas sharing Redis)
//!    forward one — and every other check (other rules, limits, guards, audit) still applies.
//!
//! Pending approvals expire after `ttl`, approved ones after `use_within`. Every transition is a
//! chained audit record (phase `approval`), counted in `tl_gateway_approvals_total{rule,state}`, and
//! new requests and decisions are posted to an optional webhook ([`notify`]). Approvals live in the
//! state store: in memory by default (lost on restart), in Redis with `state.backend: redis` (shared
//! by the replicas, surviving restarts, with expiring keys).

pub mod api;
pub mod notify;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::record::{Event, Phase};
use crate::audit::AuditLog;
use crate::auth::{judged, Principal};
use crate::classify::Operation;
use crate::error::GatewayError;
pub use crate::ext::ApprovalUsed;
use crate::guards::{ForceDeleteGuard, Protection, References};
use crate::metrics::Metrics;
use crate::policy::{ApprovalRequired, Decision};
use crate::state::{StateStore, StoreError};
use crate::units::{hex, rfc3339};

/// How long finished approvals are kept (for the page's decided tab and `approvals list`).
pub const RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The index of every approval, by creation time.
const INDEX: &str = "approvals";

/// Where an approval is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvers.
    Pending,
    /// Approved: the requester may re-send it once, until `expires_at`.
    Approved,
    /// Refused by an approver.
    Denied,
    /// Not decided, or not used, in time.
    Expired,
    /// Re-sent and let through.
    Used,
    /// Withdrawn by the requester.
    Cancelled,
}

impl State {
    /// Every state.
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Expired,
        State::Used,
        State::Cancelled,
    ];

    /// The name (API, metrics, audit).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Used => "used",
            State::Cancelled => "cancelled",
        }
    }

    /// Parse a name.
    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether nothing can happen to it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Approved)
    }
}

/// One decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// Who.
    pub client: String,
    /// `approve`, `deny` or `cancel`.
    pub decision: String,
    /// Their comment.
    pub comment: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// An approval as stored (and, with the caller's permissions added, as the API shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `apr_` and 16 hex digits.
    pub id: String,
    /// Where it is.
    pub state: State,
    /// Who asked.
    pub requester: String,
    /// The rule that asks for approval.
    pub rule: String,
    /// The rule's message.
    pub message: Option<String>,
    /// The request: method …
    pub method: String,
    /// … and canonical target (path and query), as forwarded.
    pub target: String,
    /// SHA-256 of `METHOD target`: what the approval is bound to (with the requester).
    pub request_sha256: String,
    /// When it was asked for.
    pub created_at: String,
    /// Pending: when it expires undecided; approved: when the re-send must have come.
    pub expires_at: String,
    /// Who may approve.
    pub approver_roles: Vec<String>,
    /// Distinct approvers needed.
    pub approvals_required: u32,
    /// Decisions so far, oldest first.
    pub decisions: Vec<Decided>,
    /// For a forced asset delete: what it would unlink (the blast radius), if it could be listed.
    pub references: Option<References>,
    /// When it was used.
    pub used_at: Option<String>,
    /// Milliseconds since the epoch of `created_at` and `expires_at` (for ordering and expiry).
    pub created_ms: u64,
    /// See `expires_at`.
    pub deadline_ms: u64,
    /// How long an approval may wait for its re-send (ms).
    pub use_within_ms: u64,
}

impl Approval {
    /// Who approved it so far.
    pub fn approvers(&self) -> Vec<String> {
        self.decisions
            .iter()
            .filter(|d| d.decision == "approve")
            .map(|d| d.client.clone())
            .collect()
    }

    /// Whether `caller` holds one of its approver roles.
    pub fn is_approver(&self, caller: &Principal) -> bool {
        caller
            .roles
            .iter()
            .any(|r| self.approver_roles.iter().any(|a| a == r.as_str()))
    }

    /// Whether `caller` may see it: its requester, or an approver.
    pub fn visible_to(&self, caller: &Principal) -> bool {
        self.requester == caller.client.as_str() || self.is_approver(caller)
    }

    /// Whether `caller` may approve or deny it now.
    pub fn can_decide(&self, caller: &Principal) -> bool {
        self.state == State::Pending
            && self.requester != caller.client.as_str()
            && self.is_approver(caller)
            && !self.approvers().iter().any(|a| a == caller.client.as_str())
    }

    /// Whether `caller` may withdraw it now.
    pub fn can_cancel(&self, caller: &Principal) -> bool {
        self.requester == caller.client.as_str()
            && matches!(self.state, State::Pending | State::Approved)
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time_of(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

fn doc_key(id: &str) -> String {
    format!("approval:{id}")
}

/// The store key that finds a requester's approval for one exact request.
fn request_key(requester: &str, sha: &str) -> String {
    format!("approval-request:{requester}:{sha}")
}

/// SHA-256 of the canonical request an approval is bound to.
pub fn request_sha256(method: &str, target: &str) -> String {
    hex(&Sha256::digest(format!("{method} {target}").as_bytes()))
}

fn new_id() -> String {
    format!("apr_{:016x}", rand::random::<u64>())
}

/// Why an approval operation failed (the API maps these to responses).
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such approval (or not visible to the caller).
    #[error("no approval {0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// It is no longer pending.
    #[error("approval {id} is {state}, not pending")]
    NotPending {
        /// The approval.
        id: String,
        /// Its state.
        state: &'static str,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The approvals: their store, and everything a transition touches.
#[derive(Debug, Clone)]
pub struct Approvals {
    store: StateStore,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    notify: Option<notify::Notifier>,
}

/// The result of a request that needs approval: forward it, or refuse it with this pending approval.
#[derive(Debug)]
enum Asked {
    /// Approved, and now used by this request (with the stored text, to give it back).
    Use(Approval, String),
    Pending(Approval),
}

impl Approvals {
    /// Approvals kept in `store`.
    pub fn new(
        store: StateStore,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
        notify: Option<notify::Notifier>,
    ) -> Self {
        Approvals {
            store,
            audit,
            metrics,
            notify,
        }
    }

    /// An approval as stored (the raw text is what a compare-and-swap must match), expired first
    /// if its time is up.
    pub async fn load(&self, id: &str) -> Result<Option<(String, Approval)>, StoreError> {
        let Some(raw) = self.store.get(&doc_key(id)).await? else {
            return Ok(None);
        };
        let Ok(approval) = serde_json::from_str::<Approval>(&raw) else {
            return Ok(None);
        };
        self.settle_expiry(raw, approval).await.map(Some)
    }

    /// If its deadline passed, move a pending or approved approval to `expired`.
    async fn settle_expiry(
        &self,
        raw: String,
        approval: Approval,
    ) -> Result<(String, Approval), StoreError> {
        if approval.state.is_final() || now_ms() <= approval.deadline_ms {
            return Ok((raw, approval));
        }
        let mut expired = approval.clone();
        expired.state = State::Expired;
        match self.transition(&raw, &expired, None, None).await? {
            Some(new_raw) => Ok((new_raw, expired)),
            // Someone else moved it first: read what it is now.
            None => match self.store.get(&doc_key(&approval.id)).await? {
                Some(now) => {
                    let parsed = serde_json::from_str(&now).unwrap_or(expired);
                    Ok((now, parsed))
                }
                None => Ok((raw, approval)),
            },
        }
    }

    /// Store `new` in place of `raw` atomically; on success record the transition (audit, metric,
    /// webhook) and return the new raw text. `actor` did it (default: the requester).
    async fn transition(
        &self,
        raw: &str,
        new: &Approval,
        actor: Option<&str>,
        comment: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let text = serde_json::to_string(new)
            .map_err(|e| StoreError::Failed(format!("an approval could not be serialised: {e}")))?;
        if !self
            .store
            .swap(&doc_key(&new.id), raw, &text, retention_of(new))
            .await?
        {
            return Ok(None);
        }
        self.record(new, actor, comment);
        Ok(Some(text))
    }

    /// Audit, count and announce a transition (or a new approval, or one approval of several).
    fn record(&self, approval: &Approval, actor: Option<&str>, comment: Option<&str>) {
        // One approval of several leaves it pending: a decision, not a new state.
        let partly = approval.state == State::Pending && !approval.decisions.is_empty();
        if !partly {
            self.metrics
                .approvals
                .with_label_values(&[&approval.rule, approval.state.as_str()])
                .inc();
        }
        let actor = actor.unwrap_or(&approval.requester);
        tracing::info!(
            approval_id = %approval.id,
            state = approval.state.as_str(),
            requester = %approval.requester,
            by = actor,
            rule = %approval.rule,
            "approval {}",
            approval.state.as_str()
        );
        if let Some(log) = &self.audit {
            let mut event = self.event_of(approval, actor);
            event.comment = comment.map(str::to_owned);
            log.write(event);
        }
        if let Some(notify) = &self.notify {
            if matches!(
                approval.state,
                State::Pending | State::Approved | State::Denied
            ) {
                notify.send(approval, actor, comment);
            }
        }
    }

    /// The `approval` audit record of `approval` as `actor` moved it.
    fn event_of(&self, approval: &Approval, actor: &str) -> Event {
        let path = approval
            .target
            .split_once('?')
            .map_or(approval.target.as_str(), |(path, _)| path);
        Event {
            time: rfc3339(SystemTime::now()),
            request_id: approval.id.clone(),
            phase: Some(Phase::Approval),
            client: Some(actor.to_owned()),
            method: approval.method.clone(),
            path: path.to_owned(),
            rule: Some(approval.rule.clone()),
            approval_id: Some(approval.id.clone()),
            state: Some(approval.state.as_str().to_owned()),
            requester: Some(approval.requester.clone()),
            approver: (actor != approval.requester).then(|| actor.to_owned()),
            approvers: (!approval.approvers().is_empty()).then(|| approval.approvers()),
            references: approval.references.clone(),
            ..Event::default()
        }
    }

    /// A request that `requirement` asks approval for: use its approval, or refuse it with the
    /// pending one (created, or found again for an identical re-send).
    async fn ask_or_use(
        &self,
        requirement: &ApprovalRequired,
        principal: &Principal,
        op: &Operation,
        references: impl std::future::Future<Output = Result<Option<References>, GatewayError>>,
    ) -> Result<Asked, GatewayError> {
        let store_error = |e: StoreError| GatewayError::ApprovalsUnavailable(e.to_string());
        let method = op.method.as_str().to_owned();
        let target = op.path_and_query();
        let sha = request_sha256(&method, &target);
        let key = request_key(principal.client.as_str(), &sha);
        // The pointer outlives a pending approval by `use_within`, so an approval given at the last
        // moment can still be found when its request is re-sent.
        let ttl = requirement.settings.ttl + requirement.settings.use_within;
        let mut references = Some(references);
        for _ in 0..8 {
            let found = self.store.get(&key).await.map_err(store_error)?;
            let existing = match &found {
                Some(id) => self.load(id).await.map_err(store_error)?,
                None => None,
            };
            match (&found, existing) {
                (Some(id), None) => {
                    // Claimed a moment ago, its document not written yet: it is pending.
                    return Ok(Asked::Pending(self.placeholder(
                        id,
                        requirement,
                        principal,
                        &method,
                        &target,
                        &sha,
                    )));
                }
                (Some(_), Some((raw, approval))) => match approval.state {
                    State::Pending => return Ok(Asked::Pending(approval)),
                    State::Approved => {
                        let mut used = approval.clone();
                        used.state = State::Used;
                        used.used_at = Some(rfc3339(SystemTime::now()));
                        if let Some(used_raw) = self
                            .transition(&raw, &used, None, None)
                            .await
                            .map_err(store_error)?
                        {
                            return Ok(Asked::Use(used, used_raw));
                        }
                        // Another copy used it first: look again (it is final now).
                        continue;
                    }
                    _ => {}
                },
                (None, _) => {}
            }
            // None, or a final one: claim the request key for a new approval.
            let id = new_id();
            let claimed = match &found {
                None => self.store.insert(&key, &id, ttl).await,
                Some(old) => self.store.swap(&key, old, &id, ttl).await,
            }
            .map_err(store_error)?;
            if !claimed {
                continue;
            }
            let references = match references.take() {
                Some(lookup) => lookup.await?,
                None => None,
            };
            let mut approval =
                self.placeholder(&id, requirement, principal, &method, &target, &sha);
            approval.references = references;
            let text = serde_json::to_string(&approval)
                .map_err(|_| GatewayError::Internal("an approval could not be serialised"))?;
            self.store
                .insert(&doc_key(&id), &text, retention_of(&approval))
                .await
                .map_err(store_error)?;
            self.store
                .index_add(INDEX, &id, approval.created_ms)
                .await
                .map_err(store_error)?;
            self.record(&approval, None, None);
            return Ok(Asked::Pending(approval));
        }
        Err(GatewayError::ApprovalsUnavailable(
            "the approval changed too often while being checked; retry".into(),
        ))
    }

    fn placeholder(
        &self,
        id: &str,
        requirement: &ApprovalRequired,
        principal: &Principal,
        method: &str,
        target: &str,
        sha: &str,
    ) -> Approval {
        let created = now_ms();
        let deadline = created + requirement.settings.ttl.as_millis() as u64;
        Approval {
            id: id.to_owned(),
            state: State::Pending,
            requester: principal.client.as_str().to_owned(),
            rule: requirement.rule.as_str().to_owned(),
            message: requirement.message.as_deref().map(str::to_owned),
            method: method.to_owned(),
            target: target.to_owned(),
            request_sha256: sha.to_owned(),
            created_at: time_of(created),
            expires_at: time_of(deadline),
            approver_roles: requirement
                .settings
                .approver_roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            approvals_required: requirement.settings.approvals,
            decisions: Vec::new(),
            references: None,
            used_at: None,
            created_ms: created,
            deadline_ms: deadline,
            use_within_ms: requirement.settings.use_within.as_millis() as u64,
        }
    }

    /// Approve or deny (`approve: false`) as `caller`.
    pub async fn decide(
        &self,
        id: &str,
        caller: &Principal,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        for _ in 0..8 {
            let Some((raw, approval)) = self.load(id).await? else {
                return Err(ApprovalError::NotFound(id.to_owned()));
            };
            if !approval.visible_to(caller) {
                return Err(ApprovalError::NotFound(id.to_owned()));
            }
            if approval.requester == caller.client.as_str() {
                return Err(ApprovalError::Forbidden(
                    "you cannot decide your own request: another approver must".into(),
                ));
            }
            if !approval.is_approver(caller) {
                return Err(ApprovalError::Forbidden(format!(
                    "deciding approval {id} needs a role in [{}]",
                    approval.approver_roles.join(", ")
                )));
            }
            if approval.state != State::Pending {
                return Err(ApprovalError::NotPending {
                    id: id.to_owned(),
                    state: approval.state.as_str(),
                });
            }
            if approval
                .approvers()
                .iter()
                .any(|a| a == caller.client.as_str())
            {
                return Err(ApprovalError::Forbidden(format!(
                    "you already approved {id}; it needs another approver"
                )));
            }
            let mut next = approval.clone();
            next.decisions.push(Decided {
                client: caller.client.as_str().to_owned(),
                decision: if approve { "approve" } else { "deny" }.into(),
                comment: comment.clone(),
                at: rfc3339(SystemTime::now()),
            });
            if !approve {
                next.state = State::Denied;
            } else if next.approvers().len() as u32 >= next.approvals_required {
                next.state = State::Approved;
                next.deadline_ms = now_ms() + next.use_within_ms;
                next.expires_at = time_of(next.deadline_ms);
            }
            if next.state == State::Pending {
                // One of several approvals: stored, not a transition of state.
                let text = serde_json::to_string(&next).map_err(|e| {
                    StoreError::Failed(format!("an approval could not be serialised: {e}"))
                })?;
                if self
                    .store
                    .swap(&doc_key(id), &raw, &text, retention_of(&next))
                    .await?
                {
                    self.record(&next, Some(caller.client.as_str()), comment.as_deref());
                    return Ok(next);
                }
                continue;
            }
            if self
                .transition(
                    &raw,
                    &next,
                    Some(caller.client.as_str()),
                    comment.as_deref(),
                )
                .await?
                .is_some()
            {
                return Ok(next);
            }
        }
        Err(ApprovalError::Store(StoreError::Failed(
            "the approval changed too often; retry".into(),
        )))
    }

    /// Withdraw (requester only).
    pub async fn cancel(&self, id: &str, caller: &Principal) -> Result<Approval, ApprovalError> {
        for _ in 0..8 {
            let Some((raw, approval)) = self.load(id).await? else {
                return Err(ApprovalError::NotFound(id.to_owned()));
            };
            if !approval.visible_to(caller) {
                return Err(ApprovalError::NotFound(id.to_owned()));
            }
            if approval.requester != caller.client.as_str() {
                return Err(ApprovalError::Forbidden(
                    "only the requester can cancel an approval".into(),
                ));
            }
            if approval.state.is_final() {
                return Err(ApprovalError::NotPending {
                    id: id.to_owned(),
                    state: approval.state.as_str(),
                });
            }
            let mut next = approval.clone();
            next.state = State::Cancelled;
            next.decisions.push(Decided {
                client: caller.client.as_str().to_owned(),
                decision: "cancel".into(),
                comment: None,
                at: rfc3339(SystemTime::now()),
            });
            if self.transition(&raw, &next, None, None).await?.is_some() {
                return Ok(next);
            }
        }
        Err(ApprovalError::Store(StoreError::Failed(
            "the approval changed too often; retry".into(),
        )))
    }

    /// Give an approval back (used → approved) after the request that used it was refused before
    /// it reached the upstream: the requester may re-send once the refusal is fixed, within the
    /// original `use_within`.
    async fn give_back(&self, raw: &str, used: &Approval, refusal: &GatewayError) {
        let mut approved = used.clone();
        approved.state = State::Approved;
        approved.used_at = None;
        let Ok(text) = serde_json::to_string(&approved) else {
            return;
        };
        match self
            .store
            .swap(&doc_key(&used.id), raw, &text, retention_of(&approved))
            .await
        {
            Ok(true) => {
                let why = format!(
                    "given back: the request was refused before it reached the upstream ({})",
                    refusal.code()
                );
                tracing::info!(approval_id = %used.id, refusal = refusal.code(), "approval given back");
                if let Some(log) = &self.audit {
                    let mut event = self.event_of(&approved, &approved.requester);
                    event.comment = Some(why);
                    log.write(event);
                }
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(approval_id = %used.id, %error, "an approval could not be given back; the requester needs a new one");
            }
        }
    }

    /// The approvals `caller` may see, newest first, optionally only in `state`.
    pub async fn list(
        &self,
        caller: &Principal,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        let ids = self.store.index_newest(INDEX, 2000).await?;
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            match self.load(&id).await? {
                None => gone.push(id),
                Some((_, approval)) => {
                    if approval.visible_to(caller) && state.is_none_or(|s| s == approval.state) {
                        found.push(approval);
                        if found.len() >= limit {
                            break;
                        }
                    }
                }
            }
        }
        // Documents past their retention are gone from the store: drop them from the index.
        self.store.index_remove(INDEX, &gone).await?;
        Ok(found)
    }

    /// Expire what is due and refresh `tl_gateway_approvals_pending` (run every few seconds).
    pub async fn sweep(&self) -> Result<(), StoreError> {
        let ids = self.store.index_newest(INDEX, 2000).await?;
        let mut pending = 0;
        let mut oldest: Option<u64> = None;
        let mut gone = Vec::new();
        for id in ids {
            match self.load(&id).await? {
                None => gone.push(id),
                Some((_, a)) if a.state == State::Pending => {
                    pending += 1;
                    oldest = Some(oldest.map_or(a.created_ms, |o| o.min(a.created_ms)));
                }
                Some(_) => {}
            }
        }
        self.store.index_remove(INDEX, &gone).await?;
        self.metrics.approvals_pending.set(pending);
        self.metrics
            .approvals_oldest_pending
            .set(oldest.map_or(0, |created| {
                (now_ms().saturating_sub(created) / 1000) as i64
            }));
        Ok(())
    }
}

/// How long to keep an approval: until its deadline, then [`RETENTION`] for the record.
fn retention_of(approval: &Approval) -> Duration {
    let until = approval.deadline_ms.saturating_sub(now_ms());
    Duration::from_millis(until) + RETENTION
}

/// The approvals layer: after policy and protection, before limits, guards and the intent. A
/// request whose [`Decision`] asks for approval is forwarded only by using an approval (inserting
/// [`ApprovalUsed`]); if a check below then refuses it before it reaches the upstream, the
/// approval is given back (used → approved) so the requester can re-send once that is fixed.
/// Other requests pass unboxed.
#[derive(Clone, Debug)]
pub struct RequireApprovalLayer {
    shared: Arc<LayerShared>,
}

#[derive(Debug)]
struct LayerShared {
    approvals: Approvals,
    guard: Option<ForceDeleteGuard>,
    protection: Arc<Protection>,
    public_url: Option<String>,
}

impl RequireApprovalLayer {
    /// The layer. `guard` lists a forced asset delete's references for the approvers (its blast
    /// radius); `protection` refuses, at asking time, one that reaches a protected resource;
    /// `public_url` is the gateway's URL in `approval_required` messages (default: from `Host`).
    pub fn new(
        approvals: Approvals,
        guard: Option<ForceDeleteGuard>,
        protection: Arc<Protection>,
        public_url: Option<String>,
    ) -> Self {
        RequireApprovalLayer {
            shared: Arc::new(LayerShared {
                approvals,
                guard,
                protection,
                public_url,
            }),
        }
    }
}

impl<S> tower::Layer<S> for RequireApprovalLayer {
    type Service = RequireApproval<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireApproval {
            shared: self.shared.clone(),
            inner,
        }
    }
}

/// Service produced by [`RequireApprovalLayer`].
#[derive(Clone, Debug)]
pub struct RequireApproval<S> {
    shared: Arc<LayerShared>,
    inner: S,
}

const UNJUDGED: &str =
    "approvals could not be checked: request not classified or not authenticated";

impl<S, B> tower::Service<Request<B>> for RequireApproval<S>
where
    S: tower::Service<Request<B>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::BoxFuture<'static, Result<S::Response, GatewayError>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let Some(requirement) = req
            .extensions()
            .get::<Decision>()
            .and_then(|d| d.approval.clone())
        else {
            return Either::Left(self.inner.call(req));
        };
        // The ready service goes with the request; this one keeps a fresh clone.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let shared = self.shared.clone();
        Either::Right(Box::pin(async move {
            let (op, principal) = judged(&req, UNJUDGED)?;
            let (op, principal) = (op.clone(), principal.clone());
            let lookup = references_for(&shared, &op);
            match shared
                .approvals
                .ask_or_use(&requirement, &principal, &op, lookup)
                .await?
            {
                Asked::Pending(approval) => {
                    let gateway = shared
                        .public_url
                        .clone()
                        .unwrap_or_else(|| gateway_url_of(&req));
                    Err(approval_required(&approval, &requirement, &gateway))
                }
                Asked::Use(approval, raw) => {
                    req.extensions_mut().insert(ApprovalUsed {
                        approvers: approval.approvers(),
                        id: approval.id.clone(),
                    });
                    tracing::info!(approval_id = %approval.id, "approval used");
                    let result = inner.call(req).await;
                    if let Err(error) = &result {
                        if error.is_before_forwarding() {
                            shared.approvals.give_back(&raw, &approval, error).await;
                        }
                    }
                    result
                }
            }
        }))
    }
}

/// The references a forced asset delete would unlink (listed only when a new approval is asked
/// for): shown to the approvers, and checked against protected indexes and collections.
async fn references_for(
    shared: &LayerShared,
    op: &Operation,
) -> Result<Option<References>, GatewayError> {
    let Some((version, asset_id)) = crate::guards::forced_asset_delete(op) else {
        return Ok(None);
    };
    let Some(guard) = &shared.guard else {
        return Ok(None);
    };
    match guard.references(version, asset_id).await {
        Ok(references) => {
            // A delete a legal hold forbids gets no approval at all.
            shared.protection.check_references(&references)?;
            Ok(Some(references))
        }
        Err(error) => {
            tracing::warn!(%error, asset_id, "reference lookup for an approval failed");
            if shared.protection.needs_lookup() {
                Err(GatewayError::GuardLookupFailed(error.status().as_u16()))
            } else {
                // The approvers see "references unknown"; the guard looks again before forwarding.
                Ok(None)
            }
        }
    }
}

/// `http://HOST` as the client reached the gateway (for the message's command).
fn gateway_url_of<B>(req: &Request<B>) -> String {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    match host {
        Some(host) => format!("http://{host}"),
        None => "<gateway URL>".to_owned(),
    }
}

/// The 403 `approval_required` for a pending approval.
fn approval_required(
    approval: &Approval,
    requirement: &ApprovalRequired,
    gateway: &str,
) -> GatewayError {
    let roles = approval.approver_roles.join(", ");
    let so_far = approval.approvers().len();
    let needed = if approval.approvals_required > 1 {
        format!(
            "{} approvals ({so_far} so far) by clients with a role in [{roles}]",
            approval.approvals_required
        )
    } else {
        format!("approval by a client with a role in [{roles}] (not you)")
    };
    let mut message = format!(
        "approval {} required by rule '{}': this request needs {needed}. An approver runs `tl-gateway approvals approve {} --gateway {gateway}` (or opens {gateway}/tl-gateway/ui/); then re-send this exact request within {} of the approval. Pending until {}.",
        approval.id,
        approval.rule,
        approval.id,
        humantime::format_duration(requirement.settings.use_within),
        approval.expires_at,
    );
    if let Some(rule_message) = &requirement.message {
        message.push(' ');
        message.push_str(rule_message);
    }
    GatewayError::ApprovalRequired {
        id: approval.id.clone(),
        rule: requirement.rule.clone(),
        message,
    }
}

/// The approval an approver would decide, as the API shows it to `caller`.
pub fn view(approval: &Approval, caller: &Principal) -> serde_json::Value {
    let mut value = serde_json::to_value(approval).unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        for internal in [
            "created_ms",
            "deadline_ms",
            "use_within_ms",
            "request_sha256",
        ] {
            object.remove(internal);
        }
        object.insert("approvers".into(), approval.approvers().into());
        object.insert("can_decide".into(), approval.can_decide(caller).into());
        object.insert("can_cancel".into(), approval.can_cancel(caller).into());
    }
    value
}
