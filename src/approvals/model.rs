//! The approval as it is stored and shown: its states, decisions and requirements, the store keys
//! and indexes it is found by, its audit record, and the listing cursor.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::record::{Event, Phase};
use crate::auth::Principal;
use crate::guards::References;
use crate::policy::ApprovalRequired;
use crate::units::{hex, rfc3339};

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

/// What one person decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An approver approved.
    Approve,
    /// An approver denied.
    Deny,
    /// The requester withdrew it.
    Cancel,
}

/// One decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// Who.
    pub client: String,
    /// Their roles when they decided (which requirements their approval counts for).
    #[serde(default)]
    pub roles: Vec<String>,
    /// `approve`, `deny` or `cancel` (as stored and shown).
    pub decision: Verdict,
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
            .filter(|d| d.decision == Verdict::Approve)
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
    pub(super) fn satisfied(&self) -> bool {
        self.requirements.iter().all(|req| {
            let count = self
                .decisions
                .iter()
                .filter(|d| d.decision == Verdict::Approve)
                .filter(|d| d.roles.iter().any(|r| req.approver_roles.contains(r)))
                .count();
            count >= req.approvals as usize
        })
    }
}

/// The requirements of `required`, in their stored form.
pub(super) fn requirements_of(required: &ApprovalRequired) -> Vec<Requirement> {
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

pub(super) use crate::units::now_ms;

pub(super) fn time_of(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

pub(super) fn doc_key(id: &str) -> String {
    format!("approval:{id}")
}

/// The store key that finds a requester's approval for one exact request.
pub(super) fn request_key(requester: &str, sha: &str) -> String {
    format!("approval-request:{requester}:{sha}")
}

/// The index of one requester's approvals.
pub(super) fn requester_index(requester: &str) -> String {
    format!("approvals-by:{requester}")
}

/// The index of one requester's pending approvals (left by every transition out of pending).
pub(super) fn pending_index(requester: &str) -> String {
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

pub(super) fn new_id() -> String {
    format!("apr_{:016x}", rand::random::<u64>())
}

/// Approvals one listing request reads at most.
pub const LIST_BOUND: usize = 500;

/// Where a listing page ends: the creation time (ms) and id of its last approval. Written
/// `MS-ID` in the API's `next_cursor` and `?cursor=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub(super) ms: u64,
    pub(super) id: String,
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

pub(super) fn new_approval(
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
pub(super) fn event_of(approval: &Approval, actor: &str) -> Event {
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
