//! Policy: compiled rules, the pure [`evaluate`](Policy::evaluate), and the layer that enforces it.
//!
//! Contract (docs/architecture.md, "Configuration"): a rule *matches* a request when every given `match` field matches.
//! Every matching rule must admit the principal (its roles intersect `allow_roles`, or its id is in
//! `allow_clients`); otherwise the request is denied by the first refusing rule in file order.
//! Requests no rule matches get `policy.default`. `mode: dry_run` rules record what they would deny
//! but never block. Adding a rule can therefore only restrict, and rule order never changes the
//! effect.
//!
//! A rule may also carry `approval:` ([`ApprovalSettings`]): a request it matches and every rule
//! admits is then forwarded only with a second person's approval (the `approvals` layer); the
//! [`Decision`] names the first such rule (in file order) in `approval`.
//!
//! Rules are compiled at load into lists indexed by route id and by method, so a request only meets
//! the rules that can match it: evaluation cost does not grow with rules for other routes.

pub mod explain;
pub mod settings;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use serde::Deserialize;

use crate::auth::{judged, Principal};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::gate::{Admit, GateLayer};
use crate::ids::{ClientId, Role, RuleId};
use crate::matcher::{self, CompiledMatch, MatchSettings};
use crate::metrics::Metrics;
use crate::routes::{RouteId, RouteTable};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse the request.
    Deny,
}

/// Whether a rule blocks or only records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    /// Deny requests the rule refuses.
    #[default]
    Enforce,
    /// Record and count what the rule would deny, but let it through.
    DryRun,
}

/// The `policy:` section: the policy layer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// Effect for requests that no rule matches.
    pub default: Effect,
    /// The rules; order does not matter.
    pub rules: Vec<RuleSettings>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            default: Effect::Allow,
            rules: Vec::new(),
        }
    }
}

/// One policy rule as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSettings {
    /// Unique rule id.
    pub id: RuleId,
    /// What the rule applies to.
    pub matcher: MatchSettings,
    /// Roles the rule admits.
    pub allow_roles: Vec<Role>,
    /// Clients the rule admits.
    pub allow_clients: Vec<ClientId>,
    /// Shown to a refused client.
    pub message: Option<String>,
    /// Enforce or dry run.
    pub mode: RuleMode,
    /// Whether a request it admits also needs someone else's approval.
    pub approval: Option<ApprovalSettings>,
    /// Whether a request it admits is held for an undo window before it is forwarded.
    pub defer: Option<DeferSettings>,
}

/// A rule's `defer:` — a request the rule admits is recorded and answered 202 Accepted, and
/// forwarded only once `delay` has passed without anyone cancelling it (the `deferred` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferSettings {
    /// How long the call waits (the undo window).
    pub delay: Duration,
    /// Roles whose holders may cancel it (besides the requester, who always may).
    pub cancel_roles: Vec<Role>,
}

/// On an admitted [`Decision`]: the undo window the request is held for. When several matching
/// rules defer, the longest delay applies, the first deferring rule in file order names it, and
/// the holders of any of their `cancel_roles` may cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferRequired {
    /// The first deferring rule in file order.
    pub rule: RuleId,
    /// The longest delay of the deferring rules.
    pub delay: Duration,
    /// Every deferring rule's `cancel_roles` (deduplicated, in order).
    pub cancel_roles: Vec<Role>,
}

/// A rule's `approval:` — who must approve a request the rule admits before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Roles whose holders may approve (never the requester).
    pub approver_roles: Vec<Role>,
    /// Distinct approvers needed.
    pub approvals: u32,
    /// A pending request expires after this.
    pub ttl: Duration,
    /// After approval, the requester has this long to re-send the request.
    pub use_within: Duration,
}

impl ApprovalSettings {
    /// Default `ttl`.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
    /// Default `use_within`.
    pub const DEFAULT_USE_WITHIN: Duration = Duration::from_secs(15 * 60);
}

/// On an admitted [`Decision`]: the approval the request needs before it is forwarded. Every
/// matching rule that asks for approval must be satisfied (adding a rule only restricts): each
/// needs its own count of distinct approvers holding one of its roles; the shortest `ttl` and
/// `use_within` apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequired {
    /// The first asking rule in file order (names the approval).
    pub rule: RuleId,
    /// Every asking rule, in file order, with its settings.
    pub rules: Vec<(RuleId, Arc<ApprovalSettings>)>,
    /// The shortest `ttl` of them.
    pub ttl: Duration,
    /// The shortest `use_within` of them.
    pub use_within: Duration,
    /// The first asking rule's message.
    pub message: Option<Arc<str>>,
}

