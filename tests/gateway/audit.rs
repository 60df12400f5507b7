//! Audit and metering of destructive calls, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use tl_gateway::body;
use tl_gateway::emulator::Emulator;
use tl_gateway::metrics::counter_value;

use crate::process::GatewayProcess;
use crate::support::*;

const FORCE_RULE: &str = r#"policy:
  rules:
    - id: force-delete-admins-only
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin]
      message: ask an admin
"#;

fn audit_yaml(path: &Path) -> String {
    format!("{FORCE_RULE}audit:\n  path: {}\n", path.display())
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wait (bounded) until the audit file holds `n` records: outcomes are written after the response.
async fn wait_for_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = records(path);
        if found.len() >= n || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(gateway: &TestGateway) -> String {
    let response = get(&format!("http://{}/metrics", gateway.admin), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}

async fn delete(
    gateway: &TestGateway,
    key: &str,
    target: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let req = request(Method::DELETE, &gateway.url(target), Some(key))
        .body(body::empty())
        .unwrap();
    send(Proto::Http1, req).await
}

fn verify(files: &[&Path]) -> (bool, String) {
    let output = Command::new(binary())
        .arg("audit")
        .arg("verify")
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_forced_delete_is_durable_before_forwarding_lists_its_references_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let durable_before_forwarding = Arc::new(Mutex::new(Vec::new()));
    let (seen, path) = (durable_before_forwarding.clone(), audit_path.clone());
    let upstream = Upstream::start(move |req| {
        let (seen, path) = (seen.clone(), path.clone());
        async move {
            let target = req.uri.path_and_query().unwrap().as_str().to_owned();
            if target.starts_with("/v1.3/assets/a1/indexed-assets") {
                return json_response(
                    StatusCode::OK,
                    r#"{"data":[{"_id":"ia1","index":{"_id":"i1","name":"product-videos"}},{"_id":"ia2","index":{"_id":"i2","name":"archive"}}],"page_info":{"limit_per_page":50,"page":1,"total_page":1,"total_results":2}}"#,
                );
            }
            if target.starts_with("/v1.3/assets/a1/entities") {
                return json_response(
                    StatusCode::OK,
                    r#"{"data":[{"_id":"e1","entity_collection_id":"c1","name":"Alex"}],"page_info":{"limit_per_page":50,"page":1,"total_page":1,"total_results":1}}"#,
                );
            }
            if req.method == Method::DELETE {
                // What is on disk at the moment the upstream sees the delete?
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let intent = text.lines().any(|l| l.contains(r#""phase":"intent""#) && l.contains(r#""asset_id":"a1""#));
                seen.lock().unwrap().push(intent);
            }
            json_response(StatusCode::OK, "{}")
        }
    })
    .await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &audit_yaml(&audit_path),
        |_| {},
    )
    .await;

    let response = delete(&gateway, ALICE_KEY, "/v1.3/assets/a1?force=true").await;
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    body_bytes(response).await;
    assert_eq!(
        *durable_before_forwarding.lock().unwrap(),
        [true],
        "the intent was not on disk when the upstream got the DELETE"
    );

    let found = wait_for_records(&audit_path, 2).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let (intent, outcome) = (&found[0], &found[1]);
    assert_eq!(intent["phase"], "intent");
    assert_eq!(intent["request_id"], request_id.as_str());
    assert_eq!(intent["client"], "alice");
    assert_eq!(intent["roles"], serde_json::json!(["admin"]));
    assert_eq!(intent["operation"], "assets.delete");
    assert_eq!(intent["params"]["asset_id"], "a1");
    assert_eq!(intent["force"], true);
    assert_eq!(intent["decision"], "allow");
    assert_eq!(intent["client_ip"], "127.0.0.1");
    let refs = &intent["references"];
    assert_eq!(
        refs["indexed_assets"][0],
        serde_json::json!({"id": "ia1", "index_id": "i1", "index_name": "product-videos"})
    );
    assert_eq!(refs["indexed_assets"].as_array().unwrap().len(), 2);
    assert_eq!(
        refs["entities"][0],
        serde_json::json!({"id": "e1", "collection_id": "c1"})
    );
    assert_eq!(refs["complete"], true);
    assert_eq!(outcome["phase"], "outcome");
    assert_eq!(outcome["request_id"], request_id.as_str());
    assert_eq!(outcome["status"], 200);
    assert_eq!(outcome["seq"], 2);
    assert_eq!(outcome["prev_hash"], intent["hash"]);
    assert!(outcome["duration_ms"].is_u64());

    let (ok, text) = verify(&[&audit_path]);
    assert!(ok, "{text}");
    gateway.shutdown().await;

    // Any edit, removal or reordering makes verification fail, naming the line.
    let original = std::fs::read_to_string(&audit_path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let tampered: [(&str, String, &str); 3] = [
        ("edit", original.replacen("\"alice\"", "\"bob\"", 1), ":1:"),
        ("remove", format!("{}\n", lines[1]), ":1:"),
        ("reorder", format!("{}\n{}\n", lines[1], lines[0]), ":1:"),
    ];
    for (what, text, line) in tampered {
        let copy = dir.path().join(format!("tampered-{what}.jsonl"));
        std::fs::write(&copy, text).unwrap();
        let (ok, output) = verify(&[&copy]);
        assert!(!ok, "{what} was not detected");
        assert!(
            output.contains(&format!("{}{line}", copy.display())),
            "{what}: {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_deletions_are_audited_and_counted_without_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &audit_yaml(&audit_path),
        |_| {},
    )
    .await;

    let response = delete(&gateway, BOB_KEY, "/v1.3/assets/a1?force=true").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        upstream.requests().is_empty(),
        "a denied forced delete reached the upstream"
    );
    assert_eq!(
        delete(&gateway, BOB_KEY, "/v1.3/assets/a2").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        delete(&gateway, ALICE_KEY, "/v1.3/assets/a3?force=true")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        delete(&gateway, ALICE_KEY, "/v1.3/indexes/i1")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .await
            .status(),
        StatusCode::OK
    );

    // denied (1) + intent/outcome for each of the three permitted deletes; the GET is not audited.
    let found = wait_for_records(&audit_path, 7).await;
    assert_eq!(found.len(), 7, "{found:#?}");
    // Within a batch the writer puts records a request waits for first, so look it up by phase.
    let denied = found.iter().find(|r| r["phase"] == "denied").unwrap();
    assert_eq!(denied["client"], "bob");
    assert_eq!(denied["rule"], "force-delete-admins-only");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["decision"], "deny");
    assert_eq!(found.iter().filter(|r| r["phase"] == "outcome").count(), 3);

    // The writer counts a batch once it is fsync'd, a moment after the lines are readable.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = metrics(&gateway).await;
        if counter_value(&text, "tl_gateway_audit_records_total") == Some(7.0)
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let value = |series: &str| {
        counter_value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value(r#"tl_gateway_policy_denials_total{rule="force-delete-admins-only"}"#),
        1.0
    );
    assert_eq!(
        value(
            r#"tl_gateway_deletions_total{client="bob",force="true",operation="assets.delete",outcome="denied"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"tl_gateway_deletions_total{client="bob",force="false",operation="assets.delete",outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"tl_gateway_deletions_total{client="alice",force="true",operation="assets.delete",outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"tl_gateway_deletions_total{client="alice",force="false",operation="indexes.delete",outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"tl_gateway_requests_total{method="DELETE",operation="assets.delete",status_class="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"tl_gateway_requests_total{method="GET",operation="assets.list",status_class="2xx"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"tl_gateway_client_denials_total{client="bob",reason="policy"}"#),
        1.0
    );
    assert_eq!(value("tl_gateway_audit_records_total"), 7.0);
    assert_eq!(value("tl_gateway_audit_write_errors_total"), 0.0);
    assert_eq!(value("tl_gateway_audit_unresolved_intents"), 0.0);
    for name in [
        "tl_gateway_request_duration_seconds_bucket",
        "tl_gateway_audit_fsync_duration_seconds_count",
        "tl_gateway_config_reloads_total",
        "tl_gateway_build_info",
        "tl_gateway_guard_lookups_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // Bounded labels: no raw path or resource id, and never a key.
    let audit_text = std::fs::read_to_string(&audit_path).unwrap();
    for secret in [UPSTREAM_KEY, ALICE_KEY, BOB_KEY] {
        assert!(!text.contains(secret), "/metrics contains a key");
        assert!(!audit_text.contains(secret), "the audit log contains a key");
    }
    assert!(
        !text.contains("a1") && !text.contains("/v1.3/"),
        "raw ids or paths in labels"
    );
    gateway.shutdown().await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_device_refuses_deletes_but_serves_reads_and_readyz_says_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &audit_path).unwrap();
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &audit_yaml(&audit_path),
        |_| {},
    )
    .await;

    let response = delete(&gateway, ALICE_KEY, "/v1.3/assets/a1").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_json(response).await["code"], "audit_unavailable");
    assert!(
        upstream.requests().is_empty(),
        "a delete was forwarded without a durable intent"
    );

    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(upstream.requests().len(), 1);

    // Degraded, not unready: the replica keeps serving what does not need the audit log.
    let readyz = get(&format!("http://{}/readyz", gateway.admin), None).await;
    assert_eq!(readyz.status(), StatusCode::OK);
    let readyz = body_json(readyz).await;
    assert_eq!(readyz["degraded"], true, "{readyz}");
    assert!(
        readyz["checks"]["audit"]
            .as_str()
            .unwrap()
            .starts_with("degraded: cannot write"),
        "{readyz}"
    );
    let text = metrics(&gateway).await;
    assert_eq!(counter_value(&text, "tl_gateway_audit_writable"), Some(0.0));
    assert_eq!(
        counter_value(&text, "tl_gateway_audit_write_errors_total"),
        Some(1.0)
    );
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_deletions_total{client="alice",force="false",operation="assets.delete",outcome="audit_unavailable"}"#
        ),
        Some(1.0)
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_an_in_flight_delete_is_reported_at_the_next_start_even_with_a_reused_request_id(
) {
    let dir = tempfile::tempdir().unwrap();
    let audit_path: PathBuf = dir.path().join("audit.jsonl");
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream = Upstream::start(move |req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            if req.method == Method::DELETE {
                let _ = arrived_tx.send(());
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            json_response(StatusCode::OK, "{}")
        }
    })
    .await;
    let origin = format!("http://{}", upstream.addr);
    let extra = audit_yaml(&audit_path);
    let gateway = GatewayProcess::serve_in(dir.path(), &origin, "info", &extra);
    let url = format!(
        "http://{}/v1.3/assets/6298d673f1090f1100476d4c",
        gateway.addr
    );
    // The client chooses its request ids: it reuses one for the hanging delete and a denied one.
    let denied_url = format!(
        "http://{}/v1.3/assets/6298d673f1090f1100476d4d?force=true",
        gateway.addr
    );
    let in_flight = tokio::spawn(async move {
        let req = request(Method::DELETE, &url, Some(ALICE_KEY))
            .header("x-request-id", "reused-id-1")
            .body(body::empty())
            .unwrap();
        let client: hyper_util::client::legacy::Client<_, tl_gateway::body::GatewayBody> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        client.request(req).await
    });
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .unwrap();
    let denied = send(
        Proto::Http1,
        request(Method::DELETE, &denied_url, Some(BOB_KEY))
            .header("x-request-id", "reused-id-1")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let before_kill = wait_for_records(&audit_path, 2).await;
    assert_eq!(before_kill[1]["phase"], "denied", "{before_kill:#?}");
    assert_eq!(before_kill[1]["request_id"], "reused-id-1");
    gateway.signal("KILL");
    let _ = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the killed gateway answered"
    );

    // Restart with reconciliation on: the upstream still has the asset, so the delete did not happen.
    let reconciling = extra.replace("audit:\n", "audit:\n  reconcile: true\n");
    let restarted = GatewayProcess::serve_in(dir.path(), &origin, "info", &reconciling);
    restarted.wait_for_output("unresolved audit intent");
    restarted.wait_for_output("6298d673f1090f1100476d4c");
    restarted.wait_for_output("unresolved intent reconciled");
    let found = records(&audit_path);
    let last = found.last().unwrap();
    assert_eq!(last["phase"], "reconciled", "{found:#?}");
    assert_eq!(found[0]["phase"], "intent");
    assert_eq!(found[0]["request_id"], "reused-id-1");
    // Paired by the gateway's own id, which the denied record of the same request id does not share.
    assert!(found[0]["audit_id"]
        .as_str()
        .is_some_and(|id| id.len() == 32));
    assert_ne!(found[1]["audit_id"], found[0]["audit_id"]);
    assert_eq!(last["resolves"], found[0]["audit_id"]);
    assert!(last["error"].as_str().unwrap().contains("still exists"));
    let text = String::from_utf8(
        body_bytes(get(&format!("http://{}/metrics", restarted.admin), None).await)
            .await
            .to_vec(),
    )
    .unwrap();
    assert_eq!(
        counter_value(&text, "tl_gateway_audit_unresolved_intents"),
        Some(1.0),
        "{text}"
    );
    restarted.terminate();
    let (status, _) = tokio::task::spawn_blocking(move || restarted.wait())
        .await
        .unwrap();
    assert!(status.success());
    let (ok, output) = verify(&[&audit_path]);
    assert!(ok, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_force_delete_records_what_it_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let emulator = Emulator::new(UPSTREAM_KEY);
    let seeded = emulator.seed_demo();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(emulator.clone().serve(listener, std::future::pending()));
    let gateway = TestGateway::start_with(&origin, &audit_yaml(&audit_path), |_| {}).await;

    let target = format!("/v1.3/assets/{}?force=true", seeded.referenced_asset_id);
    assert_eq!(
        delete(&gateway, ALICE_KEY, &target).await.status(),
        StatusCode::OK
    );
    assert!(!emulator.asset_exists(&seeded.referenced_asset_id));
    let found = wait_for_records(&audit_path, 2).await;
    let refs = &found[0]["references"];
    let mut indexed: Vec<String> = refs["indexed_assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    indexed.sort();
    let mut expected = seeded.indexed_asset_ids.clone();
    expected.sort();
    assert_eq!(indexed, expected);
    assert_eq!(refs["entities"][0]["id"], seeded.entity_id.as_str());
    assert_eq!(
        refs["entities"][0]["collection_id"],
        seeded.entity_collection_id.as_str()
    );
    assert_eq!(found[1]["status"], 200);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_reference_listing_cannot_pass_a_max_indexed_assets_limit() {
    // Every page says there are five pages; the guard may read only one.
    let upstream = Upstream::start(|req| async move {
        let target = req.uri.path_and_query().unwrap().as_str().to_owned();
        if target.contains("/indexed-assets?") {
            return json_response(
                StatusCode::OK,
                r#"{"data":[{"_id":"ia1","index":{"_id":"i1","name":"x"}}],"page_info":{"limit_per_page":1,"page":1,"total_page":5,"total_results":5}}"#,
            );
        }
        json_response(StatusCode::OK, r#"{"data":[],"page_info":{"total_page":0}}"#)
    })
    .await;
    let extra = format!(
        "{FORCE_RULE}guards:\n  force_delete:\n    max_pages: 1\n    max_indexed_assets: 100\n"
    );
    let gateway =
        TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |_| {}).await;
    let response = delete(&gateway, ALICE_KEY, "/v1.3/assets/a1?force=true").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let json = body_json(response).await;
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("guards.force_delete.max_indexed_assets"),
        "{json}"
    );
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.method != Method::DELETE),
        "the delete was forwarded"
    );
    gateway.shutdown().await;
}
