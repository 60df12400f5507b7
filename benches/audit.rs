//! Audited deletes per second through the whole gateway, with fsync on, for 1 and 64 concurrent
//! clients (issue 4's group-commit figure; issue 7 wants ≥ 2,000/s at 64).
//!
//! `cargo bench --bench audit [-- SECONDS]` starts the emulator and a gateway in this process, with
//! the audit log under `target/bench-audit/` (a real disk, not tmpfs, so fdatasync costs what it
//! costs), and prints deletes/s, latency percentiles and records per fsync.

use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tl_gateway::body::{self, GatewayBody};
use tl_gateway::config::Config;
use tl_gateway::credentials::UpstreamKey;
use tl_gateway::emulator::Emulator;
use tl_gateway::metrics::counter_value;
use tl_gateway::server::Gateway;

const KEY: &str = "bench-upstream-key";
const ALICE: &str = "tlgw_alice_example_key";

fn main() {
    // `cargo test`/nextest run bench targets to list or smoke-test them; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(Duration::from_secs(seconds)));
}

async fn run(duration: Duration) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-audit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let emulator = Emulator::new(KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(emulator.serve(listener, std::future::pending()));
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream:\n  url: {origin}\n  api_key_env: UNUSED\n\
         clients:\n  - id: alice\n    roles: [admin]\n    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6\n\
         audit:\n  path: {}\n",
        dir.join("audit.jsonl").display()
    );
    let config = Config::parse(Path::new("bench.yaml"), &yaml).expect("config");
    let gateway = Gateway::bind(&config, UpstreamKey::fixed(KEY).expect("key"))
        .await
        .expect("gateway");
    let addr = gateway.local_addr().expect("addr");
    let metrics = gateway.metrics();
    tokio::spawn(gateway.run(std::future::pending()));

    println!(
        "audited DELETEs through tl-gateway → emulator, fsync on, audit log in {}",
        dir.display()
    );
    println!(
        "{:>8} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "clients", "deletes", "deletes/s", "p50 ms", "p99 ms", "rec/fsync"
    );
    let mut previous = (0u64, 0u64);
    for clients in [1usize, 64] {
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                tokio::spawn(async move {
                    let client: Client<_, GatewayBody> =
                        Client::builder(TokioExecutor::new()).build_http();
                    let mut latencies = Vec::new();
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let req = Request::builder()
                            .method(Method::DELETE)
                            .uri(format!("http://{addr}/v1.3/indexes/{c:04x}{i:020x}"))
                            .header("x-api-key", ALICE)
                            .body(body::empty())
                            .expect("request");
                        let started = Instant::now();
                        let response = client.request(req).await.expect("response");
                        assert!(
                            response.status().as_u16() == 404 || response.status().is_success(),
                            "{}",
                            response.status()
                        );
                        latencies.push(started.elapsed());
                        i += 1;
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("worker"));
        }
        latencies.sort();
        let total = latencies.len();
        let pct =
            |p: f64| latencies[((total as f64 * p) as usize).min(total - 1)].as_secs_f64() * 1e3;
        let text = metrics.render();
        let read = |series: &str| counter_value(&text, series).unwrap_or(0.0) as u64;
        let (records, batches) = (
            read("tl_gateway_audit_records_total"),
            read("tl_gateway_audit_fsync_duration_seconds_count"),
        );
        let per_fsync = (records - previous.0) as f64 / (batches - previous.1).max(1) as f64;
        previous = (records, batches);
        println!(
            "{clients:>8} {total:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.1}",
            total as f64 / duration.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            per_fsync
        );
    }
}
