//! Two-person approval (deny, approve, re-send) and protected resources, against the emulator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tl_gateway::auth::{key_digest_hex, ClientSettings};
use tl_gateway::body;
use tl_gateway::config::Config;
use tl_gateway::emulator::Emulator;
use tl_gateway::metrics::counter_value;

use crate::sdk::{python, start_emulator};
use crate::store::PostgresServer;
use crate::support::*;

const CAROL_KEY: &str = "tlgw_carol_second_admin_key";
const DAVE_KEY: &str = "tlgw_dave_third_admin_key";

pub const TWO_PERSON: &str = r#"policy:
  rules:
    - id: force-delete-two-person
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin, member]
      message: "Forced deletes unlink indexed assets and entities for good."
      approval:
        approver_roles: [admin]
"#;

/// Carol and Dave: two more admins (approvers), added to the parsed configuration.
fn more_admins(config: &mut Config) {
    for (id, key) in [("carol", CAROL_KEY), ("dave", DAVE_KEY)] {
        config.clients.push(ClientSettings::with_key(
            id,
            &["admin"],
            tl_gateway::units::parse_hex::<32>(&key_digest_hex(key)).unwrap(),
        ));
    }
}

pub fn two_person(audit: &Path, extra: &str) -> String {
    format!("{TWO_PERSON}audit:\n  path: {}\n{extra}", audit.display())
}

/// Where a test's approvals live: each core approvals test runs on every record store.
pub enum Backend {
    Memory,
    Sqlite(tempfile::TempDir),
    Postgres(PostgresServer),
}

impl Backend {
    /// The `store:` section (none for memory: the default).
    pub fn yaml(&self) -> String {
        match self {
            Backend::Memory => String::new(),
            Backend::Sqlite(dir) => format!(
                "store:\n  backend: sqlite\n  sqlite:\n    path: {}\n",
                dir.path().join("store.db").display()
            ),
            Backend::Postgres(server) => server.store_yaml(),
        }
    }
}

/// Each named test once per record store: `NAME::memory`, `NAME::sqlite`, `NAME::postgres`.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(Backend::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite(tempfile::tempdir().unwrap())).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres(PostgresServer::start())).await
            }
        }
    )*};
}

on_every_store!(
    the_sdk_asks_an_admin_approves_and_the_identical_retry_passes_exactly_once,
    nobody_approves_their_own_request_and_only_approvers_decide,
    approvals_expire_undecided_and_unused,
    an_approval_is_bound_to_its_request_and_its_requester,
    an_approval_refused_below_it_is_given_back,
);

