//! Rate limits and deletion budgets: GCRA buckets keyed by client, role or nothing, kept in the state
//! store (in this process, or on Redis shared by every replica).
//!
//! Each `rate_limits` entry matches requests with the same matcher as policy rules, optionally only
//! for some roles or clients. Every matching limit must admit a request, and all of them are checked
//! in one call to the store, which consumes nothing from any of them unless every one admits; the
//! first that refuses (in file order) answers 429 `too_many_requests` with `Retry-After` (whole
//! seconds, rounded up). Day-long rates (`100/day`) make deletion budgets. Requests no limit matches
//! never touch the store.
//!
//! A limit's state is identified by its id and a fingerprint of its definition, never by its
//! position: it survives reloads wherever it moves in the file, and a changed definition starts
//! afresh. When the store cannot answer in time, each matching limit does what its
//! `on_unavailable` says: `deny` refuses with 503 `limits_unavailable`, `allow` lets the request
//! through unlimited (both counted in `tl_gateway_rate_limit_store_fallbacks_total`).

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use sha2::{Digest, Sha256};

use crate::auth::{judged, Principal};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::gate::{AdmitAsync, AsyncGateLayer};
use crate::ids::{ClientId, Role, RuleId};
use crate::matcher::{self, CompiledMatch, MatchSettings};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::state::{Bucket, OnUnavailable, StateStore, StoreError, Verdict};
use crate::units::{hex, Rate};

/// What a limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One bucket per client.
    Client,
    /// One bucket per role (the first of the limit's `roles` the client holds, else its first role).
    Role,
    /// One bucket for everybody.
    Global,
}

/// One `rate_limits[]` entry as configured: the rate-limit layer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Limit id (metric label, audit `rule`, 429 message).
    pub id: RuleId,
    /// Which requests it counts.
    pub matcher: MatchSettings,
    /// Only for these roles (empty: everyone).
    pub roles: Vec<Role>,
    /// Only for these clients (empty: everyone).
    pub clients: Vec<ClientId>,
    /// What is counted separately.
    pub per: Per,
    /// The sustained rate.
    pub rate: Rate,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// When the store cannot answer (default: `state.redis.on_unavailable`).
    pub on_unavailable: Option<OnUnavailable>,
}

/// A compiled limit: everything that defines it, compared by value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitDefinition {
    /// Limit id.
    pub id: RuleId,
    /// Which requests it counts.
    pub matcher: CompiledMatch,
    /// Only for these roles.
    pub roles: Vec<Role>,
    /// Only for these clients.
    pub clients: Vec<ClientId>,
    /// What is counted separately.
    pub per: Per,
    /// The sustained rate.
    pub rate: Rate,
    /// Burst.
    pub burst: u32,
    /// When the store cannot answer (`None`: the store's default).
    pub on_unavailable: Option<OnUnavailable>,
}

impl LimitDefinition {
    /// Compile a configured limit; `Err` names what is wrong with its matcher.
    pub fn compile(settings: &LimitSettings) -> Result<(LimitDefinition, Vec<String>), String> {
        let (matcher, warnings) = matcher::compile(RouteTable::v1_3(), &settings.matcher)?;
        Ok((
            LimitDefinition {
                id: settings.id.clone(),
                matcher,
                roles: settings.roles.clone(),
                clients: settings.clients.clone(),
                per: settings.per,
                rate: settings.rate,
                burst: settings.burst.max(1),
                on_unavailable: settings.on_unavailable,
            },
            warnings,
        ))
    }

    /// Whether this limit counts `op` by `principal`.
    pub fn applies(&self, op: &Operation, principal: &Principal) -> bool {
        (self.roles.is_empty() || self.roles.iter().any(|r| principal.has_role(r)))
            && (self.clients.is_empty() || self.clients.contains(&principal.client))
            && self.matcher.matches(op, principal)
    }

    /// The bucket `principal` counts in.
    pub fn bucket<'a>(&'a self, principal: &'a Principal) -> &'a str {
        match self.per {
            Per::Client => principal.client.as_str(),
            Per::Role => self
                .roles
                .iter()
                .find(|r| principal.has_role(r))
                .or_else(|| principal.roles.first())
                .map_or("", Role::as_str),
            Per::Global => "*",
        }
    }