impl ApprovalRequired {
    /// Every approver role of every asking rule (deduplicated, in order).
    pub fn approver_roles(&self) -> Vec<&Role> {
        let mut roles: Vec<&Role> = Vec::new();
        for (_, settings) in &self.rules {
            for role in &settings.approver_roles {
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
        }
        roles
    }
}

/// A rule problem found while compiling (the `check` command reports these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// Index of the rule in `policy.rules`.
    pub index: usize,
    /// The rule's id.
    pub rule: RuleId,
    /// What is wrong.
    pub message: String,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// Position in the file (decides which refusing rule is named).
    pub index: usize,
    /// Rule id.
    pub id: RuleId,
    /// Which requests it applies to.
    pub matcher: CompiledMatch,
    /// Admitted roles.
    pub allow_roles: Vec<Role>,
    /// Admitted clients.
    pub allow_clients: Vec<ClientId>,
    /// Message for refused clients.
    pub message: Option<Arc<str>>,
    /// Enforce or dry run.
    pub mode: RuleMode,
    /// The approval it asks for, if any (enforced rules only).
    pub approval: Option<Arc<ApprovalSettings>>,
    /// The undo window it holds admitted requests for, if any (enforced rules only).
    pub defer: Option<Arc<DeferSettings>>,
}

impl CompiledRule {
    /// Whether every `match` field matches the request.
    pub fn matches(&self, op: &Operation, principal: &Principal) -> bool {
        self.matcher.matches(op, principal)
    }

    /// Whether the rule admits the principal.
    pub fn admits(&self, principal: &Principal) -> bool {
        self.allow_clients.contains(&principal.client)
            || self.allow_roles.iter().any(|r| principal.has_role(r))
    }
}

/// The outcome of evaluating a request, as a typed request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// The deciding rule: the first refusing rule on deny; `None` when the default decided or all
    /// matching rules admitted.
    pub rule: Option<RuleId>,
    /// Rules that matched (in file order).
    pub matched: Vec<RuleId>,
    /// Dry-run rules that would have denied.
    pub dry_run_denials: Vec<RuleId>,
    /// The deciding rule's message.
    pub message: Option<Arc<str>>,
    /// On allow: the approval the request still needs, if a matching rule asks for one.
    pub approval: Option<ApprovalRequired>,
    /// On allow: the undo window the request is held for, if a matching rule defers it.
    pub defer: Option<DeferRequired>,
}

impl Decision {
    /// Whether `req` is one the deferred layer will schedule rather than forward now (its
    /// decision defers it, and it is not the executor's replay): the rate limits let it pass, a
    /// deferred call spends its budget when it is executed.
    pub fn schedules<B>(req: &Request<B>) -> bool {
        req.extensions().get::<crate::ext::Replay>().is_none()
            && req
                .extensions()
                .get::<Decision>()
                .is_some_and(|d| d.defer.is_some())
    }
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    default: Effect,
    rules: Vec<CompiledRule>,
    by_route: HashMap<RouteId, Vec<usize>>,
    unrouted_by_method: HashMap<Method, Vec<usize>>,
    unrouted_any_method: Vec<usize>,
    /// Query keys the rules name (the classifier reads them strictly).
    rule_keys: BTreeSet<String>,
    /// Of those, the keys compared as booleans.
    rule_bool_keys: BTreeSet<String>,
}