async fn forced_delete(gateway: &TestGateway, key: &str, asset: &str) -> Response<Incoming> {
    send(
        Proto::Http1,
        request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/assets/{asset}?force=true")),
            Some(key),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await
}

/// A forced delete that must be refused with `approval_required`; returns the approval id.
async fn ask(gateway: &TestGateway, key: &str, asset: &str) -> String {
    let response = forced_delete(gateway, key, asset).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let id = response.headers()["x-tl-gateway-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = body_json(response).await;
    assert_eq!(body["code"], "approval_required", "{body}");
    assert!(body["message"].as_str().unwrap().contains(&id), "{body}");
    id
}

async fn api(
    gateway: &TestGateway,
    method: Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    api_call(&gateway.url(""), method, path, key, body).await
}

async fn approve(gateway: &TestGateway, id: &str, key: &str) -> (StatusCode, serde_json::Value) {
    api(
        gateway,
        Method::POST,
        &format!("approvals/{id}/approve"),
        key,
        Some(serde_json::json!({ "comment": "checked with the owner" })),
    )
    .await
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

async fn metrics(gateway: &TestGateway) -> String {
    let response = get(&format!("http://{}/metrics", gateway.admin), None).await;
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}

/// Run `tests/sdk/sdk_approval.py MODE` as `key` against the gateway; its output.
async fn sdk(gateway: &TestGateway, mode: &str, key: &str, asset: &str, previous: &str) -> String {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/sdk/sdk_approval.py"))
        .arg(mode)
        .env("TL_BASE_URL", gateway.url("/v1.3"))
        .env("TL_API_KEY", key)
        .env("TL_ASSET", asset)
        .env("TL_PREVIOUS_APPROVAL", previous)
        .env_remove("TWELVELABS_BASE_URL");
    run_checked(command, "SDK step").await
}

fn approval_id_in(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("APPROVAL_ID="))
        .unwrap_or_else(|| panic!("no APPROVAL_ID in:\n{output}"))
        .to_owned()
}

async fn the_sdk_asks_an_admin_approves_and_the_identical_retry_passes_exactly_once(
    backend: Backend,
) {
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let asset = seeded.referenced_asset_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gateway =
        TestGateway::start_with(&upstream, &two_person(&audit, &backend.yaml()), |_| {}).await;

    // The member's SDK call is refused with approval_required (the same id for the same request).
    let output = sdk(&gateway, "ask", BOB_KEY, &asset, "").await;
    let id = approval_id_in(&output);
    assert_eq!(deletes_seen(&emulator, &asset), 0);

    // The approver sees it, with what the delete would unlink.
    let (status, listed) = api(
        &gateway,
        Method::GET,
        "approvals?state=pending",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let pending = listed["approvals"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{listed}");
    let shown = &pending[0];
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["requester"], "bob");
    assert_eq!(shown["rule"], "force-delete-two-person");
    assert_eq!(shown["method"], "DELETE");
    assert_eq!(shown["target"], format!("/v1.3/assets/{asset}?force=true"));
    assert_eq!(shown["can_decide"], true);
    let references = &shown["references"];
    assert_eq!(
        references["indexed_assets"].as_array().unwrap().len(),
        2,
        "{shown}"
    );
    assert_eq!(
        references["entities"].as_array().unwrap().len(),
        1,
        "{shown}"
    );
    assert!(shown["created_at"].is_string() && shown["expires_at"].is_string());

    // The requester sees their own; a member never sees others'.
    let (_, own) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(own["can_decide"], false);
    assert_eq!(own["can_cancel"], true);

    // An admin approves over HTTP.
    let (status, approved) = approve(&gateway, &id, ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["approvers"], serde_json::json!(["alice"]));

    // The member's identical retry succeeds, once; a second retry needs a new approval.
    sdk(&gateway, "succeed", BOB_KEY, &asset, "").await;
    assert!(!emulator.asset_exists(&asset));
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    let output = sdk(&gateway, "ask-again", BOB_KEY, &asset, &id).await;
    let fresh = approval_id_in(&output);
    assert_ne!(fresh, id);
    let (_, used) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(used["state"], "used");
    assert!(used["used_at"].is_string());
    assert_eq!(deletes_seen(&emulator, &asset), 1);

    // Every transition is in the chain; the forwarded delete's intent names the approval.
    let deadline = Instant::now() + Duration::from_secs(5);
    let found = loop {
        let found = records(&audit);
        let phases: Vec<_> = found
            .iter()
            .filter(|r| r["phase"] == "approval" && r["approval_id"] == id.as_str())
            .map(|r| r["state"].as_str().unwrap().to_owned())
            .collect();
        if phases == ["pending", "approved", "used"] || Instant::now() > deadline {
            assert_eq!(phases, ["pending", "approved", "used"]);
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let approved_record = found
        .iter()
        .find(|r| r["phase"] == "approval" && r["state"] == "approved")
        .unwrap();
    assert_eq!(approved_record["approver"], "alice");
    assert_eq!(approved_record["requester"], "bob");
    assert_eq!(approved_record["comment"], "checked with the owner");
    let intent = found
        .iter()
        .find(|r| r["phase"] == "intent" && r["operation"] == "assets.delete")
        .unwrap();
    assert_eq!(intent["approval_id"], id.as_str());
    assert_eq!(intent["approvers"], serde_json::json!(["alice"]));
    assert_eq!(intent["client"], "bob");
    let denied = found
        .iter()
        .filter(|r| r["phase"] == "denied" && r["error"] == "approval_required")
        .count();
    assert!(
        denied >= 3,
        "each refusal is a denied record naming the approval"
    );
    let verify = Command::new(binary())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");

    let text = metrics(&gateway).await;
    let count = |state: &str| {
        counter_value(
            &text,
            &format!(
                r#"tl_gateway_approvals_total{{rule="force-delete-two-person",state="{state}"}}"#
            ),
        )
        .unwrap()
    };
    assert_eq!(count("pending"), 2.0);
    assert_eq!(count("approved"), 1.0);
    assert_eq!(count("used"), 1.0);
    gateway.shutdown().await;
}

async fn nobody_approves_their_own_request_and_only_approvers_decide(backend: Backend) {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(
        &upstream,
        &two_person(&dir.path().join("audit.jsonl"), &backend.yaml()),
        more_admins,
    )
    .await;

    // An admin asks: approving it themself is refused, as is a member's approval.
    let id = ask(&gateway, ALICE_KEY, &asset).await;
    let (status, body) = approve(&gateway, &id, ALICE_KEY).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "approval_forbidden");
    let (status, body) = approve(&gateway, &id, BOB_KEY).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "approval_forbidden");
    // Bob does not see an approval he neither asked for nor may decide.
    let (status, body) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "approval_not_found");
    let (_, listed) = api(&gateway, Method::GET, "approvals", BOB_KEY, None).await;
    assert_eq!(listed["approvals"], serde_json::json!([]));

    // Another admin denies it: it is over, and deciding again is a conflict.
    let (status, denied) = api(
        &gateway,
        Method::POST,
        &format!("approvals/{id}/deny"),
        CAROL_KEY,
        Some(serde_json::json!({ "comment": "not this one" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denied["state"], "denied");
    let (status, body) = approve(&gateway, &id, DAVE_KEY).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "approval_not_pending");
    // The denied request asks anew.
    assert_ne!(ask(&gateway, ALICE_KEY, &asset).await, id);

    // The requester withdraws a request; nobody else can.
    let other = emulator.create_asset("b.mp4");
    let id = ask(&gateway, BOB_KEY, &other).await;
    let (status, body) = api(
        &gateway,
        Method::POST,
        &format!("approvals/{id}/cancel"),
        CAROL_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "approval_forbidden");
    let (status, body) = api(
        &gateway,
        Method::POST,
        &format!("approvals/{id}/cancel"),
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "cancelled");

    // No key, or a wrong one: 401 like any request.
    let response = get(&gateway.url("/tl-gateway/v1/approvals"), None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = get(&gateway.url("/tl-gateway/v1/approvals"), Some("wrong")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(response).await["code"], "unauthorized");
    assert_eq!(
        deletes_seen(&emulator, &asset) + deletes_seen(&emulator, &other),
        0
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvals_need_two_distinct_approvers() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let rules = TWO_PERSON.replace(
        "approver_roles: [admin]",
        "approver_roles: [admin]\n        approvals: 2",
    );
    let gateway = TestGateway::start_with(&upstream, &rules, more_admins).await;
    let id = ask(&gateway, BOB_KEY, &asset).await;
    let (_, first) = approve(&gateway, &id, ALICE_KEY).await;
    assert_eq!(first["state"], "pending");
    let (status, again) = approve(&gateway, &id, ALICE_KEY).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{again}");
    // Not yet: the retry gets the same pending approval.
    assert_eq!(ask(&gateway, BOB_KEY, &asset).await, id);
    let (_, second) = approve(&gateway, &id, CAROL_KEY).await;
    assert_eq!(second["state"], "approved");
    assert_eq!(second["approvers"], serde_json::json!(["alice", "carol"]));
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &asset).await.status(),
        StatusCode::OK
    );
    gateway.shutdown().await;
}

async fn approvals_expire_undecided_and_unused(backend: Backend) {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let rules = TWO_PERSON.replace(
        "approver_roles: [admin]",
        "approver_roles: [admin]\n        ttl: 1s\n        use_within: 1s",
    );
    let rules = format!("{rules}{}", backend.yaml());
    let gateway = TestGateway::start_with(&upstream, &rules, |_| {}).await;

    let id = ask(&gateway, BOB_KEY, &asset).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, shown) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(shown["state"], "expired");
    let (status, body) = approve(&gateway, &id, ALICE_KEY).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "approval_not_pending");

    // Approved, but not re-sent within use_within: expired too, and the retry asks anew.
    let id = ask(&gateway, BOB_KEY, &asset).await;
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_ne!(ask(&gateway, BOB_KEY, &asset).await, id);
    let (_, shown) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(shown["state"], "expired");
    assert_eq!(deletes_seen(&emulator, &asset), 0);
    assert!(
        counter_value(
            &metrics(&gateway).await,
            r#"tl_gateway_approvals_total{rule="force-delete-two-person",state="expired"}"#
        )
        .unwrap()
            >= 2.0
    );
    gateway.shutdown().await;
}

async fn an_approval_is_bound_to_its_request_and_its_requester(backend: Backend) {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let other = emulator.create_asset("b.mp4");
    let config = format!("{TWO_PERSON}{}", backend.yaml());
    let gateway = TestGateway::start_with(&upstream, &config, more_admins).await;
    let id = ask(&gateway, BOB_KEY, &asset).await;
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);

    // Another asset id: a new approval. Another client, same request: their own approval.
    assert_ne!(ask(&gateway, BOB_KEY, &other).await, id);
    assert_ne!(ask(&gateway, CAROL_KEY, &asset).await, id);
    // `force=1` reads as the same canonical request (force=true): it uses the approval.
    let response = send(
        Proto::Http1,
        request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/assets/{asset}?force=1")),
            Some(BOB_KEY),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    assert_eq!(deletes_seen(&emulator, &other), 0);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_resends_forward_one_even_across_replicas_sharing_postgres() {
    let postgres = PostgresServer::start();
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let config = format!("{TWO_PERSON}{}", postgres.store_yaml());
    let a = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let b = TestGateway::start_with(&upstream, &config, |_| {}).await;

    // Asked on one replica, seen and approved on the other, re-sent on both at once.
    let id = ask(&a, BOB_KEY, &asset).await;
    assert_eq!(
        ask(&b, BOB_KEY, &asset).await,
        id,
        "one approval for both replicas"
    );
    assert_eq!(approve(&b, &id, ALICE_KEY).await.0, StatusCode::OK);
    let mut racers = Vec::new();
    for i in 0..8 {
        let target = if i % 2 == 0 { a.url("") } else { b.url("") };
        let asset = asset.clone();
        racers.push(tokio::spawn(async move {
            send(
                Proto::Http1,
                request(
                    Method::DELETE,
                    &format!("{target}/v1.3/assets/{asset}?force=true"),
                    Some(BOB_KEY),
                )
                .body(body::empty())
                .unwrap(),
            )
            .await
            .status()
        }));
    }
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(passed, 1, "{statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::FORBIDDEN));
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    // Either replica shows it used.
    let (_, used) = api(&a, Method::GET, &format!("approvals/{id}"), ALICE_KEY, None).await;
    assert_eq!(used["state"], "used");
    a.shutdown().await;
    b.shutdown().await;
}

async fn an_approval_refused_below_it_is_given_back(backend: Backend) {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let limit = "rate_limits:\n  - id: one-delete-a-second\n    match: { method: DELETE }\n    per: client\n    rate: 1/second\n    burst: 1\n";
    let gateway = TestGateway::start_with(
        &upstream,
        &format!("{TWO_PERSON}{limit}{}", backend.yaml()),
        |_| {},
    )
    .await;
    let id = ask(&gateway, BOB_KEY, &asset).await;
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);
    // Bob spends his one delete; the approved retry is refused by the limit, not forwarded...
    let index = emulator.create_index("scratch");
    let response = send(
        Proto::Http1,
        request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/indexes/{index}")),
            Some(BOB_KEY),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &asset).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // ... so the approval is still his to use.
    let (_, shown) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(shown["state"], "approved", "{shown}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &asset).await.status(),
        StatusCode::OK
    );
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    gateway.shutdown().await;
}

/// A webhook receiver keeping every JSON body it is sent.
pub async fn webhook() -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        log.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&bytes).unwrap());
                        Ok::<_, Infallible>(Response::new(body::empty()))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_hears_of_the_request_and_of_the_decision() {
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let (hook, seen) = webhook().await;
    let extra = format!(
        "{TWO_PERSON}approvals:\n  public_url: https://gateway.example.com\n  notify:\n    webhook_url: http://{hook}/hooks/approvals\n"
    );
    let gateway = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let id = ask(&gateway, BOB_KEY, &seeded.referenced_asset_id).await;
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the webhook got {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = seen.lock().unwrap().clone();
    assert_eq!(events[0]["event"], "approval.requested");
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["requester"], "bob");
    assert_eq!(events[0]["rule"], "force-delete-two-person");
    assert_eq!(
        events[0]["target"],
        format!("/v1.3/assets/{}?force=true", seeded.referenced_asset_id)
    );
    assert_eq!(
        events[0]["references"], 3,
        "two indexed assets and one entity"
    );
    assert_eq!(
        events[0]["link"],
        format!("https://gateway.example.com/tl-gateway/ui/#/approvals/{id}")
    );
    assert_eq!(events[1]["event"], "approval.approved");
    assert_eq!(events[1]["by"], "alice");
    assert_eq!(events[1]["comment"], "checked with the owner");
    let text = metrics(&gateway).await;
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_approval_notifications_total{result="sent"}"#
        ),
        Some(2.0)
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_counted_and_never_holds_a_request_back() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!(
        "{TWO_PERSON}approvals:\n  notify:\n    webhook_url: http://{closed}/hook\n    max_attempts: 2\n    timeout: 1s\n"
    );
    let gateway = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let started = Instant::now();
    ask(&gateway, BOB_KEY, &asset).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(&gateway).await;
        let failed = counter_value(
            &text,
            r#"tl_gateway_approval_notifications_total{result="failed"}"#,
        );
        if failed == Some(1.0) {
            assert_eq!(
                counter_value(
                    &text,
                    r#"tl_gateway_approval_notifications_total{result="retried"}"#
                ),
                Some(1.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "not counted as failed:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_approves() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let gateway = TestGateway::start_with(&upstream, TWO_PERSON, |_| {}).await;
    let id = ask(&gateway, BOB_KEY, &asset).await;
    let url = gateway.url("");
    let cli = move |args: Vec<String>, key: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(binary())
                .arg("approvals")
                .args(&args)
                .args(["--gateway", &url])
                .env("TL_GATEWAY_KEY", key)
                .output()
                .unwrap()
        })
    };
    let list = cli(
        vec!["list".into(), "--state".into(), "pending".into()],
        ALICE_KEY,
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && out.contains(&id) && out.contains("bob"),
        "{list:?}"
    );
    let show = cli(vec!["show".into(), id.clone()], ALICE_KEY)
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&show.stdout);
    assert!(
        out.contains("state:     pending") && out.contains(&asset),
        "{out}"
    );
    // Bob approving his own: the gateway's refusal, and a failing exit.
    let own = cli(vec!["approve".into(), id.clone()], BOB_KEY)
        .await
        .unwrap();
    assert!(!own.status.success());
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("403 approval_forbidden"),
        "{own:?}"
    );
    let approve = cli(
        vec![
            "approve".into(),
            id.clone(),
            "--comment".into(),
            "ok".into(),
        ],
        ALICE_KEY,
    )
    .await
    .unwrap();
    assert!(approve.status.success(), "{approve:?}");
    assert!(String::from_utf8_lossy(&approve.stdout).contains("state:     approved"));
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &asset).await.status(),
        StatusCode::OK
    );
    gateway.shutdown().await;
}

