//! Two-person approval for destructive calls: deny, approve, re-send.
//!
//! A policy rule may carry `approval:` (see `policy`). A request that such a rule matches, and that
//! every rule admits, is not forwarded until someone else approves it:
//!
//! 1. **Asking.** The first time, the gateway records a *pending* approval bound to the requester and
//!    to a SHA-256 of the exact canonical request (method and canonical target), and answers 403
//!    `approval_required` with its id (also in `x-tl-gateway-approval-id`). Re-sending the identical
//!    request while it is pending gets the same id. A requester has at most
//!    `approvals.max_pending_per_client` pending approvals (more: 429), so asking cannot be used to
//!    flood the store, the audit log or the upstream (each ask of a forced delete lists references).
//! 2. **Deciding.** Clients holding one of the rules' `approver_roles` — never the requester —
//!    approve or deny it through the gateway's own API ([`api`]: `/tl-gateway/v1/approvals…`, the
//!    CLI, the page). Every asking rule must be satisfied: each needs its own count of distinct
//!    approvers holding one of its roles.
//! 3. **Using.** Within `use_within` of the approval, the requester re-sends the identical request:
//!    it passes **exactly once** — the transition approved → used is one atomic compare-and-swap in
//!    the state store, so two racing copies (even on two replicas sharing Redis) forward one — and
//!    every other check (other rules, limits, guards, audit) still applies. If one of those refuses
//!    it before it reaches the upstream, the approval is given back (used → approved).
//!
//! Pending approvals expire after `ttl`, approved ones after `use_within`. Every transition is a
//! chained audit record (phase `approval`), durable before the transition is answered (or it is
//! undone and refused with 503 `audit_unavailable`), counted in `tl_gateway_approvals_total`, and
//! new requests and decisions are posted to an optional webhook ([`notify`]). Approvals live in the
//! state store: in memory by default (lost on restart), in Redis with `state.backend: redis`
//! (shared by the replicas, surviving restarts, with expiring keys).

pub mod body;
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
use crate::guards::{ForceDeleteGuard, Protection, References, PROTECTED_RULE};
use crate::ids::RuleId;
use crate::metrics::Metrics;
use crate::policy::{ApprovalRequired, Decision};
use crate::store::{RecordStore, StoreError};
use crate::units::{hex, rfc3339};

/// How long finished approvals are kept (for the page's decided tab and `approvals list`).
pub const RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Default `approvals.max_asks_per_client` (new approvals per requester per minute).
pub const DEFAULT_MAX_ASKS_PER_CLIENT: u32 = 30;

/// Default `approvals.max_pending_per_client`.
pub const DEFAULT_MAX_PENDING_PER_CLIENT: usize = 10;

/// The index of every approval, by creation time.
const INDEX: &str = "approvals";

/// Approvals read per store round trip when listing.
const PAGE: usize = 100;

/// Who the audit records name for what the gateway does by itself (expiry, give-backs).
pub const GATEWAY_ACTOR: &str = "gateway";

/// How long an audit record of a transition may take to become durable.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Their roles when they decided (which requirements their approval counts for).
    #[serde(default)]
    pub roles: Vec<String>,
    /// `approve`, `deny` or `cancel`.
    pub decision: String,
    /// Their comment.
    pub comment: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// One asking rule, as stored with the approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The rule.
    pub rule: String,
    /// Who may approve for it.
    pub approver_roles: Vec<String>,
    /// Distinct approvers it needs.
    pub approvals: u32,
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
    /// The (first) rule that asks for approval.
    pub rule: String,
    /// The rule's message.
    pub message: Option<String>,
    /// The request: method …
    pub method: String,
    /// … and canonical target (path and query), as forwarded.
    pub target: String,
    /// SHA-256 of `METHOD target` (and of the body's digest when it has one): what the approval
    /// is bound to (with the requester).
    pub request_sha256: String,
    /// The request's body as the approvers see it (JSON as text), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When it was asked for.
    pub created_at: String,
    /// Pending: when it expires undecided; approved: when the re-send must have come.
    pub expires_at: String,
    /// Who may approve (every asking rule's roles).
    pub approver_roles: Vec<String>,
    /// Distinct approvers needed (the most any asking rule needs).
    pub approvals_required: u32,
    /// Every asking rule (all must be satisfied).
    pub requirements: Vec<Requirement>,
    /// Decisions so far, oldest first.
    pub decisions: Vec<Decided>,
    /// For a forced asset delete: what it would unlink (the blast radius), if it could be listed.
    pub references: Option<References>,
    /// When it was used.
    pub used_at: Option<String>,
    /// Milliseconds since the epoch of `created_at` (ordering).
    pub created_ms: u64,
    /// Milliseconds since the epoch of `expires_at` (expiry).
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

    /// Whether every requirement has its count of distinct approvers holding one of its roles.
    fn satisfied(&self) -> bool {
        self.requirements.iter().all(|req| {
            let count = self
                .decisions
                .iter()
                .filter(|d| d.decision == "approve")
                .filter(|d| d.roles.iter().any(|r| req.approver_roles.contains(r)))
                .count();
            count >= req.approvals as usize
        })
    }
}

