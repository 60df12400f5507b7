//! The Redis state store: buckets on a Redis (or Valkey) server that every replica shares.
//!
//! - One multiplexed connection (redis-rs' `ConnectionManager`, which reconnects by itself), made
//!   lazily; one Lua script ([`gcra.lua`](gcra.lua)) evaluates every bucket of a request atomically on
//!   the server's clock (`TIME`, so replicas with skewed clocks agree), sent with `EVALSHA` and
//!   re-loaded by the client after `NOSCRIPT` (a `SCRIPT FLUSH`, a server restart).
//! - No request waits longer than `state.redis.timeout`. A transport error or a timeout opens a
//!   breaker: until a background probe (`PING`, every 100 ms while open, every second otherwise)
//!   gets an answer again, requests do not wait for the store at all and each limit falls back to
//!   its `on_unavailable`. The probe is also what `/readyz` reports, with or without traffic.
//! - The connection manager's own retries are kept to one with a short backoff: its default (six,
//!   exponential from 100 ms) made every command during an outage wait behind the reconnect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};

use super::{redacted, Bucket, RedisSettings, StoreError, Verdict};
use crate::metrics::StoreMetrics;

/// The GCRA script.
const GCRA: &str = include_str!("gcra.lua");

/// How often the probe runs while the store answers, and while it does not.
const PROBE_HEALTHY: Duration = Duration::from_secs(1);
const PROBE_OPEN: Duration = Duration::from_millis(100);

/// Buckets on Redis.
pub struct RedisStore {
    connection: ConnectionManager,
    script: Script,
    prefix: String,
    timeout: Duration,
    where_: String,
    /// Open while the store is known to be down: requests do not wait for it.
    open: AtomicBool,
    /// Why it is down, for `/readyz`.
    health: Mutex<Option<String>>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("at", &self.where_)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("state.redis.url ({url}): {error}")]
pub struct SetupError {
    url: String,
    error: String,
}

impl RedisStore {
    /// A store for these settings, connecting in the background; starts its probe. Must be called
    /// within a tokio runtime.
    pub fn start(
        settings: &RedisSettings,
        metrics: StoreMetrics,
    ) -> Result<Arc<RedisStore>, SetupError> {
        let setup = |error: RedisError| SetupError {
            url: redacted(&settings.url),
            error: error.to_string(),
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_pipeline_buffer_size(1024);
        let client = Client::open(settings.url.as_str()).map_err(setup)?;
        let connection = client.get_connection_manager_lazy(config).map_err(setup)?;
        let store = Arc::new(RedisStore {
            connection,
            script: Script::new(GCRA),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            where_: redacted(&settings.url),
            open: AtomicBool::new(false),
            health: Mutex::new(None),
            metrics,
        });
        tokio::spawn(probe(Arc::downgrade(&store)));
        tokio::spawn(warn_if_evicting(Arc::downgrade(&store)));
        tokio::spawn(watch_memory(Arc::downgrade(&store)));
        Ok(store)
    }

    /// Every key this store writes starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `Ok` while the store answers.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.health.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// Check `buckets` in one round trip, all or nothing.
    pub async fn check(&self, buckets: &[Bucket]) -> Result<Vec<Verdict>, StoreError> {
        self.run(buckets, true).await
    }

    /// Check `buckets` in one round trip; `commit: false` consumes nothing (a peek).
    pub async fn run(&self, buckets: &[Bucket], commit: bool) -> Result<Vec<Verdict>, StoreError> {
        if self.open.load(Ordering::Acquire) {
            self.metrics.count("unavailable");
            return Err(StoreError::Unavailable(self.why()));
        }
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            invocation
                .key(format!("{}{}", self.prefix, bucket.key))
                .arg(bucket.emission_us.max(1))
                .arg(bucket.tolerance_us);
        }
        if !commit {
            invocation.arg("peek");
        }
        let mut connection = self.connection.clone();
        let started = Instant::now();
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(waits)) if waits.len() == buckets.len() && waits.iter().all(|w| *w >= 0) => {
                self.metrics.count("ok");
                Ok(waits
                    .into_iter()
                    .map(|wait| match u64::try_from(wait) {
                        Ok(0) | Err(_) => Verdict::Admit,
                        Ok(wait) => Verdict::Refuse {
                            wait: Duration::from_micros(wait),
                        },
                    })
                    .collect())
            }
            // A negative wait is no answer (an integer reply that overflowed): never an admission.
            Ok(Ok(waits)) if waits.len() == buckets.len() => {
                self.metrics.count("error");
                Err(StoreError::Failed(format!(
                    "the script answered a negative wait ({:?})",
                    waits.iter().find(|w| **w < 0)
                )))
            }
            Ok(Ok(waits)) => {
                self.metrics.count("error");
                Err(StoreError::Failed(format!(
                    "the script answered {} verdicts for {} buckets",
                    waits.len(),
                    buckets.len()
                )))
            }
            Ok(Err(error)) if is_transport(&error) => {
                self.metrics.count("error");
                self.trip(format!("{}: {error}", self.where_));
                Err(StoreError::Unavailable(self.why()))
            }
            Ok(Err(error)) => {
                self.metrics.count("error");
                Err(StoreError::Failed(error.to_string()))
            }
            Err(_) => {
                self.metrics.count("timeout");
                self.trip(format!(
                    "{}: no answer within {} ms",
                    self.where_,
                    self.timeout.as_millis()
                ));
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    fn why(&self) -> String {
        self.readiness().err().unwrap_or_else(|| "unknown".into())
    }

    /// Open the breaker (the probe closes it).
    fn trip(&self, why: String) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if health.is_none() {
            tracing::warn!(store = %self.where_, %why, "state store unavailable: limits fall back to their on_unavailable until it answers again");
        }
        *health = Some(why);
        self.open.store(true, Ordering::Release);
        self.metrics.up.set(0);
    }

