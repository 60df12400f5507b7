//! Clients and keys issued, rotated and revoked at runtime through the gateway's API (issue #22):
//! on SQLite (kept across a restart) and on a real PostgreSQL shared by two gateway processes (a
//! change on one is seen by the other within a second; an outage keeps existing keys working).

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::process::GatewayProcess;
use crate::store::PostgresServer;
use crate::support::*;

async fn assets(base: &str, key: &str) -> (StatusCode, serde_json::Value) {
    let response = get(&format!("{base}/v1.3/assets"), Some(key)).await;
    let status = response.status();
    let bytes = body_bytes(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Create `id` (member) and issue it a key, as alice; the key.
async fn onboard(base: &str, id: &str) -> String {
    let (status, client) = api_call(
        base,
        Method::POST,
        "clients",
        ALICE_KEY,
        Some(serde_json::json!({ "id": id, "roles": ["member"] })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{client}");
    assert_eq!(client["source"], "store");
    let (status, issued) = api_call(
        base,
        Method::POST,
        &format!("clients/{id}/keys"),
        ALICE_KEY,
        Some(serde_json::json!({ "label": "laptop", "expires": "90d" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["label"], "laptop");
    issued["key"].as_str().unwrap().to_owned()
}

fn sqlite_store(dir: &std::path::Path) -> String {
    format!(
        "store:\n  backend: sqlite\n  sqlite:\n    path: {}\n",
        dir.join("store.db").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_issues_revokes_and_disables_and_a_restart_keeps_it_all() {
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let extra = format!(
        "{}audit:\n  path: {}\n",
        sqlite_store(dir.path()),
        audit.display()
    );
    let gateway = TestGateway::start_with(&origin, &extra, |_| {}).await;
    let base = gateway.url("");

    let key = onboard(&base, "carol").await;
    assert!(key.starts_with("tlgw_"));
    assert_eq!(assets(&base, &key).await.0, StatusCode::OK);

    // Listing: YAML and store clients, never a key or its digest.
    let (status, listed) = api_call(&base, Method::GET, "clients", ALICE_KEY, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = listed.to_string();
    assert!(!text.contains(&key) && !text.contains(&tl_gateway::auth::key_digest_hex(&key)));
    let clients = listed["clients"].as_array().unwrap();
    let carol = clients.iter().find(|c| c["id"] == "carol").unwrap();
    assert_eq!(carol["source"], "store");
    assert_eq!(carol["keys"][0]["state"], "active");
    assert_eq!(carol["keys"][0]["created_by"], "alice");
    let alice = clients.iter().find(|c| c["id"] == "alice").unwrap();
    assert_eq!(alice["source"], "config");

    // Refusals in the TwelveLabs shape.
    let (status, body) = api_call(
        &base,
        Method::POST,
        "clients",
        ALICE_KEY,
        Some(serde_json::json!({ "id": "alice", "roles": [] })),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("client_exists"))
    );
    let (status, body) = api_call(
        &base,
        Method::POST,
        "clients",
        ALICE_KEY,
        Some(serde_json::json!({ "id": "dave", "roles": ["superuser"] })),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let (status, body) = api_call(
        &base,
        Method::PATCH,
        "clients/bob",
        ALICE_KEY,
        Some(serde_json::json!({ "disabled": true })),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("client_read_only"))
    );
    let (status, body) = api_call(&base, Method::GET, "clients", BOB_KEY, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("policy_denied"))
    );
    let (status, body) = api_call(&base, Method::GET, "clients/nobody", ALICE_KEY, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("client_not_found"))
    );

    // A second key, then the first revoked: 401 key_revoked naming client and label.
    let (status, second) = api_call(
        &base,
        Method::POST,
        "clients/carol/keys",
        ALICE_KEY,
        Some(serde_json::json!({ "label": "ci" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let second = second["key"].as_str().unwrap().to_owned();
    let (status, _) = api_call(
        &base,
        Method::DELETE,
        "clients/carol/keys/laptop",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = assets(&base, &key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "key_revoked");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("carol") && message.contains("laptop") && !message.contains(&key));
    assert_eq!(assets(&base, &second).await.0, StatusCode::OK);

    // Disabled: every key refused with client_disabled; enabled again: works.
    let (status, _) = api_call(
        &base,
        Method::PATCH,
        "clients/carol",
        ALICE_KEY,
        Some(serde_json::json!({ "disabled": true })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(assets(&base, &second).await.1["code"], "client_disabled");
    let (status, _) = api_call(
        &base,
        Method::PATCH,
        "clients/carol",
        ALICE_KEY,
        Some(serde_json::json!({ "disabled": false })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(assets(&base, &second).await.0, StatusCode::OK);

    // Self-service rotation: a new key; the presented one retired at once (0s).
    let (status, rotated) = api_call(
        &base,
        Method::POST,
        "me/keys",
        &second,
        Some(serde_json::json!({ "label": "ci-2", "retire_presented_after": "0s" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["retires"]["label"], "ci");
    let third = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(assets(&base, &second).await.1["code"], "key_expired");
    assert_eq!(assets(&base, &third).await.0, StatusCode::OK);
    // A YAML client cannot rotate through the API.
    let (status, body) = api_call(
        &base,
        Method::POST,
        "me/keys",
        BOB_KEY,
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("client_read_only"))
    );

    // Every change is a chained admin record, durable before the answer.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = records
        .iter()
        .filter(|r| r["phase"] == "admin")
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "client_created",
            "key_issued",
            "key_issued",
            "key_revoked",
            "client_disabled",
            "client_enabled",
            "key_rotated"
        ]
    );
    let revoked = records
        .iter()
        .find(|r| r["event"] == "key_revoked")
        .unwrap();
    assert_eq!(revoked["actor"], "alice");
    assert_eq!(revoked["client"], "carol");
    assert_eq!(revoked["label"], "laptop");
    assert!(!std::fs::read_to_string(&audit).unwrap().contains(&third));
    gateway.shutdown().await;

    // Restarted on the same file: the clients and keys are all still there.
    let gateway = TestGateway::start_with(&origin, &extra, |_| {}).await;
    let base = gateway.url("");
    assert_eq!(assets(&base, &third).await.0, StatusCode::OK);
    assert_eq!(assets(&base, &key).await.1["code"], "key_revoked");
    gateway.shutdown().await;
}

/// Poll `check` until it holds; how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_postgres_see_each_others_keys_within_a_second() {
    let mut postgres = PostgresServer::start();
    let upstream = Upstream::recording().await;
    let origin = format!("http://{}", upstream.addr);
    // A long resync interval: what propagates within a second is the notification.
    let extra = format!("{}  refresh_interval: 60s\n", postgres.store_yaml());
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = GatewayProcess::serve_in(dir_a.path(), &origin, "info", &extra);
    let b = GatewayProcess::serve_in(dir_b.path(), &origin, "info", &extra);
    let (base_a, base_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));

    // Issued on A: works on B within a second.
    let key = onboard(&base_a, "erin").await;
    let took = within(Duration::from_secs(1), || async {
        assets(&base_b, &key).await.0 == StatusCode::OK
    })
    .await;
    eprintln!("issued on A, usable on B after {took:?}");
    // Revoked on B: refused on A within a second.
    let (status, _) = api_call(
        &base_b,
        Method::DELETE,
        "clients/erin/keys/laptop",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let took = within(Duration::from_secs(1), || async {
        assets(&base_a, &key).await.1["code"] == "key_revoked"
    })
    .await;
    eprintln!("revoked on B, refused on A after {took:?}");

    // PostgreSQL down: existing keys keep working from the snapshot, changes get 503.
    let (status, issued) = api_call(
        &base_a,
        Method::POST,
        "clients/erin/keys",
        ALICE_KEY,
        Some(serde_json::json!({ "label": "spare" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let spare = issued["key"].as_str().unwrap().to_owned();
    within(Duration::from_secs(1), || async {
        assets(&base_b, &spare).await.0 == StatusCode::OK
    })
    .await;
    postgres.stop();
    assert_eq!(assets(&base_b, &spare).await.0, StatusCode::OK);
    assert_eq!(assets(&base_a, BOB_KEY).await.0, StatusCode::OK);
    let (status, body) = api_call(
        &base_b,
        Method::POST,
        "clients",
        ALICE_KEY,
        Some(serde_json::json!({ "id": "frank", "roles": ["member"] })),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "store_unavailable");
    let readyz = body_json(get(&format!("http://{}/readyz", b.admin), None).await).await;
    assert_eq!(readyz["ready"], true, "{readyz}");

    // Back: changes work again, without a restart.
    postgres.restart();
    within(Duration::from_secs(15), || async {
        api_call(
            &base_b,
            Method::POST,
            "clients",
            ALICE_KEY,
            Some(serde_json::json!({ "id": "frank", "roles": ["member"] })),
        )
        .await
        .0 == StatusCode::CREATED
    })
    .await;
    drop(a);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_works_with_a_key_issued_through_the_api_until_it_is_revoked() {
    let (emulator, upstream) = crate::sdk::start_emulator().await;
    let seeded = emulator.seed_demo();
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(&upstream, &sqlite_store(dir.path()), |_| {}).await;
    let base = gateway.url("");
    let key = onboard(&base, "grace").await;
    let output =
        crate::sdk::run_sdk_script(gateway.url("/v1.3"), &key, &seeded.referenced_asset_id, "")
            .await;
    for step in ["list", "upload", "delete"] {
        assert!(
            output
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(step)),
            "no {step} step:\n{output}"
        );
    }
    // The gateway's own key went upstream, never the issued one.
    assert!(emulator
        .requests()
        .iter()
        .all(|r| r.headers.values().all(|v| v.as_bytes() != key.as_bytes())));
    let (status, _) = api_call(
        &base,
        Method::DELETE,
        "clients/grace/keys/laptop",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut command = std::process::Command::new(crate::sdk::python());
    command.arg("-c").arg(
        "import os\nfrom twelvelabs import TwelveLabs\ntry:\n    list(TwelveLabs(api_key=os.environ['K'], base_url=os.environ['U']).assets.list())\n    print('NOT REFUSED')\nexcept Exception as e:\n    print('REFUSED', getattr(e, 'status_code', ''), getattr(e, 'body', ''))\n",
    );
    command
        .env("K", &key)
        .env("U", gateway.url("/v1.3"))
        .env_remove("TWELVELABS_BASE_URL");
    let output = run_checked(command, "SDK after revocation").await;
    assert!(output.contains("REFUSED 401"), "{output}");
    assert!(output.contains("key_revoked"), "{output}");
    gateway.shutdown().await;
}
