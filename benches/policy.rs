//! Micro-benchmarks of the request path's pure parts: policy evaluation, classification,
//! authentication lookup, rate-limit checks, and audit record serialisation with its hash.
//!
//! `cargo bench --bench policy` prints, for 10, 1,000 and 10,000 rules:
//! - `evaluate/spread/N`: rules spread round-robin over every TwelveLabs route, so ~N/99 of them
//!   can match the request (a member's forced asset delete, denied);
//! - `evaluate/other_routes/N`: N rules on routes other than the request's plus the one force rule,
//!   which should cost the same for every N (rules that cannot match the route are never visited).
//!
//! Goal (issue 3): under 1 µs median at 1,000 rules, and flat across N for `other_routes`.

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method, Version};
use tl_gateway::audit::record::{chain, Event, Phase, GENESIS};
use tl_gateway::auth::ClientSettings;
use tl_gateway::auth::{ClientKeys, Principal};
use tl_gateway::classify::Classifier;
use tl_gateway::config::Config;
use tl_gateway::ratelimit::RateLimits;
use tl_gateway::routes::RouteTable;
use tl_gateway::state::{OnUnavailable, StateStore};

const BASE: &str = r#"listen: 127.0.0.1:8080
upstream:
  url: https://api.twelvelabs.io
  api_key_env: TWELVELABS_API_KEY
clients:
  - id: bob
    roles: [member]
    key_sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531
policy:
  default: allow
  rules:
    - id: force-delete-admins-only
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin]
"#;

/// `n` rules in total: the force rule plus `n - 1` generated ones.
fn config(n: usize, include_request_route: bool) -> Config {
    let mut yaml = String::from(BASE);
    let routes: Vec<_> = RouteTable::v1_3()
        .routes()
        .iter()
        .filter(|r| include_request_route || r.id.as_str() != "assets.delete")
        .collect();
    for i in 0..n.saturating_sub(1) {
        let route = routes[i % routes.len()];
        yaml.push_str(&format!(
            "    - id: rule-{i}\n      match: {{ operation: {} }}\n      allow_roles: [member, admin]\n",
            route.id
        ));
    }
    Config::parse(Path::new("bench.yaml"), &yaml).expect("valid generated config")
}

fn bench_evaluate(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate");
    for (name, spread) in [("spread", true), ("other_routes", false)] {
        for n in [10usize, 1_000, 10_000] {
            let config = config(n, spread);
            let classifier = Classifier::new(config.classify.clone());
            let op = classifier
                .classify(
                    &Method::DELETE,
                    Version::HTTP_11,
                    &"/v1.3/assets/6298d673f1090f1100476d4c?force=true"
                        .parse()
                        .unwrap(),
                    &HeaderMap::new(),
                    false,
                )
                .unwrap();
            let bob = Principal {
                client: "bob".parse().unwrap(),
                roles: vec!["member".parse().unwrap()].into(),
                credential: None,
            };
            let policy = config.compiled_policy.clone();
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| black_box(policy.evaluate(black_box(&op), black_box(&bob))))
            });
        }
    }
    group.finish();
}

fn bench_classify(c: &mut Criterion) {
    let config = config(1, true);
    let classifier = Classifier::new(config.classify.clone());
    let mut group = c.benchmark_group("classify");
    let targets = [
        (
            "asset_force_delete",
            Method::DELETE,
            "/v1.3/assets/6298d673f1090f1100476d4c?force=true",
        ),
        (
            "asset_list",
            Method::GET,
            "/v1.3/assets?page=1&page_limit=10&asset_ids=a1&asset_ids=a2",
        ),
        (
            "indexed_asset",
            Method::GET,
            "/v1.3/indexes/6298d673f1090f1100476d4c/indexed-assets/6298d673f1090f1100476d4d",
        ),
    ];
    for (name, method, target) in targets {
        let uri: http::Uri = target.parse().unwrap();
        let headers = HeaderMap::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(classifier.classify(
                    black_box(&method),
                    Version::HTTP_11,
                    black_box(&uri),
                    &headers,
                    false,
                ))
            })
        });
    }
    group.finish();
}

