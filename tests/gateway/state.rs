//! Limits shared on a real Redis: several gateways (replicas) count one budget; outages fall back
//! as configured and recover by themselves; `NOSCRIPT` is handled; one round trip per request.
//!
//! Every test starts its own `redis-server` (Debian's package; `.ci/run` and `scripts/test` install
//! it) on a free port, and fails if it is missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;
use tl_gateway::metrics::counter_value;

use crate::support::*;

/// A `redis-server` of this test's own, on a free loopback port.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<KillOnDrop>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            process: None,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is needed (apt-get install redis-server; .ci/run installs it)");
        let child = std::process::Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(KillOnDrop(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_command(&["PING"]).as_deref() != Ok("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stop the server (as a crash would).
    pub fn stop(&mut self) {
        drop(self.process.take());
    }

    /// Start it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.run();
    }

    /// Send one command; its reply as text (simple strings, bulk strings, integers, errors).
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn try_command(&self, args: &[&str]) -> Result<String, String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            reply.extend_from_slice(&buf[..n]);
            if let Some(parsed) = parse_reply(&reply) {
                return parsed;
            }
        }
    }
}

/// A complete RESP reply, or `None` if more bytes are needed.
fn parse_reply(bytes: &[u8]) -> Option<Result<String, String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let end = text.find("\r\n")?;
    let (head, rest) = (&text[..end], &text[end + 2..]);
    match head.as_bytes().first()? {
        b'+' | b':' => Some(Ok(head[1..].to_owned())),
        b'-' => Some(Err(head[1..].to_owned())),
        b'$' => {
            let len: i64 = head[1..].parse().ok()?;
            if len < 0 {
                return Some(Ok(String::new()));
            }
            let len = len as usize;
            (rest.len() >= len + 2).then(|| Ok(rest[..len].to_owned()))
        }
        b'*' => Some(Ok(head.to_owned())),
        _ => Some(Err(format!("unexpected reply {head:?}"))),
    }
}

fn state_yaml(redis: &RedisServer, extra: &str) -> String {
    format!(
        "state:\n  backend: redis\n  redis:\n    url: {}\n    key_prefix: \"tlgw:\"\n    timeout: 50ms\n{extra}",
        redis.url()
    )
}

async fn delete(
    gateway: &TestGateway,
    key: &str,
    target: &str,
) -> hyper::Response<hyper::body::Incoming> {
    send(
        Proto::Http1,
        request(Method::DELETE, &gateway.url(target), Some(key))
            .body(body::empty())
            .unwrap(),
    )
    .await
}

async fn metrics_of(gateway: &TestGateway) -> String {
    String::from_utf8(
        body_bytes(get(&format!("http://{}/metrics", gateway.admin), None).await)
            .await
            .to_vec(),
    )
    .unwrap()
}

const BUDGET: &str = r#"rate_limits:
  - id: force-delete-budget
    match: { operation: assets.delete, query: { force: true } }
    per: global
    rate: 5/day
    burst: 5
