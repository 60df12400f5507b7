//! The in-process state store: the buckets of this replica alone, behind one mutex (a check is a
//! few hash lookups). Buckets that are full again are swept from time to time, so the map holds
//! nothing for idle clients.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Documents: value and expiry (µs on the store's clock).
    docs: HashMap<String, (String, u64)>,
    /// Ordered indexes: member → score.
    indexes: HashMap<String, HashMap<String, u64>>,
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
        // The clock starts at the store's creation, offset so a fresh bucket is never "in the past".
        let now = self.now();
        // A poisoned lock still holds the buckets: keep enforcing them (fail closed).
        let mut state = self.lock();
        state.checks += 1;
        if state.checks.is_multiple_of(SWEEP_EVERY) {
            state.tats.retain(|_, tat| *tat > now);
            state.docs.retain(|_, (_, expires)| *expires > now);
        }
        gcra(&mut state.tats, buckets, now)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The document at `key`, unless expired.
    pub fn get(&self, key: &str) -> Option<String> {
        let now = self.now();
        let mut state = self.lock();
        match state.docs.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                state.docs.remove(key);
                None
            }
            None => None,
        }
    }

    /// Store `value` unless a live document is at `key`.
    pub fn insert(&self, key: &str, value: &str, ttl: Duration) -> bool {
        let now = self.now();
        let mut state = self.lock();
        if state
            .docs
            .get(key)
            .is_some_and(|(_, expires)| *expires > now)
        {
            return false;
        }
        let expires = now + ttl.as_micros() as u64;
        state
            .docs
            .insert(key.to_owned(), (value.to_owned(), expires));
        true
    }

    /// Replace `old` with `new` if `key` holds exactly `old`.
    pub fn swap(&self, key: &str, old: &str, new: &str, ttl: Duration) -> bool {
        let now = self.now();
        let mut state = self.lock();
        match state.docs.get_mut(key) {
            Some((value, expires)) if *expires > now && value == old => {
                *value = new.to_owned();
                *expires = now + ttl.as_micros() as u64;
                true
            }
            _ => false,
        }
    }

    /// Add `member` to `index` with `score`.
    pub fn index_add(&self, index: &str, member: &str, score: u64) {
        self.lock()
            .indexes
            .entry(index.to_owned())
            .or_default()
            .insert(member.to_owned(), score);
    }

    /// Members of `index`, highest score first.
    pub fn index_newest(&self, index: &str, limit: usize) -> Vec<String> {
        let state = self.lock();
        let Some(members) = state.indexes.get(index) else {
            return Vec::new();
        };
        let mut sorted: Vec<(&String, &u64)> = members.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| b.0.cmp(a.0)));
        sorted
            .into_iter()
            .take(limit)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// At most `limit` members of `index` strictly older than `before` (score, then member; highest
    /// first), with their scores.
    pub fn index_page(
        &self,
        index: &str,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Vec<(String, u64)> {
        let state = self.lock();
        let Some(members) = state.indexes.get(index) else {
            return Vec::new();
        };
        let mut sorted: Vec<(&String, &u64)> = members
            .iter()
            .filter(|(m, s)| before.is_none_or(|(bs, bm)| (**s, m.as_str()) < (bs, bm)))
            .collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| b.0.cmp(a.0)));
        sorted
            .into_iter()
            .take(limit)
            .map(|(m, s)| (m.clone(), *s))
            .collect()
    }

    /// Remove the members of `index` scored below `score`, and expired documents.
    pub fn index_trim(&self, index: &str, score: u64) {
        let now = self.now();
        let mut state = self.lock();
        if let Some(set) = state.indexes.get_mut(index) {
            set.retain(|_, s| *s >= score);
        }
        state.docs.retain(|_, (_, expires)| *expires > now);
    }

    /// Remove `members` from `index`.
    pub fn index_remove(&self, index: &str, members: &[String]) {
        if let Some(set) = self.lock().indexes.get_mut(index) {
            for member in members {
                set.remove(member);
            }
        }
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