    /// A stable fingerprint of what the limit counts and how (not of what it does when the store is
    /// down): the same on every replica and every version, so they share one set of buckets.
    pub fn fingerprint(&self) -> String {
        let m = &self.matcher;
        let join = |items: Vec<&str>| items.join(",");
        let text = format!(
            "method={};routes={};query={};match_clients={};roles={};clients={};per={:?};rate={}/{}s;burst={}",
            m.method.as_ref().map_or("", |m| m.as_str()),
            m.routes
                .as_ref()
                .map_or("*".to_owned(), |r| join(r.iter().map(|r| r.as_str()).collect())),
            join(
                m.query
                    .iter()
                    .map(|(k, v)| match v {
                        matcher::QueryValue::Bool(b) => format!("{k}:bool:{b}"),
                        matcher::QueryValue::Text(t) => format!("{k}:text:{t}"),
                    })
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect()
            ),
            m.clients
                .as_ref()
                .map_or(String::new(), |c| join(c.iter().map(ClientId::as_str).collect())),
            join(self.roles.iter().map(Role::as_str).collect()),
            join(self.clients.iter().map(ClientId::as_str).collect()),
            self.per,
            self.rate.count,
            self.rate.period.as_secs(),
            self.burst,
        );
        hex(&Sha256::digest(text.as_bytes())[..8])
    }
}

/// One limit ready to count.
#[derive(Debug)]
struct Limit {
    definition: LimitDefinition,
    /// `rl:{id}:{fingerprint}:` — the bucket name follows (the store adds its prefix).
    key_prefix: String,
    emission_us: u64,
    tolerance_us: u64,
    on_unavailable: OnUnavailable,
}

/// The compiled limits and the store they count in.
#[derive(Debug)]
pub struct RateLimits {
    limits: Vec<Limit>,
    store: StateStore,
}

/// A refusal: which limit, and how long until it would admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The limit.
    pub limit: RuleId,
    /// Time until a request would be admitted.
    pub wait: Duration,
    /// The limit's rate and burst, for the message.
    pub rate: Rate,
    /// Burst.
    pub burst: u32,
}

/// Why a request may not go on.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A limit refused it.
    Exceeded(Exceeded),
    /// The store did not answer and a matching limit fails closed.
    Unavailable {
        /// The first matching limit with `on_unavailable: deny`.
        limit: RuleId,
        /// What happened.
        error: StoreError,
    },
}

impl RateLimits {
    /// Count `limits` in `store`; `default` is what a limit without its own `on_unavailable` does.
    pub fn new(limits: Vec<LimitDefinition>, store: StateStore, default: OnUnavailable) -> Self {
        let limits = limits
            .into_iter()
            .map(|definition| {
                let period_us = definition.rate.period.as_micros() as u64;
                let emission_us = period_us
                    .div_ceil(u64::from(definition.rate.count.max(1)))
                    .max(1);
                Limit {
                    key_prefix: format!("rl:{}:{}:", definition.id, definition.fingerprint()),
                    emission_us,
                    tolerance_us: emission_us * u64::from(definition.burst.max(1) - 1),
                    on_unavailable: definition.on_unavailable.unwrap_or(default),
                    definition,
                }
            })
            .collect();
        RateLimits { limits, store }
    }

    /// Whether any limit is configured.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Whether a store outage refuses requests (some limit fails closed).
    pub fn fails_closed(&self) -> bool {
        self.limits
            .iter()
            .any(|l| l.on_unavailable == OnUnavailable::Deny)
    }

    /// Whether any limit counts this request.
    pub fn concern(&self, op: &Operation, principal: &Principal) -> bool {
        self.limits
            .iter()
            .any(|l| l.definition.applies(op, principal))
    }

    /// Check every matching limit in one call to the store. `fallback` is told, per matching limit,
    /// what happened when the store could not answer.
    pub async fn check(
        &self,
        op: &Operation,
        principal: &Principal,
        mut fallback: impl FnMut(&RuleId, OnUnavailable),
    ) -> Result<(), Refusal> {
        self.run(op, principal, true, &mut fallback).await
    }

