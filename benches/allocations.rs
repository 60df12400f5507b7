//! Heap allocations per proxied small GET (issue #16's budget: ≤ 20).
//!
//! `cargo bench --bench allocations [-- REQUESTS]` runs, in this process, a minimal upstream, the
//! gateway with the shipped example configuration (authentication, policy, metrics, rate limits)
//! and a keep-alive client, and counts the allocations made **on the gateway's serving workers**
//! (the threads that carry a request end to end: the client connection, every layer, the upstream
//! exchange). The upstream and the client run on other threads and are not counted. A counting
//! global allocator exists only in this benchmark binary, never in the shipped one.
//!
//! Prints allocations (`alloc` + `alloc_zeroed` + `realloc` calls) and bytes per request, after a
//! warm-up so pools, buffers and metric handles exist.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tl_gateway::body::{self, GatewayBody};
use tl_gateway::config::Config;
use tl_gateway::credentials::UpstreamKey;
use tl_gateway::server::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counts the calls made from a gateway serving worker; everything else passes straight through.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    if tl_gateway::workers::current() != 0 && !SAMPLING.with(std::cell::Cell::get) {
        let n = ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
        let every = SAMPLE_EVERY.load(Ordering::Relaxed);
        if every != 0 && n.is_multiple_of(every) {
            sample(size);
        }
    }
}

/// With `ALLOC_SAMPLE=N`: every Nth counted allocation's call stack is recorded and the most
/// frequent ones are printed at the end (where the allocations come from).
static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SAMPLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static SAMPLES: std::sync::Mutex<Vec<(usize, String)>> = std::sync::Mutex::new(Vec::new());

fn sample(size: usize) {
    if SAMPLING.with(|s| s.replace(true)) {
        return;
    }
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    // The frames of interest: skip the allocator and std's own, keep a few of the callers.
    let frames: Vec<&str> = trace
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(": ") && !l.starts_with("at "))
        .map(|l| l.split_once(": ").map_or(l, |(_, f)| f))
        .filter(|f| {
            !f.starts_with("std::")
                && !f.starts_with("alloc::")
                && !f.starts_with("core::")
                && !f.starts_with("allocations::")
                && !f.starts_with("<allocations::")
                && !f.starts_with("__rust")
                && !f.starts_with("<alloc::")
                && !f.starts_with("<core::")
        })
        .take(4)
        .collect();
    if let Ok(mut samples) = SAMPLES.lock() {
        samples.push((size, frames.join("  <-  ")));
    }
    SAMPLING.with(|s| s.set(false));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only atomics
// and a const-initialised thread-local (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const UPSTREAM_KEY: &str = "bench-upstream-key";
const BOB: &str = "tlgw_bob_example_key";
const BODY: &str = r#"{"data":[{"_id":"6298d673f1090f1100476d4c","filename":"keynote.mp4"}],"page_info":{"limit_per_page":10,"page":1,"total_page":1,"total_results":1}}"#;
const CONNECTIONS: usize = 4;

fn main() {
    // `cargo test`/nextest run bench targets to list or smoke-test them; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let requests: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(requests));
}

/// The example configuration, pointed at `upstream`, on port 0, without its audit section
/// (small GETs are not audited).
fn example_config(upstream: &str, key_file: &Path) -> Config {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.example.yaml");
    let text = std::fs::read_to_string(&example).expect("config/gateway.example.yaml");
    let mut out = String::new();
    let mut in_audit = false;
    for line in text.lines() {
        if line.starts_with("audit:") {
            in_audit = true;
            continue;
        }
        if in_audit {
            if line.is_empty() || line.starts_with(' ') || line.starts_with('#') {
                continue;
            }
            in_audit = false;
        }
        let line = if line.starts_with("listen:") {
            "listen: 127.0.0.1:0".to_owned()
        } else if line.starts_with("admin_listen:") {
            "admin_listen: 127.0.0.1:0".to_owned()
        } else if line.starts_with("  url: https://api.twelvelabs.io") {
            format!("  url: {upstream}")
        } else if line.starts_with("  api_key_file:") {
            format!("  api_key_file: {}", key_file.display())
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    Config::parse(&example, &out).expect("the example configuration parses")
}

async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let mut response = Response::new(body::full(BODY));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<Response<GatewayBody>, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Send `n` GETs on one keep-alive connection, reading each response whole.
async fn client(addr: std::net::SocketAddr, n: u64) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request =
        format!("GET /v1.3/assets?page=1 HTTP/1.1\r\nhost: gateway\r\nx-api-key: {BOB}\r\n\r\n");
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..n {
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut have = 0;
        loop {
            let read = stream.read(&mut buf[have..]).await.expect("read");
            assert!(read > 0, "the gateway closed the connection");
            have += read;
            let text = &buf[..have];
            let Some(head_end) = text.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&text[..head_end]).expect("head");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("content-length");
            if have >= head_end + 4 + length {
                break;
            }
        }
    }
}

async fn round(addr: std::net::SocketAddr, total: u64) {
    let per = total / CONNECTIONS as u64;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(client(addr, per)))
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
}

async fn run(requests: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, UPSTREAM_KEY).expect("key file");
    let origin = upstream().await;
    let mut config = example_config(&origin, &key_file);
    config.server.worker_threads = Some(1);
    let key = UpstreamKey::load(&config.upstream.key_source).expect("upstream key");
    let gateway = Gateway::bind(&config, key).await.expect("gateway");
    let addr = gateway.local_addr().expect("addr");
    tokio::spawn(gateway.run(std::future::pending()));

    // Warm-up: connections, pools, buffers and metric handles exist before counting.
    round(addr, 4_000).await;
    if let Some(every) = std::env::var("ALLOC_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        SAMPLE_EVERY.store(every, Ordering::Relaxed);
    }
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let n = requests / CONNECTIONS as u64 * CONNECTIONS as u64;
    round(addr, n).await;
    let elapsed = started.elapsed();
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let per = (a1 - a0) as f64 / n as f64;
    println!(
        "small GET through tl-gateway (example configuration, {CONNECTIONS} keep-alive connections, {n} requests, {:.0} req/s)",
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "allocations per request on the serving worker: {per:.1} ({:.0} bytes); budget 20: {}",
        (b1 - b0) as f64 / n as f64,
        if per <= 20.0 { "met" } else { "not met" }
    );
    SAMPLE_EVERY.store(0, Ordering::Relaxed);
    let samples = std::mem::take(&mut *SAMPLES.lock().expect("samples"));
    if !samples.is_empty() {
        let mut by_site = std::collections::BTreeMap::<String, (u64, u64)>::new();
        for (size, site) in &samples {
            let entry = by_site.entry(site.clone()).or_default();
            entry.0 += 1;
            entry.1 += *size as u64;
        }
        let mut sites: Vec<_> = by_site.into_iter().collect();
        sites.sort_by_key(|site| std::cmp::Reverse(site.1 .0));
        let every = std::env::var("ALLOC_SAMPLE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        println!(
            "\nsampled call sites (every {every}th allocation, {} samples): allocations per request, mean size",
            samples.len()
        );
        for (site, (count, bytes)) in sites.iter().take(60) {
            println!(
                "{:6.2}  {:6} B  {site}",
                (*count * every) as f64 / n as f64,
                bytes / count
            );
        }
    }
}