fn bench_authenticate(c: &mut Criterion) {
    let mut group = c.benchmark_group("authenticate");
    for n in [2usize, 50, 500] {
        let clients: Vec<ClientSettings> = (0..n)
            .map(|i| {
                ClientSettings::with_key(
                    &format!("client-{i}"),
                    &["member"],
                    sha256(&format!("tlgw_key_{i}")),
                )
            })
            .collect();
        let keys = ClientKeys::new(&clients);
        let presented = format!("tlgw_key_{}", n - 1);
        group.bench_with_input(BenchmarkId::new("clients", n), &n, |b, _| {
            b.iter(|| black_box(keys.authenticate(black_box(presented.as_bytes())).is_ok()))
        });
    }
    group.finish();
}

/// The shipped example's rate limits, checked for a read (no limit applies), a member's plain delete
/// (one limit applies, and admits: the quota is raised so the bucket never empties) and an admin's.
fn bench_rate_limits(c: &mut Criterion) {
    let text = include_str!("../config/gateway.example.yaml")
        .replace("rate: 30/minute", "rate: 1000000000/second")
        .replace("burst: 10 ", "burst: 1000000 ");
    let config = Config::parse(Path::new("gateway.example.yaml"), &text).expect("example parses");
    let limits = RateLimits::new(
        config.rate_limits.clone(),
        StateStore::memory(),
        OnUnavailable::Deny,
    );
    // The in-memory store answers without suspending; polling once with a no-op waker measures
    // the check itself, not an executor.
    let check = |op: &_, principal: &_| {
        let future = std::pin::pin!(limits.check(op, principal, |_, _| {}));
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result.is_ok(),
            Poll::Pending => panic!("the memory store never suspends"),
        }
    };
    let classifier = Classifier::new(config.classify.clone());
    let headers = HeaderMap::new();
    let principal = |id: &str, role: &str| Principal {
        client: id.parse().unwrap(),
        roles: vec![role.parse().unwrap()].into(),
        credential: None,
    };
    let cases = [
        (
            "read",
            Method::GET,
            "/v1.3/assets?page=1",
            principal("bob", "member"),
        ),
        (
            "member_delete",
            Method::DELETE,
            "/v1.3/assets/6298d673f1090f1100476d4c",
            principal("bob", "member"),
        ),
        (
            "admin_delete",
            Method::DELETE,
            "/v1.3/assets/6298d673f1090f1100476d4c",
            principal("alice", "admin"),
        ),
    ];
    let mut group = c.benchmark_group("rate_limits");
    for (name, method, target, principal) in cases {
        let uri: http::Uri = target.parse().unwrap();
        let op = classifier
            .classify(&method, Version::HTTP_11, &uri, &headers, false)
            .expect("classifies");
        assert!(check(&op, &principal), "{name} is admitted");
        group.bench_function(name, |b| {
            b.iter(|| black_box(check(black_box(&op), black_box(&principal))))
        });
    }
    group.finish();
}

fn sha256(text: &str) -> [u8; 32] {
    let hex = tl_gateway::auth::key_digest_hex(text);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn bench_audit_record(c: &mut Criterion) {
    let event = Event {
        time: "2026-11-30T16:05:34.123Z".into(),
        request_id: "5f1c0d6f8f2c4b7e9a3d2c1b0a998877".into(),
        phase: Some(Phase::Intent),
        client: Some("alice".into()),
        roles: vec!["admin".into()],
        client_ip: Some("10.0.0.7".into()),
        method: "DELETE".into(),
        path: "/v1.3/assets/6298d673f1090f1100476d4c".into(),
        operation: "assets.delete".into(),
        params: [("asset_id".to_owned(), "6298d673f1090f1100476d4c".to_owned())].into(),
        force: Some(true),
        decision: Some("allow".into()),
        ..Event::default()
    };
    c.bench_function("audit_record/serialise_and_hash", |b| {
        b.iter(|| black_box(chain(black_box(&event), 42, GENESIS)))
    });
}

criterion_group!(
    benches,
    bench_evaluate,
    bench_classify,
    bench_authenticate,
    bench_rate_limits,
    bench_audit_record
);
criterion_main!(benches);
