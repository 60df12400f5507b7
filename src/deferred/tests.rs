//! The deferred calls' state machine on the in-process record store: schedule (and find again),
//! cancel (who may), claim once, take over a dead claim (retried without the forwarding mark,
//! unresolved with it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Response, Version};

use super::executor::{Executor, StackFuture};
use super::*;
use crate::classify::{Classifier, ClassifySettings};
use crate::ext::Replay;
use crate::policy::DeferRequired;

fn principal(id: &str, role: &str) -> Principal {
    Principal {
        client: id.parse().unwrap(),
        roles: Arc::from(vec![role.parse::<Role>().unwrap()]),
        credential: None,
    }
}

fn required(delay: Duration) -> DeferRequired {
    DeferRequired {
        rule: "force-delete-later".parse().unwrap(),
        delay,
        cancel_roles: vec!["admin".parse().unwrap()],
    }
}

fn forced_delete(asset: &str) -> Operation {
    Classifier::new(ClassifySettings::default())
        .classify(
            &Method::DELETE,
            Version::HTTP_11,
            &format!("/v1.3/assets/{asset}?force=true").parse().unwrap(),
            &HeaderMap::new(),
            false,
        )
        .unwrap()
}

fn calls() -> DeferredCalls {
    DeferredCalls::new(RecordStore::memory(), None, Metrics::new(), None)
}

async fn schedule(
    calls: &DeferredCalls,
    who: &Principal,
    asset: &str,
    delay: Duration,
) -> Deferred {
    calls
        .schedule(Request {
            required: &required(delay),
            principal: who,
            op: &forced_delete(asset),
            request_id: "req-1",
            references: None,
            approval: None,
        })
        .await
        .unwrap()
}

/// A request stack that plays the deferred layer (marks the replay forwarding) and the upstream
/// (answers 200), counting what it forwarded.
fn stack(
    calls: &DeferredCalls,
    forwarded: &Arc<AtomicUsize>,
) -> impl Fn(http::Request<crate::body::GatewayBody>) -> StackFuture + Send + Sync + 'static {
    let calls = calls.clone();
    let forwarded = forwarded.clone();
    move |req| {
        let calls = calls.clone();
        let forwarded = forwarded.clone();
        Box::pin(async move {
            let replay = req.extensions().get::<Replay>().cloned().unwrap();
            if calls
                .mark_forwarding(&replay.id, &replay.claim)
                .await
                .is_err()
            {
                let mut refused = Response::new(crate::body::empty());
                *refused.status_mut() = http::StatusCode::CONFLICT;
                refused
                    .extensions_mut()
                    .insert(crate::ext::ErrorCode("deferred_not_scheduled"));
                return Ok(refused);
            }
            replay.forwarding.store(true, Ordering::SeqCst);
            forwarded.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(crate::body::empty()))
        })
    }
}