/// The requirements of `required`, in their stored form.
fn requirements_of(required: &ApprovalRequired) -> Vec<Requirement> {
    required
        .rules
        .iter()
        .map(|(rule, settings)| Requirement {
            rule: rule.as_str().to_owned(),
            approver_roles: settings
                .approver_roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            approvals: settings.approvals,
        })
        .collect()
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

/// The index of one requester's approvals.
fn requester_index(requester: &str) -> String {
    format!("approvals-by:{requester}")
}

/// The index of one requester's pending approvals (left by every transition out of pending).
fn pending_index(requester: &str) -> String {
    format!("approvals-pending:{requester}")
}

/// SHA-256 of the canonical request an approval is bound to: method, canonical target and, when
/// the request has a body, the body's SHA-256 (another body is another request).
pub fn request_sha256(method: &str, target: &str, body_sha256: Option<&str>) -> String {
    let bound = match body_sha256 {
        None => format!("{method} {target}"),
        Some(body) => format!("{method} {target}\nbody sha256 {body}"),
    };
    hex(&Sha256::digest(bound.as_bytes()))
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
    /// The transition's audit record could not be made durable; the transition was undone.
    #[error("the audit log cannot record this change, so it was not made ({0})")]
    Audit(String),
}

impl From<ApprovalError> for GatewayError {
    fn from(error: ApprovalError) -> Self {
        match error {
            ApprovalError::NotFound(id) => GatewayError::ApprovalNotFound(id),
            ApprovalError::Forbidden(why) => GatewayError::ApprovalForbidden(why),
            ApprovalError::NotPending { id, state } => {
                GatewayError::ApprovalNotPending { id, state }
            }
            ApprovalError::Store(e) => GatewayError::ApprovalsUnavailable(e.to_string()),
            ApprovalError::Audit(why) => GatewayError::AuditUnavailable(why),
        }
    }
}

/// The approvals: their store, and everything a transition touches.
#[derive(Debug, Clone)]
pub struct Approvals {
    store: RecordStore,
    /// Where the per-requester ask budget counts (`approvals.max_asks_per_client`).
    counters: Option<(crate::state::StateStore, u32)>,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    notify: Option<notify::Notifier>,
    max_pending_per_client: usize,
}

/// The result of a request that needs approval: forward it, or refuse it with this pending approval.
#[derive(Debug)]
enum Asked {
    /// Approved, and now used by this request (with the stored text, to give it back).
    Use(Approval, String),
    /// Pending (created now or found again); with why an approved one no longer covered it.
    Pending(Approval, Option<String>),
}

/// Why `now` reaches beyond `approved` (references the approvers did not see), if it does.
fn beyond(approved: &References, now: &References) -> Option<String> {
    let new_assets: Vec<&str> = now
        .indexed_assets
        .iter()
        .filter(|r| !approved.indexed_assets.iter().any(|a| a.id == r.id))
        .map(|r| r.id.as_str())
        .collect();
    let new_entities: Vec<&str> = now
        .entities
        .iter()
        .filter(|r| !approved.entities.iter().any(|a| a.id == r.id))
        .map(|r| r.id.as_str())
        .collect();
    if new_assets.is_empty() && new_entities.is_empty() {
        return None;
    }
    Some(format!(
        "it would now unlink {} indexed asset(s) and {} entit(y/ies) the approvers did not see ({})",
        new_assets.len(),
        new_entities.len(),
        new_assets
            .iter()
            .chain(new_entities.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

impl Approvals {
    /// Approvals kept in `store`.
    pub fn new(
        store: RecordStore,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
        notify: Option<notify::Notifier>,
        max_pending_per_client: usize,
    ) -> Self {
        Approvals {
            store,
            counters: None,
            audit,
            metrics,
            notify,
            max_pending_per_client: max_pending_per_client.max(1),
        }
    }

    /// Bound how often one requester may ask: at most `per_minute` new approvals a minute, counted
    /// in `state` (shared by the replicas on Redis).
    pub fn with_ask_budget(mut self, state: crate::state::StateStore, per_minute: u32) -> Self {
        self.counters = Some((state, per_minute.max(1)));
        self
    }

    /// Take one ask from `requester`'s budget, or refuse with 429.
    async fn spend_ask(&self, requester: &str) -> Result<(), GatewayError> {
        let Some((state, per_minute)) = &self.counters else {
            return Ok(());
        };
        let emission_us = 60_000_000 / u64::from(*per_minute);
        let bucket = crate::state::Bucket {
            key: format!("asks:{requester}"),
            emission_us,
            tolerance_us: emission_us * u64::from(per_minute - 1),
        };
        match state.check(std::slice::from_ref(&bucket)).await {
            Ok(verdicts) => match verdicts.first() {
                Some(crate::state::Verdict::Refuse { wait }) => {
                    Err(GatewayError::TooManyRequests {
                        limit: RuleId::builtin("approvals.max_asks_per_client"),
                        retry_after: wait.as_secs().max(1),
                        rate: crate::units::Rate {
                            count: *per_minute,
                            period: Duration::from_secs(60),
                        },
                        burst: *per_minute,
                    })
                }
                _ => Ok(()),
            },
            Err(error) => Err(GatewayError::ApprovalsUnavailable(format!(
                "the ask budget could not be checked: {error}"
            ))),
        }
    }

    /// An approval as stored (the raw text is what a compare-and-swap must match), expired first
    /// if its time is up.
    pub async fn load(&self, id: &str) -> Result<Option<(String, Approval)>, ApprovalError> {
        let Some(raw) = self.store.get(&doc_key(id)).await? else {
            return Ok(None);
        };
        self.settle(raw).await
    }

    /// Parse a stored approval and expire it if its deadline passed.
    async fn settle(&self, raw: String) -> Result<Option<(String, Approval)>, ApprovalError> {
        let Ok(approval) = serde_json::from_str::<Approval>(&raw) else {
            return Ok(None);
        };
        if approval.state.is_final() || now_ms() <= approval.deadline_ms {
            return Ok(Some((raw, approval)));
        }
        let mut expired = approval.clone();
        expired.state = State::Expired;
        match self
            .transition(&raw, &expired, Some(GATEWAY_ACTOR), None)
            .await?
        {
            Some(new_raw) => Ok(Some((new_raw, expired))),
            // Someone else moved it first: read what it is now.
            None => match self.store.get(&doc_key(&approval.id)).await? {
                Some(now) => Ok(serde_json::from_str(&now).ok().map(|a| (now, a))),
                None => Ok(None),
            },
        }
    }

    /// Store `new` in place of `raw` atomically, make its audit record durable (or undo it), count
    /// and announce it; the new raw text, or `None` if `raw` was no longer there. `actor` did it
    /// (default: the requester).
    async fn transition(
        &self,
        raw: &str,
        new: &Approval,
        actor: Option<&str>,
        comment: Option<&str>,
    ) -> Result<Option<String>, ApprovalError> {
        let text = serde_json::to_string(new)
            .map_err(|e| StoreError::Failed(format!("an approval could not be serialised: {e}")))?;
        let key = doc_key(&new.id);
        if !self.store.swap(&key, raw, &text, retention_of(new)).await? {
            return Ok(None);
        }
        if let Err(why) = self.audit_durably(new, actor, comment).await {
            // Not recorded, so not done: put it back.
            let old_ttl = serde_json::from_str::<Approval>(raw)
                .map(|a| retention_of(&a))
                .unwrap_or(RETENTION);
            let _ = self.store.swap(&key, &text, raw, old_ttl).await;
            return Err(ApprovalError::Audit(why));
        }
        if new.state != State::Pending {
            // Best effort: a failed removal is caught when the count reads the document.
            let _ = self
                .store
                .index_remove(
                    &pending_index(&new.requester),
                    std::slice::from_ref(&new.id),
                )
                .await;
        }
        self.announce(new, actor, comment);
        Ok(Some(text))
    }

    /// The `approval` audit record of a change, durable before it is answered.
    async fn audit_durably(
        &self,
        approval: &Approval,
        actor: Option<&str>,
        comment: Option<&str>,
    ) -> Result<(), String> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        let mut event = event_of(approval, actor.unwrap_or(&approval.requester));
        event.comment = comment.map(str::to_owned);
        match tokio::time::timeout(AUDIT_TIMEOUT, log.write_durable(event)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the audit log did not answer in time".into()),
        }
    }

    /// Count, log and notify a recorded change.
    fn announce(&self, approval: &Approval, actor: Option<&str>, comment: Option<&str>) {
        // One approval of several leaves it pending (a decision, not a new state); `used` is
        // counted once the request really went on (see the layer).
        let partly = approval.state == State::Pending && !approval.decisions.is_empty();
        if !partly && approval.state != State::Used {
            self.count(approval, approval.state);
        }
        let actor = actor.unwrap_or(&approval.requester);
        tracing::info!(
            approval_id = %approval.id,
            state = approval.state.as_str(),
            requester = %approval.requester,
            by = actor,
            rule = %approval.rule,
            "approval {}",
            if partly { "approved in part" } else { approval.state.as_str() }
        );
        if let Some(notify) = &self.notify {
            notify.send(approval, actor, comment);
        }
    }

    fn count(&self, approval: &Approval, state: State) {
        self.metrics
            .approvals
            .with_label_values(&[&approval.rule, state.as_str()])
            .inc();
    }

    /// How many of `requester`'s approvals are pending, exactly, up to `cap` (the count stops
    /// there). Read from the requester's index of pending approvals, which every transition out
    /// of pending leaves; an entry whose approval is no longer pending (a removal that failed, an
    /// expiry not yet settled) is checked against its document and dropped.
    async fn pending_of(&self, requester: &str, cap: usize) -> Result<usize, ApprovalError> {
        let index = pending_index(requester);
        let now = now_ms();
        let mut pending = 0;
        let mut before: Option<(u64, String)> = None;
        loop {
            let page = self
                .store
                .index_page(&index, before.as_ref().map(|(s, m)| (*s, m.as_str())), PAGE)
                .await?;
            let keys: Vec<String> = page.iter().map(|(id, _)| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            let mut stale = Vec::new();
            for ((id, _), doc) in page.iter().zip(docs) {
                match doc.and_then(|d| serde_json::from_str::<Approval>(&d).ok()) {
                    Some(a) if a.state == State::Pending && a.deadline_ms >= now => pending += 1,
                    _ => stale.push(id.clone()),
                }
            }
            self.store.index_remove(&index, &stale).await?;
            if pending >= cap || page.len() < PAGE {
                return Ok(pending);
            }
            before = page.last().map(|(id, score)| (*score, id.clone()));
        }
    }

    /// A request that `required` asks approval for: use its approval, or refuse it with the
    /// pending one (created, or found again for an identical re-send). `lookup` lists what a
    /// forced delete would unlink; it runs only when a new approval is asked for.
    async fn ask_or_use<F, Fut>(
        &self,
        required: &ApprovalRequired,
        principal: &Principal,
        op: &Operation,
        body: Option<&body::BoundBody>,
        lookup: F,
    ) -> Result<Asked, GatewayError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<References>, GatewayError>>,
    {
        let method = op.method.as_str().to_owned();
        let target = op.path_and_query();
        let sha = request_sha256(&method, &target, body.map(|b| b.sha256.as_str()));
        let requirements = requirements_of(required);
        let key = request_key(principal.client.as_str(), &sha);
        // The pointer outlives a pending approval by `use_within`, so an approval given at the last
        // moment can still be found when its request is re-sent.
        let pointer_ttl = required.ttl + required.use_within;
        let mut lookup = Some(lookup);
        let mut references: Option<Option<References>> = None;
        let mut grown: Option<String> = None;
        let mut spent = false;
        for _ in 0..8 {
            let found = self.store.get(&key).await.map_err(ApprovalError::from)?;
            if let Some(id) = &found {
                if let Some((raw, approval)) = self.load(id).await? {
                    // Only an approval of this very request, by this requester, under the same
                    // requirements counts (a reload may have changed them).
                    let current = approval.requester == principal.client.as_str()
                        && approval.request_sha256 == sha
                        && approval.requirements == requirements;
                    // An approval covers the blast radius its approvers saw: listed again at use,
                    // more or other references ask anew.
                    if current && approval.state == State::Approved {
                        if let Some(approved) = &approval.references {
                            if references.is_none() {
                                let list = lookup.take().map(|f| f());
                                references = Some(match list {
                                    Some(list) => list.await?,
                                    None => None,
                                });
                            }
                            if let Some(Some(now)) = &references {
                                grown = beyond(approved, now).map(|why| {
                                    format!(
                                        "approval {} no longer covers this request: {why}",
                                        approval.id
                                    )
                                });
                            }
                        }
                    }
                    match approval.state {
                        State::Pending if current => return Ok(Asked::Pending(approval, None)),
                        State::Approved if current && grown.is_none() => {
                            let mut used = approval.clone();
                            used.state = State::Used;
                            used.used_at = Some(rfc3339(SystemTime::now()));
                            if let Some(used_raw) = self.transition(&raw, &used, None, None).await?
                            {
                                return Ok(Asked::Use(used, used_raw));
                            }
                            // Another copy used it first: look again (it is final now).
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            // None, a final one, or a stale one: ask anew.
            if self
                .pending_of(principal.client.as_str(), self.max_pending_per_client)
                .await?
                >= self.max_pending_per_client
            {
                return Err(GatewayError::ApprovalsPendingCap(
                    self.max_pending_per_client,
                ));
            }
            if !spent {
                // Asking costs: a bounded budget per requester, before any upstream lookup.
                self.spend_ask(principal.client.as_str()).await?;
                spent = true;
            }
            if references.is_none() {
                // Before claiming: a refusal here (a legal hold, a failed lookup) leaves nothing.
                let list = lookup.take().map(|f| f());
                references = Some(match list {
                    Some(list) => list.await?,
                    None => None,
                });
            }
            let id = new_id();
            let mut approval = new_approval(
                &id,
                required,
                requirements.clone(),
                principal,
                &method,
                &target,
                &sha,
            );
            approval.references = references.clone().flatten();
            approval.body = body.map(|b| b.shown.clone());
            // The document first, then the pointer to it: whoever finds the pointer (another copy
            // of this request, on any replica) finds the approval, so racing asks agree on one id.
            let text = serde_json::to_string(&approval).map_err(|e| {
                ApprovalError::from(StoreError::Failed(format!(
                    "an approval could not be serialised: {e}"
                )))
            })?;
            let doc = doc_key(&id);
            self.store
                .insert(&doc, &text, retention_of(&approval))
                .await
                .map_err(ApprovalError::from)?;
            let claimed = match &found {
                None => self.store.insert(&key, &id, pointer_ttl).await,
                Some(old) => self.store.swap(&key, old, &id, pointer_ttl).await,
            };
            match claimed {
                Ok(true) => {}
                Ok(false) => {
                    // Another copy claimed it first: drop ours (never announced), use theirs.
                    let _ = self.store.remove(&doc, &text).await;
                    continue;
                }
                Err(error) => {
                    let _ = self.store.remove(&doc, &text).await;
                    return Err(ApprovalError::from(error).into());
                }
            }
            match self.create(&approval).await {
                Ok(()) => return Ok(Asked::Pending(approval, grown)),
                Err(error) => {
                    // Not recorded, so not asked: the pointer and the document go.
                    let _ = self.store.remove(&key, &id).await;
                    let _ = self.store.remove(&doc, &text).await;
                    return Err(error.into());
                }
            }
        }
        Err(GatewayError::ApprovalsUnavailable(
            "the approval changed too often while being checked; retry".into(),
        ))
    }

    /// Index a new pending approval (its document is stored and claimed); record it.
    async fn create(&self, approval: &Approval) -> Result<(), ApprovalError> {
        self.store
            .index_add(
                &pending_index(&approval.requester),
                &approval.id,
                approval.created_ms,
            )
            .await?;
        self.store
            .index_add(INDEX, &approval.id, approval.created_ms)
            .await?;
        self.store
            .index_add(
                &requester_index(&approval.requester),
                &approval.id,
                approval.created_ms,
            )
            .await?;
        self.audit_durably(approval, None, None)
            .await
            .map_err(ApprovalError::Audit)?;
        self.announce(approval, None, None);
        Ok(())
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
                roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                decision: if approve { "approve" } else { "deny" }.into(),
                comment: comment.clone(),
                at: rfc3339(SystemTime::now()),
            });
            if !approve {
                next.state = State::Denied;
            } else if next.satisfied() {
                next.state = State::Approved;
                next.deadline_ms = now_ms() + next.use_within_ms;
                next.expires_at = time_of(next.deadline_ms);
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
                roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
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
                tracing::info!(approval_id = %used.id, refusal = refusal.code(), "approval given back");
                // Recorded durably, as every transition is; the approval stays given back (the
                // request was refused either way), and a failure to record it is logged loudly.
                let comment = format!(
                    "given back: the request was refused before it reached the upstream ({})",
                    refusal.code()
                );
                if let Err(why) = self
                    .audit_durably(&approved, Some(GATEWAY_ACTOR), Some(&comment))
                    .await
                {
                    tracing::error!(approval_id = %used.id, %why, "the give-back of an approval could not be recorded durably");
                }
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(approval_id = %used.id, %error, "an approval could not be given back; the requester needs a new one");
            }
        }
    }

    /// The approvals of the index, newest first, as stored (expired ones settled).
    async fn scan(&self, limit: usize) -> Result<Vec<Approval>, ApprovalError> {
        let ids = self.store.index_newest(INDEX, limit).await?;
        let mut found = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for chunk in ids.chunks(PAGE) {
            let keys: Vec<String> = chunk.iter().map(|id| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            for (id, doc) in chunk.iter().zip(docs) {
                match doc {
                    None => gone.push(id.clone()),
                    Some(raw) => {
                        if let Some((_, approval)) = self.settle(raw).await? {
                            found.push(approval);
                        }
                    }
                }
            }
        }
        // Documents past their retention are gone from the store: drop them from the index.
        self.store.index_remove(INDEX, &gone).await?;
        Ok(found)
    }

    /// One page of the approvals `caller` may see, newest first, optionally only in `state`,
    /// starting after `cursor`; and the cursor of the next page, if there may be one. `everyone`:
    /// the caller approves for some rule, so every approval is looked at (those it may see are
    /// kept); otherwise only the caller's own. A page reads at most [`LIST_BOUND`] approvals, so a
    /// listing never reads the whole store: a filtered page may come back short, with a cursor.
    pub async fn list(
        &self,
        caller: &Principal,
        state: Option<State>,
        limit: usize,
        cursor: Option<&Cursor>,
        everyone: bool,
    ) -> Result<(Vec<Approval>, Option<Cursor>), ApprovalError> {
        let index = if everyone {
            INDEX.to_owned()
        } else {
            requester_index(caller.client.as_str())
        };
        let mut found = Vec::new();
        let mut at: Option<Cursor> = cursor.cloned();
        let mut read = 0;
        loop {
            let before = at.as_ref().map(|c| (c.ms, c.id.as_str()));
            let page = self.store.index_page(&index, before, PAGE).await?;
            let keys: Vec<String> = page.iter().map(|(id, _)| doc_key(id)).collect();
            let docs = self.store.get_many(&keys).await?;
            let mut gone = Vec::new();
            for ((id, ms), doc) in page.iter().zip(docs) {
                read += 1;
                at = Some(Cursor {
                    ms: *ms,
                    id: id.clone(),
                });
                let Some(raw) = doc else {
                    gone.push(id.clone());
                    continue;
                };
                if let Some((_, approval)) = self.settle(raw).await? {
                    if approval.visible_to(caller) && state.is_none_or(|s| s == approval.state) {
                        found.push(approval);
                        if found.len() == limit {
                            self.store.index_remove(&index, &gone).await?;
                            return Ok((found, at));
                        }
                    }
                }
            }
            // Documents past their retention are gone from the store: drop them from the index.
            self.store.index_remove(&index, &gone).await?;
            if page.len() < PAGE {
                return Ok((found, None));
            }
            if read >= LIST_BOUND {
                return Ok((found, at));
            }
        }
    }

    /// Expire what is due, forget what is past its retention, and refresh
    /// `tl_gateway_approvals_pending` and `…_oldest_pending_seconds` (run every few seconds).
    pub async fn sweep(&self) -> Result<(), ApprovalError> {
        // Nothing outlives its deadline by more than the retention; no deadline is a month past
        // its creation in any sane configuration.
        let horizon = now_ms()
            .saturating_sub((RETENTION + Duration::from_secs(31 * 86_400)).as_millis() as u64);
        self.store.index_trim(INDEX, horizon).await?;
        let mut pending = 0;
        let mut oldest: Option<u64> = None;
        for approval in self.scan(SCAN_LIMIT).await? {
            if approval.state == State::Pending {
                pending += 1;
                oldest = Some(oldest.map_or(approval.created_ms, |o| o.min(approval.created_ms)));
            }
        }
        self.metrics.approvals_pending.set(pending);
        self.metrics
            .approvals_oldest_pending
            .set(oldest.map_or(0, |created| {
                (now_ms().saturating_sub(created) / 1000) as i64
            }));
        Ok(())
    }
}

/// Approvals looked at by a sweep, at most (newest first).
const SCAN_LIMIT: usize = 5000;

/// Approvals one listing request reads at most.
pub const LIST_BOUND: usize = 500;

/// Where a listing page ends: the creation time (ms) and id of its last approval. Written
/// `MS-ID` in the API's `next_cursor` and `?cursor=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    ms: u64,
    id: String,
}

impl Cursor {
    /// Read `MS-ID`.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (ms, id) = text.split_once('-')?;
        let ms = ms.parse().ok()?;
        let plain = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        (id.starts_with("apr_") && plain).then(|| Cursor {
            ms,
            id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.id)
    }
}

fn new_approval(
    id: &str,
    required: &ApprovalRequired,
    requirements: Vec<Requirement>,
    principal: &Principal,
    method: &str,
    target: &str,
    sha: &str,
) -> Approval {
    let created = now_ms();
    let deadline = created + required.ttl.as_millis() as u64;
    Approval {
        id: id.to_owned(),
        state: State::Pending,
        requester: principal.client.as_str().to_owned(),
        rule: required.rule.as_str().to_owned(),
        message: required.message.as_deref().map(str::to_owned),
        method: method.to_owned(),
        target: target.to_owned(),
        request_sha256: sha.to_owned(),
        body: None,
        created_at: time_of(created),
        expires_at: time_of(deadline),
        approver_roles: required
            .approver_roles()
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
        approvals_required: requirements.iter().map(|r| r.approvals).max().unwrap_or(1),
        requirements,
        decisions: Vec::new(),
        references: None,
        used_at: None,
        created_ms: created,
        deadline_ms: deadline,
        use_within_ms: required.use_within.as_millis() as u64,
    }
}

/// The `approval` audit record of `approval` as `actor` moved it.
fn event_of(approval: &Approval, actor: &str) -> Event {
    let path = approval
        .target
        .split_once('?')
        .map_or(approval.target.as_str(), |(path, _)| path);
    let approvers = approval.approvers();
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
        approvers: (!approvers.is_empty()).then_some(approvers),
        // The blast radius, once: with the request.
        references: (approval.state == State::Pending && approval.decisions.is_empty())
            .then(|| approval.references.clone())
            .flatten(),
        ..Event::default()
    }
}

/// How long to keep an approval: until its deadline, then [`RETENTION`] for the record.
fn retention_of(approval: &Approval) -> Duration {
    let until = approval.deadline_ms.saturating_sub(now_ms());
    Duration::from_millis(until) + RETENTION
}

/// The approvals layer: after policy and protection, before limits, guards and the intent. A
/// request whose [`Decision`] asks for approval is forwarded only by using an approved approval
/// (inserting [`ApprovalUsed`]); if a check below then refuses it before it reaches the upstream,
/// the approval is given back (used → approved) so the requester can re-send once that is fixed.
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
    metrics: Arc<Metrics>,
    gateway_url: String,
    max_body_bytes: usize,
}

impl RequireApprovalLayer {
    /// The layer. `guard` lists a forced asset delete's references for the approvers (its blast
    /// radius); `protection` refuses, at asking time, one that reaches a protected resource;
    /// `gateway_url` is the gateway's URL in `approval_required` messages.
    pub fn new(
        approvals: Approvals,
        guard: Option<ForceDeleteGuard>,
        protection: Arc<Protection>,
        metrics: Arc<Metrics>,
        gateway_url: String,
        max_body_bytes: usize,
    ) -> Self {
        RequireApprovalLayer {
            shared: Arc::new(LayerShared {
                approvals,
                guard,
                protection,
                metrics,
                gateway_url,
                max_body_bytes,
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
    "approvals could not be checked: request not classified, authenticated or judged by policy";

impl<S, B> tower::Service<Request<B>> for RequireApproval<S>
where
    S: tower::Service<Request<B>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: body::Rebody + Send + 'static,
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
        if let Some(replay) = req.extensions().get::<crate::ext::Replay>().cloned() {
            // A deferred call executed now: it used its approval when it was scheduled. One that
            // a rule asks approval for now, but that had none then, is refused.
            let asks = req
                .extensions()
                .get::<Decision>()
                .and_then(|d| d.approval.as_ref())
                .map(|a| a.rule.clone());
            return match (asks, replay.approval) {
                (Some(rule), None) => Either::Right(Box::pin(std::future::ready(Err(
                    GatewayError::PolicyDenied {
                        rule,
                        message: Some(
                            "this rule now asks for an approval the deferred call was scheduled without"
                                .into(),
                        ),
                    },
                )))),
                (_, used) => {
                    if let Some(used) = used {
                        req.extensions_mut().insert(used);
                    }
                    Either::Left(self.inner.call(req))
                }
            };
        }
        // Fail closed: policy inserts a decision on every request it lets through.
        let required = match req.extensions().get::<Decision>() {
            None => {
                return Either::Right(Box::pin(std::future::ready(Err(GatewayError::Internal(
                    UNJUDGED,
                )))))
            }
            Some(decision) => match &decision.approval {
                None => return Either::Left(self.inner.call(req)),
                Some(required) => required.clone(),
            },
        };
        // The ready service goes with the request; this one keeps a fresh clone.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        let shared = self.shared.clone();
        Either::Right(Box::pin(async move {
            let (op, principal) = {
                let (op, principal) = judged(&req, UNJUDGED)?;
                (op.clone(), principal.clone())
            };
            // The body is part of what is approved: read it (bounded), bind its digest, and
            // forward the same bytes.
            let (mut req, bound) = body::bind(req, shared.max_body_bytes).await?;
            match shared
                .approvals
                .ask_or_use(&required, &principal, &op, bound.as_ref(), || {
                    references_for(&shared, &op)
                })
                .await?
            {
                Asked::Pending(approval, why) => {
                    let mut refusal = approval_required(&approval, &required, &shared.gateway_url);
                    if let (Some(why), GatewayError::ApprovalRequired { message, .. }) =
                        (why, &mut refusal)
                    {
                        *message = format!("{why}; a new approval was asked for. {message}");
                    }
                    Err(refusal)
                }
                Asked::Use(approval, raw) => {
                    req.extensions_mut().insert(ApprovalUsed {
                        approvers: approval.approvers(),
                        id: approval.id.clone(),
                    });
                    tracing::info!(approval_id = %approval.id, "approval used");
                    let result = inner.call(req).await;
                    match &result {
                        Err(error) if error.is_before_forwarding() => {
                            shared.approvals.give_back(&raw, &approval, error).await;
                        }
                        _ => shared.approvals.count(&approval, State::Used),
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
            shared
                .metrics
                .guard_lookups
                .with_label_values(&["ok"])
                .inc();
            // A delete a legal hold forbids gets no approval at all.
            if let Err(refusal) = shared.protection.check_references(&references) {
                shared
                    .metrics
                    .policy_denials
                    .with_label_values(&[PROTECTED_RULE])
                    .inc();
                return Err(refusal);
            }
            Ok(Some(references))
        }
        Err(error) => {
            shared
                .metrics
                .guard_lookups
                .with_label_values(&["failed"])
                .inc();
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

/// The 403 `approval_required` for a pending approval.
fn approval_required(
    approval: &Approval,
    required: &ApprovalRequired,
    gateway: &str,
) -> GatewayError {
    let roles = approval.approver_roles.join(", ");
    let so_far = approval.approvers().len();
    let needed = if approval.approvals_required > 1 || approval.requirements.len() > 1 {
        format!(
            "approvals ({so_far} so far) by clients with a role in [{roles}]: {}",
            approval
                .requirements
                .iter()
                .map(|r| format!("{} for rule '{}'", r.approvals, r.rule))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("approval by a client with a role in [{roles}] (not you)")
    };
    let mut message = format!(
        "approval {} required by rule '{}': this request needs {needed}. An approver runs `tl-gateway approvals approve {} --gateway {gateway}` (or opens {gateway}/tl-gateway/ui/); then re-send this exact request within {} of the approval. Pending until {}.",
        approval.id,
        approval.rule,
        approval.id,
        humantime::format_duration(required.use_within),
        approval.expires_at,
    );
    if let Some(rule_message) = &required.message {
        message.push(' ');
        message.push_str(rule_message);
    }
    GatewayError::ApprovalRequired {
        id: approval.id.clone(),
        rule: required.rule.clone(),
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

#[cfg(test)]
mod tests;
