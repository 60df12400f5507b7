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
//!    the record store, so two racing copies (even on two replicas sharing PostgreSQL) forward one — and
//!    every other check (other rules, limits, guards, audit) still applies. If one of those refuses
//!    it before it reaches the upstream, the approval is given back (used → approved).
//!
//! Pending approvals expire after `ttl`, approved ones after `use_within`. Every transition is a
//! chained audit record (phase `approval`), durable before the transition is answered (or it is
//! undone and refused with 503 `audit_unavailable`), counted in `tl_gateway_approvals_total`, and
//! new requests and decisions are posted to an optional webhook ([`notify`]). Approvals live in the
//! record store ([`crate::store`]: memory, SQLite or PostgreSQL shared by the replicas).
//!
//! The module, by job: `model` (the approval as stored and shown), `ask` (asking or using),
//! `ledger` (transitions, decisions, listings), `layer` (the request path), [`body`] (the body
//! an approval binds), [`notify`] (the webhook).

mod ask;
pub mod body;
mod layer;
mod ledger;
mod model;
pub mod notify;
pub mod settings;

pub use self::layer::{RequireApproval, RequireApprovalLayer};
pub use self::model::request_sha256;
use self::model::*;
pub use self::model::{view, Approval, Cursor, Decided, Requirement, State, Verdict, LIST_BOUND};

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::error::GatewayError;
pub use crate::ext::ApprovalUsed;
use crate::metrics::Metrics;
use crate::store::{RecordStore, StoreError};

/// Default `approvals.keep_decided`: how long finished approvals are kept (for the page's decided
/// tab and `approvals list`).
pub const DEFAULT_KEEP_DECIDED: Duration = Duration::from_secs(7 * 86_400);

/// Default `approvals.max_decided_per_client`: finished approvals kept per requester (older ones
/// are forgotten as new ones are asked for).
pub const DEFAULT_MAX_DECIDED_PER_CLIENT: usize = 1000;

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
    /// The record store failed.
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
    counters: Option<crate::ratelimit::PerMinuteBudget>,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    notify: Option<notify::Notifier>,
    max_pending_per_client: usize,
    /// How long a finished approval is kept.
    keep_decided: Duration,
    /// Finished approvals kept per requester.
    max_decided_per_client: usize,
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
            keep_decided: DEFAULT_KEEP_DECIDED,
            max_decided_per_client: DEFAULT_MAX_DECIDED_PER_CLIENT,
        }
    }

    /// Keep finished approvals for `keep` (`approvals.keep_decided`), and at most `per_client` of
    /// each requester's (`approvals.max_decided_per_client`): asking cannot grow the store without
    /// bound.
    pub fn with_retention(mut self, keep: Duration, per_client: usize) -> Self {
        self.keep_decided = keep;
        self.max_decided_per_client = per_client.max(1);
        self
    }

    /// How long to keep `approval`: until its deadline, then `keep_decided` for the record.
    fn retention_of(&self, approval: &Approval) -> Duration {
        let until = approval.deadline_ms.saturating_sub(model::now_ms());
        Duration::from_millis(until) + self.keep_decided
    }

    /// Bound how often one requester may ask: at most `per_minute` new approvals a minute, counted
    /// in `state` (shared by the replicas on Redis).
    pub fn with_ask_budget(mut self, state: crate::state::StateStore, per_minute: u32) -> Self {
        self.counters = Some(crate::ratelimit::PerMinuteBudget::new(
            state,
            per_minute,
            "approvals.max_asks_per_client",
            "asks:",
        ));
        self
    }
}

#[cfg(test)]
mod tests;
