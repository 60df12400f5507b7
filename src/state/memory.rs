//! The in-process state store: the buckets of this replica alone, behind one mutex (a check is a
//! few hash lookups). Buckets that are full again are swept from time to time, so the map holds
//! nothing for idle clients.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::{gcra, Bucket, Verdict};

/// Sweep full buckets every this many checks.
const SWEEP_EVERY: u64 = 4096;

/// Buckets in this process.
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tats: HashMap<String, u64>,
    checks: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }
}

impl MemoryStore {
    /// Check `buckets` now, all or nothing.
    pub fn check(&self, buckets: &[Bucket]) -> Vec<Verdict> {
        self.run(buckets, true)
    }

    /// What `check` would answer now, consuming nothing.
    pub fn peek(&self, buckets: &[Bucket]) -> Vec<Verdict> {
        self.run(buckets, false)
    }

    fn run(&self, buckets: &[Bucket], commit: bool) -> Vec<Verdict> {
        // The clock starts at the store's creation, offset so a fresh bucket is never "in the past".
        let now = self.now();
        // A poisoned lock still holds the buckets: keep enforcing them (fail closed).
        let mut state = self.lock();
        state.checks += 1;
        if state.checks.is_multiple_of(SWEEP_EVERY) {
            state.tats.retain(|_, tat| *tat > now);
        }
        gcra(&mut state.tats, buckets, now, commit)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buckets held now (tests).
    pub fn len(&self) -> usize {
        self.lock().tats.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_enforces_every_bucket() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let bucket = [Bucket {
            key: "k".into(),
            emission_us: 1_000_000_000,
            tolerance_us: 0,
        }];
        assert_eq!(store.check(&bucket), vec![Verdict::Admit]);
        let poisoner = store.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.state.lock().unwrap();
            panic!("poison the store");
        })
        .join();
        assert!(store.state.is_poisoned());
        assert!(
            matches!(store.check(&bucket)[0], Verdict::Refuse { .. }),
            "a poisoned store must not mean no limits"
        );
    }

    #[test]
    fn full_buckets_are_swept() {
        let store = MemoryStore::default();
        let bucket = |i: u64| Bucket {
            key: format!("k{i}"),
            emission_us: 1,
            tolerance_us: 0,
        };
        for i in 0..SWEEP_EVERY {
            store.check(&[bucket(i)]);
        }
        assert!(store.len() < 10, "{} buckets kept", store.len());
    }
}
