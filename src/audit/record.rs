//! Audit records: the JSON Lines format, its canonical bytes and the SHA-256 hash chain.
//!
//! A line is the record serialised with its fields in a fixed order, ending in `"prev_hash"`, then
//! `,"hash":"<hex>"}`. `hash` is SHA-256 over the line without the hash member (the canonical bytes,
//! which include `prev_hash`), so any edit, removal, insertion or reordering breaks the chain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::guards::{EntityRef, IndexedAssetRef, References};
use crate::units::hex;

/// `prev_hash` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A permitted destructive request is about to be forwarded (durable before forwarding).
    Intent,
    /// How a forwarded request ended.
    Outcome,
    /// The attempt was refused (policy, rate limit, guard, audit unavailable).
    Denied,
    /// An intent left without outcome by a crash, resolved at start-up.
    Reconciled,
    /// Denials of one client beyond `audit.max_denied_per_client` in one second, coalesced.
    DeniedSummary,
    /// An approval changed state (asked, approved, denied, expired, used, cancelled).
    Approval,
    /// A client or key changed through the keys API (created, updated, disabled, issued, revoked,
    /// rotated).
    Admin,
    /// A deferred call changed state (scheduled, cancelled, executing, executed, refused,
    /// unresolved).
    Deferred,
}

impl Phase {
    /// Records nobody may lose (intents, outcomes, reconciliations) as opposed to refusals, which
    /// are bounded per client and give way first when the audit volume runs low.
    pub fn is_refusal(self) -> bool {
        matches!(self, Phase::Denied | Phase::DeniedSummary)
    }
}

/// An audit event before the writer gives it its place in the chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// RFC 3339 UTC time of the event.
    pub time: String,
    /// The request id (the client's own `x-request-id` if it sent a plain one).
    pub request_id: String,
    /// The gateway's own id for this request's records: intents, outcomes and reconciliations are
    /// paired by it, never by the client-chosen request id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub audit_id: Option<String>,
    /// Phase.
    pub phase: Option<Phase>,
    /// Client id (absent for unauthenticated requests).
    pub client: Option<String>,
    /// The client's roles.
    pub roles: Vec<String>,
    /// The client's address.
    pub client_ip: Option<String>,
    /// The label of the personal key the request presented (never the key).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key_label: Option<String>,
    /// Lowercase hex SHA-256 of the client certificate that identified the client.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub certificate: Option<String>,
    /// How the caller authenticated: `key` (with `key_label`), `certificate` (with
    /// `certificate`) or `oidc` (a person signed in on the page; with `issuer` and `subject`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth: Option<String>,
    /// For `auth: oidc`: the identity provider's issuer URL.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issuer: Option<String>,
    /// For `auth: oidc`: the ID token's subject (the provider's id of the person).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Canonical path.
    pub path: String,
    /// Route id.
    pub operation: String,
    /// Path parameters.
    pub params: BTreeMap<String, String>,
    /// For asset deletes: whether force was read as true.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub force: Option<bool>,
    /// `allow` or `deny`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decision: Option<String>,
    /// The deciding rule (or limit, or guard).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule: Option<String>,
    /// Final HTTP status (outcome, denied, reconciled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// Time from arrival to the end of the response.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<u64>,
    /// Why a request failed or how it ended early (e.g. `upstream_timeout`, `client_disconnected`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// What a forced asset delete was about to unlink.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub references: Option<References>,
    /// For `reconciled`: the `audit_id` (older records: the request id) of the intent it resolves.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resolves: Option<String>,
    /// On outcomes: whether the request was handed to the upstream at all.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub forwarded: Option<bool>,
    /// On outcomes: the upstream's own status, when it answered (absent: its answer is unknown).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upstream_status: Option<u16>,
    /// On `denied_summary`: how many denials it stands for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u64>,
    /// On `denied_summary`: the rules (or limits, or error codes) that refused them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rules: Option<Vec<String>>,
    /// On `denied_summary`: the first and last request ids it stands for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_request_id: Option<String>,
    /// See `first_request_id`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_request_id: Option<String>,
    /// The approval a record is about: on `approval` records, on the intent of a request that used
    /// one, and on the `denied` record of a request that needs one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approval_id: Option<String>,
    /// On `approval`: the state it moved to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    /// On `approval`: who asked for it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub requester: Option<String>,
    /// On `approval`: who approved or denied (absent for the requester's own transitions).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approver: Option<String>,
    /// On `approval`: the approver's comment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comment: Option<String>,
    /// On the intent of a request that used an approval: who approved it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approvers: Option<Vec<String>>,
    /// On a `denied` record refused by `guards.protected`: the protected id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub protected: Option<String>,
    /// On `admin`: what happened (`client_created`, `key_issued`, `key_revoked`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event: Option<String>,
    /// On `admin`: who did it (`client` is the client it was done to).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actor: Option<String>,
    /// On `admin`: the key's label, when a key was issued, revoked or rotated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    /// On `deferred` records, and on the intent of a deferred call's execution: the deferred call.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deferred_id: Option<String>,
    /// On `deferred`: when the call is (or was) due.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub execute_at: Option<String>,
}

