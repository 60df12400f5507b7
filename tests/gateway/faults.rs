//! Fault tolerance: a misbehaving upstream or client never panics the gateway, always gets a clean
//! TwelveLabs-shaped error, and every audited request gets its outcome record.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tl_gateway::body;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::process::GatewayProcess;
use crate::support::*;

/// A raw TCP upstream: `behave` gets each connection after its request head has been read.
async fn raw_upstream<F, Fut>(behave: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let behave = behave.clone();
            tokio::spawn(async move {
                if read_request_head(&mut stream).await.is_some() {
                    behave(stream).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

fn audit_extra(path: &Path) -> String {
    format!("audit:\n  path: {}\n", path.display())
}

async fn gateway_with_audit(upstream: &str) -> (TestGateway, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gateway = TestGateway::start_with(upstream, &audit_extra(&audit), |config| {
        config.upstream.request_timeout = Duration::from_millis(500);
        config.server.body_idle_timeout = Duration::from_millis(500);
    })
    .await;
    (gateway, dir, audit)
}

/// The outcome record of the only audited request, once written.
async fn outcome(path: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["phase"] == "outcome");
        if let Some(found) = found {
            return found;
        }
        assert!(Instant::now() < deadline, "no outcome record in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete(gateway: &TestGateway) -> hyper::Response<hyper::body::Incoming> {
    let req = request(
        Method::DELETE,
        &gateway.url("/v1.3/indexes/6298d673f1090f1100476d4c"),
        Some(ALICE_KEY),
    )
    .body(body::empty())
    .unwrap();
    send(Proto::Http1, req).await
}

/// The gateway keeps serving after the fault (no panic took it down).
async fn still_serving(gateway: &TestGateway) {
    let health = get(&format!("http://{}/healthz", gateway.admin), None).await;
    assert_eq!(health.status(), StatusCode::OK);
}

async fn assert_clean_error(
    response: hyper::Response<hyper::body::Incoming>,
    status: StatusCode,
    code: &str,
) {
    assert_eq!(response.status(), status);
    let json = body_json(response).await;
    assert_eq!(json["code"], code, "{json}");
    assert!(json["request_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refuses_connections() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (gateway, _dir, audit) = gateway_with_audit(&upstream).await;
    assert_clean_error(
        delete(&gateway).await,
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
    )
    .await;
    let record = outcome(&audit).await;
    assert_eq!(
        (record["status"].as_u64(), record["error"].as_str()),
        (Some(502), Some("upstream_unavailable"))
    );
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resets_mid_response() {
    let upstream = raw_upstream(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
            .await;
        let _ = stream.write_all(&[b'x'; 1000]).await;
        // Close with the body 99 KB short of its declared length.
        drop(stream);
    })
    .await;
    let (gateway, _dir, audit) = gateway_with_audit(&upstream).await;
    let response = delete(&gateway).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "headers had already arrived"
    );
    assert!(
        response.into_body().collect().await.is_err(),
        "the truncated body must end in an error"
    );
    let record = outcome(&audit).await;
    assert_eq!(
        (record["status"].as_u64(), record["error"].as_str()),
        (Some(200), Some("upstream_body_error"))
    );
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalls_before_headers() {
    let upstream = raw_upstream(|stream| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    })
    .await;
    let (gateway, _dir, audit) = gateway_with_audit(&upstream).await;
    assert_clean_error(
        delete(&gateway).await,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
    let record = outcome(&audit).await;
    assert_eq!(
        (record["status"].as_u64(), record["error"].as_str()),
        (Some(504), Some("upstream_timeout"))
    );
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalls_mid_body() {
    let upstream = raw_upstream(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let (gateway, _dir, audit) = gateway_with_audit(&upstream).await;
    let response = delete(&gateway).await;
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    assert!(
        response.into_body().collect().await.is_err(),
        "a stalled body must be aborted"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let record = outcome(&audit).await;
    assert_eq!(record["error"], "upstream_body_error");
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_malformed_http() {
    let upstream = raw_upstream(|mut stream| async move {
        let _ = stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
    })
    .await;
    let (gateway, _dir, audit) = gateway_with_audit(&upstream).await;
    assert_clean_error(
        delete(&gateway).await,
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
    )
    .await;
    let record = outcome(&audit).await;
    assert_eq!(record["status"], 502);
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_certificate_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed for the TLS test (apt-get install openssl)");
    assert!(made.status.success(), "{made:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = KillOnDrop(
        std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (gateway, _dir, audit) = gateway_with_audit(&format!("https://localhost:{port}")).await;
    assert_clean_error(
        delete(&gateway).await,
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
    )
    .await;
    let record = outcome(&audit).await;
    assert_eq!(record["status"], 502);
    still_serving(&gateway).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_upload_aborts_the_upstream_request_and_is_audited() {
    let (upstream_tx, mut upstream_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let upstream = Upstream::start(move |req| {
        let upstream_tx = upstream_tx.clone();
        async move {
            let _ = upstream_tx.send(req.body_len);
            json_response(StatusCode::OK, "{}")
        }
    })
    .await;
    let (gateway, _dir, audit) = gateway_with_audit(&format!("http://{}", upstream.addr)).await;
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "PUT /v1.3/assets/a1/user-metadata HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b' '; 1000]).await.unwrap();
    // Let the request reach the upstream, then vanish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    let received = tokio::time::timeout(Duration::from_secs(5), upstream_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        received < 100_000,
        "the upstream must see a short, aborted body, got {received} bytes"
    );
    let record = outcome(&audit).await;
    assert!(
        matches!(
            record["error"].as_str(),
            Some("client_disconnected" | "upstream_unavailable")
        ),
        "{record}"
    );
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storms_under_load_never_fail_a_request() {
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let rule = "policy:\n  rules:\n    - id: force\n      match: { operation: assets.delete, query: { force: true } }\n      allow_roles: [admin]\n";
    let gateway = std::sync::Arc::new(TestGateway::start_reloadable(&origin, rule).await);
    let load: Vec<_> = (0..4)
        .map(|w| {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..60 {
                    let (key, target) = if (w + i) % 2 == 0 {
                        (BOB_KEY, "/v1.3/assets/a1?force=true")
                    } else {
                        (ALICE_KEY, "/v1.3/assets")
                    };
                    let method = if target.contains("force") {
                        Method::DELETE
                    } else {
                        Method::GET
                    };
                    let req = request(method, &gateway.url(target), Some(key))
                        .body(body::empty())
                        .unwrap();
                    statuses.push(send(Proto::Http1, req).await.status());
                }
                statuses
            })
        })
        .collect();
    for i in 0..20 {
        let extra = if i % 2 == 0 {
            rule.to_owned()
        } else {
            format!("{rule}      message: storm {i}\n")
        };
        gateway.rewrite_config(&origin, &extra);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for worker in load {
        for status in worker.await.unwrap() {
            assert!(
                status == StatusCode::OK || status == StatusCode::FORBIDDEN,
                "{status}"
            );
        }
    }
    // bob is refused by every configuration of the storm, so only the GETs ever reached the upstream.
    assert!(upstream.requests().iter().all(|r| r.method == Method::GET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_deletes_in_flight_completes_and_audits_them() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream = Upstream::start(move |req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            if req.method == Method::DELETE {
                let _ = arrived_tx.send(());
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            json_response(StatusCode::OK, "{}")
        }
    })
    .await;
    let gateway = GatewayProcess::serve_in(
        dir.path(),
        &format!("http://{}", upstream.addr),
        "info",
        &audit_extra(&audit),
    );
    let base = format!("http://{}", gateway.addr);
    let deletes: Vec<_> = (0..5)
        .map(|i| {
            let url = format!("{base}/v1.3/indexes/idx{i}");
            tokio::spawn(async move {
                let req = request(Method::DELETE, &url, Some(ALICE_KEY))
                    .body(body::empty())
                    .unwrap();
                send(Proto::Http1, req).await.status()
            })
        })
        .collect();
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .unwrap();
    }
    gateway.terminate();
    for delete in deletes {
        assert_eq!(delete.await.unwrap(), StatusCode::OK);
    }
    let (status, output) = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.iter().filter(|r| r["phase"] == "intent").count(), 5);
    assert_eq!(
        records
            .iter()
            .filter(|r| r["phase"] == "outcome" && r["status"] == 200)
            .count(),
        5,
        "{records:#?}"
    );
    let verify = std::process::Command::new(binary())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(verify.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_are_held_and_the_gateway_still_serves() {
    const IDLE: usize = 5_000;
    let _ = rlimit::increase_nofile_limit(4 * IDLE as u64);
    let upstream = Upstream::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::serve_in(
        dir.path(),
        &format!("http://{}", upstream.addr),
        "info",
        "server:\n  header_read_timeout: 60s\n",
    );
    let rss_before = gateway.rss_kib();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            TcpStream::connect(gateway.addr)
                .await
                .expect("connect (raise `ulimit -n` if this fails)"),
        );
    }
    // Every idle connection was accepted and is held open by the gateway.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.open_fds() < IDLE {
        assert!(
            Instant::now() < deadline,
            "gateway holds only {} fds",
            gateway.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = get(
        &format!("http://{}/v1.3/assets", gateway.addr),
        Some(ALICE_KEY),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let rss_after = gateway.rss_kib();
    let per_connection = rss_after.saturating_sub(rss_before) as f64 / IDLE as f64;
    println!("{IDLE} idle connections: RSS {rss_before} KiB → {rss_after} KiB ({per_connection:.1} KiB per connection)");
    // A connection that has sent nothing holds a socket, a task and hyper's first read buffer
    // (about 4–5 KiB measured); far more would mean something buffers per connection.
    assert!(
        per_connection < 16.0,
        "{per_connection:.1} KiB per idle connection"
    );
    drop(idle);
    gateway.terminate();
    let (status, output) = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert!(status.success(), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429s_pass_through_with_their_headers() {
    let upstream = Upstream::start(|_| async {
        http::Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "17")
            .header("x-ratelimit-remaining", "0")
            .header("content-type", "application/json")
            .body(body::full(
                r#"{"code":"too_many_requests","message":"upstream limit"}"#,
            ))
            .unwrap()
    })
    .await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let response = get(&gateway.url("/v1.3/assets"), Some(BOB_KEY)).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "17");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(body_json(response).await["message"], "upstream limit");
    gateway.shutdown().await;
}

/// Two requests at once against an upstream that takes a second; returns both statuses and bodies.
async fn two_at_once(gateway: &TestGateway) -> Vec<(StatusCode, serde_json::Value)> {
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let url = gateway.url("/v1.3/assets");
            tokio::spawn(async move {
                let response = get(&url, Some(BOB_KEY)).await;
                (response.status(), body_json(response).await)
            })
        })
        .collect();
    let mut out = Vec::new();
    for call in calls {
        out.push(call.await.unwrap());
    }
    out.sort_by_key(|(status, _)| status.as_u16());
    out
}

async fn slow_upstream() -> Upstream {
    Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        json_response(StatusCode::OK, r#"{"data":[]}"#)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_concurrency_limit_queues_then_sheds_with_503() {
    let upstream = slow_upstream().await;
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), "", |config| {
        config.upstream.max_concurrency = Some(1);
        config.upstream.queue_timeout = Duration::from_millis(200);
    })
    .await;
    let results = two_at_once(&gateway).await;
    assert_eq!(results[0].0, StatusCode::OK);
    assert_eq!(results[1].0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(results[1].1["code"], "overloaded");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_sheds_load_and_limits_refuse_oversized_requests() {
    let upstream = slow_upstream().await;
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), "", |config| {
        config.server.max_in_flight = 1;
    })
    .await;
    let results = two_at_once(&gateway).await;
    assert_eq!(results[0].0, StatusCode::OK);
    assert_eq!(results[1].0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(results[1].1["code"], "overloaded");

    let long = format!("/v1.3/assets?filename={}", "a".repeat(9000));
    let response = get(&gateway.url(&long), Some(BOB_KEY)).await;
    assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(body_json(response).await["code"], "request_target_too_long");
    let huge_header = format!(
        "GET /v1.3/assets HTTP/1.1\r\nhost: x\r\nx-api-key: {BOB_KEY}\r\nx-junk: {}\r\nconnection: close\r\n\r\n",
        "j".repeat(70 * 1024)
    );
    let answer = raw_http1(gateway.addr, huge_header.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.is_empty(),
        "{answer:.80}"
    );
    gateway.shutdown().await;
}

/// A raw upstream for the retry tests: on every connection it answers GETs (keep-alive) and counts
/// DELETEs, which it reads whole and then either drops without a word (`answer_deletes: false`) or
/// answers; with `close_after_get` it closes each connection right after answering a GET.
/// Returns the URL, the connections accepted and the DELETEs received.
async fn retry_upstream(
    answer_deletes: bool,
    close_after_get: bool,
) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let deletes = Arc::new(AtomicUsize::new(0));
    let (c, d) = (connections.clone(), deletes.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let d = d.clone();
            tokio::spawn(async move {
                while let Some(head) = read_request_head(&mut stream).await {
                    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                    if head.starts_with(b"DELETE ") {
                        d.fetch_add(1, Ordering::SeqCst);
                        if !answer_deletes {
                            // Read whole (it has no body), then the connection is gone.
                            return;
                        }
                    }
                    if stream.write_all(OK).await.is_err() {
                        return;
                    }
                    if close_after_get && head.starts_with(b"GET ") {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), connections, deletes)
}

/// Warm the gateway's pool: one GET whose response is read to its end leaves its connection idle.
async fn warm(gateway: &TestGateway) {
    let response = get(&gateway.url("/v1.3/indexes"), Some(ALICE_KEY)).await;
    assert_eq!(response.status(), StatusCode::OK);
    body_bytes(response).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_written_to_a_pooled_connection_that_then_fails_is_never_retried() {
    let (upstream, connections, deletes) = retry_upstream(false, false).await;
    let (gateway, _dir, audit) = gateway_with_audit(&upstream).await;
    warm(&gateway).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_clean_error(
        delete(&gateway).await,
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
    )
    .await;
    // Give a (wrong) retry every chance to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deletes.load(Ordering::SeqCst),
        1,
        "the upstream received the DELETE once: a request it may have acted on is not sent again"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1, "no new connection");
    let record = outcome(&audit).await;
    assert_eq!(
        (record["status"].as_u64(), record["error"].as_str()),
        (Some(502), Some("upstream_unavailable"))
    );
    // On a fresh connection (none idle now) the same holds.
    assert_clean_error(
        delete(&gateway).await,
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(deletes.load(Ordering::SeqCst), 2);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    still_serving(&gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_a_pooled_connection_the_upstream_closed_while_idle_goes_out_once_on_a_new_one()
{
    let (upstream, connections, deletes) = retry_upstream(true, true).await;
    let (gateway, _dir, _audit) = gateway_with_audit(&upstream).await;
    for round in 1..=3 {
        warm(&gateway).await;
        // The upstream has closed the idle connection; the DELETE was never written to it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = delete(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        assert_eq!(deletes.load(Ordering::SeqCst), round);
    }
    // The first GET's connection, then one new connection per DELETE (each then serves the next
    // round's GET, after which the upstream closes it).
    assert_eq!(
        connections.load(Ordering::SeqCst),
        4,
        "a new connection for each DELETE"
    );
    still_serving(&gateway).await;
}
