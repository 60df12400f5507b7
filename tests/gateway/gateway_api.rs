//! The gateway's own API goes through the same stack as every request (issue #21): the per-client
//! cap, the target length, policy rules and rate limits by operation id, metrics, the audit log,
//! body deadlines, paged listings; and what its errors and logs may say.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;
use tl_gateway::metrics::counter_value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Index deletes need an admin's approval (a request that needs no reference lookup).
const INDEX_DELETE_APPROVAL: &str = r#"policy:
  rules:
    - id: index-delete-two-person
      match: { operation: indexes.delete }
      allow_roles: [admin, member]
      approval:
        approver_roles: [admin]
"#;

async fn api(
    gateway: &TestGateway,
    method: Method,
    path: &str,
    key: &str,
) -> (StatusCode, serde_json::Value) {
    api_call(&gateway.url(""), method, path, key, None).await
}

/// Bob asks to delete index `index`: 403 approval_required; the approval id.
async fn ask_index_delete(gateway: &TestGateway, index: &str) -> String {
    let response = send(
        Proto::Http1,
        request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/indexes/{index}")),
            Some(BOB_KEY),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    response.headers()["x-tl-gateway-approval-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn metrics(gateway: &TestGateway) -> String {
    let response = get(&format!("http://{}/metrics", gateway.admin), None).await;
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_stalling_api_bodies_cannot_take_every_in_flight_slot() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        "server:\n  max_in_flight: 8\n  max_in_flight_per_client: 2\n  body_idle_timeout: 30s\n",
        |_| {},
    )
    .await;
    // Ten cancels from bob, each announcing a body that never comes.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let head = format!(
            "POST /tl-gateway/v1/approvals/apr_0123456789abcdef/cancel HTTP/1.1\r\nhost: x\r\nx-api-key: {BOB_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Everybody else is served at once (before: 503 overloaded until the stalls timed out).
    let started = Instant::now();
    let response = get(&gateway.url("/v1.3/assets"), Some(ALICE_KEY)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (status, me) = api(&gateway, Method::GET, "me", ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Bob's calls beyond his cap were refused at once with 429, like his TwelveLabs calls.
    let mut refused = 0;
    for stream in &mut stalled {
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("HTTP/1.1 429") && text.contains("too_many_requests") {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 8, "two in flight, eight refused");
    drop(stalled);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_api_target_is_414_and_never_echoed() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let id = "a".repeat(60_000);
    for key in [Some(ALICE_KEY), None] {
        let response = get(&gateway.url(&format!("/tl-gateway/v1/approvals/{id}")), key).await;
        assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
        let text = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
        assert!(text.contains("request_target_too_long"), "{text}");
        assert!(
            text.len() < 1000,
            "the target is not echoed: {} bytes",
            text.len()
        );
    }
    // Unknown paths under the prefix are never forwarded, whatever routes.unknown says.
    let response = get(&gateway.url("/tl-gateway/v2/anything"), Some(ALICE_KEY)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_operations_are_named_in_rules_and_limits_measured_and_audited() {
    let upstream = Upstream::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let extra = format!(
        r#"{INDEX_DELETE_APPROVAL}    - id: who-am-i-admins-only
      match: {{ operation: gateway.me }}
      allow_roles: [admin]
rate_limits:
  - id: approval-listings
    match: {{ operation: gateway.approvals.list }}
    per: client
    rate: 2/minute
    burst: 2
audit:
  path: {}
"#,
        audit.display()
    );
    let gateway =
        TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |_| {}).await;

    // A policy rule naming a gateway operation.
    let (status, body) = api(&gateway, Method::GET, "me", BOB_KEY).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "policy_denied");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("who-am-i-admins-only"));
    assert_eq!(
        api(&gateway, Method::GET, "me", ALICE_KEY).await.0,
        StatusCode::OK
    );
    // No key: 401 like any call.
    let response = get(&gateway.url("/tl-gateway/v1/approvals"), None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A rate limit naming a gateway operation.
    for _ in 0..2 {
        assert_eq!(
            api(&gateway, Method::GET, "approvals", ALICE_KEY).await.0,
            StatusCode::OK
        );
    }
    let (status, body) = api(&gateway, Method::GET, "approvals", ALICE_KEY).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "too_many_requests");

    // Approving is audited like a destructive call: intent before, outcome after.
    let id = ask_index_delete(&gateway, "idx1").await;
    let (status, approved) = api(
        &gateway,
        Method::POST,
        &format!("approvals/{id}/approve"),
        ALICE_KEY,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phases: Vec<&str> = records
        .iter()
        .filter(|r| r["operation"] == "gateway.approvals.approve")
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["intent", "outcome"], "{records:?}");
    let outcome = records
        .iter()
        .find(|r| r["operation"] == "gateway.approvals.approve" && r["phase"] == "outcome")
        .unwrap();
    assert_eq!(outcome["client"], "alice");
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["params"]["approval_id"], id.as_str());

    // Measured by operation id.
    let text = metrics(&gateway).await;
    for (operation, class) in [
        ("gateway.me", "4xx"),
        ("gateway.me", "2xx"),
        ("gateway.approvals.list", "2xx"),
        ("gateway.approvals.list", "4xx"),
        ("gateway.approvals.approve", "2xx"),
    ] {
        let series = format!(
            r#"tl_gateway_requests_total{{method="{}",operation="{operation}",status_class="{class}"}}"#,
            if operation.ends_with("approve") {
                "POST"
            } else {
                "GET"
            }
        );
        assert!(
            counter_value(&text, &series).is_some(),
            "{series} in\n{text}"
        );
    }
    assert!(
        counter_value(
            &text,
            r#"tl_gateway_rate_limited_total{limit="approval-listings"}"#
        )
        .unwrap()
            >= 1.0
    );
    // Never forwarded.
    assert!(upstream
        .requests()
        .iter()
        .all(|r| !r.uri.path().starts_with("/tl-gateway")));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_api_body_is_408_as_everywhere_else() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &format!("{INDEX_DELETE_APPROVAL}server:\n  body_idle_timeout: 1s\n"),
        |_| {},
    )
    .await;
    let id = ask_index_delete(&gateway, "idx1").await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /tl-gateway/v1/approvals/{id}/approve HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"comment\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    // Nothing was decided.
    let (_, approval) = api(&gateway, Method::GET, &format!("approvals/{id}"), ALICE_KEY).await;
    assert_eq!(approval["state"], "pending");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_come_in_pages_with_a_cursor() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        INDEX_DELETE_APPROVAL,
        |_| {},
    )
    .await;
    let mut asked = Vec::new();
    for i in 0..5 {
        asked.push(ask_index_delete(&gateway, &format!("idx{i}")).await);
    }
    asked.reverse(); // newest first
    for key in [ALICE_KEY, BOB_KEY] {
        let mut seen = Vec::new();
        let mut path = "approvals?limit=2".to_owned();
        let mut pages = 0;
        loop {
            let (status, page) = api(&gateway, Method::GET, &path, key).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let items = page["approvals"].as_array().unwrap();
            assert!(items.len() <= 2);
            seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("approvals?limit=2&cursor={cursor}"),
                None => break,
            }
            assert!(pages < 10);
        }
        assert_eq!(seen, asked, "every approval once, newest first");
        assert!(pages >= 3);
    }
    let (status, body) = api(
        &gateway,
        Method::GET,
        "approvals?cursor=nonsense",
        ALICE_KEY,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "parameter_invalid");
    gateway.shutdown().await;
}
