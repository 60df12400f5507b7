//! The state store: where state that several replicas must share lives — today the rate-limit and
//! deletion-budget buckets — behind one small interface, chosen by `state.backend`.
//!
//! - [`memory`] (the default): in this process; one replica counts alone.
//! - [`redis`]: on a Redis (or protocol-compatible, e.g. Valkey) server every replica uses, so a
//!   `20/day` budget is 20 a day across all of them.
//!
//! It holds counters only, which may be lost: records that must not be (approvals, clients and
//! keys issued at runtime) live in the record store ([`crate::store`]).
//!
//! Both evaluate the same GCRA (the algorithm the `governor` crate implements) over a set of buckets
//! **atomically and all or nothing**: a request is checked against every limit that matches it in
//! one call (one round trip to Redis), and consumes nothing from any of them unless every one admits
//! it. Buckets are identified by value — `rl:{limit id}:{fingerprint of its definition}:{bucket}`,
//! under `state.redis.key_prefix` in Redis — so a limit keeps its state wherever it moves in the file
//! and across reloads and replicas, and a changed definition starts afresh. Keys are given without
//! the prefix; the Redis store adds it.

pub mod memory;
pub mod redis;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// What a limit does when the store cannot answer in time (`on_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse with 503 `limits_unavailable` (fail closed; the default).
    #[default]
    Deny,
    /// Let the request through, unlimited (counted).
    Allow,
}

impl OnUnavailable {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Deny => "deny",
            OnUnavailable::Allow => "allow",
        }
    }
}

/// The `state:` section: which backend, and how to reach Redis.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateSettings {
    /// In this process (the default).
    #[default]
    Memory,
    /// On a Redis server.
    Redis(RedisSettings),
}

impl StateSettings {
    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        match self {
            StateSettings::Memory => "memory",
            StateSettings::Redis(_) => "redis",
        }
    }

    /// What a limit without its own `on_unavailable` does.
    pub fn on_unavailable(&self) -> OnUnavailable {
        match self {
            StateSettings::Memory => OnUnavailable::Deny,
            StateSettings::Redis(redis) => redis.on_unavailable,
        }
    }
}

/// `state.redis`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port/db` or `rediss://…` (TLS). Holds a password: never shown.
    pub url: String,
    /// Every key the gateway writes starts with this.
    pub key_prefix: String,
    /// One request waits at most this long for the store.
    pub timeout: Duration,
    /// What limits do when the store cannot answer in time.
    pub on_unavailable: OnUnavailable,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

/// A Redis URL without its credentials, for logs and error messages.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// One bucket to check: its key and its GCRA parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The key (the store adds its prefix).
    pub key: String,
    /// Emission interval: the period divided by the count (µs, at least 1).
    pub emission_us: u64,
    /// Tolerance: the emission interval times `burst - 1` (µs).
    pub tolerance_us: u64,
}

/// What the store says about one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It admits the request.
    Admit,
    /// It refuses; a request would be admitted after `wait`.
    Refuse {
        /// Time until the bucket admits.
        wait: Duration,
    },
}

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No answer within `state.redis.timeout`.
    #[error("the state store did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The store is known to be down (a recent failure; it is being reconnected in the background).
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("the state store failed: {0}")]
    Failed(String),
}

/// A Redis call, as a child span of the request when traces are exported (disabled, at no
/// cost, otherwise).
async fn traced<T>(op: &'static str, call: impl std::future::Future<Output = T>) -> T {
    let span = tracing::trace_span!("state_store", backend = "redis", op);
    if span.is_disabled() {
        call.await
    } else {
        tracing::Instrument::instrument(call, span).await
    }
}

/// The store in use; cheap to clone.
#[derive(Clone, Debug)]
pub enum StateStore {
    /// In this process.
    Memory(Arc<memory::MemoryStore>),
    /// On Redis.
    Redis(Arc<redis::RedisStore>),
}

impl StateStore {
    /// The in-process store.
    pub fn memory() -> StateStore {
        StateStore::Memory(Arc::new(memory::MemoryStore::default()))
    }

    /// Check `buckets` atomically, all or nothing (see the module documentation).
    pub async fn check(&self, buckets: &[Bucket]) -> Result<Vec<Verdict>, StoreError> {
        match self {
            StateStore::Memory(memory) => Ok(memory.check(buckets)),
            StateStore::Redis(redis) => traced("check", redis.check(buckets)).await,
        }
    }

    /// What [`check`](Self::check) would answer now, consuming nothing (a refused bucket's repair
    /// aside): asking for an approval meets the limits its request will meet, without spending them.
    pub async fn peek(&self, buckets: &[Bucket]) -> Result<Vec<Verdict>, StoreError> {
        match self {
            StateStore::Memory(memory) => Ok(memory.peek(buckets)),
            StateStore::Redis(redis) => traced("peek", redis.run(buckets, true)).await,
        }
    }

    /// `Ok` while the store answers (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        match self {
            StateStore::Memory(_) => Ok(()),
            StateStore::Redis(redis) => redis.readiness(),
        }
    }
}