/// A record as written: the event, its sequence number and chain links.
#[derive(Debug, Serialize)]
struct Chained<'a, E> {
    seq: u64,
    #[serde(flatten)]
    event: &'a E,
    prev_hash: &'a str,
}

/// A parsed line (for verification and search).
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    /// Sequence number.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// Previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// Serialise `event` as line number `seq` chained to `prev_hash`; returns the line (with `\n`) and
/// its hash. Fails rather than ever writing an empty or partial record.
pub fn chain<E: Serialize>(
    event: &E,
    seq: u64,
    prev_hash: &str,
) -> Result<(Vec<u8>, String), String> {
    let mut bytes = serde_json::to_vec(&Chained {
        seq,
        event,
        prev_hash,
    })
    .map_err(|e| format!("an audit record could not be serialised: {e}"))?;
    if bytes.last() != Some(&b'}') {
        return Err("an audit record did not serialise to a JSON object".into());
    }
    let hash = hex(&Sha256::digest(&bytes));
    // Replace the closing brace with the hash member.
    bytes.pop();
    bytes.extend_from_slice(b",\"hash\":\"");
    bytes.extend_from_slice(hash.as_bytes());
    bytes.extend_from_slice(b"\"}\n");
    Ok((bytes, hash))
}

/// Check one line's own hash; returns the parsed line.
pub fn check_line(text: &str) -> Result<Line, String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    const SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();
    if text.len() < SUFFIX_LEN || !text.ends_with("\"}") {
        return Err("not an audit record (no trailing hash)".into());
    }
    let (body, tail) = text.split_at(text.len() - SUFFIX_LEN);
    let Some(claimed) = tail
        .strip_prefix(",\"hash\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
    else {
        return Err("not an audit record (no trailing hash)".into());
    };
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body.as_bytes());
    canonical.push(b'}');
    let actual = hex(&Sha256::digest(&canonical));
    if actual != claimed {
        return Err("hash does not match the record (edited)".into());
    }
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(phase: Phase) -> Event {
        Event {
            time: "2026-11-30T16:05:34.123Z".into(),
            request_id: "r1".into(),
            phase: Some(phase),
            client: Some("alice".into()),
            roles: vec!["admin".into()],
            method: "DELETE".into(),
            path: "/v1.3/assets/a1".into(),
            operation: "assets.delete".into(),
            params: [("asset_id".to_owned(), "a1".to_owned())].into(),
            force: Some(true),
            ..Event::default()
        }
    }

    #[test]
    fn a_chained_line_verifies_and_round_trips() {
        let (line, hash) = chain(&event(Phase::Intent), 7, GENESIS).unwrap();
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with(&format!(",\"hash\":\"{hash}\"}}\n")));
        assert!(text.starts_with("{\"seq\":7,\"time\":"));
        let parsed = check_line(&text).unwrap();
        assert_eq!(parsed.seq, 7);
        assert_eq!(parsed.prev_hash, GENESIS);
        assert_eq!(parsed.hash, hash);
        assert_eq!(parsed.event, event(Phase::Intent));
    }

    #[test]
    fn a_record_that_cannot_be_serialised_is_refused_not_written_empty() {
        struct Unserialisable;
        impl Serialize for Unserialisable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let error = chain(&Unserialisable, 1, GENESIS).unwrap_err();
        assert!(error.contains("could not be serialised"), "{error}");
    }

    #[test]
    fn any_edit_breaks_the_hash() {
        let (line, _) = chain(&event(Phase::Intent), 1, GENESIS).unwrap();
        let text = String::from_utf8(line).unwrap();
        for (from, to) in [
            ("alice", "mallo"),
            ("\"force\":true", "\"force\":false"),
            ("\"seq\":1", "\"seq\":2"),
        ] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text);
            assert!(check_line(&edited).is_err(), "{from}");
        }
    }
}
