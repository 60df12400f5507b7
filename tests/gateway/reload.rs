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

async fn wait_until_status(gateway: &TestGateway, want: StatusCode) -> Duration {
    let started = Instant::now();
    loop {
        if bob_force_delete(gateway).await == want {
            return started.elapsed();
        }
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

    gateway.rewrite_config(&origin, ADMINS_ONLY);
    let took = wait_until_status(&gateway, StatusCode::FORBIDDEN).await;
    println!("tightened policy applied after {took:?}");
    let forwarded = upstream.requests().len();

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
    assert!(forwarded >= forwarded_before);

    // Fixing the file again applies it.
    gateway.rewrite_config(&origin, "");
    wait_until_status(&gateway, StatusCode::OK).await;
    gateway.shutdown().await;
}