impl Policy {
    /// Compile the configured rules; errors are problems that make a rule meaningless.
    pub fn compile(
        config: &PolicySettings,
    ) -> Result<(Policy, Vec<RuleProblem>), Vec<RuleProblem>> {
        let table = RouteTable::v1_3();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.iter().enumerate() {
            match compile_rule(table, index, rule, &mut warnings) {
                Ok(compiled) => rules.push(compiled),
                Err(message) => errors.push(RuleProblem {
                    index,
                    rule: rule.id.clone(),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut by_route: HashMap<RouteId, Vec<usize>> = HashMap::new();
        let mut unrouted_by_method: HashMap<Method, Vec<usize>> = HashMap::new();
        let mut unrouted_any_method = Vec::new();
        let mut rule_keys = BTreeSet::new();
        let mut rule_bool_keys = BTreeSet::new();
        for (position, rule) in rules.iter().enumerate() {
            for (key, boolean) in rule.matcher.query_keys() {
                rule_keys.insert(key.to_owned());
                if boolean {
                    rule_bool_keys.insert(key.to_owned());
                }
            }
            match (&rule.matcher.routes, &rule.matcher.method) {
                (Some(routes), _) => {
                    for route in routes {
                        by_route.entry(*route).or_default().push(position);
                    }
                }
                (None, Some(method)) => unrouted_by_method
                    .entry(method.clone())
                    .or_default()
                    .push(position),
                (None, None) => unrouted_any_method.push(position),
            }
        }
        Ok((
            Policy {
                default: config.default,
                rules,
                by_route,
                unrouted_by_method,
                unrouted_any_method,
                rule_keys,
                rule_bool_keys,
            },
            warnings,
        ))
    }

    /// Query keys named by rules.
    pub fn rule_keys(&self) -> &BTreeSet<String> {
        &self.rule_keys
    }

    /// Query keys named by boolean predicates.
    pub fn rule_bool_keys(&self) -> &BTreeSet<String> {
        &self.rule_bool_keys
    }

    /// The compiled rules, in file order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The rules that could match this operation (by route and method), in file order.
    pub fn candidates(&self, op: &Operation) -> Vec<&CompiledRule> {
        let routed = op
            .route
            .and_then(|r| self.by_route.get(&r.id))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let by_method = self
            .unrouted_by_method
            .get(&op.method)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut positions: Vec<usize> = routed
            .iter()
            .chain(by_method)
            .chain(&self.unrouted_any_method)
            .copied()
            .collect();
        positions.sort_unstable();
        positions.into_iter().map(|p| &self.rules[p]).collect()
    }

    /// Evaluate a request. Pure: no I/O, no clock.
    pub fn evaluate(&self, op: &Operation, principal: &Principal) -> Decision {
        // `policy.default` is about the TwelveLabs API; the gateway's own API checks its callers'
        // roles itself, and rules that name its operations restrict it further.
        let default = if op.is_gateway() {
            Effect::Allow
        } else {
            self.default
        };
        let mut decision = Decision {
            effect: default,
            rule: None,
            matched: Vec::new(),
            dry_run_denials: Vec::new(),
            message: None,
            approval: None,
            defer: None,
        };
        let mut refused: Option<&CompiledRule> = None;
        let mut asks: Vec<&CompiledRule> = Vec::new();
        let mut defers: Vec<&CompiledRule> = Vec::new();
        let mut any_match = false;
        self.for_each_candidate(op, |rule| {
            if !rule.matches(op, principal) {
                return;
            }
            decision.matched.push(rule.id.clone());
            if rule.admits(principal) {
                if rule.mode == RuleMode::Enforce {
                    any_match = true;
                    if rule.approval.is_some() {
                        asks.push(rule);
                    }
                    if rule.defer.is_some() {
                        defers.push(rule);
                    }
                }
                return;
            }
            match rule.mode {
                RuleMode::DryRun => decision.dry_run_denials.push(rule.id.clone()),
                RuleMode::Enforce => {
                    any_match = true;
                    if refused.is_none_or(|r| rule.index < r.index) {
                        refused = Some(rule);
                    }
                }
            }
        });
        if let Some(rule) = refused {
            decision.effect = Effect::Deny;
            decision.rule = Some(rule.id.clone());
            decision.message = rule.message.clone();
        } else if any_match {
            decision.effect = Effect::Allow;
            asks.sort_by_key(|r| r.index);
            let rules: Vec<(RuleId, Arc<ApprovalSettings>)> = asks
                .iter()
                .filter_map(|r| r.approval.clone().map(|a| (r.id.clone(), a)))
                .collect();
            if let (Some(first), Some((rule, _))) = (asks.first(), rules.first()) {
                decision.approval = Some(ApprovalRequired {
                    rule: rule.clone(),
                    ttl: rules.iter().map(|(_, a)| a.ttl).min().unwrap_or_default(),
                    use_within: rules
                        .iter()
                        .map(|(_, a)| a.use_within)
                        .min()
                        .unwrap_or_default(),
                    message: first.message.clone(),
                    rules,
                });
            }
            decision.defer = defer_of(defers);
        } else if default == Effect::Deny {
            decision.rule = Some(RuleId::default_rule());
            decision.message = Some(Arc::from(
                "no policy rule admits this request and policy.default is deny",
            ));
        }
        decision
    }

    fn for_each_candidate<'a>(&'a self, op: &Operation, mut visit: impl FnMut(&'a CompiledRule)) {
        // No allocation on the hot path: the three lists are visited in turn; the deciding rule is
        // chosen by file index, so the visiting order does not matter.
        if let Some(list) = op.route.and_then(|r| self.by_route.get(&r.id)) {
            list.iter().for_each(|&p| visit(&self.rules[p]));
        }
        if let Some(list) = self.unrouted_by_method.get(&op.method) {
            list.iter().for_each(|&p| visit(&self.rules[p]));
        }
        self.unrouted_any_method
            .iter()
            .for_each(|&p| visit(&self.rules[p]));
    }
}

/// The undo window the deferring rules `defers` hold a request for (none: not deferred).
fn defer_of(mut defers: Vec<&CompiledRule>) -> Option<DeferRequired> {
    defers.sort_by_key(|r| r.index);
    let first = defers.first()?;
    let mut required = DeferRequired {
        rule: first.id.clone(),
        delay: Duration::ZERO,
        cancel_roles: Vec::new(),
    };
    for settings in defers.iter().filter_map(|r| r.defer.as_ref()) {
        required.delay = required.delay.max(settings.delay);
        for role in &settings.cancel_roles {
            if !required.cancel_roles.contains(role) {
                required.cancel_roles.push(role.clone());
            }
        }
    }
    Some(required)
}

/// Why `defer` cannot be on a rule with this matcher: a gateway operation, or a route that takes
/// a request body (a deferred call is replayed from its canonical request alone).
fn defer_problem(
    table: &RouteTable,
    matcher: &CompiledMatch,
    defer: &DeferSettings,
) -> Option<String> {
    if defer.delay.is_zero() {
        return Some("defer.delay must be longer than zero".into());
    }
    if defer.delay > MAX_DEFER_DELAY {
        return Some("defer.delay must be at most 30d".into());
    }
    let gateway = |route: &RouteId| {
        route
            .as_str()
            .starts_with(crate::routes::gateway::ID_PREFIX)
    };
    let with_body = |route: &crate::routes::Route| route.body != crate::routes::BodyKind::None;
    match &matcher.routes {
        Some(routes) => {
            if routes.iter().any(gateway) {
                return Some(
                    "defer on a gateway API operation: the gateway's own calls are never deferred"
                        .into(),
                );
            }
            let bodied: Vec<&str> = routes
                .iter()
                .filter(|r| table.by_id(r.as_str()).is_some_and(with_body))
                .map(|r| r.as_str())
                .collect();
            if !bodied.is_empty() {
                return Some(format!(
                    "defer on a route that takes a request body ({}): only routes without a body can be deferred (the call is replayed from its canonical request)",
                    bodied.join(", ")
                ));
            }
            None
        }
        None => {
            let can_match_body = table
                .routes()
                .iter()
                .any(|r| with_body(r) && matcher.method.as_ref().is_none_or(|m| *m == r.method));
            can_match_body.then(|| {
                "defer on a rule that can match routes taking a request body: only routes without a body can be deferred; narrow match to the routes meant (path or operation)".into()
            })
        }
    }
}

/// The longest undo window a rule may set.
pub const MAX_DEFER_DELAY: Duration = Duration::from_secs(30 * 86_400);

/// Compile one rule against the route table; warnings go to `warnings`.
fn compile_rule(
    table: &RouteTable,
    index: usize,
    rule: &RuleSettings,
    warnings: &mut Vec<RuleProblem>,
) -> Result<CompiledRule, String> {
    let (matcher, found) = matcher::compile(table, &rule.matcher)?;
    let problem = |message: String| RuleProblem {
        index,
        rule: rule.id.clone(),
        message,
    };
    warnings.extend(found.into_iter().map(problem));
    if rule.allow_roles.is_empty()
        && rule.allow_clients.is_empty()
        && rule.mode == RuleMode::Enforce
    {
        warnings.push(problem(
            "denies everyone it matches (allow_roles and allow_clients are empty)".into(),
        ));
    }
    if let Some(approval) = &rule.approval {
        if matcher.routes.as_ref().is_some_and(|routes| {
            routes
                .iter()
                .any(|r| r.as_str().starts_with(crate::routes::gateway::ID_PREFIX))
        }) {
            return Err(
                "approval on a gateway API operation: the gateway's own calls are never held for approval"
                    .into(),
            );
        }
        // An approval covers the request's body; multipart bodies are uploads, never held.
        let multipart = |route: &RouteId| {
            table
                .by_id(route.as_str())
                .is_some_and(|r| r.body == crate::routes::BodyKind::Multipart)
        };
        let can_match_multipart = match &matcher.routes {
            Some(routes) => routes.iter().any(multipart),
            None => table.routes().iter().any(|r| {
                r.body == crate::routes::BodyKind::Multipart
                    && matcher.method.as_ref().is_none_or(|m| *m == r.method)
            }),
        };
        if can_match_multipart {
            return Err(
                "approval on a rule that can match a multipart route (an upload): an approval covers the request's body, and uploads cannot be held; narrow match to the routes meant (path or operation)"
                    .into(),
            );
        }
        if approval.approver_roles.is_empty() {
            return Err("approval.approver_roles is empty: nobody could approve".into());
        }
        if approval.approvals == 0 {
            return Err("approval.approvals must be at least 1".into());
        }
        if approval.ttl.is_zero() || approval.use_within.is_zero() {
            return Err("approval.ttl and approval.use_within must be longer than zero".into());
        }
        if rule.mode == RuleMode::DryRun {
            warnings.push(problem(
                "approval on a dry_run rule is ignored: a dry-run rule never holds a request back"
                    .into(),
            ));
        }
    }
    if let Some(defer) = &rule.defer {
        if let Some(message) = defer_problem(table, &matcher, defer) {
            return Err(message);
        }
        if rule.mode == RuleMode::DryRun {
            warnings.push(problem(
                "defer on a dry_run rule is ignored: a dry-run rule never holds a request back"
                    .into(),
            ));
        }
    }
    Ok(CompiledRule {
        index,
        id: rule.id.clone(),
        matcher,
        allow_roles: rule.allow_roles.clone(),
        allow_clients: rule.allow_clients.clone(),
        message: rule.message.as_deref().map(Arc::from),
        mode: rule.mode,
        approval: rule
            .approval
            .clone()
            .filter(|_| rule.mode == RuleMode::Enforce)
            .map(Arc::new),
        defer: rule
            .defer
            .clone()
            .filter(|_| rule.mode == RuleMode::Enforce)
            .map(Arc::new),
    })
}

/// The policy layer: evaluates every request and refuses denied ones with 403 `policy_denied`;
/// an allowed request carries its [`Decision`] on.
#[derive(Clone, Debug)]
pub struct Enforce {
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
}

impl Enforce {
    /// The layer enforcing `policy`; denials are counted in `metrics`.
    pub fn layer(policy: Arc<Policy>, metrics: Arc<Metrics>) -> GateLayer<Enforce> {
        GateLayer::new(Enforce { policy, metrics })
    }
}

impl<B> Admit<B> for Enforce {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        // Fail closed: a request that cannot be evaluated is not forwarded.
        let (op, principal) = judged(
            req,
            "policy could not be evaluated: request not classified or not authenticated",
        )?;
        let decision = self.policy.evaluate(op, principal);
        for rule in &decision.dry_run_denials {
            self.metrics
                .dry_run_denials
                .with_label_values(&[rule.as_str()])
                .inc();
            tracing::warn!(
                rule = rule.as_str(),
                client = principal.client.as_str(),
                operation = op.route_id(),
                "dry-run rule would deny"
            );
        }
        match decision.effect {
            Effect::Allow => {
                req.extensions_mut().insert(decision);
                Ok(())
            }
            Effect::Deny => {
                let rule = decision.rule.clone().unwrap_or_else(RuleId::default_rule);
                self.metrics
                    .policy_denials
                    .with_label_values(&[rule.as_str()])
                    .inc();
                self.metrics
                    .client_denials
                    .with_label_values(&[principal.client.as_str(), "policy"])
                    .inc();
                tracing::info!(
                    rule = rule.as_str(),
                    client = principal.client.as_str(),
                    operation = op.route_id(),
                    "policy denied"
                );
                Err(GatewayError::PolicyDenied {
                    rule,
                    message: decision.message,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