/// A legal hold on one index, one entity collection and one asset.
struct Held {
    emulator: Emulator,
    upstream: String,
    held_index: String,
    free_index: String,
    held_collection: String,
    held_asset: String,
    /// Indexed in the held index (and the free one).
    in_held_index: String,
    /// Linked to an entity of the held collection only.
    in_held_collection: String,
    /// Indexed only in the free index.
    free_asset: String,
}

async fn held() -> Held {
    let (emulator, upstream) = start_emulator().await;
    let held_index = emulator.create_index("legal-hold");
    let free_index = emulator.create_index("scratch");
    let held_collection = emulator.create_entity_collection("witnesses");
    let held_asset = emulator.create_asset("deposition.mp4");
    let in_held_index = emulator.create_asset("board-meeting.mp4");
    emulator.index_asset(&held_index, &in_held_index).unwrap();
    emulator.index_asset(&free_index, &in_held_index).unwrap();
    let in_held_collection = emulator.create_asset("witness-photo.jpg");
    emulator
        .create_entity(&held_collection, "Witness", &[&in_held_collection])
        .unwrap();
    let free_asset = emulator.create_asset("b-roll.mov");
    emulator.index_asset(&free_index, &free_asset).unwrap();
    Held {
        emulator,
        upstream,
        held_index,
        free_index,
        held_collection,
        held_asset,
        in_held_index,
        in_held_collection,
        free_asset,
    }
}