/// GCRA over `buckets` at `now` (µs), all or nothing; `tats` holds each bucket's theoretical
/// arrival time and is updated only if every bucket admits and `commit` is set (a peek consumes
/// nothing). The same algorithm as `gcra.lua`,
/// including its repair: a TAT beyond the latest any admission leaves (`now + tolerance +
/// emission`) is read, and kept, as that one, so a wait is never more than one emission interval.
pub fn gcra(
    tats: &mut std::collections::HashMap<String, u64>,
    buckets: &[Bucket],
    now: u64,
    commit: bool,
) -> Vec<Verdict> {
    let mut pending: Vec<(&str, u64)> = Vec::with_capacity(buckets.len());
    let mut repaired: Vec<(&str, u64)> = Vec::new();
    let mut verdicts = Vec::with_capacity(buckets.len());
    let mut refused = false;
    for bucket in buckets {
        // A key repeated in one call sees its earlier (tentative) update.
        let tat = match pending.iter().rev().find(|(k, _)| *k == bucket.key) {
            Some((_, tentative)) => *tentative,
            None => {
                let stored = tats.get(&bucket.key).copied().unwrap_or(now);
                let latest = now
                    .saturating_add(bucket.tolerance_us)
                    .saturating_add(bucket.emission_us);
                if stored > latest {
                    repaired.push((&bucket.key, latest));
                    latest
                } else {
                    stored
                }
            }
        };
        let earliest = tat.saturating_sub(bucket.tolerance_us);
        if now < earliest {
            refused = true;
            verdicts.push(Verdict::Refuse {
                wait: Duration::from_micros(earliest - now),
            });
        } else {
            pending.push((&bucket.key, tat.max(now) + bucket.emission_us));
            verdicts.push(Verdict::Admit);
        }
    }
    let written = if refused || !commit {
        repaired
    } else {
        pending
    };
    for (key, tat) in written {
        tats.insert(key.to_owned(), tat);
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn bucket(key: &str, per_second: u64, burst: u64) -> Bucket {
        let emission_us = 1_000_000 / per_second;
        Bucket {
            key: key.into(),
            emission_us,
            tolerance_us: emission_us * (burst - 1),
        }
    }

    #[test]
    fn a_burst_is_admitted_then_refused_with_the_wait() {
        let mut tats = HashMap::new();
        let b = [bucket("k", 1, 5)];
        for _ in 0..5 {
            assert_eq!(gcra(&mut tats, &b, 10_000_000, true), vec![Verdict::Admit]);
        }
        let refused = gcra(&mut tats, &b, 10_000_000, true);
        assert_eq!(
            refused,
            vec![Verdict::Refuse {
                wait: Duration::from_secs(1)
            }]
        );
        // A second later one more is admitted.
        assert_eq!(gcra(&mut tats, &b, 11_000_000, true), vec![Verdict::Admit]);
    }

    #[test]
    fn a_refusal_by_any_bucket_consumes_nothing_from_the_others() {
        let mut tats = HashMap::new();
        let both = [bucket("roomy", 1, 10), bucket("tight", 1, 1)];
        assert_eq!(gcra(&mut tats, &both, 0, true), vec![Verdict::Admit; 2]);
        let before = tats.clone();
        let verdicts = gcra(&mut tats, &both, 0, true);
        assert_eq!(verdicts[0], Verdict::Admit);
        assert!(matches!(verdicts[1], Verdict::Refuse { .. }));
        assert_eq!(tats, before, "nothing consumed");
    }

    #[test]
    fn a_peek_answers_as_a_check_would_and_consumes_nothing() {
        let mut tats = HashMap::new();
        let b = [bucket("k", 1, 2)];
        assert_eq!(gcra(&mut tats, &b, 0, false), vec![Verdict::Admit]);
        assert!(tats.is_empty(), "a peek writes nothing");
        assert_eq!(gcra(&mut tats, &b, 0, true), vec![Verdict::Admit]);
        assert_eq!(gcra(&mut tats, &b, 0, true), vec![Verdict::Admit]);
        let before = tats.clone();
        assert!(matches!(
            gcra(&mut tats, &b, 0, false)[0],
            Verdict::Refuse { .. }
        ));
        assert_eq!(tats, before);
    }

    #[test]
    fn a_key_repeated_in_one_call_counts_twice() {
        let mut tats = HashMap::new();
        let twice = [bucket("k", 1, 2), bucket("k", 1, 2), bucket("k", 1, 2)];
        let verdicts = gcra(&mut tats, &twice, 0, true);
        assert_eq!(&verdicts[..2], &[Verdict::Admit, Verdict::Admit]);
        assert!(matches!(verdicts[2], Verdict::Refuse { .. }));
        assert!(tats.is_empty(), "refused as a whole");
    }

    #[test]
    fn a_tat_beyond_any_admission_is_repaired_and_waits_one_interval_at_most() {
        let b = [bucket("k", 1, 3)];
        // Ten days ahead of the clock (the clock went back, or the state was written by hand).
        let mut tats = HashMap::from([("k".to_owned(), 864_000_000_000)]);
        let verdicts = gcra(&mut tats, &b, 1_000_000, true);
        assert_eq!(
            verdicts,
            vec![Verdict::Refuse {
                wait: Duration::from_secs(1)
            }]
        );
        assert_eq!(
            tats["k"],
            1_000_000 + 2_000_000 + 1_000_000,
            "kept as the latest TAT"
        );
        assert_eq!(gcra(&mut tats, &b, 2_000_000, true), vec![Verdict::Admit]);
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redacted("redis://user:s3cret@10.0.0.5:6379/0"),
            "redis://***@10.0.0.5:6379/0"
        );
        assert_eq!(redacted("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
    }
}
