//! Hot reload: a tightened policy applies without restart; a broken file keeps the last good one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;

use crate::support::*;

const ADMINS_ONLY: &str = r#"policy:
  rules:
    - id: force-delete-admins-only
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin]
      message: ask an admin
"#;

async fn bob_force_delete(gateway: &TestGateway) -> StatusCode {
    let req = request(
        Method::DELETE,
        &gateway.url("/v1.3/assets/a1?force=true"),
        Some(BOB_KEY),
    )
    .body(body::empty())
    .unwrap();
    send(Proto::Http1, req).await.status()
}

/// Send bob's forced delete until it gets `want`; returns how long that took and how many answers
/// were something else meanwhile.
async fn wait_until_status(gateway: &TestGateway, want: StatusCode) -> (Duration, usize) {
    let started = Instant::now();
    let mut others = 0;
    loop {
        if bob_force_delete(gateway).await == want {
            return (started.elapsed(), others);
        }
        others += 1;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "status {want} not seen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_policy_applies_on_reload_and_a_broken_file_keeps_the_last_good_one() {
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let gateway = TestGateway::start_reloadable(&origin, "").await;
    assert_eq!(bob_force_delete(&gateway).await, StatusCode::OK);
    let forwarded_before = upstream.requests().len();
    let deletes_since = |from: usize| {
        upstream.requests()[from..]
            .iter()
            .filter(|r| r.method == Method::DELETE)
            .count()
    };

    gateway.rewrite_config(&origin, ADMINS_ONLY);
    let (took, allowed_meanwhile) = wait_until_status(&gateway, StatusCode::FORBIDDEN).await;
    println!("tightened policy applied after {took:?}");
    let forwarded = upstream.requests().len();
    // Every forced delete answered 200 while the reload was pending reached the upstream, and the
    // first one refused did not (the guard's reference lookups before each are GETs).
    assert_eq!(deletes_since(forwarded_before), allowed_meanwhile);

    // A broken file (an unknown key) is refused; the tightened policy stays and traffic flows.
    let failures = gateway.reloads.failure.load(Ordering::Relaxed);
    gateway.rewrite_config(&origin, &ADMINS_ONLY.replace("allow_roles", "allow_rolez"));
    let started = Instant::now();
    while gateway.reloads.failure.load(Ordering::Relaxed) == failures {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the broken file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bob_force_delete(&gateway).await, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .await
            .status(),
        StatusCode::OK
    );
    let req = request(
        Method::DELETE,
        &gateway.url("/v1.3/assets/a1?force=true"),
        Some(ALICE_KEY),
    )
    .body(body::empty())
    .unwrap();
    assert_eq!(send(Proto::H2c, req).await.status(), StatusCode::OK);
    // Only the permitted requests reached the upstream after tightening.
    // (The reference guard's lookups before the admin's forced delete are not client requests.)
    let after: Vec<_> = upstream.requests()[forwarded..]
        .iter()
        .map(|r| r.uri.to_string())
        .filter(|uri| !uri.contains("/indexed-assets?") && !uri.contains("/entities?"))
        .collect();
    assert_eq!(after, ["/v1.3/assets", "/v1.3/assets/a1?force=true"]);

    // Fixing the file again applies it.
    gateway.rewrite_config(&origin, "");
    wait_until_status(&gateway, StatusCode::OK).await;
    gateway.shutdown().await;
}

const LIMIT: &str = r#"  - id: member-deletes
    match: { method: DELETE }
    roles: [member]
    per: client
    rate: RATE
    burst: 2
"#;

const OTHER_LIMIT: &str = r#"  - id: ID
    match: { method: GET }
    per: global
    rate: 1000/second
    burst: 1000
"#;

fn limits(entries: &[String]) -> String {
    format!("rate_limits:\n{}", entries.concat())
}

async fn bob_delete(addr: std::net::SocketAddr, i: usize) -> StatusCode {
    let req = request(
        Method::DELETE,
        &format!("http://{addr}/v1.3/indexes/i{i}"),
        Some(BOB_KEY),
    )
    .body(body::empty())
    .unwrap();
    send(Proto::Http1, req).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_keeps_its_state_wherever_it_moves_and_starts_fresh_when_its_rate_changes() {
    use crate::process::GatewayProcess;
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let dir = tempfile::tempdir().unwrap();
    let budget = LIMIT.replace("RATE", "2/day");
    let gateway = GatewayProcess::serve_in(
        dir.path(),
        &origin,
        "info",
        &limits(std::slice::from_ref(&budget)),
    );
    let config = dir.path().join("gateway.yaml");
    let rewrite = |extra: &str| {
        let key_file = dir.path().join("upstream-key");
        let text = config_yaml(
            &origin,
            &key_file,
            &format!("logging:\n  format: json\n{extra}"),
        );
        let tmp = dir.path().join("gateway.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, &config).unwrap();
    };
    let reloads = || gateway.output().matches("configuration reloaded").count();
    let wait_reloads = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads() < n {
            assert!(Instant::now() < deadline, "reload {n} did not happen");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Bob spends his budget of 2.
    assert_eq!(bob_delete(gateway.addr, 0).await, StatusCode::OK);
    assert_eq!(bob_delete(gateway.addr, 1).await, StatusCode::OK);
    assert_eq!(
        bob_delete(gateway.addr, 2).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // SIGHUP: a new limit inserted above it. The budget is still spent.
    rewrite(&limits(&[
        OTHER_LIMIT.replace("ID", "reads-a"),
        budget.clone(),
    ]));
    gateway.signal("HUP");
    wait_reloads(1);
    assert_eq!(
        bob_delete(gateway.addr, 3).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // A file change: another one inserted, and the order shuffled. Still spent.
    rewrite(&limits(&[
        OTHER_LIMIT.replace("ID", "reads-b"),
        budget.clone(),
        OTHER_LIMIT.replace("ID", "reads-a"),
    ]));
    wait_reloads(2);
    assert_eq!(
        bob_delete(gateway.addr, 4).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Its rate changed: a new limit, a fresh budget.
    rewrite(&limits(&[
        OTHER_LIMIT.replace("ID", "reads-b"),
        LIMIT.replace("RATE", "3/day"),
    ]));
    wait_reloads(3);
    assert_eq!(bob_delete(gateway.addr, 5).await, StatusCode::OK);
    assert_eq!(bob_delete(gateway.addr, 6).await, StatusCode::OK);
    assert_eq!(
        bob_delete(gateway.addr, 7).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
