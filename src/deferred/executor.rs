//! The executor: every replica runs one. Once a second it reads the calls that are due (the
//! `deferred-due` index, by `execute_at`, one page) and
//!
//! - **claims** each scheduled one with one compare-and-swap scheduled → executing (a claim
//!   `replica:attempt` with a lease): of several replicas sharing PostgreSQL exactly one wins, the
//!   others' swaps find the document changed;
//! - **replays** it through the current request stack (the same one clients reach, taken from the
//!   server's `ArcSwap` so a reload applies) as its requester: classification, policy, protection,
//!   approvals (the one used when it was scheduled), limits and the reference guard judge it
//!   again; the deferred layer marks it `forwarding`; the intent record, credentials, forwarder and
//!   outcome record are those of a direct call. A refusal makes it `refused` (never forwarded), an
//!   upstream answer `executed`, a failure after the mark `unresolved`;
//! - **takes over** a claim whose replica is gone — its lease is over, or on a store one replica
//!   owns (SQLite, memory) any claim that is not this process's: without the `forwarding` mark it
//!   was never forwarded (the intent comes after the mark) and is claimed again; with it, it may
//!   have been forwarded and is reported `unresolved`, never forwarded again.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;

use super::{now_ms, Deferred, DeferredCalls, Outcome, State, DUE, GATEWAY_ACTOR};
use crate::body::{self, GatewayBody};
use crate::ext::{ApprovalUsed, ErrorCode, Replay};
use crate::units::rfc3339;

/// How often the due calls are read.
pub const TICK: Duration = Duration::from_secs(1);

/// Calls looked at per tick, at most (the rest wait for the next).
const BATCH: usize = 1000;

/// The longest answer body read from a replayed call (for the refusal's message).
const ANSWER_LIMIT: usize = 64 * 1024;

/// The executor of one replica.
pub struct Executor<F> {
    calls: DeferredCalls,
    stack: F,
    replica: String,
    /// Whether several replicas may share the store (PostgreSQL): then only an expired lease
    /// tells that a claim's replica is gone.
    shared: bool,
    lease: Duration,
    running: Mutex<HashSet<String>>,
    ticks: std::sync::atomic::AtomicU64,
}

/// The answer of the request stack to one replayed call.
pub type StackFuture =
    Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, Infallible>> + Send + 'static>>;

