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
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server started with these extra arguments (e.g. `--maxmemory 2mb`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            process: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
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
            .args(&self.extra)
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

// The GCRA script itself on a real redis-server (issue #21, item 7), against the in-memory
// `state::gcra` for the same inputs.

mod script {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use tl_gateway::metrics::Metrics;
    use tl_gateway::state::redis::RedisStore;
    use tl_gateway::state::{gcra, Bucket, OnUnavailable, RedisSettings, Verdict};

    use super::RedisServer;

    const PREFIX: &str = "t:";
    const SECOND: u64 = 1_000_000;

    fn store(redis: &RedisServer) -> Arc<RedisStore> {
        RedisStore::start(
            &RedisSettings {
                url: redis.url(),
                key_prefix: PREFIX.into(),
                timeout: Duration::from_secs(2),
                on_unavailable: OnUnavailable::Deny,
            },
            Metrics::new().store.clone(),
        )
        .unwrap()
    }

    /// `per_second` requests a second, `burst` at once.
    fn bucket(key: &str, per_second: u64, burst: u64) -> Bucket {
        let emission_us = SECOND / per_second;
        Bucket {
            key: key.into(),
            emission_us,
            tolerance_us: emission_us * (burst - 1),
        }
    }

    /// The server's clock (µs), as the script reads it.
    fn now_us(redis: &RedisServer) -> u64 {
        redis
            .command(&[
                "EVAL",
                "local t = redis.call('TIME') return t[1] * 1000000 + t[2]",
                "0",
            ])
            .parse()
            .unwrap()
    }

    /// A bucket's stored TAT (µs), if any.
    fn tat(redis: &RedisServer, key: &str) -> Option<u64> {
        let text = redis.command(&["GET", &format!("{PREFIX}{key}")]);
        (!text.is_empty()).then(|| text.parse().unwrap())
    }

    /// Verdicts as admit/refuse only (waits are compared separately, within clock skew).
    fn shape(verdicts: &[Verdict]) -> Vec<bool> {
        verdicts.iter().map(|v| *v == Verdict::Admit).collect()
    }

    fn waits(verdicts: &[Verdict]) -> Vec<Duration> {
        verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Refuse { wait } => Some(*wait),
                Verdict::Admit => None,
            })
            .collect()
    }

    /// Run `buckets` on Redis and on the in-memory GCRA (at the server's time); both must agree.
    async fn both(
        redis: &RedisServer,
        store: &RedisStore,
        memory: &mut HashMap<String, u64>,
        buckets: &[Bucket],
    ) -> Vec<Verdict> {
        let now = now_us(redis);
        // A peek answers what the check will, and consumes nothing (or the check would differ).
        let peeked = store.run(buckets, false).await.unwrap();
        let peeked_in_memory = gcra(memory, buckets, now, false);
        let on_redis = store.check(buckets).await.unwrap();
        let in_memory = gcra(memory, buckets, now, true);
        assert_eq!(shape(&peeked), shape(&on_redis), "peek vs check on redis");
        assert_eq!(
            shape(&peeked_in_memory),
            shape(&in_memory),
            "peek vs check in memory"
        );
        assert_eq!(
            shape(&on_redis),
            shape(&in_memory),
            "redis {on_redis:?} vs memory {in_memory:?}"
        );
        for (r, m) in waits(&on_redis).into_iter().zip(waits(&in_memory)) {
            let skew = r.abs_diff(m);
            assert!(
                skew < Duration::from_millis(250),
                "waits differ: redis {r:?}, memory {m:?}"
            );
        }
        on_redis
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_refusing_bucket_among_several_consumes_nothing_on_redis() {
        let redis = RedisServer::start();
        let store = store(&redis);
        let mut memory = HashMap::new();
        let tight = bucket("tight", 1, 1);
        let roomy = bucket("roomy", 1, 3);
        let other = bucket("other", 10, 2);
        let verdicts = both(&redis, &store, &mut memory, std::slice::from_ref(&tight)).await;
        assert_eq!(verdicts, vec![Verdict::Admit]);
        let spent = tat(&redis, "tight").unwrap();
        let verdicts = both(
            &redis,
            &store,
            &mut memory,
            &[roomy.clone(), other.clone(), tight.clone()],
        )
        .await;
        assert_eq!(&verdicts[..2], &[Verdict::Admit, Verdict::Admit]);
        let Verdict::Refuse { wait } = verdicts[2] else {
            panic!("{verdicts:?}")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(tat(&redis, "roomy"), None, "nothing consumed from roomy");
        assert_eq!(tat(&redis, "other"), None, "nothing consumed from other");
        assert_eq!(tat(&redis, "tight"), Some(spent), "tight unchanged");
        // roomy still has its whole burst of 3, other its burst of 2.
        for _ in 0..3 {
            let verdicts = both(&redis, &store, &mut memory, std::slice::from_ref(&roomy)).await;
            assert_eq!(verdicts, vec![Verdict::Admit]);
        }
        let verdicts = both(&redis, &store, &mut memory, std::slice::from_ref(&roomy)).await;
        assert!(matches!(verdicts[0], Verdict::Refuse { .. }));
        let verdicts = both(&redis, &store, &mut memory, &[other.clone(), other.clone()]).await;
        assert_eq!(verdicts, vec![Verdict::Admit; 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_repeated_in_one_call_counts_each_time_and_is_refused_as_a_whole() {
        let redis = RedisServer::start();
        let store = store(&redis);
        let mut memory = HashMap::new();
        let k = bucket("k", 1, 2);
        let other = bucket("free", 1, 5);
        let verdicts = both(
            &redis,
            &store,
            &mut memory,
            &[k.clone(), other.clone(), k.clone(), k.clone()],
        )
        .await;
        assert_eq!(
            shape(&verdicts),
            vec![true, true, true, false],
            "the third use of k is over its burst of 2"
        );
        assert_eq!(
            tat(&redis, "k"),
            None,
            "refused as a whole: nothing written"
        );
        assert_eq!(tat(&redis, "free"), None);
        let before = now_us(&redis);
        let verdicts = both(&redis, &store, &mut memory, &[k.clone(), k.clone()]).await;
        assert_eq!(verdicts, vec![Verdict::Admit; 2]);
        let stored = tat(&redis, "k").unwrap();
        // Counted twice: two emission intervals ahead of the clock.
        assert!(
            stored >= before + 2 * SECOND && stored < before + 2 * SECOND + 250_000,
            "{stored} vs {before}"
        );
        let verdicts = both(&redis, &store, &mut memory, std::slice::from_ref(&k)).await;
        assert!(
            matches!(verdicts[0], Verdict::Refuse { .. }),
            "the burst is spent"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tat_in_the_past_or_far_future_never_gives_a_negative_or_huge_wait() {
        let redis = RedisServer::start();
        let store = store(&redis);
        let b = |key: &str| bucket(key, 1, 2);
        let now = now_us(&redis);
        // Long in the past (or nonsense below zero): full again, the TAT starts from now.
        for (key, stored) in [
            ("past", "1".to_owned()),
            ("negative", "-5000000".to_owned()),
        ] {
            redis.command(&["SET", &format!("{PREFIX}{key}"), &stored]);
            let mut memory =
                HashMap::from([(key.to_owned(), stored.parse::<i64>().unwrap().max(0) as u64)]);
            let verdicts = both(&redis, &store, &mut memory, &[b(key)]).await;
            assert_eq!(verdicts, vec![Verdict::Admit], "{key}");
            let written = tat(&redis, key).unwrap();
            assert!(
                written >= now + SECOND && written < now + SECOND + 250_000,
                "{key}: {written}"
            );
        }
        // In the future beyond what any admission can leave (the server's clock went back, or the
        // key was written by hand), up to beyond what fits in a Redis integer reply: refused, and the
        // wait is at most one emission interval — never negative (read as "admit"), never years.
        for (key, stored) in [
            ("ahead", (now + 10 * SECOND).to_string()),
            ("days", (now + 10 * 86_400 * SECOND).to_string()),
            ("overflow", "99999999999999999999".to_owned()),
        ] {
            redis.command(&["SET", &format!("{PREFIX}{key}"), &stored]);
            let verdicts = store.check(&[b(key)]).await.unwrap();
            let Verdict::Refuse { wait } = verdicts[0] else {
                panic!("{key}: a bucket full until the far future admitted: {verdicts:?}")
            };
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(1),
                "{key}: wait {wait:?} (Retry-After must be sane)"
            );
            // The in-memory GCRA says the same for the same state.
            let mut memory =
                HashMap::from([(key.to_owned(), stored.parse::<f64>().unwrap() as u64)]);
            let in_memory = gcra(&mut memory, &[b(key)], now_us(&redis), true);
            assert!(
                matches!(in_memory[0], Verdict::Refuse { wait } if wait <= Duration::from_secs(1)),
                "{key}: memory {in_memory:?}"
            );
            // The impossible TAT is brought back to the latest possible one, so the bucket admits
            // again once an emission interval has passed.
            let written = tat(&redis, key).unwrap();
            assert!(written <= now_us(&redis) + 2 * SECOND, "{key}: {written}");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let verdicts = store.check(&[b("ahead")]).await.unwrap();
        assert_eq!(
            verdicts,
            vec![Verdict::Admit],
            "admits again after the repaired wait"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_that_never_evicts_keeps_an_exhausted_budget_exhausted() {
    // The kit's policy: noeviction, and a small maxmemory to fill.
    let redis =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let limits = r#"rate_limits:
  - id: member-delete-budget
    match: { method: DELETE }
    roles: [member]
    per: client
    rate: 3/day
    burst: 3
"#;
    let gateway = TestGateway::start_with(&origin, &state_yaml(&redis, limits), |_| {}).await;
    for i in 0..3 {
        assert_eq!(
            delete(&gateway, BOB_KEY, &format!("/v1.3/indexes/i{i}"))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/indexes/i3").await.status(),
        429
    );
    // Fill Redis to its limit with other keys (an attacker's churn, or anything else).
    let filler = "x".repeat(10_000);
    for i in 0..1000 {
        let reply = redis.try_command(&["SET", &format!("filler:{i}"), &filler]);
        if matches!(&reply, Err(e) if e.contains("OOM"))
            || matches!(&reply, Ok(r) if r.contains("OOM"))
        {
            break;
        }
    }
    // Full: the budget's state was not evicted, so the exhausted budget admits nothing more
    // (429 from the bucket, or 503 limits_unavailable where the write is refused: never 200).
    for i in 4..8 {
        let status = delete(&gateway, BOB_KEY, &format!("/v1.3/indexes/i{i}"))
            .await
            .status();
        assert!(status == 429 || status == 503, "{status}");
    }
    assert_eq!(
        upstream.requests().len(),
        3,
        "only the three budgeted deletes went out"
    );
    // And the fill shows before it bites: the gateway exports the server's memory and its
    // maxmemory (read every 10 s), which TlGatewayStateMemoryHigh compares.
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    loop {
        let text = metrics_of(&gateway).await;
        let used = value(&text, "tl_gateway_state_memory_used_bytes ").unwrap_or(0.0);
        let max = value(&text, "tl_gateway_state_memory_max_bytes ").unwrap_or(0.0);
        if max == 2.0 * 1024.0 * 1024.0 && used / max > 0.9 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "memory not exported: used {used}, max {max}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gateway.shutdown().await;
}

#[test]
fn check_warns_when_the_redis_server_may_evict_limit_state() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream-key");
    std::fs::write(&key_file, "tlk_test\n").unwrap();
    let check = |redis: &RedisServer| {
        let file = dir.path().join("gateway.yaml");
        std::fs::write(
            &file,
            config_yaml("http://127.0.0.1:9", &key_file, &state_yaml(redis, "")),
        )
        .unwrap();
        let output = std::process::Command::new(binary())
            .args(["check", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let said = check(&lru);
    assert!(
        said.lines().any(|l| l.starts_with("warning:")
            && l.contains("maxmemory-policy allkeys-lru")
            && l.contains("noeviction")),
        "{said}"
    );
    let safe = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let said = check(&safe);
    assert!(
        said.contains("maxmemory-policy noeviction") && !said.contains("warning: state.redis"),
        "{said}"
    );
}
