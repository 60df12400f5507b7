//! `explain` and `test`: show why a request is allowed or denied, and check a table of expectations.
//!
//! Both run the gateway's own classifier and policy, so what they print is what `serve` would do.

use std::fmt::Write as _;
use std::path::Path;

use http::{HeaderMap, Method, Uri, Version};
use serde::Deserialize;

use crate::auth::{ClientSettings, Principal};
use crate::classify::{Classifier, Operation, ParamValue};
use crate::error::GatewayError;
use crate::guards::{forced_asset_delete, Protection, PROTECTED_RULE};
use crate::ids::{ClientId, RuleId};
use crate::matcher::QueryValue;
use crate::policy::{CompiledRule, Decision, Effect, Policy, RuleMode};

/// The verdict for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Policy allows it (it would be forwarded).
    Allow(Decision),
    /// Policy allows it, but a rule asks for someone else's approval first (403
    /// `approval_required` until approved).
    Approval(Decision),
    /// Policy denies it (403).
    Deny(Decision),
    /// Policy allows it, but a rule holds it for an undo window (202 Accepted now, forwarded after
    /// the delay unless cancelled).
    Defer(Decision),
    /// Classification refuses it before policy (400, 404 or 405).
    Reject(GatewayError),
}

impl Verdict {
    /// `allow`, `deny` or `reject`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Allow(_) => "allow",
            Verdict::Approval(_) => "approval",
            Verdict::Deny(_) => "deny",
            Verdict::Defer(_) => "defer",
            Verdict::Reject(_) => "reject",
        }
    }

    /// Exit code of `explain`: 0 allow, 3 deny, 2 rejected, 4 requires approval, 5 deferred.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Allow(_) => 0,
            Verdict::Defer(_) => 5,
            Verdict::Approval(_) => 4,
            Verdict::Deny(_) => 3,
            Verdict::Reject(_) => 2,
        }
    }
}

/// Why explaining could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The client id is not configured.
    #[error("no client {0:?} in the configuration")]
    UnknownClient(String),
    /// The target is not a request target.
    #[error("{0:?} is not a request target (write it like /v1.3/assets/ID?force=true)")]
    BadTarget(String),
}

/// The principal configured for `client`.
pub fn principal_for(clients: &[ClientSettings], client: &str) -> Result<Principal, ExplainError> {
    clients
        .iter()
        .find(|c| c.id.as_str() == client)
        .map(|c| Principal {
            client: c.id.clone(),
            roles: c.roles.clone().into(),
            credential: None,
        })
        .ok_or_else(|| ExplainError::UnknownClient(client.to_owned()))
}