    /// What [`check`](Self::check) would answer now, consuming nothing: asking for an approval
    /// meets the limits its request will meet (a spent budget refuses the ask) without spending
    /// them, since the approved re-send is counted.
    pub async fn peek(&self, op: &Operation, principal: &Principal) -> Result<(), Refusal> {
        self.run(op, principal, false, &mut |_, _| {}).await
    }

    async fn run(
        &self,
        op: &Operation,
        principal: &Principal,
        commit: bool,
        fallback: &mut impl FnMut(&RuleId, OnUnavailable),
    ) -> Result<(), Refusal> {
        let matching: Vec<&Limit> = self
            .limits
            .iter()
            .filter(|l| l.definition.applies(op, principal))
            .collect();
        if matching.is_empty() {
            return Ok(());
        }
        let buckets: Vec<Bucket> = matching
            .iter()
            .map(|l| Bucket {
                key: format!("{}{}", l.key_prefix, l.definition.bucket(principal)),
                emission_us: l.emission_us,
                tolerance_us: l.tolerance_us,
            })
            .collect();
        let answer = if commit {
            self.store.check(&buckets).await
        } else {
            self.store.peek(&buckets).await
        };
        match answer {
            Ok(verdicts) => {
                let refused = matching.iter().zip(verdicts).find_map(|(l, v)| match v {
                    Verdict::Admit => None,
                    Verdict::Refuse { wait } => Some(Exceeded {
                        limit: l.definition.id.clone(),
                        wait,
                        rate: l.definition.rate,
                        burst: l.definition.burst,
                    }),
                });
                refused.map_or(Ok(()), |e| Err(Refusal::Exceeded(e)))
            }
            Err(error) => {
                for limit in &matching {
                    fallback(&limit.definition.id, limit.on_unavailable);
                }
                match matching
                    .iter()
                    .find(|l| l.on_unavailable == OnUnavailable::Deny)
                {
                    Some(limit) => Err(Refusal::Unavailable {
                        limit: limit.definition.id.clone(),
                        error,
                    }),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The rate-limit layer: 429 `too_many_requests` with `Retry-After` over a limit, 503
/// `limits_unavailable` when the store cannot answer and a limit fails closed. Requests no limit
/// matches pass unboxed and never touch the store.
#[derive(Clone, Debug)]
pub struct Limited {
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
}

impl Limited {
    /// The layer enforcing `limits`, counting refusals in `metrics`.
    pub fn layer(limits: Arc<RateLimits>, metrics: Arc<Metrics>) -> AsyncGateLayer<Limited> {
        AsyncGateLayer::new(Limited { limits, metrics })
    }
}

const UNJUDGED: &str =
    "rate limits could not be evaluated: request not classified or not authenticated";

impl<B: Send + 'static> AdmitAsync<B> for Limited {
    fn concerns(&self, req: &Request<B>) -> bool {
        if crate::policy::Decision::schedules(req) {
            // Spent when the deferred call is executed (and judged again), not when scheduled.
            return false;
        }
        match judged(req, UNJUDGED) {
            Ok((op, principal)) => self.limits.concern(op, principal),
            // Fail closed in `admit`.
            Err(_) => !self.limits.is_empty(),
        }
    }

    async fn admit(self, req: Request<B>) -> Result<Request<B>, GatewayError> {
        let (op, principal) = judged(&req, UNJUDGED)?;
        let metrics = &self.metrics;
        let result = self
            .limits
            .check(op, principal, |limit, action| {
                metrics
                    .store_fallbacks
                    .with_label_values(&[limit.as_str(), action.as_str()])
                    .inc();
            })
            .await;
        let refusal = match result {
            Ok(()) => return Ok(req),
            Err(refusal) => refusal,
        };
        Err(refused(refusal, metrics, principal.client.as_str()))
    }
}

/// The answer to a request a limit refused (counted): 429 `too_many_requests` with the wait, or 503
/// `limits_unavailable` when the store could not answer and the limit fails closed.
pub fn refused(refusal: Refusal, metrics: &Metrics, client: &str) -> GatewayError {
    match refusal {
        Refusal::Exceeded(exceeded) => {
            metrics
                .rate_limited
                .with_label_values(&[exceeded.limit.as_str()])
                .inc();
            metrics
                .client_denials
                .with_label_values(&[client, "rate_limit"])
                .inc();
            let wait = exceeded.wait;
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            GatewayError::TooManyRequests {
                limit: exceeded.limit,
                retry_after: retry_after.max(1),
                rate: exceeded.rate,
                burst: exceeded.burst,
            }
        }
        Refusal::Unavailable { limit, error } => {
            tracing::warn!(limit = limit.as_str(), %error, "rate limit could not be checked; refusing (on_unavailable: deny)");
            GatewayError::LimitsUnavailable {
                limit,
                reason: error.to_string(),
            }
        }
    }
}

/// A per-requester budget of `per_minute` a minute, counted in the state store (shared by the
/// replicas on Redis): `approvals.max_asks_per_client`, `deferred.max_schedules_per_client`. A
/// spent budget refuses with 429 `too_many_requests` naming its `setting`.
#[derive(Debug, Clone)]
pub struct PerMinuteBudget {
    state: StateStore,
    per_minute: u32,
    /// The setting named in the 429 (e.g. `approvals.max_asks_per_client`).
    setting: &'static str,
    /// The buckets' key prefix (e.g. `asks:`).
    prefix: &'static str,
}

impl PerMinuteBudget {
    /// `per_minute` (at least 1) per requester, in `state`, under keys `prefix{requester}`.
    pub fn new(
        state: StateStore,
        per_minute: u32,
        setting: &'static str,
        prefix: &'static str,
    ) -> Self {
        PerMinuteBudget {
            state,
            per_minute: per_minute.max(1),
            setting,
            prefix,
        }
    }

    /// Take one from `who`'s budget: 429 when it is spent; `unavailable` says what a store that
    /// cannot answer means to the caller (budgets fail closed).
    pub async fn spend(
        &self,
        who: &str,
        unavailable: impl FnOnce(String) -> GatewayError,
    ) -> Result<(), GatewayError> {
        let emission_us = 60_000_000 / u64::from(self.per_minute);
        let bucket = Bucket {
            key: format!("{}{who}", self.prefix),
            emission_us,
            tolerance_us: emission_us * u64::from(self.per_minute - 1),
        };
        match self.state.check(std::slice::from_ref(&bucket)).await {
            Ok(verdicts) => match verdicts.first() {
                Some(Verdict::Refuse { wait }) => Err(GatewayError::TooManyRequests {
                    limit: RuleId::builtin(self.setting),
                    retry_after: wait.as_secs().max(1),
                    rate: Rate {
                        count: self.per_minute,
                        period: Duration::from_secs(60),
                    },
                    burst: self.per_minute,
                }),
                _ => Ok(()),
            },
            Err(error) => Err(unavailable(format!(
                "the {} budget could not be checked: {error}",
                self.setting
            ))),
        }
    }
}

/// One `rate_limits:` entry as written (`config` assembles).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    id: RuleId,
    #[serde(rename = "match", default)]
    matcher: crate::matcher::RawMatch,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    clients: Vec<ClientId>,
    per: Per,
    rate: String,
    burst: Option<u32>,
    on_unavailable: Option<OnUnavailable>,
}

/// Compile `rate_limits:`: ids unique, clients known, matchers against the route table (findings
/// become `warnings`).
pub fn compile_limits(
    raw: Vec<RawLimit>,
    known_clients: &std::collections::HashSet<ClientId>,
    warnings: &mut Vec<String>,
) -> Result<Vec<LimitDefinition>, crate::settings::Invalid> {
    let mut ids = std::collections::HashSet::new();
    let mut limits = Vec::with_capacity(raw.len());
    for (i, limit) in raw.into_iter().enumerate() {
        let at = |key: &'static str| {
            [
                crate::settings::Seg::Key("rate_limits"),
                crate::settings::Seg::Index(i),
                crate::settings::Seg::Key(key),
            ]
        };
        if !ids.insert(limit.id.clone()) {
            return Err(crate::settings::Invalid::new(
                &at("id"),
                format!("duplicate limit id {:?}", limit.id.as_str()),
            ));
        }
        let rate: crate::units::Rate = limit
            .rate
            .parse()
            .map_err(|e| crate::settings::Invalid::new(&at("rate"), e))?;
        for client in limit.clients.iter().chain(&limit.matcher.clients) {
            if !known_clients.contains(client) {
                return Err(crate::settings::Invalid::new(
                    &at("clients"),
                    format!("unknown client {:?}", client.as_str()),
                ));
            }
        }
        let settings = LimitSettings {
            id: limit.id,
            matcher: crate::matcher::compile_match(limit.matcher, &at("match")[..2])?,
            roles: limit.roles,
            clients: limit.clients,
            per: limit.per,
            rate,
            burst: limit.burst.unwrap_or(1).max(1),
            on_unavailable: limit.on_unavailable,
        };
        let (definition, found) = LimitDefinition::compile(&settings).map_err(|e| {
            crate::settings::Invalid::new(
                &at("match"),
                format!("limit {:?}: {e}", settings.id.as_str()),
            )
        })?;
        warnings.extend(
            found
                .into_iter()
                .map(|w| format!("rate_limits[{i}] ({}): {w}", settings.id)),
        );
        limits.push(definition);
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;
    use http::Method;

    fn limit(id: &str, rate: &str) -> LimitDefinition {
        let settings = LimitSettings {
            id: id.parse().unwrap(),
            matcher: MatchSettings {
                method: Some(Method::DELETE),
                ..MatchSettings::default()
            },
            roles: vec![],
            clients: vec![],
            per: Per::Client,
            rate: rate.parse().unwrap(),
            burst: 1,
            on_unavailable: None,
        };
        LimitDefinition::compile(&settings).unwrap().0
    }

    #[test]
    fn the_fingerprint_follows_the_definition_and_nothing_else() {
        let a = limit("a", "1/day");
        assert_eq!(a.fingerprint(), limit("a", "1/day").fingerprint());
        assert_ne!(a.fingerprint(), limit("a", "2/day").fingerprint());
        let mut allow = a.clone();
        allow.on_unavailable = Some(OnUnavailable::Allow);
        assert_eq!(
            a.fingerprint(),
            allow.fingerprint(),
            "fallback is not counting"
        );
        assert_eq!(a.fingerprint().len(), 16);
    }

    #[test]
    fn bucket_keys_carry_the_prefix_id_and_fingerprint() {
        let store = StateStore::memory();
        let limits = RateLimits::new(vec![limit("a", "1/day")], store, OnUnavailable::Deny);
        let key = &limits.limits[0].key_prefix;
        assert!(key.starts_with("rl:a:"), "{key}");
        assert!(key.ends_with(':'));
    }

    fn principal() -> Principal {
        Principal {
            client: "bob".parse().unwrap(),
            roles: vec!["member".parse().unwrap()].into(),
            credential: None,
        }
    }

    fn delete() -> Operation {
        crate::classify::Classifier::new(Default::default())
            .classify(
                &Method::DELETE,
                http::Version::HTTP_11,
                &"/v1.3/indexes/i1".parse().unwrap(),
                &http::HeaderMap::new(),
                false,
            )
            .unwrap()
    }

    async fn admitted(limits: &RateLimits) -> bool {
        limits
            .check(&delete(), &principal(), |_, _| {})
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn state_follows_the_definition_not_the_position() {
        let store = StateStore::memory();
        let first = RateLimits::new(
            vec![limit("a", "1/day")],
            store.clone(),
            OnUnavailable::Deny,
        );
        assert!(admitted(&first).await);
        assert!(!admitted(&first).await, "spent");
        // Another limit inserted above it: `a` is still spent.
        let second = RateLimits::new(
            vec![limit("b", "100/day"), limit("a", "1/day")],
            store.clone(),
            OnUnavailable::Deny,
        );
        assert!(!admitted(&second).await);
        // A changed rate starts afresh.
        let third = RateLimits::new(
            vec![limit("b", "100/day"), limit("a", "2/day")],
            store,
            OnUnavailable::Deny,
        );
        assert!(admitted(&third).await);
    }
}
