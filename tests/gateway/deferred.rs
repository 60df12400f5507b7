//! The undo window (issue #25): forced deletes held for a delay, cancellable, executed once by one
//! replica, judged again when they run, and never silently repeated after a crash.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tl_gateway::auth::{key_digest_hex, ClientSettings};
use tl_gateway::body;
use tl_gateway::config::Config;
use tl_gateway::emulator::Emulator;
use tl_gateway::metrics::counter_value;

use crate::process::GatewayProcess;
use crate::sdk::{python, start_emulator};
use crate::store::PostgresServer;
use crate::support::*;

const CAROL_KEY: &str = "tlgw_carol_second_admin_key";

/// A forced delete by an admin waits `delay`; admins may cancel (besides the requester).
fn defer_yaml(delay: &str) -> String {
    format!(
        r#"policy:
  rules:
    - id: force-delete-later
      match: {{ method: DELETE, path: "/v1.3/assets/{{asset_id}}", query: {{ force: true }} }}
      allow_roles: [admin]
      defer: {{ delay: {delay}, cancel_roles: [admin] }}
"#
    )
}

fn sqlite_yaml(dir: &Path) -> String {
    format!(
        "store:\n  backend: sqlite\n  sqlite:\n    path: {}\n",
        dir.join("store.db").display()
    )
}

fn audit_yaml(path: &Path) -> String {
    format!("audit:\n  path: {}\n", path.display())
}

/// Carol: a second admin (may cancel through `cancel_roles`).
fn carol(config: &mut Config) {
    config.clients.push(ClientSettings::with_key(
        "carol",
        &["admin"],
        tl_gateway::units::parse_hex::<32>(&key_digest_hex(CAROL_KEY)).unwrap(),
    ));
}