/// Classify and evaluate one request (policy, protected resources, approvals); returns the
/// verdict and a human-readable account.
pub fn explain(
    classifier: &Classifier,
    policy: &Policy,
    protection: &Protection,
    principal: &Principal,
    method: &str,
    target: &str,
) -> Result<(Verdict, String), ExplainError> {
    let uri: Uri = target
        .parse()
        .map_err(|_| ExplainError::BadTarget(target.to_owned()))?;
    let mut out = String::new();
    let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
    let _ = writeln!(out, "request:   {method} {target}");
    let _ = writeln!(
        out,
        "client:    {} (roles: {})",
        principal.client,
        if roles.is_empty() {
            "none".to_owned()
        } else {
            roles.join(", ")
        }
    );
    // Methods are matched exactly, as on the wire: `delete` is an extension method, not DELETE.
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        let error = GatewayError::RequestAmbiguous("not an HTTP method");
        let _ = writeln!(
            out,
            "decision:  REJECT ({} {}): {error}",
            error.status().as_u16(),
            error.code()
        );
        return Ok((Verdict::Reject(error), out));
    };
    let op = match classifier.classify(&method, Version::HTTP_11, &uri, &HeaderMap::new(), false) {
        Ok(op) => op,
        Err(error) => {
            let _ = writeln!(
                out,
                "decision:  REJECT ({} {}): {error}",
                error.status().as_u16(),
                error.code()
            );
            return Ok((Verdict::Reject(error), out));
        }
    };
    let _ = writeln!(out, "canonical: {} {}", op.method, op.path_and_query());
    let _ = writeln!(
        out,
        "route:     {}{}",
        op.route_id(),
        describe_operation(&op)
    );
    let candidates = policy.candidates(&op);
    let skipped = policy.rules().len() - candidates.len();
    let _ = writeln!(
        out,
        "rules:     {} considered, {} cannot match this route or method",
        candidates.len(),
        skipped
    );
    for rule in &candidates {
        let _ = writeln!(
            out,
            "  - {:<32} {}",
            rule.id.as_str(),
            rule_account(rule, &op, principal)
        );
    }
    let mut decision = policy.evaluate(&op, principal);
    let protected = match decision.effect {
        Effect::Allow => protection.protected_in_path(&op),
        Effect::Deny => None,
    };
    let verdict = match (decision.effect, protected) {
        (Effect::Allow, Some(protected)) => {
            let refusal = protection.refusal(
                protected,
                "it cannot be deleted or changed through this gateway",
            );
            let _ = writeln!(
                out,
                "decision:  DENY by {PROTECTED_RULE} (403 resource_protected): {refusal}"
            );
            decision.effect = Effect::Deny;
            decision.rule = Some(RuleId::builtin(PROTECTED_RULE));
            decision.message = Some(refusal.to_string().into());
            decision.approval = None;
            Verdict::Deny(decision)
        }
        (Effect::Allow, None) => {
            let why = if decision.matched.is_empty() {
                "no rule matches; policy.default is allow".to_owned()
            } else {
                format!("every matching rule admits {}", principal.client)
            };
            let verdict = match &decision.approval {
                Some(approval) => {
                    let needs: Vec<String> = approval
                        .rules
                        .iter()
                        .map(|(rule, settings)| {
                            let roles = settings
                                .approver_roles
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ");
                            match settings.approvals {
                                1 => format!("requires approval by [{roles}] (rule {rule})"),
                                n => format!(
                                    "requires approval by [{roles}], {n} distinct approvers (rule {rule})"
                                ),
                            }
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "decision:  APPROVAL ({why}): {} (403 approval_required until approved; then re-send within {})",
                        needs.join(" and "),
                        humantime::format_duration(approval.use_within)
                    );
                    if let Some(defer) = &decision.defer {
                        let _ = writeln!(
                            out,
                            "then:      DEFER ({}) by rule {}: once approved, held for its undo window",
                            humantime::format_duration(defer.delay),
                            defer.rule
                        );
                    }
                    Verdict::Approval(decision)
                }
                None if decision.defer.is_some() => {
                    let defer = decision.defer.as_ref().map(|d| {
                        let roles = d
                            .cancel_roles
                            .iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ");
                        (humantime::format_duration(d.delay), d.rule.clone(), roles)
                    });
                    if let Some((delay, rule, roles)) = defer {
                        let _ = writeln!(
                            out,
                            "decision:  DEFER ({delay}) by rule {rule} ({why}): 202 Accepted now, forwarded after {delay} unless cancelled (by the requester or a role in [{roles}])"
                        );
                    }
                    Verdict::Defer(decision)
                }
                None => {
                    let _ = writeln!(out, "decision:  ALLOW ({why})");
                    Verdict::Allow(decision)
                }
            };
            if forced_asset_delete(&op).is_some() && protection.needs_lookup() {
                let _ = writeln!(
                    out,
                    "lookup:    a reference lookup before forwarding decides: refused (403 resource_protected) if the asset is indexed in a protected index or linked to an entity of a protected collection"
                );
            }
            verdict
        }
        (Effect::Deny, _) => {
            let rule = decision
                .rule
                .as_ref()
                .map_or("policy.default", |r| r.as_str());
            let message = decision.message.as_deref().unwrap_or("no message");
            let _ = writeln!(
                out,
                "decision:  DENY by {rule} (403 policy_denied): {message}"
            );
            Verdict::Deny(decision)
        }
    };
    if let Verdict::Allow(d) | Verdict::Approval(d) | Verdict::Deny(d) | Verdict::Defer(d) =
        &verdict
    {
        for rule in &d.dry_run_denials {
            let _ = writeln!(out, "dry run:   {rule} would deny (recorded, not enforced)");
        }
    }
    Ok((verdict, out))
}