guards:
  force_delete: { enabled: false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_one_redis_admit_exactly_the_budget_between_them() {
    let redis = RedisServer::start();
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TestGateway::start_with(&origin, &state_yaml(&redis, BUDGET), |_| {}).await);
    }
    let mut statuses = Vec::new();
    for i in 0..12 {
        let gateway = &replicas[i % 3];
        let response = delete(gateway, ALICE_KEY, &format!("/v1.3/assets/a{i}?force=true")).await;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            // 5/day: a new delete every 4.8 hours.
            assert!((1..=17_280).contains(&retry_after), "{retry_after}");
            let body = body_json(response).await;
            assert_eq!(body["code"], "too_many_requests");
            assert!(body["message"]
                .as_str()
                .unwrap()
                .contains("force-delete-budget"));
        }
        statuses.push(status.as_u16());
    }
    let forwarded = upstream
        .requests()
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .count();
    assert_eq!(forwarded, 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7);
    // Redis holds the bucket, with an expiry: nothing stays for good.
    let keys = redis.command(&["KEYS", "tlgw:rl:force-delete-budget:*"]);
    assert_eq!(keys, "*1", "one global bucket");
    for replica in replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_count_each_client_across_replicas_and_global_ones_everybody() {
    let redis = RedisServer::start();
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let limits = r#"rate_limits:
  - id: index-deletes-per-client
    match: { operation: indexes.delete }
    per: client
    rate: 2/day
    burst: 2
  - id: task-deletes-for-everybody
    match: { operation: tasks.delete }
    per: global
    rate: 3/day
    burst: 3
"#;
    let a = TestGateway::start_with(&origin, &state_yaml(&redis, limits), |_| {}).await;
    let b = TestGateway::start_with(&origin, &state_yaml(&redis, limits), |_| {}).await;
    // Each client: two index deletes, one on each replica, then a third is refused wherever it goes.
    for key in [ALICE_KEY, BOB_KEY] {
        assert_eq!(delete(&a, key, "/v1.3/indexes/i1").await.status(), 200);
        assert_eq!(delete(&b, key, "/v1.3/indexes/i2").await.status(), 200);
        assert_eq!(delete(&a, key, "/v1.3/indexes/i3").await.status(), 429);
        assert_eq!(delete(&b, key, "/v1.3/indexes/i3").await.status(), 429);
    }
    // Everybody together: three task deletes in all.
    assert_eq!(delete(&a, ALICE_KEY, "/v1.3/tasks/t1").await.status(), 200);
    assert_eq!(delete(&b, BOB_KEY, "/v1.3/tasks/t2").await.status(), 200);
    assert_eq!(delete(&a, BOB_KEY, "/v1.3/tasks/t3").await.status(), 200);
    assert_eq!(delete(&b, ALICE_KEY, "/v1.3/tasks/t4").await.status(), 429);
    assert_eq!(delete(&a, BOB_KEY, "/v1.3/tasks/t5").await.status(), 429);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_deny_limits_refuse_allow_limits_pass_and_it_all_recovers_without_a_restart(
) {
    let mut redis = RedisServer::start();
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let limits = r#"rate_limits:
  - id: index-deletes
    match: { operation: indexes.delete }
    per: client
    rate: 100/minute
    burst: 100
    on_unavailable: deny
  - id: task-deletes
    match: { operation: tasks.delete }
    per: client
    rate: 100/minute
    burst: 100
    on_unavailable: allow
"#;
    let gateway = TestGateway::start_with(&origin, &state_yaml(&redis, limits), |_| {}).await;
    // Another replica whose only limit falls back to allow.
    let lenient_limits = r#"rate_limits:
  - id: task-deletes
    match: { operation: tasks.delete }
    per: client
    rate: 100/minute
    burst: 100
    on_unavailable: allow
"#;
    let lenient =
        TestGateway::start_with(&origin, &state_yaml(&redis, lenient_limits), |_| {}).await;
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/indexes/i1").await.status(),
        200
    );

    redis.stop();
    // Every request answers within the store's timeout and a margin, whatever the connection does.
    for i in 0..5 {
        let started = Instant::now();
        let response = delete(&gateway, BOB_KEY, &format!("/v1.3/indexes/i{i}")).await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_json(response).await;
        assert_eq!(body["code"], "limits_unavailable");
        // Where the store lives is the operator's business: the log has it, the client does not.
        let message = body["message"].as_str().unwrap();
        assert!(
            !message.contains(&redis.port.to_string()) && !message.contains("redis"),
            "{message}"
        );
        assert!(body["request_id"].is_string());
        assert!(took < Duration::from_millis(500), "took {took:?}");
    }
    let forwarded_before = upstream.requests().len();
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/tasks/t1").await.status(),
        200
    );
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .await
            .status(),
        200,
        "routes no limit matches never touch the store"
    );
    assert_eq!(upstream.requests().len(), forwarded_before + 2);
    let text = metrics_of(&gateway).await;
    assert!(
        counter_value(
            &text,
            r#"tl_gateway_rate_limit_store_fallbacks_total{action="deny",limit="index-deletes"}"#
        )
        .unwrap()
            >= 5.0
    );
    assert!(
        counter_value(
            &text,
            r#"tl_gateway_rate_limit_store_fallbacks_total{action="allow",limit="task-deletes"}"#
        )
        .unwrap()
            >= 1.0
    );
    // /readyz says so, degraded but ready even where a limit fails closed: Redis is shared by
    // every replica, and taking them all out of the Service would turn refused deletes into an
    // outage of everything (the limit refuses by itself).
    let readyz = get(&format!("http://{}/readyz", gateway.admin), None).await;
    assert_eq!(readyz.status(), StatusCode::OK);
    let readyz = body_json(readyz).await;
    assert_eq!(readyz["degraded"], true, "{readyz}");
    let why = readyz["checks"]["state"].as_str().unwrap();
    assert!(why.starts_with("unavailable: "), "{readyz}");
    assert!(why.contains("limits_unavailable"), "{readyz}");
    let text = metrics_of(&gateway).await;
    assert_eq!(
        counter_value(&text, r#"tl_gateway_readiness_degraded{check="state"}"#),
        Some(1.0)
    );
    assert_eq!(counter_value(&text, "tl_gateway_ready"), Some(1.0));
    // Everything that does not need the store is still served.
    let response = get(&gateway.url("/v1.3/assets"), Some(BOB_KEY)).await;
    let status = response.status();
    assert_eq!(status, StatusCode::OK, "{}", body_json(response).await);
    // The lenient gateway sent nothing since Redis stopped: its background probe notices (it
    // pings every second while healthy), and it stays ready, degraded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let readyz = get(&format!("http://{}/readyz", lenient.admin), None).await;
        assert_eq!(
            readyz.status(),
            StatusCode::OK,
            "every limit is allow: still ready"
        );
        let readyz = body_json(readyz).await;
        if readyz["degraded"] == true {
            assert!(readyz["checks"]["state"]
                .as_str()
                .unwrap()
                .starts_with("unavailable: "));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage was not noticed: {readyz}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis is back: the gateway notices by itself, and limits work again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let readyz = body_json(get(&format!("http://{}/readyz", gateway.admin), None).await).await;
        if readyz["degraded"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/indexes/i9").await.status(),
        200
    );
    assert_eq!(
        redis.command(&["KEYS", "tlgw:rl:index-deletes:*"]),
        "*1",
        "counted on the restarted server"
    );
    gateway.shutdown().await;
    lenient.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_flush_is_handled_and_every_request_is_one_round_trip_however_many_limits_match() {
    let redis = RedisServer::start();
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let limits = r#"rate_limits:
  - id: deletes-per-client
    match: { method: DELETE }
    per: client
    rate: 1000/minute
    burst: 1000
  - id: index-deletes-per-role
    match: { operation: indexes.delete }
    per: role
    rate: 1000/minute
    burst: 1000
  - id: all-deletes
    match: { method: DELETE }
    per: global
    rate: 1000/minute
    burst: 1000
"#;
    let gateway = TestGateway::start_with(&origin, &state_yaml(&redis, limits), |_| {}).await;
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/indexes/i0").await.status(),
        200
    );
    redis.command(&["CONFIG", "RESETSTAT"]);
    for i in 1..=10 {
        assert_eq!(
            delete(&gateway, BOB_KEY, &format!("/v1.3/indexes/i{i}"))
                .await
                .status(),
            200
        );
    }
    let stats = redis.command(&["INFO", "commandstats"]);
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("evalsha"), 10, "{stats}");
    assert_eq!(calls("eval"), 0, "{stats}");
    assert_eq!(
        redis.command(&["KEYS", "tlgw:rl:*"]),
        "*3",
        "three limits, three buckets"
    );

    // The script cache is flushed: the next request still counts (EVALSHA, NOSCRIPT, load, again).
    redis.command(&["SCRIPT", "FLUSH"]);
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/indexes/i11")
            .await
            .status(),
        200
    );
    let errors = redis.command(&["INFO", "errorstats"]);
    assert!(errors.contains("errorstat_NOSCRIPT"), "{errors}");
    let text = metrics_of(&gateway).await;
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_state_store_requests_total{result="error"}"#
        ),
        Some(0.0),
        "{text}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_expire_once_they_are_full_again() {
    let redis = RedisServer::start();
    let upstream = Upstream::recording().await;
    let limits = r#"rate_limits:
  - id: quick
    match: { method: DELETE }
    per: client
    rate: 20/second
    burst: 1
"#;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &state_yaml(&redis, limits),
        |_| {},
    )
    .await;
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/indexes/i1").await.status(),
        200
    );
    assert_eq!(redis.command(&["KEYS", "tlgw:rl:quick:*"]), "*1");
    // 20/second: full again after 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.command(&["KEYS", "tlgw:rl:quick:*"]), "*0");
    gateway.shutdown().await;
}