async fn forced_delete(base: &str, key: &str, asset: &str) -> Response<Incoming> {
    send(
        Proto::Http1,
        request(
            Method::DELETE,
            &format!("{base}/v1.3/assets/{asset}?force=true"),
            Some(key),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await
}

/// A forced delete that must be deferred: its 202 body.
async fn schedule(base: &str, key: &str, asset: &str) -> serde_json::Value {
    let response = forced_delete(base, key, asset).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.headers()["x-tl-gateway-deferred-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = body_json(response).await;
    assert_eq!(body["id"], id.as_str(), "{body}");
    assert_eq!(body["state"], "scheduled", "{body}");
    assert!(body["execute_at"].is_string(), "{body}");
    body
}

fn deletes_seen(emulator: &Emulator, asset: &str) -> usize {
    emulator
        .requests()
        .iter()
        .filter(|r| r.method == Method::DELETE && r.uri.path().ends_with(asset))
        .count()
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Poll the API until the deferred call is in `state` (bounded); the call.
async fn wait_for_state(base: &str, id: &str, state: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, call) = api_call(
            base,
            Method::GET,
            &format!("deferred/{id}"),
            ALICE_KEY,
            None,
        )
        .await;
        if status == StatusCode::OK && call["state"] == state {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "deferred call {id} not {state} in time: {status} {call}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    let response = get(&format!("http://{admin}/metrics"), None).await;
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}

fn verify(audit: &Path) {
    let verify = Command::new(binary())
        .args(["audit", "verify"])
        .arg(audit)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_forced_delete_returns_the_asset_stays_and_a_cancel_stops_it_for_good() {
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let asset = seeded.referenced_asset_id.clone();
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let extra = format!(
        "{}{}{}",
        defer_yaml("2s"),
        sqlite_yaml(files.path()),
        audit_yaml(&audit)
    );
    let gateway = TestGateway::start_with(&upstream, &extra, carol).await;
    let base = gateway.url("");

    // The official SDK's forced delete returns normally; the asset is still there.
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/sdk/sdk_deferred.py"))
        .env("TL_BASE_URL", gateway.url("/v1.3"))
        .env("TL_API_KEY", ALICE_KEY)
        .env("TL_ASSET", &asset)
        .env_remove("TWELVELABS_BASE_URL");
    run_checked(command, "SDK deferred delete").await;
    assert!(emulator.asset_exists(&asset));
    assert_eq!(deletes_seen(&emulator, &asset), 0);

    // Listed as scheduled, with what it would unlink; the identical re-send gets the same id.
    let (status, listed) = api_call(
        &base,
        Method::GET,
        "deferred?state=scheduled",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let list = listed["deferred"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{listed}");
    let call = &list[0];
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("dfr_"), "{call}");
    assert_eq!(call["requester"], "alice");
    assert_eq!(call["rule"], "force-delete-later");
    assert_eq!(call["method"], "DELETE");
    assert_eq!(call["target"], format!("/v1.3/assets/{asset}?force=true"));
    assert_eq!(
        call["references"]["indexed_assets"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{call}"
    );
    assert_eq!(call["can_cancel"], true);
    assert_eq!(schedule(&base, ALICE_KEY, &asset).await["id"], id.as_str());

    // Bob (neither requester nor in cancel_roles) may not cancel it; Carol (admin) may.
    let cancel = format!("deferred/{id}/cancel");
    let (status, refused) = api_call(&base, Method::POST, &cancel, BOB_KEY, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["code"], "policy_denied");
    let (status, cancelled) = api_call(&base, Method::POST, &cancel, CAROL_KEY, None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["cancelled_by"], "carol");
    let (status, again) = api_call(&base, Method::POST, &cancel, ALICE_KEY, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["code"], "deferred_not_scheduled");

    // Well past its time: never executed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, shown) = api_call(
        &base,
        Method::GET,
        &format!("deferred/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert!(shown["outcome"].is_null(), "{shown}");
    assert!(emulator.asset_exists(&asset));
    assert_eq!(deletes_seen(&emulator, &asset), 0);

    // Each transition is a chained record (phase deferred); metrics count them.
    let found = records(&audit);
    let states: Vec<&str> = found
        .iter()
        .filter(|r| r["phase"] == "deferred" && r["deferred_id"] == id.as_str())
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["scheduled", "cancelled"], "{found:#?}");
    verify(&audit);
    let text = metrics(gateway.admin).await;
    let count = |state: &str| {
        counter_value(
            &text,
            &format!(r#"tl_gateway_deferred_total{{rule="force-delete-later",state="{state}"}}"#),
        )
        .unwrap()
    };
    assert_eq!(count("scheduled"), 1.0);
    assert_eq!(count("cancelled"), 1.0);
    assert_eq!(count("executed"), 0.0);
    assert!(text.contains("tl_gateway_deferred_scheduled"), "{text}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncancelled_delete_runs_once_on_one_of_two_replicas_sharing_postgres() {
    let postgres = PostgresServer::start();
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let files = tempfile::tempdir().unwrap();
    let audit_a = files.path().join("a.jsonl");
    let audit_b = files.path().join("b.jsonl");
    let config = |audit: &Path| {
        format!(
            "{}{}{}",
            defer_yaml("2s"),
            postgres.store_yaml(),
            audit_yaml(audit)
        )
    };
    let a = TestGateway::start_with(&upstream, &config(&audit_a), |_| {}).await;
    let b = TestGateway::start_with(&upstream, &config(&audit_b), |_| {}).await;

    let id = schedule(&a.url(""), ALICE_KEY, &asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The re-send on the other replica finds the same call.
    assert_eq!(
        schedule(&b.url(""), ALICE_KEY, &asset).await["id"],
        id.as_str()
    );
    assert!(emulator.asset_exists(&asset));

    let call = wait_for_state(&b.url(""), &id, "executed", Duration::from_secs(15)).await;
    assert_eq!(call["outcome"]["status"], 200, "{call}");
    assert_eq!(call["outcome"]["forwarded"], true, "{call}");
    assert!(!emulator.asset_exists(&asset));
    // Both replicas keep looking for due calls: still one DELETE upstream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(deletes_seen(&emulator, &asset), 1);

    // One replica executed it: its audit log has the intent and outcome of a direct call.
    let all: Vec<serde_json::Value> = records(&audit_a)
        .into_iter()
        .chain(records(&audit_b))
        .collect();
    let intents: Vec<&serde_json::Value> = all
        .iter()
        .filter(|r| r["phase"] == "intent" && r["deferred_id"] == id.as_str())
        .collect();
    assert_eq!(intents.len(), 1, "{all:#?}");
    assert_eq!(intents[0]["client"], "alice");
    assert_eq!(intents[0]["request_id"], id.as_str());
    let outcomes = all
        .iter()
        .filter(|r| r["phase"] == "outcome" && r["audit_id"] == intents[0]["audit_id"])
        .count();
    assert_eq!(outcomes, 1, "{all:#?}");
    let executed = all
        .iter()
        .filter(|r| r["phase"] == "deferred" && r["state"] == "executed")
        .count();
    assert_eq!(executed, 1);
    verify(&audit_a);
    verify(&audit_b);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_delete_survives_a_restart_in_the_middle_of_its_delay_on_sqlite() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let files = tempfile::tempdir().unwrap();
    let extra = format!("{}{}", defer_yaml("3s"), sqlite_yaml(files.path()));
    let first = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let id = schedule(&first.url(""), ALICE_KEY, &asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.shutdown().await;
    assert!(emulator.asset_exists(&asset));

    let second = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let call = wait_for_state(&second.url(""), &id, "executed", Duration::from_secs(15)).await;
    assert_eq!(call["outcome"]["status"], 200, "{call}");
    assert!(!emulator.asset_exists(&asset));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protection_added_during_the_delay_refuses_it() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let files = tempfile::tempdir().unwrap();
    let audit = files.path().join("audit.jsonl");
    let extra = format!(
        "{}{}{}",
        defer_yaml("3s"),
        sqlite_yaml(files.path()),
        audit_yaml(&audit)
    );
    let gateway = TestGateway::start_reloadable(&upstream, &extra).await;
    let id = schedule(&gateway.url(""), ALICE_KEY, &asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A legal hold on the asset arrives while the call waits.
    let held = format!("{extra}guards:\n  protected:\n    assets: [{asset}]\n");
    let applied = gateway
        .reloads
        .success
        .load(std::sync::atomic::Ordering::SeqCst);
    gateway.rewrite_config(&upstream, &held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway
        .reloads
        .success
        .load(std::sync::atomic::Ordering::SeqCst)
        == applied
    {
        assert!(
            Instant::now() < deadline,
            "the configuration was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let call = wait_for_state(&gateway.url(""), &id, "refused", Duration::from_secs(15)).await;
    assert_eq!(call["outcome"]["code"], "resource_protected", "{call}");
    assert_eq!(call["outcome"]["forwarded"], false, "{call}");
    assert!(emulator.asset_exists(&asset));
    assert_eq!(deletes_seen(&emulator, &asset), 0);
    let found = records(&audit);
    assert!(
        found.iter().any(|r| r["phase"] == "deferred"
            && r["state"] == "refused"
            && r["error"] == "resource_protected"),
        "{found:#?}"
    );
    assert!(
        !found.iter().any(|r| r["phase"] == "intent"),
        "a refused call has no intent: {found:#?}"
    );
    verify(&audit);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_claim_and_outcome_is_reported_unresolved_and_never_repeated() {
    let files = tempfile::tempdir().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    // The upstream holds every DELETE long enough for the executing replica to be killed.
    let upstream = Upstream::start(move |req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            if req.method == Method::DELETE {
                let _ = arrived_tx.send(());
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            json_response(
                StatusCode::OK,
                r#"{"data":[],"page_info":{"total_page":1}}"#,
            )
        }
    })
    .await;
    let origin = format!("http://{}", upstream.addr);
    let audit = files.path().join("audit.jsonl");
    let extra = format!(
        "{}{}{}",
        defer_yaml("1s"),
        sqlite_yaml(files.path()),
        audit_yaml(&audit)
    );
    let asset = "6298d673f1090f1100476d4c";
    let gateway = GatewayProcess::serve_in(files.path(), &origin, "info", &extra);
    let id = schedule(&format!("http://{}", gateway.addr), ALICE_KEY, asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Claimed, judged again, intent written, forwarded: the upstream has it. Then kill -9.
    tokio::time::timeout(Duration::from_secs(15), arrived.recv())
        .await
        .expect("the deferred delete never reached the upstream");
    gateway.signal("KILL");
    let _ = tokio::task::spawn_blocking(move || gateway.wait()).await;

    let restarted = GatewayProcess::serve_in(files.path(), &origin, "info", &extra);
    let base = format!("http://{}", restarted.addr);
    let call = wait_for_state(&base, &id, "unresolved", Duration::from_secs(15)).await;
    assert_eq!(call["outcome"]["forwarded"], true, "{call}");
    assert_eq!(call["outcome"]["code"], "replica_lost", "{call}");
    restarted.wait_for_output("unresolved audit intent");
    // Never forwarded again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deletes = upstream
        .requests()
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .count();
    assert_eq!(deletes, 1);
    let found = records(&audit);
    let states: Vec<&str> = found
        .iter()
        .filter(|r| r["phase"] == "deferred")
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["scheduled", "executing", "unresolved"],
        "{found:#?}"
    );
    assert_eq!(
        found
            .iter()
            .filter(|r| r["phase"] == "intent" && r["deferred_id"] == id.as_str())
            .count(),
        1
    );
    verify(&audit);
}

#[test]
fn check_refuses_defer_on_a_route_with_a_body_and_explain_shows_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "k\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config_yaml(
            "http://127.0.0.1:9",
            &key_file,
            "policy:\n  rules:\n    - id: later\n      match: { method: PUT, path: \"/v1.3/assets/{asset_id}/user-metadata\" }\n      allow_roles: [admin]\n      defer: { delay: 15m }\n",
        ),
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("request body"), "{stderr}");

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        config_yaml("http://127.0.0.1:9", &key_file, &defer_yaml("15m")),
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["explain", "--config"])
        .arg(&good)
        .args([
            "--client",
            "alice",
            "DELETE",
            "/v1.3/assets/6298d673f1090f1100476d4c?force=true",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("DEFER (15m)"), "{stdout}");
    assert_eq!(output.status.code(), Some(5), "{stdout}");

    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - { client: alice, method: DELETE, target: \"/v1.3/assets/6298d673f1090f1100476d4c?force=true\", expect: defer, rule: force-delete-later }\n  - { client: alice, method: DELETE, target: \"/v1.3/assets/6298d673f1090f1100476d4c\", expect: allow }\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["test", "--config"])
        .arg(&good)
        .arg(&cases)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_cancels() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let gateway = TestGateway::start_with(&upstream, &defer_yaml("15m"), |_| {}).await;
    let id = schedule(&gateway.url(""), ALICE_KEY, &asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = gateway.url("");
    let cli = move |args: Vec<String>, key: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .arg("deferred")
                .args(&args)
                .args(["--gateway", &url])
                .env("TL_GATEWAY_KEY", key)
                .output()
                .unwrap()
        })
    };
    let listed = cli(
        vec!["list".into(), "--state".into(), "scheduled".into()],
        ALICE_KEY,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && out.contains(&id), "{listed:?}");
    let shown = cli(vec!["show".into(), id.clone()], ALICE_KEY)
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&shown.stdout);
    assert!(
        out.contains("state:     scheduled") && out.contains(&asset),
        "{out}"
    );
    // Bob may not cancel it: the gateway's refusal, and a failing exit.
    let refused = cli(vec!["cancel".into(), id.clone()], BOB_KEY)
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("policy_denied"),
        "{refused:?}"
    );
    let cancelled = cli(vec!["cancel".into(), id.clone()], ALICE_KEY)
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&cancelled.stdout);
    assert!(
        cancelled.status.success() && out.contains("state:     cancelled"),
        "{cancelled:?}"
    );
    assert!(emulator.asset_exists(&asset));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_tab_counts_down_and_cancels_in_a_real_browser() {
    let chromium = std::env::var_os("TL_GATEWAY_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "{} not found: install Debian's chromium",
        chromium.display()
    );
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let gateway = TestGateway::start_with(&upstream, &defer_yaml("15m"), |_| {}).await;
    let id = schedule(&gateway.url(""), ALICE_KEY, &asset).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/browser/deferred_ui.py"))
        .args(["--gateway", &gateway.url("")])
        .args(["--admin-key", ALICE_KEY])
        .args(["--deferred", &id])
        .arg("--chromium")
        .arg(&chromium);
    let text = run_checked(command, "browser test").await;
    assert!(text.contains("deferred UI: all checks passed"), "{text}");
    let (_, call) = api_call(
        &gateway.url(""),
        Method::GET,
        &format!("deferred/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(call["state"], "cancelled");
    assert_eq!(call["cancelled_by"], "alice");
    assert!(emulator.asset_exists(&asset));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_hears_of_scheduled_cancelled_and_executed_calls() {
    let (emulator, upstream) = start_emulator().await;
    let kept = emulator.create_asset("kept.mp4");
    let gone = emulator.create_asset("gone.mp4");
    let (hook, seen) = crate::approvals::webhook().await;
    let extra = format!(
        "{}approvals:\n  public_url: https://gateway.example.com\n  notify:\n    webhook_url: http://{hook}/hooks\n",
        defer_yaml("1s")
    );
    let gateway = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let base = gateway.url("");
    let cancelled = schedule(&base, ALICE_KEY, &kept).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api_call(
        &base,
        Method::POST,
        &format!("deferred/{cancelled}/cancel"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let executed = schedule(&base, ALICE_KEY, &gone).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_state(&base, &executed, "executed", Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the webhook got {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("deferred.scheduled".to_owned(), cancelled.clone()),
            ("deferred.cancelled".to_owned(), cancelled.clone()),
            ("deferred.scheduled".to_owned(), executed.clone()),
            ("deferred.executed".to_owned(), executed.clone()),
        ]
    );
    let last = seen.lock().unwrap()[3].clone();
    assert_eq!(last["outcome"]["status"], 200, "{last}");
    assert_eq!(
        last["link"],
        format!("https://gateway.example.com/tl-gateway/ui/#/deferred/{executed}")
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_has_a_budget_per_requester_and_a_resend_costs_nothing() {
    let (emulator, upstream) = start_emulator().await;
    let assets: Vec<String> = (0..3)
        .map(|i| emulator.create_asset(&format!("a{i}.mp4")))
        .collect();
    let extra = format!(
        "{}deferred:\n  max_schedules_per_client: 2\n",
        defer_yaml("15m")
    );
    let gateway = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let base = gateway.url("");
    let first = schedule(&base, ALICE_KEY, &assets[0]).await["id"].clone();
    // The identical re-send finds the scheduled call without spending.
    assert_eq!(schedule(&base, ALICE_KEY, &assets[0]).await["id"], first);
    schedule(&base, ALICE_KEY, &assets[1]).await;
    let response = forced_delete(&base, ALICE_KEY, &assets[2]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body = body_json(response).await;
    assert_eq!(body["code"], "too_many_requests", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("deferred.max_schedules_per_client"),
        "{body}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_and_deferred_delete_resent_while_scheduled_keeps_its_id() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("both.mp4");
    let files = tempfile::tempdir().unwrap();
    // Bob's forced delete needs an admin's approval, and then waits a minute.
    let extra = format!(
        r#"policy:
  rules:
    - id: force-delete-approved-later
      match: {{ method: DELETE, path: "/v1.3/assets/{{asset_id}}", query: {{ force: true }} }}
      allow_roles: [admin, member]
      approval: {{ approver_roles: [admin] }}
      defer: {{ delay: 1m, cancel_roles: [admin] }}
{}"#,
        sqlite_yaml(files.path())
    );
    let gateway = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let base = gateway.url("");
    let asked = forced_delete(&base, BOB_KEY, &asset).await;
    assert_eq!(asked.status(), StatusCode::FORBIDDEN);
    let approval = asked.headers()["x-tl-gateway-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _) = api_call(
        &base,
        Method::POST,
        &format!("approvals/{approval}/approve"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let first = schedule(&base, BOB_KEY, &asset).await;
    // The identical re-send while it is scheduled: the same call, not a new approval to ask for.
    for _ in 0..2 {
        let again = schedule(&base, BOB_KEY, &asset).await;
        assert_eq!(again["id"], first["id"], "{again}");
    }
    assert_eq!(deletes_seen(&emulator, &asset), 0);
    gateway.shutdown().await;
}
