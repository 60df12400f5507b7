//! The outside attack review's findings, each reproduced as an attack against a real gateway:
//! silent and idle connections, connection caps, accept errors, audit-disk exhaustion by refused
//! requests, one client holding every in-flight slot, and client body errors blamed on the upstream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tl_gateway::body;
use tl_gateway::metrics::counter_value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::process::GatewayProcess;
use crate::support::*;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn scrape(admin: SocketAddr) -> String {
    let response = get(&format!("http://{admin}/metrics"), None).await;
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    counter_value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Open a connection, send `bytes`, and report how long after sending the gateway closed it.
async fn time_until_closed(addr: SocketAddr, bytes: &'static [u8]) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let sent = Instant::now();
    let mut sink = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return sent.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a silent connection stayed open for 20 s"),
        }
    }
}

/// A GET with bob's key over a fresh HTTP/1.1 connection; the status.
async fn real_client(addr: SocketAddr) -> StatusCode {
    get(&format!("http://{addr}/v1.3/assets"), Some(BOB_KEY))
        .await
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_of_every_kind_are_closed_within_the_deadline_while_a_real_client_is_served(
) {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        "server:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n  worker_threads: 1\n",
        |_| {},
    )
    .await;
    let addr = gateway.addr;
    // Before a first request: nothing, part of the HTTP/2 preface, the whole preface and SETTINGS
    // but no HEADERS, part of an HTTP/1 head.
    let kinds: [&'static [u8]; 4] = [
        b"",
        &H2_PREFACE[..16],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET /v1.3/assets HTTP/1.1\r\nhost: x\r\n",
    ];
    assert_eq!(&kinds[2][24..], H2_SETTINGS);
    let mut silent = Vec::new();
    for kind in kinds {
        for _ in 0..5 {
            silent.push(tokio::spawn(time_until_closed(addr, kind)));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(real_client(addr).await, StatusCode::OK, "served meanwhile");
    for task in silent {
        let closed_after = task.await.unwrap();
        assert!(
            closed_after >= Duration::from_millis(700)
                && closed_after <= Duration::from_millis(2500),
            "closed after {closed_after:?}, deadline 1 s"
        );
    }

    // After a request: an HTTP/1.1 keep-alive connection left idle.
    let h1_idle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /v1.3/assets HTTP/1.1\r\nhost: x\r\nx-api-key: {BOB_KEY}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("{\"ok\":true}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response");
            seen.extend_from_slice(&buf[..n]);
        }
        let answered = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("an idle HTTP/1.1 connection stayed open")
            .unwrap_or(0);
        assert_eq!(n, 0, "only a close may follow");
        answered.elapsed()
    });
    // After a request: an HTTP/2 connection left idle gets GOAWAY and is closed.
    let h2_idle = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = Request::get(format!("http://{addr}/v1.3/assets"))
            .header("x-api-key", BOB_KEY)
            .body(body::empty())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        let answered = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(20), connection)
            .await
            .expect("an idle HTTP/2 connection stayed open")
            .unwrap();
        assert!(ended.is_ok(), "a graceful GOAWAY, not a reset: {ended:?}");
        answered.elapsed()
    });
    for (what, task) in [("HTTP/1.1", h1_idle), ("HTTP/2", h2_idle)] {
        let idle_for = task.await.unwrap();
        assert!(
            idle_for >= Duration::from_millis(1800) && idle_for <= Duration::from_millis(4000),
            "{what}: closed after {idle_for:?} idle, idle_timeout 2 s"
        );
    }
    let text = scrape(gateway.admin).await;
    assert!(
        value(
            &text,
            r#"tl_gateway_connections_closed_total{listener="client",reason="first_request_timeout"}"#
        ) >= 20.0
    );
    assert!(
        value(
            &text,
            r#"tl_gateway_connections_closed_total{listener="client",reason="idle_timeout"}"#
        ) >= 2.0
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_silent_sockets_make_room_for_a_real_client() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        // Deadlines far away: only eviction can free a slot within the test's time.
        "server:\n  max_connections: 10\n  header_read_timeout: 60s\n  worker_threads: 1\n",
        |_| {},
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while value(
        &scrape(gateway.admin).await,
        r#"tl_gateway_open_connections{listener="client"}"#,
    ) < 10.0
    {
        assert!(
            Instant::now() < deadline,
            "the silent sockets were not admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), real_client(gateway.addr))
        .await
        .expect("a real client waited behind silent sockets");
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = scrape(gateway.admin).await;
    assert!(
        value(
            &text,
            r#"tl_gateway_connections_closed_total{listener="client",reason="evicted"}"#
        ) >= 1.0
    );
    drop(silent);
    gateway.shutdown().await;
}

/// An HTTP/1.1 GET from a chosen local address; the status, or `None` if the connection was closed.
async fn get_from(local: &str, addr: SocketAddr) -> Option<StatusCode> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.ok()?;
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = Request::get("/v1.3/assets")
        .header("host", "gateway.test")
        .header("x-api-key", BOB_KEY)
        .body(body::empty())
        .unwrap();
    send.send_request(request).await.ok().map(|r| r.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_hold_more_than_max_connections_per_ip() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        "server:\n  max_connections_per_ip: 3\n  header_read_timeout: 60s\n  worker_threads: 1\n",
        |_| {},
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        held.push(socket.connect(gateway.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth from the same host is closed at once; another host is served.
    let started = Instant::now();
    assert_eq!(get_from("127.0.0.1", gateway.addr).await, None);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        get_from("127.0.0.2", gateway.addr).await,
        Some(StatusCode::OK)
    );
    let text = scrape(gateway.admin).await;
    assert!(
        value(
            &text,
            r#"tl_gateway_connections_closed_total{listener="client",reason="per_ip_limit"}"#
        ) >= 1.0
    );
    drop(held);
    // Their slots free up once they go.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if get_from("127.0.0.1", gateway.addr).await == Some(StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "the host's slots were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_a_hundred_silent_sockets_sit_on_the_admin_port() {
    let upstream = Upstream::recording().await;
    // Default admin cap (64) and deadline (10 s): the probe must not wait for the deadline.
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(gateway.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(3),
        get(&format!("http://{}/healthz", gateway.admin), None),
    )
    .await
    .expect("/healthz did not answer while silent sockets held the admin listener");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(silent);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_counts_instead_of_spinning() {
    let upstream = Upstream::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::serve_limited(
        dir.path(),
        &format!("http://{}", upstream.addr),
        "info",
        "server:\n  header_read_timeout: 2s\n  worker_threads: 1\n",
        Some(48),
    );
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..150 {
        match TcpStream::connect(gateway.addr).await {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);
    let elapsed = started.elapsed();
    // Descriptors are back: the gateway serves, and counted what it could not accept.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(Ok(response)) = tokio::time::timeout(
            Duration::from_secs(2),
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build_http::<body::GatewayBody>()
                .request(
                    Request::get(format!("http://{}/metrics", gateway.admin))
                        .body(body::empty())
                        .unwrap(),
                ),
        )
        .await
        {
            break String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
        }
        assert!(Instant::now() < deadline, "the gateway did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        value(
            &text,
            r#"tl_gateway_accept_errors_total{listener="client"}"#
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(real_client(gateway.addr).await, StatusCode::OK);
    let warnings = gateway.output().matches("accept failed").count();
    let seconds = elapsed.as_secs() + 2;
    assert!(
        warnings >= 1 && warnings as u64 <= 2 * seconds,
        "{warnings} accept warnings in about {seconds} s (at most one a second per listener)"
    );
}

/// A 2 MiB tmpfs mounted for one test (a small audit volume); unmounted when dropped.
struct SmallVolume {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallVolume {
    fn mount(size: &str) -> SmallVolume {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount(8) is needed for the small-volume tests");
        assert!(
            status.success(),
            "mounting a tmpfs failed (these tests need root, as in CI)"
        );
        SmallVolume { path, _dir: dir }
    }

    fn free(&self) -> u64 {
        let output = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// `n` forced deletes by bob (refused by policy), pipelined 100 at a time on one connection.
async fn refused_flood(addr: SocketAddr, n: usize) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let one = format!(
        "DELETE /v1.3/assets/a1?force=true HTTP/1.1\r\nhost: x\r\nx-api-key: {BOB_KEY}\r\n\r\n"
    );
    let hundred = one.repeat(100);
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..n / 100 {
        stream.write_all(hundred.as_bytes()).await.unwrap();
        let mut answers = 0;
        let mut seen = Vec::new();
        while answers < 100 {
            let read = stream.read(&mut buf).await.unwrap();
            assert!(read > 0, "the gateway closed the flood connection");
            seen.extend_from_slice(&buf[..read]);
            answers = String::from_utf8_lossy(&seen)
                .matches("HTTP/1.1 403")
                .count();
        }
    }
}

fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const FORCE_RULE: &str = "policy:\n  rules:\n    - id: force-delete-admins-only\n      match: { method: DELETE, path: \"/v1.3/assets/{asset_id}\", query: { force: true } }\n      allow_roles: [admin]\nguards:\n  force_delete: { enabled: false }\n";

async fn admin_force_delete(addr: SocketAddr) -> (StatusCode, serde_json::Value) {
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        send(
            Proto::Http1,
            request(
                Method::DELETE,
                &format!("http://{addr}/v1.3/assets/a9?force=true"),
                Some(ALICE_KEY),
            )
            .body(body::empty())
            .unwrap(),
        ),
    )
    .await
    .expect("the admin's delete got no answer");
    let status = response.status();
    let bytes = body_bytes(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_flood_on_a_small_audit_volume_leaves_an_admins_delete_working() {
    let volume = SmallVolume::mount("2m");
    let audit = volume.path.join("audit.jsonl");
    let upstream = Upstream::recording().await;
    let extra = format!(
        "{FORCE_RULE}audit:\n  path: {}\n  reserve: 1MiB\nserver:\n  worker_threads: 1\n",
        audit.display()
    );
    let gateway =
        TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |_| {}).await;
    refused_flood(gateway.addr, 8000).await;
    let (status, body) = admin_force_delete(gateway.addr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the admin's delete went upstream"
    );

    // The flood became at most 10 denied records per second plus one summary per second (the
    // last summary is written once its second is over).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (records, denied, summaries, coalesced) = loop {
        let records = audit_records(&audit);
        let denied = records.iter().filter(|r| r["phase"] == "denied").count();
        let summaries: Vec<serde_json::Value> = records
            .iter()
            .filter(|r| r["phase"] == "denied_summary")
            .cloned()
            .collect();
        let coalesced: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
        if denied as u64 + coalesced == 8000 || Instant::now() > deadline {
            break (records, denied, summaries, coalesced);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        denied as u64 + coalesced,
        8000,
        "every denial is accounted for: {denied} denied, {summaries:#?}"
    );
    assert!(denied <= 10 * 30, "{denied} denied records");
    assert!(!summaries.is_empty());
    assert_eq!(summaries[0]["client"], "bob");
    assert_eq!(summaries[0]["rules"][0], "force-delete-admins-only");
    assert!(summaries[0]["first_request_id"].as_str().is_some());
    assert!(records
        .iter()
        .any(|r| r["phase"] == "outcome" && r["client"] == "alice" && r["status"] == 200));
    assert!(
        volume.free() > 1024 * 1024,
        "the flood did not eat the reserve"
    );
    let text = scrape(gateway.admin).await;
    assert_eq!(
        value(&text, "tl_gateway_audit_denials_coalesced_total"),
        coalesced as f64
    );
    gateway.shutdown().await;
    let verified = std::process::Command::new(binary())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_refusals_stop_being_recorded_and_intents_still_are() {
    let volume = SmallVolume::mount("2m");
    let audit = volume.path.join("audit.jsonl");
    let upstream = Upstream::recording().await;
    // A reserve larger than the volume: refusals are never written, intents and outcomes are.
    let extra = format!(
        "{FORCE_RULE}audit:\n  path: {}\nserver:\n  worker_threads: 1\n",
        audit.display()
    );
    let gateway =
        TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |_| {}).await;
    refused_flood(gateway.addr, 200).await;
    let (status, _) = admin_force_delete(gateway.addr).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let phases: Vec<String> = audit_records(&audit)
        .iter()
        .map(|r| r["phase"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(phases, ["intent", "outcome"], "{phases:?}");
    let text = scrape(gateway.admin).await;
    assert_eq!(value(&text, "tl_gateway_audit_below_reserve"), 1.0);
    assert!(value(&text, "tl_gateway_audit_refusals_suppressed_total") >= 10.0);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_audit_volume_full_a_delete_is_refused_within_the_enqueue_timeout_not_left_hanging(
) {
    let volume = SmallVolume::mount("2m");
    let audit = volume.path.join("audit.jsonl");
    let ballast = volume.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 512 * 1024]).unwrap();
    let upstream = Upstream::recording().await;
    // No reserve and no coalescing: the refused requests fill the volume to the last byte (what
    // the review's rerun did to an older build, whose admin delete then got no answer at all).
    let extra = format!(
        "{FORCE_RULE}audit:\n  path: {}\n  reserve: 0\n  max_denied_per_client: 1000000\n  enqueue_timeout: 2s\nserver:\n  worker_threads: 1\n",
        audit.display()
    );
    let gateway =
        TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while value(&scrape(gateway.admin).await, "tl_gateway_audit_writable") != 0.0 {
        assert!(Instant::now() < deadline, "the volume never filled");
        refused_flood(gateway.addr, 1000).await;
    }
    // A failed batch of refusals leaves the little room a single intent may still fit in: deletes
    // work while any is left, and once none is, they are refused at once — never left hanging.
    let mut attempts = 0;
    let body = loop {
        let forwarded_before = upstream.requests().len();
        let started = Instant::now();
        let (status, body) = admin_force_delete(gateway.addr).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                upstream.requests().len(),
                forwarded_before,
                "forwarded without an intent"
            );
            break body;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        attempts += 1;
        assert!(attempts < 100, "the volume never filled up");
    };
    assert_eq!(body["code"], "audit_unavailable");
    let readyz = body_json(get(&format!("http://{}/readyz", gateway.admin), None).await).await;
    assert_eq!(readyz["ready"], true, "{readyz}");
    assert_eq!(readyz["degraded"], true, "{readyz}");

    // Space comes back (the operator removes old files): the next delete works, no restart, and the
    // refused request's record says it was never forwarded.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = admin_force_delete(gateway.addr).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deletes did not recover: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.shutdown().await;
    let records = audit_records(&audit);
    assert!(records.iter().any(|r| r["phase"] == "outcome"
        && r["error"] == "audit_unavailable"
        && r["forwarded"] == false));
    let verified = std::process::Command::new(binary())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_slow_uploads_cannot_take_every_in_flight_slot() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        "server:\n  max_in_flight: 20\n  min_body_rate: 1KiB/s over 3s\n  worker_threads: 1\n",
        |_| {},
    )
    .await;
    // 20 uploads from bob, each sending one byte of its body and then nothing for a while.
    let mut uploads = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        let head = format!(
            "PUT /v1.3/assets/a{i}/user-metadata HTTP/1.1\r\nhost: x\r\nx-api-key: {BOB_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        uploads.push(stream);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everyone else is still served.
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(ALICE_KEY))
            .await
            .status(),
        StatusCode::OK
    );
    let started = Instant::now();
    let mut answers = Vec::new();
    for mut stream in uploads {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out)).await;
        answers.push(String::from_utf8_lossy(&out).into_owned());
    }
    let too_many = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429") && a.contains("\"too_many_requests\""))
        .count();
    let too_slow = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 408") && a.contains("\"request_body_timeout\""))
        .count();
    assert_eq!(too_many, 15, "beyond the cap of 20/4: {answers:#?}");
    assert!(answers
        .iter()
        .any(|a| a.contains("client 'bob' already has 5 requests in flight")));
    assert_eq!(too_slow, 5, "aborted below min_body_rate: {answers:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_400_not_an_upstream_failure() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let request = format!(
        "PUT /v1.3/assets/a1/user-metadata HTTP/1.1\r\nhost: x\r\nx-api-key: {BOB_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\nZZ\r\n"
    );
    let answer = raw_http1(gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"request_body_invalid\""), "{answer}");
    let text = scrape(gateway.admin).await;
    assert_eq!(
        value(
            &text,
            r#"tl_gateway_upstream_errors_total{kind="exchange"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"tl_gateway_upstream_errors_total{kind="client_body"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"tl_gateway_rejections_total{reason="request_body_invalid"}"#
        ),
        1.0
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_is_created_private_or_group_readable_as_configured() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = Upstream::recording().await;
    for (extra, mode) in [("", 0o600), ("  file_mode: \"0640\"\n", 0o640)] {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let gateway = TestGateway::start_with(
            &format!("http://{}", upstream.addr),
            &format!("audit:\n  path: {}\n{extra}", audit.display()),
            |_| {},
        )
        .await;
        let meta = std::fs::metadata(&audit).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{extra:?}");
        gateway.shutdown().await;
    }
}
