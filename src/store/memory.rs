//! The in-process record store: documents and indexes of this replica alone, behind one mutex,
//! lost with the process.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Records in this process.
#[derive(Debug)]
pub struct MemoryRecords {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Documents: value and expiry (µs on the store's clock).
    docs: HashMap<String, (String, u64)>,
    /// Ordered indexes: member → score.
    indexes: HashMap<String, HashMap<String, u64>>,
    /// Writes since the last sweep of expired documents.
    writes: u64,
}

/// Sweep expired documents every this many writes.
const SWEEP_EVERY: u64 = 1024;

impl Default for MemoryRecords {
    fn default() -> Self {
        MemoryRecords {
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }
}

impl MemoryRecords {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn written(&self, state: &mut State, now: u64) {
        state.writes += 1;
        if state.writes.is_multiple_of(SWEEP_EVERY) {
            state.docs.retain(|_, (_, expires)| *expires > now);
        }
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
        self.written(&mut state, now);
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

    /// Remove `key` if it holds exactly `value`.
    pub fn remove(&self, key: &str, value: &str) -> bool {
        let now = self.now();
        let mut state = self.lock();
        match state.docs.get(key) {
            Some((held, expires)) if *expires > now && held == value => {
                state.docs.remove(key);
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

    /// Members of `index` after its newest `keep`, newest first, at most `limit`.
    pub fn index_beyond(&self, index: &str, keep: usize, limit: usize) -> Vec<String> {
        let mut all = self.index_page(index, None, usize::MAX);
        all.drain(..keep.min(all.len()));
        all.into_iter().take(limit).map(|(m, _)| m).collect()
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
}
