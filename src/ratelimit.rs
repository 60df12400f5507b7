//! Rate limits and deletion budgets: governor (GCRA) limiters keyed by client, role or nothing.
//!
//! Each `rate_limits` entry matches requests with the same matcher as policy rules, optionally only
//! for some roles or clients. Every matching limit must admit a request; the first that refuses
//! answers 429 `too_many_requests` with `Retry-After` (whole seconds, rounded up). Day-long rates
//! (`100/day`) make deletion budgets. Limits are per replica: each gateway process counts alone.
//! A limit whose definition is unchanged across a reload keeps its state.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::Request;

use crate::auth::{judged, Principal};
use crate::classify::Operation;
use crate::error::GatewayError;
use crate::gate::{Admit, GateLayer};
use crate::ids::{ClientId, Role, RuleId};
use crate::matcher::{self, CompiledMatch, MatchSettings};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::units::Rate;

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
}

/// A compiled limit: everything that defines it, compared by value. Its state (the buckets) is
/// kept across reloads under this key, so a limit keeps its state wherever it moves in the file and
/// starts afresh when anything in its definition changes.
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
    pub fn bucket(&self, principal: &Principal) -> String {
        match self.per {
            Per::Client => principal.client.as_str().to_owned(),
            Per::Role => self
                .roles
                .iter()
                .find(|r| principal.has_role(r))
                .or_else(|| principal.roles.first())
                .map_or_else(String::new, |r| r.as_str().to_owned()),
            Per::Global => String::new(),
        }
    }
}

struct Limit {
    definition: LimitDefinition,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("definition", &self.definition)
            .finish()
    }
}

/// Limiters kept across reloads, by the definition of their limit.
pub type LimiterRegistry =
    Arc<Mutex<HashMap<LimitDefinition, Arc<DefaultKeyedRateLimiter<String>>>>>;

/// The compiled limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    limits: Vec<Limit>,
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

impl RateLimits {
    /// Build limiters, reusing those in `registry` whose definition is unchanged.
    pub fn build(limits: Vec<LimitDefinition>, registry: &LimiterRegistry) -> RateLimits {
        // A poisoned registry still holds the limiters: keep enforcing them (fail closed).
        let mut kept = registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(limits.len());
        let limits = limits
            .into_iter()
            .map(|definition| {
                let limiter = kept.get(&definition).cloned().unwrap_or_else(|| {
                    let period = definition.rate.period / definition.rate.count;
                    let burst = NonZeroU32::new(definition.burst.max(1)).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                        .allow_burst(burst);
                    Arc::new(RateLimiter::keyed(quota))
                });
                next.insert(definition.clone(), limiter.clone());
                Limit {
                    definition,
                    limiter,
                }
            })
            .collect();
        *kept = next;
        RateLimits { limits }
    }

    /// Check every matching limit; the first refusal wins.
    pub fn check(&self, op: &Operation, principal: &Principal) -> Result<(), Exceeded> {
        for limit in &self.limits {
            let d = &limit.definition;
            if !d.applies(op, principal) {
                continue;
            }
            if let Err(not_until) = limit.limiter.check_key(&d.bucket(principal)) {
                return Err(Exceeded {
                    limit: d.id.clone(),
                    // The limiter's own clock: making one (quanta calibrates against the TSC, a
                    // CPUID each time) cost more than the rest of a request (BENCHMARKS.md).
                    wait: not_until.wait_time_from(limit.limiter.clock().now()),
                    rate: d.rate,
                    burst: d.burst,
                });
            }
        }
        Ok(())
    }

    /// Whether any limit is configured.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

/// The rate-limit layer: 429 `too_many_requests` with `Retry-After` over a limit.
#[derive(Clone, Debug)]
pub struct Limited {
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
}

impl Limited {
    /// The layer enforcing `limits`, counting refusals in `metrics`.
    pub fn layer(limits: Arc<RateLimits>, metrics: Arc<Metrics>) -> GateLayer<Limited> {
        GateLayer::new(Limited { limits, metrics })
    }
}

impl<B> Admit<B> for Limited {
    fn admit(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let (op, principal) = judged(
            req,
            "rate limits could not be evaluated: request not classified or not authenticated",
        )?;
        let Err(exceeded) = self.limits.check(op, principal) else {
            return Ok(());
        };
        self.metrics
            .rate_limited
            .with_label_values(&[exceeded.limit.as_str()])
            .inc();
        self.metrics
            .client_denials
            .with_label_values(&[principal.client.as_str(), "rate_limit"])
            .inc();
        let retry_after = exceeded.wait.as_secs() + u64::from(exceeded.wait.subsec_nanos() > 0);
        Err(GatewayError::TooManyRequests {
            limit: exceeded.limit,
            retry_after: retry_after.max(1),
            rate: exceeded.rate,
            burst: exceeded.burst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        };
        LimitDefinition::compile(&settings).unwrap().0
    }

    #[test]
    fn state_follows_the_definition_not_the_position() {
        let registry = LimiterRegistry::default();
        let first = RateLimits::build(vec![limit("a", "1/day")], &registry);
        let kept = first.limits[0].limiter.clone();
        // Another limit inserted above it: `a` keeps its limiter.
        let second = RateLimits::build(vec![limit("b", "1/day"), limit("a", "1/day")], &registry);
        assert!(Arc::ptr_eq(&second.limits[1].limiter, &kept));
        // A changed rate starts afresh.
        let third = RateLimits::build(vec![limit("b", "1/day"), limit("a", "2/day")], &registry);
        assert!(!Arc::ptr_eq(&third.limits[1].limiter, &kept));
    }

    #[test]
    fn a_poisoned_registry_still_builds_every_limit() {
        let registry = LimiterRegistry::default();
        let poisoner = registry.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the registry");
        })
        .join();
        assert!(registry.is_poisoned());
        let limits = RateLimits::build(vec![limit("a", "1/day")], &registry);
        assert!(
            !limits.is_empty(),
            "a poisoned registry must not mean no limits"
        );
    }
}
