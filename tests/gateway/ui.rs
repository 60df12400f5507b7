//! The approvals page (`/tl-gateway/ui/`) and the recent-calls API behind it; the page itself is
//! driven in a real headless Chromium by `tests/browser/approvals_ui.py` (Playwright in `.venv`).
//!
//! The browser test needs `.venv` from `scripts/setup-python-sdk` and Debian's `chromium`
//! (`TL_GATEWAY_CHROMIUM` overrides the path); without them it fails, it never skips.
//! `TL_GATEWAY_SCREENSHOT=docs/approvals-ui.png` keeps the screenshot it takes for the README.

use std::path::PathBuf;
use std::process::Command;

use http::{header, Method, StatusCode};
use tl_gateway::body;

use crate::approvals::two_person as config;
use crate::sdk::{python, start_emulator};
use crate::support::*;

async fn api_get(gateway: &TestGateway, path: &str, key: &str) -> (StatusCode, serde_json::Value) {
    let response = get(&gateway.url(&format!("/tl-gateway/v1/{path}")), Some(key)).await;
    let status = response.status();
    (status, body_json(response).await)
}

async fn delete(gateway: &TestGateway, target: &str, key: &str) -> StatusCode {
    let req = request(Method::DELETE, &gateway.url(target), Some(key))
        .body(body::empty())
        .unwrap();
    send(Proto::Http1, req).await.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_key_under_a_strict_content_security_policy() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    for (path, content_type, marker) in [
        ("/tl-gateway/ui/", "text/html", "<script src=\"app.js\""),
        ("/tl-gateway/ui/app.js", "text/javascript", "sessionStorage"),
        ("/tl-gateway/ui/app.css", "text/css", "{"),
    ] {
        for proto in [Proto::Http1, Proto::H2c] {
            let req = request(Method::GET, &gateway.url(path), None)
                .body(body::empty())
                .unwrap();
            let response = send(proto, req).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let h = response.headers().clone();
            assert!(
                h[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with(content_type),
                "{path}: {h:?}"
            );
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            for directive in [
                "default-src 'self'",
                "script-src 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
            ] {
                assert!(csp.contains(directive), "{path}: {csp}");
            }
            assert!(!csp.contains("unsafe"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert!(h.get(header::SET_COOKIE).is_none());
            let text = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
            assert!(text.contains(marker), "{path}");
        }
    }
    // The directory without its slash redirects (the page's links are relative); other names are
    // 404 in the TwelveLabs error shape, other methods 405; nothing reaches the upstream.
    let response = get(&gateway.url("/tl-gateway/ui"), None).await;
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    // Relative: /tl-gateway/ui + ui/ = /tl-gateway/ui/, also under a proxy's path prefix.
    assert_eq!(response.headers()[header::LOCATION], "ui/");
    let response = get(&gateway.url("/tl-gateway/ui/secrets.txt"), None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(body_json(response).await["code"].is_string());
    let req = request(Method::POST, &gateway.url("/tl-gateway/ui/"), None)
        .body(body::empty())
        .unwrap();
    assert_eq!(
        send(Proto::Http1, req).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_calls_are_the_newest_audit_records_for_audit_roles_only() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &config(&dir.path().join("audit.jsonl"), ""),
        |_| {},
    )
    .await;
    for i in 0..3 {
        assert_eq!(
            delete(&gateway, &format!("/v1.3/indexes/i{i}"), BOB_KEY).await,
            StatusCode::OK
        );
    }
    // An approval request: its bookkeeping record is not a call, its refusal is.
    assert_eq!(
        delete(&gateway, "/v1.3/assets/a1?force=true", BOB_KEY).await,
        StatusCode::FORBIDDEN
    );

    let (status, body) = api_get(&gateway, "audit/recent?limit=4", ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 4, "{body}");
    // Newest first: the refused forced delete, then the last index delete's outcome and intent.
    assert_eq!(records[0]["phase"], "denied", "{body}");
    assert_eq!(records[0]["operation"], "assets.delete");
    assert_eq!(records[0]["force"], true);
    assert_eq!(records[0]["client"], "bob");
    assert_eq!(records[1]["phase"], "outcome");
    assert_eq!(records[1]["params"]["index_id"], "i2");
    assert_eq!(records[1]["status"], 200);
    assert_eq!(records[2]["phase"], "intent");
    assert_eq!(records[3]["params"]["index_id"], "i1");
    assert!(records.iter().all(|r| r["phase"] != "approval"), "{body}");
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    // Filtered by phase: the destructive calls stay findable under any amount of other records.
    let (status, body) = api_get(
        &gateway,
        "audit/recent?limit=10&phase=intent,outcome",
        ALICE_KEY,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 6, "{body}");
    assert!(records
        .iter()
        .all(|r| r["phase"] == "intent" || r["phase"] == "outcome"));
    let (status, _) = api_get(&gateway, "audit/recent?phase=bogus", ALICE_KEY).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A member: 403 policy_denied, and `me` says so before the page asks.
    let (status, body) = api_get(&gateway, "audit/recent", BOB_KEY).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "policy_denied", "{body}");
    assert_eq!(
        api_get(&gateway, "me", BOB_KEY).await.1["can_read_audit"],
        false
    );
    assert_eq!(
        api_get(&gateway, "me", ALICE_KEY).await.1["can_read_audit"],
        true
    );
    // No key: 401; a limit out of range: 400.
    let response = get(&gateway.url("/tl-gateway/v1/audit/recent"), None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    for bad in ["0", "501", "ten"] {
        let (status, body) =
            api_get(&gateway, &format!("audit/recent?limit={bad}"), ALICE_KEY).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}: {body}");
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_audit_roles_chooses_who_reads_recent_calls() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &config(
            &dir.path().join("audit.jsonl"),
            "ui:\n  audit_roles: [member]\n",
        ),
        |_| {},
    )
    .await;
    assert_eq!(
        delete(&gateway, "/v1.3/indexes/i9", ALICE_KEY).await,
        StatusCode::OK
    );
    let (status, body) = api_get(&gateway, "audit/recent", BOB_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"][0]["client"], "alice");
    let (status, body) = api_get(&gateway, "audit/recent", ALICE_KEY).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "policy_denied");
    gateway.shutdown().await;
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("TL_GATEWAY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium package (scripts/test and .ci/run do) or set TL_GATEWAY_CHROMIUM",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_approves_a_members_forced_delete_in_a_real_browser() {
    let python = python();
    let chromium = chromium();
    let (emulator, upstream) = start_emulator().await;
    emulator.seed_demo();
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(
        &upstream,
        &config(&dir.path().join("audit.jsonl"), ""),
        |_| {},
    )
    .await;
    let screenshot = match std::env::var_os("TL_GATEWAY_SCREENSHOT") {
        Some(path) => repo_root().join(path),
        None => dir.path().join("approvals-ui.png"),
    };
    let mut command = Command::new(python);
    command
        .arg(repo_root().join("tests/browser/approvals_ui.py"))
        .args(["--gateway", &gateway.url("")])
        .args(["--admin-key", ALICE_KEY])
        .args(["--member-key", BOB_KEY])
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--chromium")
        .arg(&chromium);
    let text = run_checked(command, "browser test").await;
    assert!(text.contains("approvals UI: all checks passed"), "{text}");
    // What the browser did happened for real: exactly one forced delete (the approved one) reached
    // the emulator, with the gateway's key.
    let forced: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::DELETE && r.uri.to_string().contains("force=true"))
        .collect();
    assert_eq!(forced.len(), 1, "{forced:?}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    gateway.shutdown().await;
}
