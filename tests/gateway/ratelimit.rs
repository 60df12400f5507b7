//! Rate limits and deletion budgets.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;
use tl_gateway::metrics::counter_value;

use crate::support::*;

fn limits(rate: &str, audit: &std::path::Path) -> String {
    format!(
        r#"rate_limits:
  - id: member-deletes
    match: {{ method: DELETE }}
    roles: [member]
    per: client
    rate: {rate}
    burst: 2
audit:
  path: {}
"#,
        audit.display()
    )
}

async fn delete(
    gateway: &TestGateway,
    key: &str,
    i: usize,
) -> hyper::Response<hyper::body::Incoming> {
    let req = request(
        Method::DELETE,
        &gateway.url(&format!("/v1.3/indexes/i{i}")),
        Some(key),
    )
    .body(body::empty())
    .unwrap();
    send(Proto::Http1, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_over_the_limit_gets_429_while_admins_and_reads_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let gateway = TestGateway::start_reloadable(&origin, &limits("2/minute", &audit)).await;

    for i in 0..2 {
        assert_eq!(delete(&gateway, BOB_KEY, i).await.status(), StatusCode::OK);
    }
    let refused = delete(&gateway, BOB_KEY, 2).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let json = body_json(refused).await;
    assert_eq!(json["code"], "too_many_requests");
    assert!(
        json["message"].as_str().unwrap().contains("member-deletes"),
        "{json}"
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "the refused delete reached the upstream"
    );

    for i in 0..5 {
        assert_eq!(
            delete(&gateway, ALICE_KEY, 10 + i).await.status(),
            StatusCode::OK,
            "admin delete {i}"
        );
    }
    for _ in 0..5 {
        assert_eq!(
            get(&gateway.url("/v1.3/indexes"), Some(BOB_KEY))
                .await
                .status(),
            StatusCode::OK
        );
    }

    let text = body_bytes(get(&format!("http://{}/metrics", gateway.admin), None).await).await;
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_rate_limited_total{limit="member-deletes"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_client_denials_total{client="bob",reason="rate_limit"}"#
        ),
        Some(1.0)
    );
    let records = std::fs::read_to_string(&audit).unwrap();
    let denied: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["phase"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["rule"], "member-deletes");
    assert_eq!(denied[0]["status"], 429);

    // An unrelated reload keeps the limit's state: bob is still over it.
    let successes = gateway.reloads.success.load(Ordering::Relaxed);
    gateway.rewrite_config(
        &origin,
        &format!("{}policy:\n  default: allow\n", limits("2/minute", &audit)),
    );
    let started = Instant::now();
    while gateway.reloads.success.load(Ordering::Relaxed) == successes {
        assert!(started.elapsed() < Duration::from_secs(5), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        delete(&gateway, BOB_KEY, 3).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // A changed limit starts afresh.
    let successes = gateway.reloads.success.load(Ordering::Relaxed);
    gateway.rewrite_config(&origin, &limits("3/minute", &audit));
    let started = Instant::now();
    while gateway.reloads.success.load(Ordering::Relaxed) == successes {
        assert!(started.elapsed() < Duration::from_secs(5), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delete(&gateway, BOB_KEY, 4).await.status(), StatusCode::OK);
    gateway.shutdown().await;
}
