//! Rate limits and deletion budgets: governor (GCRA) limiters keyed by client, role or nothing.
//!
//! Each `rate_limits` entry matches requests with the same matcher as policy rules, optionally only
//! for some roles or clients. Every matching limit must admit a request; the first that refuses
//! answers 429 `too_many_requests` with `Retry-After` (whole seconds, rounded up). Day-long rates
//! (`100/day`) make deletion budgets. Limits are per replica: each gateway process counts alone.
//! A limit whose definition is unchanged across a reload keeps its state.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either, Ready};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::Request;
use tower::{Layer, Service};

use crate::auth::Principal;
use crate::classify::Operation;
use crate::config::{ClientId, Role, RuleId};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::policy::CompiledRule;

/// What a limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One bucket per client.
    Client,
    /// One bucket per role (the first of the limit's `roles` the client holds, else its first role).
    Role,
    /// One bucket for everybody.
    Global,
}

/// `N/second`, `N/minute`, `N/hour` or `N/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?}: write N/second, N/minute, N/hour or N/day");
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "second" | "s" => Duration::from_secs(1),
            "minute" | "m" => Duration::from_secs(60),
            "hour" | "h" => Duration::from_secs(3600),
            "day" | "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        Ok(Rate { count, period })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// Limit id (metric label, audit `rule`, 429 message).
    pub id: RuleId,
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

struct Limit {
    config: LimitConfig,
    matcher: CompiledRule,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("config", &self.config)
            .finish()
    }
}

/// Limiters kept across reloads, by the full definition of their limit.
pub type LimiterRegistry = Arc<Mutex<HashMap<String, Arc<DefaultKeyedRateLimiter<String>>>>>;

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
    pub fn build(
        limits: Vec<(LimitConfig, CompiledRule)>,
        registry: &LimiterRegistry,
    ) -> RateLimits {
        let Ok(mut kept) = registry.lock() else {
            return RateLimits::default();
        };
        let mut next = HashMap::new();
        let limits = limits
            .into_iter()
            .map(|(config, matcher)| {
                let signature = format!("{config:?}|{matcher:?}");
                let limiter = kept.get(&signature).cloned().unwrap_or_else(|| {
                    let period = config.rate.period / config.rate.count;
                    let burst = NonZeroU32::new(config.burst.max(1)).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                        .allow_burst(burst);
                    Arc::new(RateLimiter::keyed(quota))
                });
                next.insert(signature, limiter.clone());
                Limit {
                    config,
                    matcher,
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
            let c = &limit.config;
            if !c.roles.is_empty() && !c.roles.iter().any(|r| principal.has_role(r)) {
                continue;
            }
            if !c.clients.is_empty() && !c.clients.contains(&principal.client) {
                continue;
            }
            if !limit.matcher.matches(op, principal) {
                continue;
            }
            let key = match c.per {
                Per::Client => principal.client.as_str().to_owned(),
                Per::Role => c
                    .roles
                    .iter()
                    .find(|r| principal.has_role(r))
                    .or_else(|| principal.roles.first())
                    .map_or_else(String::new, |r| r.as_str().to_owned()),
                Per::Global => String::new(),
            };
            if let Err(not_until) = limit.limiter.check_key(&key) {
                return Err(Exceeded {
                    limit: c.id.clone(),
                    // The limiter's own clock: making one (quanta calibrates against the TSC, a
                    // CPUID each time) cost more than the rest of a request (BENCHMARKS.md).
                    wait: not_until.wait_time_from(limit.limiter.clock().now()),
                    rate: c.rate,
                    burst: c.burst,
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

/// Layer enforcing the limits.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    /// Enforce `limits`, counting refusals in `metrics`.
    pub fn new(limits: Arc<RateLimits>, metrics: Arc<Metrics>) -> Self {
        RateLimitLayer { limits, metrics }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Service produced by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    limits: Arc<RateLimits>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<B>> for Limited<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<S::Future, Ready<Result<S::Response, GatewayError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.limits.is_empty() {
            return Either::Left(self.inner.call(req));
        }
        let (Some(op), Some(principal)) = (
            req.extensions().get::<Operation>(),
            req.extensions().get::<Principal>(),
        ) else {
            return Either::Right(future::ready(Err(GatewayError::Internal(
                "rate limits could not be evaluated: request not classified or not authenticated",
            ))));
        };
        match self.limits.check(op, principal) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(exceeded) => {
                self.metrics
                    .rate_limited
                    .with_label_values(&[exceeded.limit.as_str()])
                    .inc();
                self.metrics
                    .client_denials
                    .with_label_values(&[principal.client.as_str(), "rate_limit"])
                    .inc();
                let retry_after =
                    exceeded.wait.as_secs() + u64::from(exceeded.wait.subsec_nanos() > 0);
                Either::Right(future::ready(Err(GatewayError::TooManyRequests {
                    limit: exceeded.limit,
                    retry_after: retry_after.max(1),
                    rate: exceeded.rate,
                    burst: exceeded.burst,
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let rate: Rate = "30/minute".parse().unwrap();
        assert_eq!(
            rate,
            Rate {
                count: 30,
                period: Duration::from_secs(60)
            }
        );
        assert_eq!(rate.to_string(), "30/minute");
        assert_eq!(
            "100/day".parse::<Rate>().unwrap().period,
            Duration::from_secs(86_400)
        );
        for bad in ["30", "0/minute", "x/minute", "3/fortnight", "-1/second"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