fn protected_yaml(h: &Held, audit: &Path) -> String {
    format!(
        r#"guards:
  protected:
    indexes: [{}]
    entity_collections: [{}]
    assets: [{}]
    message: "Legal hold: ask legal@example.com"
audit:
  path: {}
"#,
        h.held_index,
        h.held_collection,
        h.held_asset,
        audit.display()
    )
}

async fn call(
    gateway: &TestGateway,
    method: Method,
    target: &str,
    json: Option<&str>,
) -> Response<Incoming> {
    let builder = request(method, &gateway.url(target), Some(ALICE_KEY));
    let req = match json {
        Some(text) => builder
            .header("content-type", "application/json")
            .body(full(text.to_owned()))
            .unwrap(),
        None => builder.body(body::empty()).unwrap(),
    };
    send(Proto::Http1, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_resources_are_refused_whoever_asks_and_never_reach_the_upstream() {
    let h = held().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gateway = TestGateway::start_with(&h.upstream, &protected_yaml(&h, &audit), |_| {}).await;
    let indexed_in_held = h
        .emulator
        .index_asset(&h.held_index, &h.free_asset)
        .unwrap();
    let entity = h
        .emulator
        .create_entity(&h.held_collection, "Another", &[&h.free_asset])
        .unwrap();
    let before = h.emulator.requests().len();
    let refused: Vec<(Method, String, Option<&str>, &str)> = vec![
        (
            Method::DELETE,
            format!("/v1.3/indexes/{}", h.held_index),
            None,
            &h.held_index,
        ),
        (
            Method::DELETE,
            format!(
                "/v1.3/indexes/{}/indexed-assets/{indexed_in_held}",
                h.held_index
            ),
            None,
            &h.held_index,
        ),
        (
            Method::PATCH,
            format!(
                "/v1.3/indexes/{}/indexed-assets/{indexed_in_held}",
                h.held_index
            ),
            Some(r#"{"user_metadata":{"x":1}}"#),
            &h.held_index,
        ),
        (
            Method::DELETE,
            format!(
                "/v1.3/entity-collections/{}/entities/{entity}",
                h.held_collection
            ),
            None,
            &h.held_collection,
        ),
        (
            Method::DELETE,
            format!("/v1.3/entity-collections/{}", h.held_collection),
            None,
            &h.held_collection,
        ),
        (
            Method::DELETE,
            format!("/v1.3/assets/{}", h.held_asset),
            None,
            &h.held_asset,
        ),
        (
            Method::PUT,
            format!("/v1.3/assets/{}/user-metadata", h.held_asset),
            Some(r#"{"case":"x"}"#),
            &h.held_asset,
        ),
    ];
    for (method, target, json, protected) in &refused {
        let response = call(&gateway, method.clone(), target, *json).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {target}"
        );
        let body = body_json(response).await;
        assert_eq!(
            body["code"], "resource_protected",
            "{method} {target}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(protected) && message.contains("Legal hold"),
            "{message}"
        );
    }
    assert_eq!(
        h.emulator.requests().len(),
        before,
        "nothing reached the upstream"
    );

    // Forced deletes: the reference lookup decides.
    for asset in [&h.in_held_index, &h.in_held_collection] {
        let response = call(
            &gateway,
            Method::DELETE,
            &format!("/v1.3/assets/{asset}?force=true"),
            None,
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(body_json(response).await["code"], "resource_protected");
        assert!(h.emulator.asset_exists(asset));
    }
    assert!(h
        .emulator
        .requests()
        .iter()
        .all(|r| r.method == Method::GET));
    // Indexed only in unprotected indexes: it goes through.
    let free_only = h.emulator.create_asset("free.mp4");
    h.emulator.index_asset(&h.free_index, &free_only).unwrap();
    let response = call(
        &gateway,
        Method::DELETE,
        &format!("/v1.3/assets/{free_only}?force=true"),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!h.emulator.asset_exists(&free_only));
    // A plain delete of a referenced asset passes to the upstream, which refuses it itself (409).
    let response = call(
        &gateway,
        Method::DELETE,
        &format!("/v1.3/assets/{}", h.in_held_index),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    // Reading is not changing.
    let response = call(
        &gateway,
        Method::GET,
        &format!("/v1.3/indexes/{}", h.held_index),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    let text = metrics(&gateway).await;
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_policy_denials_total{rule="guards.protected"}"#
        ),
        Some((refused.len() + 2) as f64)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let denied: Vec<_> = records(&audit)
            .into_iter()
            .filter(|r| r["phase"] == "denied" && r["rule"] == "guards.protected")
            .collect();
        if denied.len() == refused.len() + 2 {
            assert!(denied
                .iter()
                .any(|r| r["protected"] == h.held_index.as_str()));
            assert!(denied
                .iter()
                .any(|r| r["protected"] == h.held_collection.as_str()));
            assert!(denied
                .iter()
                .any(|r| r["protected"] == h.held_asset.as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "denied records: {denied:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_refuses_a_forced_delete_under_a_legal_hold_even_with_on_error_allow() {
    // The upstream answers the listing with 500.
    let upstream = Upstream::start(|r| async move {
        if r.method == Method::GET {
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"code":"x","message":"boom"}"#,
            )
        } else {
            json_response(StatusCode::OK, "{}")
        }
    })
    .await;
    let yaml = "guards:\n  force_delete:\n    on_error: allow\n  protected:\n    indexes: [held]\n";
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), yaml, |_| {}).await;
    let response = forced_delete(&gateway, ALICE_KEY, "6298d673f1090f1100476d4c").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(upstream.requests().iter().all(|r| r.method == Method::GET));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_never_asked_for_a_delete_a_legal_hold_forbids() {
    let h = held().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{TWO_PERSON}{}",
        protected_yaml(&h, &dir.path().join("a.jsonl"))
    );
    let gateway = TestGateway::start_with(&h.upstream, &yaml, |_| {}).await;
    let response = forced_delete(&gateway, BOB_KEY, &h.in_held_index).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_json(response).await["code"], "resource_protected");
    let (_, listed) = api(&gateway, Method::GET, "approvals", ALICE_KEY, None).await;
    assert_eq!(listed["approvals"], serde_json::json!([]));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_cannot_flood_the_approvers() {
    let (emulator, upstream) = start_emulator().await;
    let extra = format!("{TWO_PERSON}approvals:\n  max_pending_per_client: 3\n");
    let gateway = TestGateway::start_with(&upstream, &extra, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            ask(
                &gateway,
                BOB_KEY,
                &emulator.create_asset(&format!("a{i}.mp4")),
            )
            .await,
        );
    }
    let response = forced_delete(&gateway, BOB_KEY, &emulator.create_asset("one-more.mp4")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(body_json(response).await["code"], "too_many_requests");
    // Another requester is not affected; cancelling one makes room.
    ask(&gateway, ALICE_KEY, &emulator.create_asset("alices.mp4")).await;
    let (status, _) = api(
        &gateway,
        Method::POST,
        &format!("approvals/{}/cancel", ids[0]),
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    ask(&gateway, BOB_KEY, &emulator.create_asset("room-again.mp4")).await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_hold_refuses_a_forced_delete_whose_references_cannot_all_be_listed() {
    let h = held().await;
    // free_asset is indexed in the free index only, but two more indexes hold it and the listing
    // stops after one page of one item.
    let other = h.emulator.create_index("other");
    h.emulator.index_asset(&other, &h.free_asset).unwrap();
    let config = format!(
        "guards:\n  force_delete:\n    max_pages: 1\n    page_limit: 1\n  protected:\n    indexes: [{}]\n",
        h.held_index
    );
    let gateway = TestGateway::start_with(&h.upstream, &config, |_| {}).await;
    let response = forced_delete(&gateway, ALICE_KEY, &h.free_asset).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = body_json(response).await;
    assert_eq!(body["code"], "resource_protected", "{body}");
    assert!(h.emulator.asset_exists(&h.free_asset));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_cap_counts_exactly_however_many_approvals_came_and_went() {
    let (emulator, upstream) = start_emulator().await;
    let config = format!(
        "{TWO_PERSON}approvals:\n  max_pending_per_client: 10\n  max_asks_per_client: 1000\n"
    );
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let assets: Vec<String> = (0..40)
        .map(|i| emulator.create_asset(&format!("a{i}.mp4")))
        .collect();
    // Ten pending, one of them cancelled: nine.
    let mut pending = Vec::new();
    for asset in &assets[..10] {
        pending.push(ask(&gateway, BOB_KEY, asset).await);
    }
    let cancel = |id: String| {
        let gateway = &gateway;
        async move {
            let (status, _) = api(
                gateway,
                Method::POST,
                &format!("approvals/{id}/cancel"),
                BOB_KEY,
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    cancel(pending.remove(0)).await;
    // 101 ask-and-cancel cycles push the nine far down the requester's history.
    for i in 0..101 {
        let id = ask(&gateway, BOB_KEY, &assets[10 + i % 30]).await;
        cancel(id).await;
    }
    // Exactly one more fits (nine + one = ten); the next is refused.
    ask(&gateway, BOB_KEY, &assets[39]).await;
    let response = forced_delete(&gateway, BOB_KEY, &assets[38]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let (_, listed) = api(
        &gateway,
        Method::GET,
        "approvals?state=pending&limit=500",
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(
        listed["approvals"].as_array().unwrap().len(),
        10,
        "{listed}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_identical_asks_on_two_replicas_make_one_approval() {
    let postgres = PostgresServer::start();
    let (emulator, upstream) = start_emulator().await;
    let config = format!("{TWO_PERSON}{}", postgres.store_yaml());
    let a = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let b = TestGateway::start_with(&upstream, &config, |_| {}).await;
    for trial in 0..4 {
        let asset = emulator.create_asset(&format!("t{trial}.mp4"));
        let mut askers = Vec::new();
        for i in 0..8 {
            let target = if i % 2 == 0 { a.url("") } else { b.url("") };
            let asset = asset.clone();
            askers.push(tokio::spawn(async move {
                let response = send(
                    Proto::Http1,
                    request(
                        Method::DELETE,
                        &format!("{target}/v1.3/assets/{asset}?force=true"),
                        Some(BOB_KEY),
                    )
                    .body(body::empty())
                    .unwrap(),
                )
                .await;
                assert_eq!(response.status(), StatusCode::FORBIDDEN);
                response.headers()["x-tl-gateway-approval-id"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for asker in askers {
            ids.insert(asker.await.unwrap());
        }
        assert_eq!(ids.len(), 1, "trial {trial}: {ids:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

const METADATA_TWO_PERSON: &str = r#"policy:
  rules:
    - id: metadata-two-person
      match: { method: PUT, path: "/v1.3/assets/{asset_id}/user-metadata" }
      allow_roles: [admin, member]
      approval:
        approver_roles: [admin]
approvals:
  max_body_bytes: 1KiB
"#;

async fn put_metadata(gateway: &TestGateway, asset: &str, json: &str) -> Response<Incoming> {
    send(
        Proto::Http1,
        request(
            Method::PUT,
            &gateway.url(&format!("/v1.3/assets/{asset}/user-metadata")),
            Some(BOB_KEY),
        )
        .header("content-type", "application/json")
        .body(full(json.to_owned()))
        .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_covers_the_body_and_another_body_asks_anew() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        METADATA_TWO_PERSON,
        |_| {},
    )
    .await;
    let benign = r#"{"user_metadata":{"owner":"bob","note":"benign"}}"#;
    let response = put_metadata(&gateway, "a1", benign).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let id = response.headers()["x-tl-gateway-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The approver sees the body it is asked to approve.
    let (_, shown) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(shown["body"], benign);
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);

    // Another body is another request: it asks anew and is not forwarded.
    let response = put_metadata(&gateway, "a1", r#"{"user_metadata":{"owner":"mallory"}}"#).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_ne!(response.headers()["x-tl-gateway-approval-id"], id.as_str());
    assert!(upstream.requests().is_empty());
    // The approved body passes once, byte for byte.
    assert_eq!(
        put_metadata(&gateway, "a1", benign).await.status(),
        StatusCode::OK
    );
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].body_len, benign.len() as u64);
    let (_, used) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(used["state"], "used");

    // A body larger than approvals.max_body_bytes cannot be approved.
    let big = format!(r#"{{"user_metadata":{{"x":"{}"}}}}"#, "y".repeat(2000));
    let response = put_metadata(&gateway, "a2", &big).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_json(response).await["code"], "request_body_too_large");
    gateway.shutdown().await;
}

#[test]
fn check_refuses_an_approval_on_a_rule_that_can_match_an_upload() {
    let yaml = config_yaml(
        "http://127.0.0.1:9",
        std::path::Path::new("/dev/null"),
        "policy:\n  rules:\n    - id: uploads-two-person\n      match: { method: POST }\n      allow_roles: [member]\n      approval: { approver_roles: [admin] }\n",
    );
    let error = Config::parse(std::path::Path::new("gateway.yaml"), &yaml).unwrap_err();
    assert!(error.to_string().contains("multipart"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_has_a_budget_per_requester() {
    let (emulator, upstream) = start_emulator().await;
    let config = format!("{TWO_PERSON}approvals:\n  max_asks_per_client: 3\n");
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    for i in 0..3 {
        let id = ask(
            &gateway,
            BOB_KEY,
            &emulator.create_asset(&format!("b{i}.mp4")),
        )
        .await;
        let (status, _) = api(
            &gateway,
            Method::POST,
            &format!("approvals/{id}/cancel"),
            BOB_KEY,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let lookups_before = emulator.requests().len();
    let response = forced_delete(&gateway, BOB_KEY, &emulator.create_asset("b4.mp4")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body = body_json(response).await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("approvals.max_asks_per_client"));
    // Refused before any reference lookup upstream.
    assert_eq!(emulator.requests().len(), lookups_before);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_covers_only_the_blast_radius_its_approvers_saw() {
    let (emulator, upstream) = start_emulator().await;
    let asset = emulator.create_asset("quiet.mp4");
    let gateway = TestGateway::start_with(&upstream, TWO_PERSON, |_| {}).await;
    let id = ask(&gateway, BOB_KEY, &asset).await;
    let (_, shown) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{id}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(shown["references"]["indexed_assets"], serde_json::json!([]));
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);

    // Meanwhile the asset was indexed: the approved delete would now unlink something unseen.
    let index = emulator.create_index("late");
    emulator.index_asset(&index, &asset).unwrap();
    let response = forced_delete(&gateway, BOB_KEY, &asset).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let again = response.headers()["x-tl-gateway-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(again, id);
    let body = body_json(response).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("no longer covers"), "{message}");
    assert_eq!(deletes_seen(&emulator, &asset), 0);
    // The new approval shows the approvers what it reaches now.
    let (_, shown) = api(
        &gateway,
        Method::GET,
        &format!("approvals/{again}"),
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(
        shown["references"]["indexed_assets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(approve(&gateway, &again, ALICE_KEY).await.0, StatusCode::OK);
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &asset).await.status(),
        StatusCode::OK
    );
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bodies_are_signed_and_a_hanging_endpoint_delays_no_other_notification() {
    // The first notification hangs; every later one is answered at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    /// When a notification arrived, its signature header and its body.
    type Received = (Instant, String, Vec<u8>);
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (log, hang) = (log.clone(), std::mem::take(&mut first));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let signature = req
                            .headers()
                            .get("x-tl-gateway-signature")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let bytes = req.into_body().collect().await.unwrap().to_bytes();
                        if hang {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        log.lock()
                            .unwrap()
                            .push((Instant::now(), signature, bytes.to_vec()));
                        Ok::<_, Infallible>(Response::new(body::empty()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let (emulator, upstream) = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    let secret = "s3cret-signing-key-0123456789";
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let config = format!(
        "{TWO_PERSON}approvals:\n  notify:\n    webhook_url: http://{addr}/hook\n    timeout: 20s\n    max_attempts: 1\n    secret_file: {}\n",
        secret_file.display()
    );
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    ask(&gateway, BOB_KEY, &emulator.create_asset("h1.mp4")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    ask(&gateway, BOB_KEY, &emulator.create_asset("h2.mp4")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (arrived, signature, bytes) = loop {
        if let Some(found) = seen.lock().unwrap().first().cloned() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the second notification waited behind the hanging first"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(arrived.duration_since(asked) < Duration::from_secs(3));
    assert_eq!(
        signature,
        tl_gateway::approvals::notify::signature(secret.as_bytes(), &bytes)
    );
    assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
    let event: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(event["event"], "approval.requested");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_meets_the_limits_of_its_request_without_spending_them() {
    let (emulator, upstream) = start_emulator().await;
    // Bob may make one forced delete a day.
    let config = format!(
        "{TWO_PERSON}rate_limits:\n  - id: member-delete-budget\n    match: {{ method: DELETE }}\n    roles: [member]\n    per: client\n    rate: 1/day\n    burst: 1\n"
    );
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let first = emulator.create_asset("first.mp4");
    // Asking spends nothing: the budget is still whole for the approved re-send.
    let id = ask(&gateway, BOB_KEY, &first).await;
    assert_eq!(ask(&gateway, BOB_KEY, &first).await, id);
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &first).await.status(),
        StatusCode::OK
    );
    assert_eq!(deletes_seen(&emulator, &first), 1);
    // The budget is spent: asking for another is refused by it, before any lookup upstream,
    // and no approval is made that could never be used.
    let second = emulator.create_asset("second.mp4");
    let seen_before = emulator.requests().len();
    let response = forced_delete(&gateway, BOB_KEY, &second).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!response.headers().contains_key("x-tl-gateway-approval-id"));
    let body = body_json(response).await;
    assert_eq!(body["code"], "too_many_requests", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("member-delete-budget"),
        "{body}"
    );
    assert_eq!(emulator.requests().len(), seen_before, "no upstream call");
    let (_, pending) = api(
        &gateway,
        Method::GET,
        "approvals?state=pending",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(pending["approvals"], serde_json::json!([]), "{pending}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_audit_reserve_asking_stops_and_approved_deletes_still_go() {
    let (emulator, upstream) = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let store = format!(
        "store:\n  backend: sqlite\n  sqlite:\n    path: {}\n",
        dir.path().join("store.db").display()
    );
    let asset = emulator.create_asset("keep.mp4");
    // With room: one approval asked for and approved, one left pending.
    let gateway = TestGateway::start_with(&upstream, &two_person(&audit, &store), |_| {}).await;
    let id = ask(&gateway, BOB_KEY, &asset).await;
    assert_eq!(approve(&gateway, &id, ALICE_KEY).await.0, StatusCode::OK);
    let other = ask(&gateway, BOB_KEY, &emulator.create_asset("other.mp4")).await;
    gateway.shutdown().await;
    // Now the audit volume is below audit.reserve (a reserve larger than any volume).
    let config = format!(
        "{TWO_PERSON}audit:\n  path: {}\n  reserve: 1000000GiB\n{store}",
        audit.display()
    );
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let before = records(&audit).len();
    // Asking and withdrawing (bookkeeping anyone can cause at will) stop...
    let response = forced_delete(&gateway, BOB_KEY, &emulator.create_asset("new.mp4")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_json(response).await["code"], "audit_unavailable");
    let (status, body) = api(
        &gateway,
        Method::POST,
        &format!("approvals/{other}/cancel"),
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // ... while the approved delete still goes, with its intent and outcome recorded.
    assert_eq!(
        forced_delete(&gateway, BOB_KEY, &asset).await.status(),
        StatusCode::OK
    );
    assert_eq!(deletes_seen(&emulator, &asset), 1);
    gateway.shutdown().await;
    let phases: Vec<String> = records(&audit)[before..]
        .iter()
        .map(|r| r["phase"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(phases.contains(&"intent".to_owned()), "{phases:?}");
    assert!(phases.contains(&"outcome".to_owned()), "{phases:?}");
    assert_eq!(
        phases.iter().filter(|p| *p == "approval").count(),
        1,
        "only the use of the approval is recorded, no new ask or withdrawal: {phases:?}"
    );
}
