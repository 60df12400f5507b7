//! What the upstream receives, and what comes back.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Response, StatusCode, Version};
use http_body_util::StreamBody;
use tl_gateway::body;

use crate::support::*;

async fn credentials_are_swapped(proto: Proto) {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;

    let mut builder = request(
        Method::GET,
        &gateway.url("/v1.3/assets?page=1&page_limit=5"),
        Some(ALICE_KEY),
    )
    .header("authorization", format!("Bearer {ALICE_KEY}"))
    .header("cookie", "session=client-cookie")
    .header("x_api_key", "look-alike-underscore")
    .header("x.api.key", "look-alike-dot")
    .header("X-Api_Key", "look-alike-mixed")
    .header("x-forwarded-for", "10.9.9.9")
    .header("x-tl-gateway-client", "alice")
    .header("x-custom", "kept");
    if proto == Proto::Http1 {
        builder = builder
            .header("host", "evil.example")
            .header("connection", "keep-alive, x-nominated")
            .header("x-nominated", "must-go");
    }
    let response = send(proto, builder.body(body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body_bytes(response).await,
        Bytes::from_static(br#"{"ok":true}"#)
    );

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    let keys: Vec<_> = req.headers.get_all("x-api-key").iter().collect();
    assert_eq!(keys, [UPSTREAM_KEY], "exactly one x-api-key, the real one");
    for name in [
        "authorization",
        "cookie",
        "x_api_key",
        "x.api.key",
        "x-api_key",
        "x-forwarded-for",
        "x-tl-gateway-client",
        "x-nominated",
        "connection",
    ] {
        assert!(
            !req.headers.contains_key(name),
            "{proto:?}: upstream received {name}"
        );
    }
    assert_eq!(req.headers["host"], upstream.addr.to_string());
    assert_eq!(req.headers["x-custom"], "kept");
    assert_eq!(req.version, Version::HTTP_11);
    assert_eq!(
        req.uri.path_and_query().unwrap().as_str(),
        "/v1.3/assets?page=1&page_limit=5"
    );
    assert!(req.headers.contains_key("x-request-id"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn http1_upstream_sees_only_the_real_key_and_its_own_host() {
    credentials_are_swapped(Proto::Http1).await;
}

#[tokio::test]
async fn h2c_upstream_sees_only_the_real_key_and_its_own_host() {
    credentials_are_swapped(Proto::H2c).await;
}

#[tokio::test]
async fn bodies_stream_both_ways_and_upstream_answers_pass_through() {
    const UPLOAD: usize = 8 * 1024 * 1024;
    const DOWNLOAD: usize = 6 * 1024 * 1024;
    let upstream = Upstream::start(|req| async move {
        // Echo the received size in a header and stream a large body back, with hop-by-hop noise.
        let chunks = futures_util::stream::iter((0..DOWNLOAD / 65536).map(|_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                7u8;
                65536
            ])))
        }));
        Response::builder()
            .status(StatusCode::CREATED)
            .header("x-received", req.body_len.to_string())
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "must-go")
            .header("keep-alive", "timeout=5")
            .header("x-upstream-kept", "yes")
            .body(body::boxed(StreamBody::new(chunks)))
            .unwrap()
    })
    .await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;

    for proto in [Proto::Http1, Proto::H2c] {
        // A streamed request body of unknown length (chunked on HTTP/1.1, DATA frames on h2).
        let chunks = futures_util::stream::iter(0..UPLOAD / 65536).map(|_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                1u8;
                65536
            ])))
        });
        let req = request(Method::POST, &gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .header("content-type", "application/octet-stream")
            .body(body::boxed(StreamBody::new(chunks)))
            .unwrap();
        let response = send(proto, req).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{proto:?}");
        assert_eq!(
            response.headers()["x-received"],
            UPLOAD.to_string().as_str()
        );
        assert_eq!(response.headers()["x-upstream-kept"], "yes");
        for hop in ["x-upstream-hop", "keep-alive", "connection"] {
            assert!(
                !response.headers().contains_key(hop),
                "{proto:?}: {hop} reached the client"
            );
        }
        assert_eq!(body_bytes(response).await.len(), DOWNLOAD, "{proto:?}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let upstream = Upstream::start(|_| async {
        json_response(
            StatusCode::CONFLICT,
            r#"{"code":"asset_referenced","message":"Set the force query parameter to true to override"}"#,
        )
    })
    .await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let req = request(
        Method::DELETE,
        &gateway.url("/v1.3/assets/6298d673f1090f1100476d4c"),
        Some(BOB_KEY),
    )
    .body(body::empty())
    .unwrap();
    let response = send(Proto::Http1, req).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let json = body_json(response).await;
    assert_eq!(json["code"], "asset_referenced");
    assert_eq!(upstream.requests()[0].method, Method::DELETE);
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_client_host_or_absolute_target_never_chooses_the_upstream() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let raw = format!(
        "GET http://evil.example/v1.3/assets HTTP/1.1\r\nHost: evil.example\r\nx-api-key: {ALICE_KEY}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_http1(gateway.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request_ambiguous"), "{answer}");

    let raw = format!(
        "GET /v1.3/assets HTTP/1.1\r\nHost: evil.example\r\nx-api-key: {ALICE_KEY}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_http1(gateway.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], upstream.addr.to_string());
    gateway.shutdown().await;
}

/// An upstream that answers every request after `delay` and counts its connections.
struct CountingUpstream {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingUpstream {
    async fn start(delay: std::time::Duration) -> CountingUpstream {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (task_accepted, task_open) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                task_accepted.fetch_add(1, Ordering::SeqCst);
                task_open.fetch_add(1, Ordering::SeqCst);
                let open = task_open.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(json_response(
                            StatusCode::OK,
                            r#"{"data":[]}"#,
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            addr,
            accepted,
            open,
        }
    }
}

#[tokio::test]
async fn a_burst_opens_upstream_connections_and_only_max_idle_connections_stay_open() {
    use std::sync::atomic::Ordering;
    let upstream = CountingUpstream::start(std::time::Duration::from_millis(300)).await;
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), "", |config| {
        config.server.worker_threads = Some(1);
        config.upstream.max_idle_connections = 2;
    })
    .await;

    // Ten concurrent requests, each on its own client connection: ten upstream connections.
    let burst = (0..10).map(|_| {
        let url = gateway.url("/v1.3/assets");
        async move { get(&url, Some(ALICE_KEY)).await.status() }
    });
    let statuses = futures_util::future::join_all(burst).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 10);

    // Once idle, all but two are closed...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while upstream.open.load(Ordering::SeqCst) > 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        upstream.open.load(Ordering::SeqCst),
        2,
        "idle upstream connections kept"
    );

    // ...and those two are reused: sequential requests open no new connection.
    for _ in 0..3 {
        assert_eq!(
            get(&gateway.url("/v1.3/assets"), Some(ALICE_KEY))
                .await
                .status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        10,
        "no new upstream connection"
    );
    gateway.shutdown().await;
}
