//! The record store on a real PostgreSQL and on SQLite: the store's contract, replicas migrating
//! an empty database at once, approvals shared by two replicas on one PostgreSQL, approvals kept
//! across a restart on SQLite, and an outage that recovers by itself.
//!
//! Every PostgreSQL test starts its own server (Debian's `postgresql`; `.ci/run` and `scripts/test`
//! install it) in a temporary data directory, and fails if it is missing.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;
use tl_gateway::store::{RecordStore, StoreBackend, StoreSettings};

use crate::support::*;

/// A PostgreSQL server of this test's own: a fresh data directory, a free loopback port.
pub struct PostgresServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    running: bool,
}

/// Run a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn as_postgres(bin: &std::path::Path, tool: &str) -> std::process::Command {
    let root = rustix_uid_is_root();
    let mut command = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        std::process::Command::new(bin.join(tool))
    };
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

fn rustix_uid_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .find(|b| b.join("initdb").exists())
            })
            .expect("PostgreSQL is needed (apt-get install postgresql; .ci/run installs it)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["data", "sock"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        if rustix_uid_is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path().join("data"))
                .arg(dir.path().join("sock"))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let status = as_postgres(&bin, "initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["--auth=trust", "-U", "postgres"])
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let mut server = PostgresServer {
            port,
            dir,
            bin,
            running: false,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let data = self.dir.path().join("data");
        let status = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-w")
            .arg("-l")
            .arg(data.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().join("sock").display()
            ))
            .arg("start")
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
        self.running = true;
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop the server (fast shutdown: an outage).
    pub fn stop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .status();
        self.running = false;
    }

    /// Start it again with the same data.
    pub fn restart(&mut self) {
        self.run();
    }

    /// The `store:` section for a gateway on this server.
    pub fn store_yaml(&self) -> String {
        format!(
            "store:\n  backend: postgres\n  postgres:\n    url: {}\n    timeout: 1s\n",
            self.url()
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            self.stop();
        }
    }
}

fn settings(backend: StoreBackend) -> StoreSettings {
    StoreSettings {
        backend,
        timeout: Duration::from_secs(1),
        ..StoreSettings::default()
    }
}