async fn wait_until_final(calls: &DeferredCalls, id: &str) -> Deferred {
    for _ in 0..200 {
        let (_, d) = calls.load(id).await.unwrap().unwrap();
        if d.state.is_final() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("deferred call {id} never ended");
}

#[tokio::test]
async fn an_identical_resend_while_scheduled_finds_the_same_call_and_another_requester_does_not() {
    let calls = calls();
    let alice = principal("alice", "admin");
    let carol = principal("carol", "admin");
    let first = schedule(&calls, &alice, "a1", Duration::from_secs(60)).await;
    assert_eq!(first.state, State::Scheduled);
    assert!(first.id.starts_with("dfr_"));
    let again = schedule(&calls, &alice, "a1", Duration::from_secs(60)).await;
    assert_eq!(again.id, first.id);
    let other = schedule(&calls, &carol, "a1", Duration::from_secs(60)).await;
    assert_ne!(other.id, first.id);
    let other_asset = schedule(&calls, &alice, "a2", Duration::from_secs(60)).await;
    assert_ne!(other_asset.id, first.id);
    // Once cancelled, the same request schedules anew.
    calls.cancel(&first.id, &alice).await.unwrap();
    let fresh = schedule(&calls, &alice, "a1", Duration::from_secs(60)).await;
    assert_ne!(fresh.id, first.id);
}

#[tokio::test]
async fn the_requester_and_cancel_roles_may_cancel_others_may_not_and_only_once() {
    let calls = calls();
    let bob = principal("bob", "member");
    let dave = principal("dave", "member");
    let carol = principal("carol", "admin");
    let own = schedule(&calls, &bob, "a1", Duration::from_secs(60)).await;
    assert!(matches!(
        calls.cancel(&own.id, &dave).await,
        Err(DeferredError::Forbidden(_))
    ));
    let cancelled = calls.cancel(&own.id, &bob).await.unwrap();
    assert_eq!(cancelled.state, State::Cancelled);
    assert_eq!(cancelled.cancelled_by.as_deref(), Some("bob"));
    assert!(matches!(
        calls.cancel(&own.id, &bob).await,
        Err(DeferredError::NotScheduled {
            state: "cancelled",
            ..
        })
    ));
    let theirs = schedule(&calls, &bob, "a2", Duration::from_secs(60)).await;
    assert_eq!(
        calls.cancel(&theirs.id, &carol).await.unwrap().state,
        State::Cancelled
    );
    assert!(matches!(
        calls.cancel("dfr_0000000000000000", &carol).await,
        Err(DeferredError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_due_call_is_claimed_and_forwarded_once_and_a_cancelled_one_never() {
    let calls = calls();
    let alice = principal("alice", "admin");
    let forwarded = Arc::new(AtomicUsize::new(0));
    let due = schedule(&calls, &alice, "a1", Duration::from_millis(1)).await;
    let cancelled = schedule(&calls, &alice, "a2", Duration::from_millis(1)).await;
    calls.cancel(&cancelled.id, &alice).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let executor = Executor::new(
        calls.clone(),
        stack(&calls, &forwarded),
        Duration::from_secs(60),
    );
    // Ticks racing each other claim it once.
    tokio::join!(executor.tick(), executor.tick(), executor.tick());
    let done = wait_until_final(&calls, &due.id).await;
    assert_eq!(done.state, State::Executed);
    assert_eq!(done.attempts, 1);
    let outcome = done.outcome.unwrap();
    assert_eq!(outcome.status, Some(200));
    assert!(outcome.forwarded);
    executor.tick().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(forwarded.load(Ordering::SeqCst), 1);
    let (_, still) = calls.load(&cancelled.id).await.unwrap().unwrap();
    assert_eq!(still.state, State::Cancelled);
}

/// Put `deferred` into the store as a claim of a replica that is gone.
async fn left_behind(calls: &DeferredCalls, deferred: &Deferred, forwarding: bool) {
    let (raw, _) = calls.load(&deferred.id).await.unwrap().unwrap();
    let mut claimed = deferred.clone();
    claimed.state = State::Executing;
    claimed.claim = Some("rep_dead0000:1".into());
    claimed.attempts = 1;
    claimed.lease_until_ms = now_ms() - 1;
    claimed.forwarding = forwarding;
    calls
        .transition(&raw, &claimed, GATEWAY_ACTOR, None)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_claim_left_before_its_forwarding_mark_is_retried_and_after_it_reported_never_repeated() {
    let calls = calls();
    let alice = principal("alice", "admin");
    let forwarded = Arc::new(AtomicUsize::new(0));
    let never_sent = schedule(&calls, &alice, "a1", Duration::from_millis(1)).await;
    let maybe_sent = schedule(&calls, &alice, "a2", Duration::from_millis(1)).await;
    left_behind(&calls, &never_sent, false).await;
    left_behind(&calls, &maybe_sent, true).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let executor = Executor::new(
        calls.clone(),
        stack(&calls, &forwarded),
        Duration::from_secs(60),
    );
    executor.tick().await;

    let retried = wait_until_final(&calls, &never_sent.id).await;
    assert_eq!(retried.state, State::Executed);
    assert_eq!(retried.attempts, 2);
    let reported = wait_until_final(&calls, &maybe_sent.id).await;
    assert_eq!(reported.state, State::Unresolved);
    assert_eq!(
        reported.outcome.unwrap().code.as_deref(),
        Some("replica_lost")
    );
    executor.tick().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        forwarded.load(Ordering::SeqCst),
        1,
        "only the unmarked one was forwarded"
    );
}

#[tokio::test]
async fn a_claim_is_not_marked_forwarding_twice_or_under_another_claim() {
    let calls = calls();
    let alice = principal("alice", "admin");
    let deferred = schedule(&calls, &alice, "a1", Duration::from_secs(60)).await;
    // Scheduled, not claimed: no mark.
    assert!(calls
        .mark_forwarding(&deferred.id, "rep_x:1")
        .await
        .is_err());
    left_behind(&calls, &deferred, false).await;
    assert!(calls
        .mark_forwarding(&deferred.id, "rep_other:1")
        .await
        .is_err());
    calls
        .mark_forwarding(&deferred.id, "rep_dead0000:1")
        .await
        .unwrap();
    assert!(calls
        .mark_forwarding(&deferred.id, "rep_dead0000:1")
        .await
        .is_err());
}
