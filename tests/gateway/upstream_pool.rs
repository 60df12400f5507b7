//! The serving worker's own upstream connections (src/forward/pool.rs): reused only after a
//! complete response, closed after a half-read one, replaced when the upstream closed them while
//! idle; requests go out in origin form.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// A raw HTTP/1.1 upstream: answers by the request's query (`page=N`), keeps connections open
/// unless told otherwise, and records connections and request lines.
struct ScriptedUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    async fn start() -> ScriptedUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (task_accepted, task_lines) = (accepted.clone(), lines.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                task_accepted.fetch_add(1, Ordering::SeqCst);
                let lines = task_lines.clone();
                tokio::spawn(async move {
                    loop {
                        let Some(head) = read_request_head(&mut stream).await else {
                            return;
                        };
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let line = text.lines().next().unwrap_or_default().to_owned();
                        lines.lock().unwrap().push(line.clone());
                        if line.contains("page=2") {
                            // A long body: 10 bytes of 100,000, then nothing.
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n0123456789",
                                )
                                .await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                            .await;
                        if line.contains("page=3") {
                            // Closed shortly after, while the gateway keeps it as idle.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return;
                        }
                    }
                });
            }
        });
        ScriptedUpstream {
            addr,
            accepted,
            lines,
        }
    }
}

async fn gateway_for(upstream: &ScriptedUpstream) -> TestGateway {
    TestGateway::start_with(&format!("http://{}", upstream.addr), "", |config| {
        config.server.worker_threads = Some(1);
    })
    .await
}

async fn page(gateway: &TestGateway, n: u32) -> StatusCode {
    let response = get(
        &gateway.url(&format!("/v1.3/assets?page={n}")),
        Some(ALICE_KEY),
    )
    .await;
    let status = response.status();
    body_bytes(response).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_reused_after_a_complete_response_and_requests_go_in_origin_form() {
    let upstream = ScriptedUpstream::start().await;
    let gateway = gateway_for(&upstream).await;
    for _ in 0..3 {
        assert_eq!(page(&gateway, 1).await, StatusCode::OK);
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
    let lines = upstream.lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l == "GET /v1.3/assets?page=1 HTTP/1.1"),
        "{lines:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_response_was_not_read_to_the_end_is_never_reused() {
    let upstream = ScriptedUpstream::start().await;
    let gateway = gateway_for(&upstream).await;
    assert_eq!(page(&gateway, 1).await, StatusCode::OK);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);

    // The client reads the first bytes of a long response and goes away.
    let mut response = get(&gateway.url("/v1.3/assets?page=2"), Some(ALICE_KEY)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.body_mut().frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(response);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The next request does not land on that connection (it would read the rest of the old body).
    assert_eq!(page(&gateway, 1).await, StatusCode::OK);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    // And the connection that answered completely before is the one reused after.
    assert_eq!(page(&gateway, 1).await, StatusCode::OK);
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closed_is_replaced_without_an_error() {
    let upstream = ScriptedUpstream::start().await;
    let gateway = gateway_for(&upstream).await;
    assert_eq!(page(&gateway, 3).await, StatusCode::OK);
    // The upstream closes it 50 ms later; the gateway's next request needs a new connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert_eq!(page(&gateway, 1).await, StatusCode::OK);
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    gateway.shutdown().await;
}
