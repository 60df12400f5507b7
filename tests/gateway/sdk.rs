//! The official TwelveLabs Python SDK (1.3.6), unchanged, through the gateway to the emulator.
//!
//! Needs `.venv` from `scripts/setup-python-sdk` (or `TL_GATEWAY_PYTHON`); without it the test fails,
//! it never skips.

use std::path::PathBuf;
use std::process::Command;

use tl_gateway::emulator::Emulator;

use crate::support::*;

pub fn python() -> PathBuf {
    let python = std::env::var_os("TL_GATEWAY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run scripts/setup-python-sdk (or set TL_GATEWAY_PYTHON) to install the official SDK",
        python.display()
    );
    python
}

/// Run `tests/sdk/sdk_e2e.py` with `key` against the gateway; returns its output.
pub async fn run_sdk_script(
    base_url: String,
    key: &str,
    referenced: &str,
    expect_force: &str,
) -> String {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/sdk/sdk_e2e.py"))
        .env("TL_BASE_URL", base_url)
        .env("TL_API_KEY", key)
        .env("TL_REFERENCED_ASSET", referenced)
        .env("TL_EXPECT_FORCE", expect_force)
        .env_remove("TWELVELABS_BASE_URL");
    run_checked(command, "SDK end-to-end").await
}

pub async fn start_emulator() -> (Emulator, String) {
    let emulator = Emulator::new(UPSTREAM_KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(emulator.clone().serve(listener, std::future::pending()));
    (emulator, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_lists_uploads_and_deletes_through_the_gateway() {
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let gateway = TestGateway::start(&upstream).await;

    let output = run_sdk_script(
        gateway.url("/v1.3"),
        BOB_KEY,
        &seeded.referenced_asset_id,
        "",
    )
    .await;
    println!("{output}");
    for step in ["list", "upload", "delete"] {
        assert!(
            output
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(step)),
            "no {step} step:\n{output}"
        );
    }
    // The upload streamed through, the referenced asset survived its plain (409) delete.
    assert!(emulator.uploaded_bytes() > 0);
    assert!(emulator.asset_exists(&seeded.referenced_asset_id));
    let received = emulator.requests();
    assert!(received.len() >= 6, "{received:?}");
    for request in &received {
        let keys: Vec<_> = request.headers.get_all("x-api-key").iter().collect();
        assert_eq!(keys, [UPSTREAM_KEY], "{} {}", request.method, request.uri);
        assert!(request
            .headers
            .values()
            .all(|v| v.as_bytes() != BOB_KEY.as_bytes()));
    }
    gateway.shutdown().await;
}

const FORCE_RULE: &str = r#"policy:
  default: allow
  rules:
    - id: force-delete-admins-only
      match:
        method: DELETE
        path: /v1.3/assets/{asset_id}
        query: { force: true }
      allow_roles: [admin]
      message: Force-deleting an asset unlinks it from every index and entity; ask an admin.
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_sdk_force_delete_is_denied_and_never_reaches_the_upstream() {
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let gateway = TestGateway::start_with(&upstream, FORCE_RULE, |_| {}).await;

    // The script also checks that the member's plain delete is forwarded and the upstream's 409 passes.
    let output = run_sdk_script(
        gateway.url("/v1.3"),
        BOB_KEY,
        &seeded.referenced_asset_id,
        "deny",
    )
    .await;
    println!("{output}");
    assert!(output.contains("policy_denied"), "{output}");
    assert!(emulator.asset_exists(&seeded.referenced_asset_id));
    let forced: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == http::Method::DELETE && r.uri.query().is_some_and(|q| q.contains("force"))
        })
        .collect();
    assert!(
        forced.is_empty(),
        "a forced delete reached the upstream: {forced:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_sdk_force_delete_goes_through() {
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let gateway = TestGateway::start_with(&upstream, FORCE_RULE, |_| {}).await;
    let output = run_sdk_script(
        gateway.url("/v1.3"),
        ALICE_KEY,
        &seeded.referenced_asset_id,
        "allow",
    )
    .await;
    println!("{output}");
    assert!(!emulator.asset_exists(&seeded.referenced_asset_id));
    let forced = emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::DELETE && r.uri.query() == Some("force=true"))
        .count();
    assert_eq!(forced, 1);
    gateway.shutdown().await;
}
