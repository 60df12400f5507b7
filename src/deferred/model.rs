//! A deferred call as stored and shown: its states, outcome, store keys, audit record and view.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::audit::record::{Event, Phase};
use crate::auth::Principal;
use crate::guards::References;
use crate::ids::Role;
use crate::units::rfc3339;

use super::RETENTION;

/// Where a deferred call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for `execute_at`; may be cancelled.
    Scheduled,
    /// Cancelled before it ran: never forwarded.
    Cancelled,
    /// Claimed by a replica, being judged again and forwarded.
    Executing,
    /// Forwarded; the upstream answered (`outcome`).
    Executed,
    /// Refused when it was judged again at execution time (policy, protection, limits, guard):
    /// never forwarded.
    Refused,
    /// Its replica died after it may have been forwarded: whether it took effect is unknown, and
    /// it is never forwarded again.
    Unresolved,
}

impl State {
    /// Every state.
    pub const ALL: [State; 6] = [
        State::Scheduled,
        State::Cancelled,
        State::Executing,
        State::Executed,
        State::Refused,
        State::Unresolved,
    ];

    /// The name (API, metrics, audit).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Cancelled => "cancelled",
            State::Executing => "executing",
            State::Executed => "executed",
            State::Refused => "refused",
            State::Unresolved => "unresolved",
        }
    }

    /// Parse a name.
    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether nothing can happen to it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Scheduled | State::Executing)
    }
}

/// How an execution ended (absent until it did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The status of the replayed call's answer (the upstream's, or the gateway's refusal).
    pub status: Option<u16>,
    /// The gateway's error code, when the gateway answered itself (a refusal, a failure).
    pub code: Option<String>,
    /// The gateway's message, when it answered itself.
    pub message: Option<String>,
    /// Whether it was handed to the upstream.
    pub forwarded: bool,
    /// When it ended (RFC 3339).
    pub at: String,
}

/// A deferred call as stored (and, with the caller's permissions added, as the API shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferred {
    /// `dfr_` and 16 hex digits.
    pub id: String,
    /// Where it is.
    pub state: State,
    /// Who asked.
    pub requester: String,
    /// The (first) deferring rule.
    pub rule: String,
    /// The request: method …
    pub method: String,
    /// … and canonical target (path and query), as it will be forwarded.
    pub target: String,
    /// SHA-256 of `METHOD target`: with the requester, what a re-send is recognised by.
    pub request_sha256: String,
    /// The request id of the call that scheduled it.
    pub request_id: String,
    /// When it was scheduled.
    pub created_at: String,
    /// When it runs.
    pub execute_at: String,
    /// Roles whose holders may cancel it (the requester always may).
    pub cancel_roles: Vec<String>,
    /// For a forced asset delete: what it would unlink when it was scheduled (the blast radius).
    pub references: Option<References>,
    /// The approval it used when it was scheduled.
    pub approval_id: Option<String>,
    /// Who approved that approval.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// How its execution ended.
    pub outcome: Option<Outcome>,
    /// The claim of the replica executing it (`replica:attempt`).
    #[serde(default)]
    pub claim: Option<String>,
    /// Until when (ms since the epoch) that claim holds before another replica may take it over.
    #[serde(default)]
    pub lease_until_ms: u64,
    /// Set (by the claim's holder, right before the intent record) once it may be forwarded: a
    /// claim taken over with this set is reported unresolved, never forwarded again.
    #[serde(default)]
    pub forwarding: bool,
    /// Claims so far.
    #[serde(default)]
    pub attempts: u32,
    /// Milliseconds since the epoch of `created_at` (ordering).
    pub created_ms: u64,
    /// Milliseconds since the epoch of `execute_at`.
    pub execute_at_ms: u64,
}

impl Deferred {
    /// Whether `caller` may cancel it (now or, were it scheduled, at all): its requester, or a
    /// holder of one of its cancel roles.
    pub fn may_cancel(&self, caller: &Principal) -> bool {
        self.requester == caller.client.as_str()
            || caller
                .roles
                .iter()
                .any(|r| self.cancel_roles.iter().any(|c| c == r.as_str()))
    }

    /// Whether `caller` may see it: whoever may cancel it, or a reader of the audit log.
    pub fn visible_to(&self, caller: &Principal, audit_roles: &[Role]) -> bool {
        self.may_cancel(caller) || caller.roles.iter().any(|r| audit_roles.contains(r))
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn time_of(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

pub(super) fn doc_key(id: &str) -> String {
    format!("deferred:{id}")
}

/// The store key that finds a requester's scheduled call for one exact request.
pub(super) fn request_key(requester: &str, sha: &str) -> String {
    format!("deferred-request:{requester}:{sha}")
}

pub(super) fn new_id() -> String {
    format!("dfr_{:016x}", rand::random::<u64>())
}

/// How long to keep a deferred call: until it is due, then [`RETENTION`] for the record.
pub(super) fn retention_of(deferred: &Deferred) -> Duration {
    Duration::from_millis(deferred.execute_at_ms.saturating_sub(now_ms())) + RETENTION
}

/// The `deferred` audit record of `deferred` as `actor` moved it.
pub(super) fn event_of(deferred: &Deferred, actor: &str) -> Event {
    let path = deferred
        .target
        .split_once('?')
        .map_or(deferred.target.as_str(), |(path, _)| path);
    let outcome = deferred.outcome.as_ref();
    Event {
        time: rfc3339(SystemTime::now()),
        request_id: deferred.id.clone(),
        phase: Some(Phase::Deferred),
        client: Some(actor.to_owned()),
        method: deferred.method.clone(),
        path: path.to_owned(),
        rule: Some(deferred.rule.clone()),
        state: Some(deferred.state.as_str().to_owned()),
        requester: Some(deferred.requester.clone()),
        // The blast radius, once: when it is scheduled.
        references: (deferred.state == State::Scheduled)
            .then(|| deferred.references.clone())
            .flatten(),
        approval_id: (deferred.state == State::Scheduled)
            .then(|| deferred.approval_id.clone())
            .flatten(),
        approvers: (deferred.state == State::Scheduled && !deferred.approvers.is_empty())
            .then(|| deferred.approvers.clone()),
        status: outcome.and_then(|o| o.status),
        error: outcome.and_then(|o| o.code.clone()),
        forwarded: outcome.map(|o| o.forwarded),
        deferred_id: Some(deferred.id.clone()),
        execute_at: Some(deferred.execute_at.clone()),
        ..Event::default()
    }
}

/// The deferred call as the API shows it to `caller`.
pub fn view(deferred: &Deferred, caller: &Principal) -> serde_json::Value {
    let mut value = serde_json::to_value(deferred).unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        for internal in [
            "created_ms",
            "execute_at_ms",
            "request_sha256",
            "claim",
            "lease_until_ms",
            "forwarding",
            "attempts",
        ] {
            object.remove(internal);
        }
        object.insert(
            "can_cancel".into(),
            (deferred.state == State::Scheduled && deferred.may_cancel(caller)).into(),
        );
    }
    value
}
