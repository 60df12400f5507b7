//! The approval state machine on the in-process record store: ask, decide, use, give back,
//! expire, cancel — and who may do which.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Version};

use super::ask::Asked;
use super::*;
use crate::auth::Principal;
use crate::classify::Operation;
use crate::classify::{Classifier, ClassifySettings};
use crate::ids::Role;
use crate::ids::RuleId;
use crate::policy::{ApprovalRequired, ApprovalSettings};

fn principal(id: &str, role: &str) -> Principal {
    Principal {
        client: id.parse().unwrap(),
        roles: Arc::from(vec![role.parse::<Role>().unwrap()]),
        credential: None,
    }
}

fn required(ttl: Duration) -> ApprovalRequired {
    let rule: RuleId = "two-person".parse().unwrap();
    let settings = Arc::new(ApprovalSettings {
        approver_roles: vec!["admin".parse().unwrap()],
        approvals: 1,
        ttl,
        use_within: Duration::from_secs(60),
    });
    ApprovalRequired {
        rule: rule.clone(),
        rules: vec![(rule, settings)],
        ttl,
        use_within: Duration::from_secs(60),
        message: None,
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

fn approvals() -> Approvals {
    Approvals::new(RecordStore::memory(), None, Metrics::new(), None, 10)
}

async fn ask(approvals: &Approvals, who: &Principal, op: &Operation, ttl: Duration) -> Asked {
    approvals
        .ask_or_use(&required(ttl), who, op, None, None, || async { Ok(None) })
        .await
        .unwrap()
}

fn pending_id(asked: Asked) -> String {
    match asked {
        Asked::Pending(approval, _) => {
            assert_eq!(approval.state, State::Pending);
            approval.id
        }
        Asked::Use(..) => panic!("expected a pending approval"),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn ask_decide_use_once_then_ask_anew() {
    let approvals = approvals();
    let (bob, alice, carol) = (
        principal("bob", "member"),
        principal("alice", "admin"),
        principal("carol", "member"),
    );
    let op = forced_delete("a1");
    let id = pending_id(ask(&approvals, &bob, &op, HOUR).await);
    // The identical request while pending: the same approval.
    assert_eq!(pending_id(ask(&approvals, &bob, &op, HOUR).await), id);
    // Nobody decides their own; only approvers decide.
    assert!(matches!(
        approvals.decide(&id, &bob, true, None).await,
        Err(ApprovalError::Forbidden(_))
    ));
    assert!(matches!(
        approvals.decide(&id, &carol, true, None).await,
        Err(ApprovalError::Forbidden(_))
    ));
    let approved = approvals.decide(&id, &alice, true, None).await.unwrap();
    assert_eq!(approved.state, State::Approved);
    assert!(matches!(
        approvals.decide(&id, &alice, false, None).await,
        Err(ApprovalError::NotPending { .. })
    ));
    // Another requester, or another request, cannot use it.
    assert_ne!(
        pending_id(ask(&approvals, &carol, &op, HOUR).await),
        id,
        "carol asks for her own"
    );
    assert_ne!(
        pending_id(ask(&approvals, &bob, &forced_delete("a2"), HOUR).await),
        id
    );
    // The requester uses it, once.
    match ask(&approvals, &bob, &op, HOUR).await {
        Asked::Use(used, _) => {
            assert_eq!(used.id, id);
            assert_eq!(used.state, State::Used);
        }
        Asked::Pending(..) => panic!("the approved request was not let through"),
    }
    let again = pending_id(ask(&approvals, &bob, &op, HOUR).await);
    assert_ne!(
        again, id,
        "a used approval is final: the next request asks anew"
    );
}

#[tokio::test]
async fn a_request_refused_below_gives_its_approval_back_once() {
    let approvals = approvals();
    let (bob, alice) = (principal("bob", "member"), principal("alice", "admin"));
    let op = forced_delete("a1");
    let id = pending_id(ask(&approvals, &bob, &op, HOUR).await);
    approvals.decide(&id, &alice, true, None).await.unwrap();
    let (used, raw) = match ask(&approvals, &bob, &op, HOUR).await {
        Asked::Use(used, raw) => (used, raw),
        Asked::Pending(..) => panic!("not used"),
    };
    approvals
        .give_back(&raw, &used, &GatewayError::UpstreamBusy)
        .await;
    let (_, back) = approvals.load(&id).await.unwrap().unwrap();
    assert_eq!(back.state, State::Approved);
    // Given back once: a stale copy of the used text cannot give it back again.
    approvals
        .give_back(&raw, &used, &GatewayError::UpstreamBusy)
        .await;
    assert!(matches!(
        ask(&approvals, &bob, &op, HOUR).await,
        Asked::Use(..)
    ));
}

#[tokio::test]
async fn undecided_approvals_expire_and_requesters_cancel_their_own() {
    let approvals = approvals();
    let (bob, alice) = (principal("bob", "member"), principal("alice", "admin"));
    let short = pending_id(
        ask(
            &approvals,
            &bob,
            &forced_delete("a1"),
            Duration::from_millis(30),
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (_, expired) = approvals.load(&short).await.unwrap().unwrap();
    assert_eq!(expired.state, State::Expired);
    assert!(matches!(
        approvals.decide(&short, &alice, true, None).await,
        Err(ApprovalError::NotPending { .. })
    ));
    let id = pending_id(ask(&approvals, &bob, &forced_delete("a2"), HOUR).await);
    assert!(matches!(
        approvals.cancel(&id, &alice).await,
        Err(ApprovalError::Forbidden(_))
    ));
    assert_eq!(
        approvals.cancel(&id, &bob).await.unwrap().state,
        State::Cancelled
    );
    assert!(matches!(
        approvals.cancel(&id, &bob).await,
        Err(ApprovalError::NotPending { .. })
    ));
    // Neither counts against the pending cap any more.
    assert_eq!(approvals.pending_of("bob", 10).await.unwrap(), 0);
}

#[tokio::test]
async fn a_given_back_approval_whose_request_asked_anew_is_cancelled_not_orphaned() {
    let approvals = approvals();
    let (bob, alice) = (principal("bob", "member"), principal("alice", "admin"));
    let op = forced_delete("a1");
    let id = pending_id(ask(&approvals, &bob, &op, HOUR).await);
    approvals.decide(&id, &alice, true, None).await.unwrap();
    let (used, raw) = match ask(&approvals, &bob, &op, HOUR).await {
        Asked::Use(used, raw) => (used, raw),
        Asked::Pending(..) => panic!("not used"),
    };
    // While the used one is on its way, an identical copy finds it final and asks anew.
    let newer = pending_id(ask(&approvals, &bob, &op, HOUR).await);
    assert_ne!(newer, id);
    // Then the first is refused below and given back: nobody could ever find it again.
    approvals
        .give_back(&raw, &used, &GatewayError::UpstreamBusy)
        .await;
    let (_, back) = approvals.load(&id).await.unwrap().unwrap();
    assert_eq!(
        back.state,
        State::Cancelled,
        "not left approved and unreachable"
    );
    // The request is still covered by the newer one, pending.
    assert_eq!(pending_id(ask(&approvals, &bob, &op, HOUR).await), newer);
}

#[tokio::test]
async fn finished_approvals_are_kept_up_to_the_per_requester_cap() {
    let approvals = approvals().with_retention(HOUR, 3);
    let bob = principal("bob", "member");
    let mut ids = Vec::new();
    for i in 0..8 {
        let id = pending_id(ask(&approvals, &bob, &forced_delete(&format!("a{i}")), HOUR).await);
        approvals.cancel(&id, &bob).await.unwrap();
        ids.push(id);
        // Distinct creation times: the index orders by them.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // One still pending is never forgotten early, however old.
    let pending = pending_id(ask(&approvals, &bob, &forced_delete("p"), HOUR).await);
    let kept = approvals
        .store
        .index_newest(&requester_index("bob"), 100)
        .await
        .unwrap();
    assert!(kept.len() <= 4, "{kept:?}");
    assert!(kept.contains(&pending));
    for old in &ids[..4] {
        assert!(approvals.load(old).await.unwrap().is_none(), "{old} kept");
    }
    assert!(approvals.load(&ids[7]).await.unwrap().is_some());
}

#[test]
fn the_request_an_approval_covers_includes_its_body() {
    let bare = request_sha256("PUT", "/v1.3/assets/a1/user-metadata", None);
    let one = request_sha256("PUT", "/v1.3/assets/a1/user-metadata", Some("aa"));
    let other = request_sha256("PUT", "/v1.3/assets/a1/user-metadata", Some("bb"));
    assert_ne!(bare, one);
    assert_ne!(one, other);
}