fn describe_operation(op: &Operation) -> String {
    let mut parts: Vec<String> = op.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (k, v) in op.query.pairs() {
        parts.push(match v {
            ParamValue::Bool(b) => format!("{k}={b} (boolean)"),
            ParamValue::Raw(raw) => format!("{k}={raw}"),
        });
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn rule_account(rule: &CompiledRule, op: &Operation, principal: &Principal) -> String {
    let mode = match rule.mode {
        RuleMode::Enforce => "",
        RuleMode::DryRun => " [dry run]",
    };
    if let Some(method) = &rule.matcher.method {
        if *method != op.method {
            return format!("does not match: method is not {method}{mode}");
        }
    }
    if let Some(clients) = &rule.matcher.clients {
        if !clients.contains(&principal.client) {
            return format!(
                "does not match: only for clients {}{mode}",
                join(clients.iter().map(|c| c.as_str()))
            );
        }
    }
    for (name, expected) in &rule.matcher.query {
        if !expected.holds(op, name) {
            let want = match expected {
                QueryValue::Bool(b) => b.to_string(),
                QueryValue::Text(t) => t.clone(),
            };
            return format!("does not match: query {name} is not {want}{mode}");
        }
    }
    if rule.admits(principal) {
        format!("matches; admits {}{mode}", principal.client)
    } else {
        let mut needs = Vec::new();
        if !rule.allow_roles.is_empty() {
            needs.push(format!(
                "a role in [{}]",
                join(rule.allow_roles.iter().map(|r| r.as_str()))
            ));
        }
        if !rule.allow_clients.is_empty() {
            needs.push(format!(
                "a client in [{}]",
                join(rule.allow_clients.iter().map(|c| c.as_str()))
            ));
        }
        let needs = if needs.is_empty() {
            "admits nobody".to_owned()
        } else {
            format!("needs {}", needs.join(" or "))
        };
        format!("matches; REFUSES {} ({needs}){mode}", principal.client)
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// A `tl-gateway test` cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// The cases.
    pub cases: Vec<Case>,
}

/// One expectation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Optional label.
    pub name: Option<String>,
    /// Configured client id.
    pub client: String,
    /// HTTP method, exactly as sent.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// `allow`, `approval`, `defer`, `deny` or `reject`.
    pub expect: Expectation,
    /// On deny: the rule expected to refuse; on approval: the rule expected to ask for it.
    pub rule: Option<String>,
}

/// Expected verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    /// Forwarded.
    Allow,
    /// Forwarded only after someone else approves it (403 `approval_required` until then).
    Approval,
    /// 403.
    Deny,
    /// 400/404/405 before policy.
    Reject,
    /// 202 Accepted now, forwarded after the rule's delay unless cancelled.
    Defer,
}

/// Run every case; returns (report, number of failures).
pub fn run_cases(
    classifier: &Classifier,
    policy: &Policy,
    protection: &Protection,
    clients: &[ClientSettings],
    path: &Path,
) -> Result<(String, usize, usize), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: CasesFile =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut report = String::new();
    let mut failures = 0;
    for (i, case) in file.cases.iter().enumerate() {
        let label = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", i + 1));
        let client: Result<ClientId, _> = case.client.parse();
        let principal = client
            .map_err(|e| e.to_string())
            .and_then(|c| principal_for(clients, c.as_str()).map_err(|e| e.to_string()));
        let outcome = principal.and_then(|p| {
            explain(
                classifier,
                policy,
                protection,
                &p,
                &case.method,
                &case.target,
            )
            .map_err(|e| e.to_string())
        });
        let (ok, got) = match &outcome {
            Err(error) => (false, format!("error: {error}")),
            Ok((verdict, _)) => {
                let name_ok = verdict.name() == expectation_name(case.expect);
                let rule_ok = match (&case.rule, verdict) {
                    (Some(want), Verdict::Deny(d)) => {
                        d.rule.as_ref().is_some_and(|r| r.as_str() == want)
                    }
                    (Some(want), Verdict::Approval(d)) => {
                        d.approval.as_ref().is_some_and(|a| a.rule.as_str() == want)
                    }
                    (Some(want), Verdict::Defer(d)) => {
                        d.defer.as_ref().is_some_and(|a| a.rule.as_str() == want)
                    }
                    (Some(_), _) => false,
                    (None, _) => true,
                };
                let got = match verdict {
                    Verdict::Deny(d) => format!(
                        "deny by {}",
                        d.rule.as_ref().map_or("policy.default", |r| r.as_str())
                    ),
                    Verdict::Approval(d) => format!(
                        "approval by {}",
                        d.approval.as_ref().map_or("?", |a| a.rule.as_str())
                    ),
                    other => other.name().to_owned(),
                };
                (name_ok && rule_ok, got)
            }
        };
        if ok {
            let _ = writeln!(
                report,
                "ok    {label}: {} {} as {} → {got}",
                case.method, case.target, case.client
            );
        } else {
            failures += 1;
            let want = match &case.rule {
                Some(rule) => format!("{} by {rule}", expectation_name(case.expect)),
                None => expectation_name(case.expect).to_owned(),
            };
            let _ = writeln!(
                report,
                "FAIL  {label}: {} {} as {}: expected {want}, got {got}",
                case.method, case.target, case.client
            );
            if let Ok((_, account)) = &outcome {
                for line in account.lines() {
                    let _ = writeln!(report, "        {line}");
                }
            }
        }
    }
    let _ = writeln!(
        report,
        "{} passed, {} failed",
        file.cases.len() - failures,
        failures
    );
    Ok((report, file.cases.len(), failures))
}

fn expectation_name(e: Expectation) -> &'static str {
    match e {
        Expectation::Allow => "allow",
        Expectation::Approval => "approval",
        Expectation::Deny => "deny",
        Expectation::Reject => "reject",
        Expectation::Defer => "defer",
    }
}
