//! The gateway's own refusals: status, TwelveLabs-shaped body, request id, and nothing forwarded.

use std::time::Duration;

use http::{Method, StatusCode};
use tl_gateway::body;

use crate::support::*;

async fn assert_error(
    response: hyper::Response<hyper::body::Incoming>,
    status: StatusCode,
    code: &str,
) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let header_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let json = body_json(response).await;
    assert_eq!(json["code"], code, "{json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert_eq!(json["request_id"], header_id.as_str(), "{json}");
    json
}

#[tokio::test]
async fn missing_or_unknown_keys_get_401_and_nothing_is_forwarded() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let url = gateway.url("/v1.3/assets");

    assert_error(
        get(&url, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_error(
        get(&url, Some("tlgw_wrong")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // The upstream's own key is not a client key.
    assert_error(
        get(&url, Some(UPSTREAM_KEY)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let req = request(Method::GET, &url, Some(ALICE_KEY))
        .header("authorization", format!("Bearer {BOB_KEY}"))
        .body(body::empty())
        .unwrap();
    assert_error(
        send(Proto::Http1, req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let req = request(Method::GET, &url, None)
        .header("authorization", format!("Bearer {BOB_KEY}"))
        .body(body::empty())
        .unwrap();
    assert_eq!(send(Proto::H2c, req).await.status(), StatusCode::OK);

    assert_eq!(
        upstream.requests().len(),
        1,
        "only the authenticated request is forwarded"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated_and_echoed() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let req = request(
        Method::GET,
        &gateway.url("/v1.3/assets"),
        Some("tlgw_wrong"),
    )
    .header("x-request-id", "client-chosen-42")
    .body(body::empty())
    .unwrap();
    let json = assert_error(
        send(Proto::Http1, req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(json["request_id"], "client-chosen-42");

    let req = request(Method::GET, &gateway.url("/v1.3/assets"), Some(ALICE_KEY))
        .header("x-request-id", "client-chosen-43")
        .body(body::empty())
        .unwrap();
    let response = send(Proto::Http1, req).await;
    assert_eq!(response.headers()["x-request-id"], "client-chosen-43");
    assert_eq!(
        upstream.requests()[0].headers["x-request-id"],
        "client-chosen-43"
    );

    // A malformed id is replaced, never echoed.
    let req = request(Method::GET, &gateway.url("/v1.3/assets"), Some(ALICE_KEY))
        .header("x-request-id", "bad id <script>")
        .body(body::empty())
        .unwrap();
    let response = send(Proto::Http1, req).await;
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    gateway.shutdown().await;
}

#[tokio::test]
async fn trace_connect_and_odd_methods_get_405() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    for method in ["TRACE", "delete", "DELETEX"] {
        let req = request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            &gateway.url("/v1.3/assets/abc"),
            Some(ALICE_KEY),
        )
        .body(body::empty())
        .unwrap();
        assert_error(
            send(Proto::Http1, req).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    let raw = format!("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nx-api-key: {ALICE_KEY}\r\nConnection: close\r\n\r\n");
    let answer = raw_http1(gateway.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("method_not_allowed"), "{answer}");
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let gateway = TestGateway::start(&format!("http://{addr}")).await;
    let response = get(&gateway.url("/v1.3/assets"), Some(ALICE_KEY)).await;
    let json = assert_error(response, StatusCode::BAD_GATEWAY, "upstream_unavailable").await;
    assert!(!json.to_string().contains(UPSTREAM_KEY));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_slow_upstream_gives_504() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        json_response(StatusCode::OK, "{}")
    })
    .await;
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), "", |config| {
        config.upstream.request_timeout = Duration::from_millis(300);
    })
    .await;
    let response = get(&gateway.url("/v1.3/assets"), Some(ALICE_KEY)).await;
    assert_error(response, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout").await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn ambiguous_targets_are_refused_before_authentication_and_never_forwarded() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    for target in [
        "/v1.3/assets/a%2Fb",
        "/v1.3/assets/../indexes/x",
        "/v1.3//assets",
        "/v1.3/assets/a;x",
    ] {
        let raw = format!("DELETE {target} HTTP/1.1\r\nHost: x\r\nx-api-key: {ALICE_KEY}\r\nConnection: close\r\n\r\n");
        let answer = raw_http1(gateway.addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(
            answer.contains("\"code\":\"request_ambiguous\""),
            "{target}: {answer}"
        );
    }
    let response = get(&gateway.url("/v1.2/assets"), Some(ALICE_KEY)).await;
    assert_error(response, StatusCode::NOT_FOUND, "route_unknown").await;
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}