impl<F> Executor<F>
where
    F: Fn(Request<GatewayBody>) -> StackFuture + Send + Sync + 'static,
{
    /// The executor replaying through `stack` (a call of the current request stack); a claim holds for
    /// `lease` before another replica may take it over.
    pub fn new(calls: DeferredCalls, stack: F, lease: Duration) -> Arc<Self> {
        let shared = calls.store().backend() == "postgres";
        Arc::new(Executor {
            calls,
            stack,
            replica: format!("rep_{:08x}", rand::random::<u32>()),
            shared,
            lease,
            running: Mutex::default(),
            ticks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Run a tick every [`TICK`] until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let executor = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                executor.tick().await;
            }
        })
    }

    /// One pass: claim what is due, take over what was left behind, refresh the gauge.
    pub async fn tick(self: &Arc<Self>) {
        let store = self.calls.store();
        let now = now_ms();
        let page = match store.index_page(DUE, None, BATCH).await {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, "deferred calls could not be read; next try in a second");
                return;
            }
        };
        let (due, later): (Vec<_>, Vec<_>) = page.into_iter().partition(|(_, at)| *at <= now);
        let keys: Vec<String> = due.iter().map(|(id, _)| super::doc_key(id)).collect();
        let docs = match store.get_many(&keys).await {
            Ok(docs) => docs,
            Err(error) => {
                tracing::debug!(%error, "deferred calls could not be read; next try in a second");
                return;
            }
        };
        let mut scheduled = later.len() as i64;
        let mut stale = Vec::new();
        for ((id, _), raw) in due.into_iter().zip(docs) {
            let Some((raw, deferred)) =
                raw.and_then(|r| serde_json::from_str::<Deferred>(&r).ok().map(|d| (r, d)))
            else {
                stale.push(id);
                continue;
            };
            match deferred.state {
                State::Scheduled => {
                    scheduled += 1;
                    self.start(raw, deferred);
                }
                State::Executing if self.orphaned(&deferred, now) => {
                    if deferred.forwarding {
                        let executor = self.clone();
                        tokio::spawn(async move { executor.unresolved(raw, deferred).await });
                    } else {
                        self.start(raw, deferred);
                    }
                }
                State::Executing => {}
                _ => stale.push(id),
            }
        }
        self.calls.metrics.deferred_scheduled.set(scheduled);
        let _ = store.index_remove(DUE, &stale).await;
        if self
            .ticks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(60)
        {
            // Once a minute: the listing index forgets calls past their retention (and a month
            // more, for any delay a rule may set).
            let horizon = now.saturating_sub(
                (super::RETENTION + crate::policy::MAX_DEFER_DELAY).as_millis() as u64,
            );
            let _ = store.index_trim(super::INDEX, horizon).await;
        }
    }

    /// Whether an executing call's claim was left by a replica that is gone.
    fn orphaned(&self, deferred: &Deferred, now: u64) -> bool {
        if self.is_running(&deferred.id) {
            return false;
        }
        let mine = deferred
            .claim
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("{}:", self.replica)));
        deferred.lease_until_ms < now || (!self.shared && !mine)
    }

    fn is_running(&self, id: &str) -> bool {
        self.running.lock().is_ok_and(|r| r.contains(id))
    }

    /// Claim and execute `deferred` on its own task (unless this process is already at it).
    fn start(self: &Arc<Self>, raw: String, deferred: Deferred) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        if !running.insert(deferred.id.clone()) {
            return;
        }
        drop(running);
        let executor = self.clone();
        tokio::spawn(async move {
            let id = deferred.id.clone();
            executor.execute(raw, deferred).await;
            if let Ok(mut running) = executor.running.lock() {
                running.remove(&id);
            }
        });
    }

    /// Claim (one compare-and-swap), replay through the stack, record how it ended.
    async fn execute(&self, raw: String, deferred: Deferred) {
        let mut claimed = deferred.clone();
        claimed.state = State::Executing;
        claimed.attempts += 1;
        let claim = format!("{}:{}", self.replica, claimed.attempts);
        claimed.claim = Some(claim.clone());
        claimed.lease_until_ms = now_ms() + self.lease.as_millis() as u64;
        claimed.forwarding = false;
        let comment = (deferred.state == State::Executing)
            .then_some("taken over: the replica that claimed it stopped before it was forwarded");
        match self
            .calls
            .transition(&raw, &claimed, GATEWAY_ACTOR, comment)
            .await
        {
            Ok(Some(_)) => {}
            // Another replica claimed (or someone cancelled) it first.
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(deferred_id = %deferred.id, %error, "a deferred call could not be claimed; next try in a second");
                return;
            }
        }
        let forwarding = Arc::new(AtomicBool::new(false));
        let (status, code, message) = self.replay(&claimed, &claim, forwarding.clone()).await;
        let forwarded = forwarding.load(Ordering::SeqCst);
        let state = match (forwarded, code.as_deref()) {
            (false, _) => State::Refused,
            (true, None) => State::Executed,
            // The intent never became durable, so it was never sent.
            (true, Some("audit_unavailable")) => State::Refused,
            // Forwarded, then the exchange failed: whether it took effect is unknown.
            (true, Some(_)) => State::Unresolved,
        };
        let outcome = Outcome {
            status: Some(status),
            code,
            message,
            forwarded: forwarded && state != State::Refused,
            at: rfc3339(std::time::SystemTime::now()),
        };
        self.finish(&claimed.id, &claim, state, outcome).await;
    }

    /// Send the call through the request stack as its requester; the answer's status, the
    /// gateway's error code (when it answered itself) and its message.
    async fn replay(
        &self,
        deferred: &Deferred,
        claim: &str,
        forwarding: Arc<AtomicBool>,
    ) -> (u16, Option<String>, Option<String>) {
        let built = Request::builder()
            .method(Method::from_bytes(deferred.method.as_bytes()).unwrap_or(Method::DELETE))
            .uri(deferred.target.as_str())
            .header("x-request-id", deferred.id.as_str())
            .body(body::empty());
        let mut req = match built {
            Ok(req) => req,
            Err(_) => {
                return (
                    400,
                    Some("request_ambiguous".into()),
                    Some("the stored request could not be rebuilt".into()),
                )
            }
        };
        req.extensions_mut().insert(Replay {
            id: deferred.id.clone(),
            requester: deferred.requester.clone(),
            claim: claim.to_owned(),
            approval: deferred.approval_id.clone().map(|id| ApprovalUsed {
                id,
                approvers: deferred.approvers.clone(),
            }),
            forwarding,
        });
        let Ok(response) = (self.stack)(req).await;
        let status = response.status().as_u16();
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map(|c| c.0.to_owned());
        // Read the answer to its end: that is when the outcome record is written.
        let bytes = read_answer(response.into_body()).await;
        let message = code.as_ref().and_then(|_| {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
        });
        (status, code, message)
    }

    /// Move a call this replica holds under `claim` to its final state (recorded durably).
    async fn finish(&self, id: &str, claim: &str, state: State, outcome: Outcome) {
        for attempt in 0..8u32 {
            let loaded = match self.calls.load(id).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::warn!(deferred_id = id, %error, "the end of a deferred call could not be stored yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
                    continue;
                }
            };
            let Some((raw, current)) = loaded else { return };
            if current.state != State::Executing || current.claim.as_deref() != Some(claim) {
                tracing::warn!(
                    deferred_id = id,
                    state = current.state.as_str(),
                    "a deferred call's claim was lost while it executed"
                );
                return;
            }
            let mut next = current.clone();
            next.state = state;
            next.outcome = Some(outcome.clone());
            match self
                .calls
                .transition(&raw, &next, GATEWAY_ACTOR, outcome.message.as_deref())
                .await
            {
                Ok(Some(_)) => return,
                Ok(None) => continue,
                Err(error) => {
                    // Left executing: once its lease is over it is reported (never repeated).
                    tracing::error!(deferred_id = id, %error, "the end of a deferred call could not be recorded; retrying");
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
                }
            }
        }
    }

    /// Report a call whose replica stopped after it may have been forwarded.
    async fn unresolved(&self, raw: String, deferred: Deferred) {
        let mut next = deferred.clone();
        next.state = State::Unresolved;
        next.outcome = Some(Outcome {
            status: None,
            code: Some("replica_lost".into()),
            message: Some(
                "the replica executing it stopped after its intent: whether the upstream acted on it is unknown (see the audit log's unresolved intents), and it is not forwarded again"
                    .into(),
            ),
            forwarded: true,
            at: rfc3339(std::time::SystemTime::now()),
        });
        let comment = next.outcome.as_ref().and_then(|o| o.message.clone());
        if let Err(error) = self
            .calls
            .transition(&raw, &next, GATEWAY_ACTOR, comment.as_deref())
            .await
        {
            tracing::warn!(deferred_id = %deferred.id, %error, "an unresolved deferred call could not be recorded yet; next try in a second");
        }
    }
}

/// The answer's first [`ANSWER_LIMIT`] bytes; the rest is read and dropped, so the answer always
/// reaches its end (where the outcome record is written).
async fn read_answer(mut body: GatewayBody) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            let room = ANSWER_LIMIT.saturating_sub(bytes.len());
            bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    bytes
}