fn gauge() -> prometheus::IntGauge {
    prometheus::IntGauge::new("up", "up").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_migrate_an_empty_postgres_at_once_and_share_its_records() {
    let server = PostgresServer::start();
    let backend = StoreBackend::Postgres {
        url: server.url(),
        max_connections: 4,
    };
    let settings = settings(backend);
    // Both start at once on an empty database: the migrator's advisory lock orders them.
    let (a, b) = tokio::join!(
        RecordStore::open(&settings, gauge()),
        RecordStore::open(&settings, gauge())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.backend(), "postgres");
    // One replica's write is the other's read; a swap wins once across both.
    assert!(a.insert("k", "v1", Duration::from_secs(60)).await.unwrap());
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some("v1"));
    let (x, y) = tokio::join!(
        a.swap("k", "v1", "from-a", Duration::from_secs(60)),
        b.swap("k", "v1", "from-b", Duration::from_secs(60))
    );
    assert_eq!(
        u8::from(x.unwrap()) + u8::from(y.unwrap()),
        1,
        "exactly one swap wins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_store_contract() {
    let server = PostgresServer::start();
    let store = RecordStore::open(
        &settings(StoreBackend::Postgres {
            url: server.url(),
            max_connections: 2,
        }),
        gauge(),
    )
    .await
    .unwrap();
    // The same contract the unit tests run on memory and SQLite (src/store/tests.rs).
    let hour = Duration::from_secs(3600);
    assert!(store.insert("a", "one", hour).await.unwrap());
    assert!(!store.insert("a", "two", hour).await.unwrap());
    assert!(!store.swap("a", "two", "three", hour).await.unwrap());
    assert!(store.swap("a", "one", "three", hour).await.unwrap());
    assert!(!store.swap("a", "one", "four", hour).await.unwrap());
    assert!(store
        .insert("b", "short", Duration::from_millis(30))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.get("b").await.unwrap(), None);
    assert!(store.insert("b", "again", hour).await.unwrap());
    for (member, score) in [("m1", 10), ("m2", 20), ("m3", 20), ("m4", 30)] {
        store.index_add("idx", member, score).await.unwrap();
    }
    assert_eq!(
        store.index_page("idx", Some((20, "m3")), 2).await.unwrap(),
        vec![("m2".to_owned(), 20), ("m1".to_owned(), 10)]
    );
    assert_eq!(
        store.index_beyond("idx", 2, 10).await.unwrap(),
        vec!["m2".to_owned(), "m1".to_owned()]
    );
    assert_eq!(
        store.get_many(&["a".into(), "zz".into()]).await.unwrap(),
        vec![Some("three".to_owned()), None]
    );
}

/// Approvals: bob's forced delete needs an admin's yes (as in tests/gateway/approvals.rs).
const TWO_PERSON: &str = crate::approvals::TWO_PERSON;

async fn forced_delete(
    gateway: &TestGateway,
    asset: &str,
) -> http::Response<hyper::body::Incoming> {
    send(
        Proto::Http1,
        request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/assets/{asset}?force=true")),
            Some(BOB_KEY),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await
}

async fn approval_state(gateway: &TestGateway, id: &str) -> serde_json::Value {
    let response = get(
        &gateway.url(&format!("/tl-gateway/v1/approvals/{id}")),
        Some(ALICE_KEY),
    )
    .await;
    body_json(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_gateway_restarted_keeps_its_pending_approvals() {
    let (emulator, upstream) = crate::sdk::start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let dir = tempfile::tempdir().unwrap();
    let store = format!(
        "store:\n  backend: sqlite\n  sqlite:\n    path: {}\n",
        dir.path().join("store.db").display()
    );
    let config = format!("{TWO_PERSON}{store}");
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let response = forced_delete(&gateway, &asset).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let id = response.headers()["x-tl-gateway-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    gateway.shutdown().await;

    // A new process on the same file: the approval is still pending, and works.
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    assert_eq!(approval_state(&gateway, &id).await["state"], "pending");
    let response = send(
        Proto::Http1,
        request(
            Method::POST,
            &gateway.url(&format!("/tl-gateway/v1/approvals/{id}/approve")),
            Some(ALICE_KEY),
        )
        .body(body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        forced_delete(&gateway, &asset).await.status(),
        StatusCode::OK
    );
    assert_eq!(approval_state(&gateway, &id).await["state"], "used");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_approvals_answer_503_and_it_recovers_without_a_restart() {
    let mut server = PostgresServer::start();
    let (emulator, upstream) = crate::sdk::start_emulator().await;
    let asset = emulator.create_asset("a.mp4");
    let config = format!("{TWO_PERSON}{}", server.store_yaml());
    let gateway = TestGateway::start_with(&upstream, &config, |_| {}).await;
    let readyz = |gateway: &TestGateway| {
        let url = format!("http://{}/readyz", gateway.admin);
        async move {
            let response = get(&url, None).await;
            (response.status(), body_json(response).await)
        }
    };

    server.stop();
    let response = forced_delete(&gateway, &asset).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_json(response).await;
    assert_eq!(body["code"], "approvals_unavailable");
    assert!(
        !body["message"].as_str().unwrap().contains("postgres"),
        "{body}"
    );
    // Everything else is served, and the replica stays ready, degraded.
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .await
            .status(),
        StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&gateway).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["checks"]["store"]
            .as_str()
            .unwrap()
            .starts_with("unavailable")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage was not noticed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = forced_delete(&gateway, &asset).await;
        if response.status() == StatusCode::FORBIDDEN {
            assert!(response.headers().contains_key("x-tl-gateway-approval-id"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.shutdown().await;
}
