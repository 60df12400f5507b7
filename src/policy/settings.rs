//! The `policy:` section, read and compiled into [`PolicySettings`] (`config` assembles it; the
//! rules are then compiled against the route table by [`Policy::compile`](super::Policy::compile)).

use std::collections::HashSet;

use serde::Deserialize;

use super::{ApprovalSettings, DeferSettings, Effect, PolicySettings, RuleMode, RuleSettings};
use crate::ids::{ClientId, Role, RuleId};
use crate::matcher::RawMatch;
use crate::settings::{Invalid, Seg};
use crate::units::ConfigDuration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    default: Option<Effect>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: RuleId,
    #[serde(rename = "match")]
    matcher: RawMatch,
    allow_roles: Option<Vec<Role>>,
    allow_clients: Option<Vec<ClientId>>,
    message: Option<String>,
    #[serde(default)]
    mode: RuleMode,
    approval: Option<RawApproval>,
    defer: Option<RawDefer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefer {
    delay: ConfigDuration,
    #[serde(default)]
    cancel_roles: Vec<Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    approver_roles: Vec<Role>,
    approvals: Option<u32>,
    ttl: Option<ConfigDuration>,
    use_within: Option<ConfigDuration>,
}

/// Compile `policy:` (absent: allow everything, no rules); `known_clients` are the configured
/// client ids rules may name.
pub fn compile(
    raw: Option<RawPolicy>,
    known_clients: &HashSet<ClientId>,
) -> Result<PolicySettings, Invalid> {
    let Some(raw) = raw else {
        return Ok(PolicySettings::default());
    };
    let mut ids = HashSet::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.into_iter().enumerate() {
        let at = |key: &'static str| {
            [
                Seg::Key("policy"),
                Seg::Key("rules"),
                Seg::Index(i),
                Seg::Key(key),
            ]
        };
        if !ids.insert(rule.id.clone()) {
            return Err(Invalid::new(
                &at("id"),
                format!("duplicate rule id {:?}", rule.id.as_str()),
            ));
        }
        if rule.allow_roles.is_none() && rule.allow_clients.is_none() {
            return Err(Invalid::new(
                &at("allow_roles"),
                format!(
                    "rule {:?} admits nobody by omission: set allow_roles and/or allow_clients (allow_roles: [] denies everyone)",
                    rule.id.as_str()
                ),
            ));
        }
        let allow_clients = rule.allow_clients.unwrap_or_default();
        for client in allow_clients.iter().chain(&rule.matcher.clients) {
            if !known_clients.contains(client) {
                return Err(Invalid::new(
                    &at("match"),
                    format!(
                        "rule {:?} names unknown client {:?}",
                        rule.id.as_str(),
                        client.as_str()
                    ),
                ));
            }
        }
        let matcher = crate::matcher::compile_match(rule.matcher, &at("match"))?;
        let approval = rule.approval.map(|a| ApprovalSettings {
            approver_roles: a.approver_roles,
            approvals: a.approvals.unwrap_or(1),
            ttl: a.ttl.map_or(ApprovalSettings::DEFAULT_TTL, |d| d.0),
            use_within: a
                .use_within
                .map_or(ApprovalSettings::DEFAULT_USE_WITHIN, |d| d.0),
        });
        let defer = rule.defer.map(|d| DeferSettings {
            delay: d.delay.0,
            cancel_roles: d.cancel_roles,
        });
        rules.push(RuleSettings {
            id: rule.id,
            matcher,
            allow_roles: rule.allow_roles.unwrap_or_default(),
            allow_clients,
            message: rule.message,
            mode: rule.mode,
            approval,
            defer,
        });
    }
    Ok(PolicySettings {
        default: raw.default.unwrap_or(Effect::Allow),
        rules,
    })
}