    /// One probe: `PING` within the timeout.
    async fn ping(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(
            self.timeout.max(Duration::from_millis(100)),
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("{}: {error}", self.where_)),
            Err(_) => Err(format!("{}: no answer to PING", self.where_)),
        }
    }
}

/// Limit state must never be evicted silently: an evicted budget starts full again. Once the
/// server answers, say so loudly if its `maxmemory-policy` may evict (anything but `noeviction`:
/// buckets carry an expiry, so `volatile-*` evicts them too). With `noeviction` a full Redis fails
/// writes, and each limit follows its `on_unavailable` (budgets fail closed).
async fn warn_if_evicting(store: std::sync::Weak<RedisStore>) {
    for _ in 0..30 {
        let Some(store) = store.upgrade() else {
            return;
        };
        let mut connection = store.connection.clone();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async::<Vec<String>>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok(pair)) => {
                match pair.get(1).map(String::as_str) {
                    Some(policy) if evicts(policy) => tracing::warn!(
                        store = %store.where_,
                        policy,
                        "{}", eviction_warning(policy)
                    ),
                    _ => {}
                }
                return;
            }
            // CONFIG may be disabled (managed Redis): nothing to check.
            Ok(Err(error)) if !is_transport(&error) => return,
            _ => {}
        }
        drop(store);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether `maxmemory-policy` `policy` may evict limit state (anything but `noeviction`: buckets
/// carry an expiry, so `volatile-*` evicts them too).
pub fn evicts(policy: &str) -> bool {
    policy != "noeviction"
}

/// What startup and `check` say of an evicting server.
pub fn eviction_warning(policy: &str) -> String {
    format!("the Redis server may evict keys (maxmemory-policy {policy}): an evicted limit starts afresh and an exhausted budget admits again; set maxmemory-policy noeviction (deploy/README.md)")
}

/// The server's `maxmemory-policy`, asked once within `wait` (for `check`). `None`: the server
/// answered but does not say (CONFIG disabled, as on some managed services).
pub async fn eviction_policy(url: &str, wait: Duration) -> Result<Option<String>, String> {
    let ask = async {
        let client = Client::open(url).map_err(|e| e.to_string())?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        match redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<Vec<String>>(&mut connection)
            .await
        {
            Ok(pair) => Ok(pair.get(1).cloned()),
            Err(error) if !is_transport(&error) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    };
    tokio::time::timeout(wait, ask)
        .await
        .map_err(|_| format!("no answer within {} ms", wait.as_millis()))?
}

/// How often the server's memory use is read.
const MEMORY_EVERY: Duration = Duration::from_secs(10);

/// Keep `tl_gateway_state_memory_used_bytes` and `…_max_bytes` current (the alert
/// `TlGatewayStateMemoryHigh` fires near `maxmemory`, before writes fail). Ends with the store.
async fn watch_memory(store: std::sync::Weak<RedisStore>) {
    loop {
        let Some(strong) = store.upgrade() else {
            return;
        };
        let mut connection = strong.connection.clone();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("INFO")
                .arg("memory")
                .query_async::<String>(&mut connection),
        )
        .await;
        if let Ok(Ok(info)) = answer {
            let (used, max) = memory_of(&info);
            if let Some(used) = used {
                strong.metrics.memory_used.set(used);
            }
            if let Some(max) = max {
                strong.metrics.memory_max.set(max);
            }
        }
        drop(strong);
        tokio::time::sleep(MEMORY_EVERY).await;
    }
}

/// `used_memory` and `maxmemory` from an `INFO memory` answer.
fn memory_of(info: &str) -> (Option<i64>, Option<i64>) {
    let field = |name: &str| {
        info.lines()
            .filter_map(|line| line.trim_end().split_once(':'))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.parse().ok())
    };
    (field("used_memory"), field("maxmemory"))
}

/// Errors that say the connection, not the command, failed.
fn is_transport(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// The probe: keeps `/readyz` current and closes the breaker once the store answers again. Ends
/// with the store.
async fn probe(store: std::sync::Weak<RedisStore>) {
    loop {
        let open = match store.upgrade() {
            Some(store) => store.open.load(Ordering::Acquire),
            None => return,
        };
        tokio::time::sleep(if open { PROBE_OPEN } else { PROBE_HEALTHY }).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        match store.ping().await {
            Ok(()) => {
                let mut health = store.health.lock().unwrap_or_else(PoisonError::into_inner);
                if health.take().is_some() {
                    tracing::info!(store = %store.where_, "state store available again");
                }
                store.open.store(false, Ordering::Release);
                store.metrics.up.set(1);
            }
            Err(why) => store.trip(why),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_is_read_from_info() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:2097152\r\nmaxmemory_policy:noeviction\r\n";
        assert_eq!(super::memory_of(info), (Some(1_048_576), Some(2_097_152)));
        assert_eq!(super::memory_of("# Memory\r\n"), (None, None));
    }
}
