//! The deployment kit against the real thing: every metric the alerts and the dashboard use exists
//! in a running gateway's /metrics, and a real Prometheus server scrapes the gateway and sees its
//! deletions (and loads the alert rules); the kit's two gateway configurations pass `check`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;

use crate::support::*;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("tl_gateway_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

const EXTRA: &str = r#"policy:
  rules:
    - id: force-delete-admins-only
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin]
    - id: collection-delete-two-person
      match: { operation: entity_collections.delete }
      allow_roles: [admin, member]
      approval: { approver_roles: [admin] }
rate_limits:
  - id: member-deletes
    match: { method: DELETE }
    roles: [member]
    per: client
    rate: 30/minute
    burst: 10
"#;

async fn gateway_with_traffic(upstream: &Upstream, audit: &std::path::Path) -> TestGateway {
    let extra = format!("{EXTRA}audit:\n  path: {}\n", audit.display());
    // A client whose key has an end date, so the key-expiry gauge (and its alert) has a series.
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |config| {
        let mut dave = tl_gateway::auth::ClientSettings::with_key("dave", &["member"], [7; 32]);
        dave.keys[0].label = "laptop-2027".into();
        dave.keys[0].expires =
            Some(std::time::SystemTime::now() + Duration::from_secs(30 * 86_400));
        config.clients.push(dave);
    })
    .await;
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(BOB_KEY))
            .await
            .status(),
        StatusCode::OK
    );
    let req = request(
        Method::DELETE,
        &gateway.url("/v1.3/assets/a1?force=true"),
        Some(BOB_KEY),
    )
    .body(body::empty())
    .unwrap();
    assert_eq!(
        send(Proto::Http1, req).await.status(),
        StatusCode::FORBIDDEN
    );
    gateway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_alerts_and_the_dashboard_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::recording().await;
    let gateway = gateway_with_traffic(&upstream, &dir.path().join("audit.jsonl")).await;
    for i in 0..2 {
        let req = request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/indexes/i{i}")),
            Some(ALICE_KEY),
        )
        .body(body::empty())
        .unwrap();
        assert_eq!(send(Proto::Http1, req).await.status(), StatusCode::OK);
    }
    let exported = String::from_utf8(
        body_bytes(get(&format!("http://{}/metrics", gateway.admin), None).await)
            .await
            .to_vec(),
    )
    .unwrap();
    let mut used = BTreeSet::new();
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/grafana/tl-gateway.json",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        used.extend(names);
    }
    let missing: Vec<_> = used
        .iter()
        .filter(|name| {
            !exported.lines().any(|l| {
                l.starts_with(name.as_str())
                    && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "used by alerts or dashboard but not exported: {missing:?}\n{exported}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_gateway_and_sees_its_deletions() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "the prometheus server is needed (apt-get install prometheus; .ci/run installs it)",
        );
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::recording().await;
    let gateway = gateway_with_traffic(&upstream, &dir.path().join("audit.jsonl")).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tl-gateway\n    static_configs:\n      - targets: ['{}']\n",
            repo_root().join("deploy/prometheus/alerts.yaml").display(),
            gateway.admin
        ),
    )
    .unwrap();
    let server = KillOnDrop(
        std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    for i in 0..3 {
        let req = request(
            Method::DELETE,
            &gateway.url(&format!("/v1.3/indexes/i{i}")),
            Some(ALICE_KEY),
        )
        .body(body::empty())
        .unwrap();
        assert_eq!(send(Proto::Http1, req).await.status(), StatusCode::OK);
    }
    // The outcomes are counted when the responses end: wait until the gateway itself says 3.
    let series = r#"tl_gateway_deletions_total{client="alice",force="false",operation="indexes.delete",outcome="success"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8(
            body_bytes(get(&format!("http://{}/metrics", gateway.admin), None).await)
                .await
                .to_vec(),
        )
        .unwrap();
        if tl_gateway::metrics::counter_value(&text, series) == Some(3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not count 3 deletions:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deleted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let api = format!("http://127.0.0.1:{port}/api/v1");
    // Wait for a scrape taken after the deletions (by its timestamp), then read what it saw.
    let scraped = format!("{api}/query?query=timestamp(tl_gateway_build_info)");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at = tokio::time::timeout(Duration::from_secs(2), try_get(&scraped))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|r| {
                r["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_owned)
            })
            .and_then(|v| v.parse::<f64>().ok());
        if at.is_some_and(|at| at > deleted_at) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the gateway after the deletions"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let query = format!("{api}/query?query=sum(tl_gateway_deletions_total%7Bclient=%22alice%22,outcome=%22success%22%7D)");
    let result = try_get(&query).await.unwrap();
    assert_eq!(
        result["data"]["result"][0]["value"][1], "3",
        "Prometheus saw {result}"
    );
    let rules = try_get(&format!("{api}/rules")).await.unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups[0]["name"], "tl-gateway");
    // Prometheus loaded every rule the file defines.
    let defined = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yaml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert!(defined >= 11);
    assert_eq!(groups[0]["rules"].as_array().unwrap().len(), defined);
    drop(server);
    gateway.shutdown().await;
}

async fn try_get(url: &str) -> Result<serde_json::Value, String> {
    let client: hyper_util::client::legacy::Client<_, tl_gateway::body::GatewayBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = client
        .request(http::Request::get(url).body(body::empty()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The kit's two gateway configurations, with the container paths of their secrets and data moved
/// into `dir` (where the secret files are written), so `check` reads them as the pod would.
fn kit_config_here(file: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let secrets = [
        (
            "/run/secrets/twelvelabs-api-key",
            "tlk_example_upstream_key",
        ),
        ("/run/redis/url", "redis://:password@127.0.0.1:6379/0"),
        (
            "/run/postgres/url",
            "postgres://tlgw:password@127.0.0.1:5432/tlgw",
        ),
    ];
    let mut text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    for (i, (path, value)) in secrets.iter().enumerate() {
        let here = dir.join(format!("secret-{i}"));
        std::fs::write(&here, format!("{value}\n")).unwrap();
        text = text.replace(path, here.to_str().unwrap());
    }
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    text = text.replace("/var/lib/tl-gateway", data.to_str().unwrap());
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn the_kit_configurations_pass_check_and_differ_only_in_their_store() {
    const SEVERAL: &str = "deploy/kubernetes/gateway.yaml";
    const SINGLE: &str = "deploy/kubernetes-single-replica/gateway.yaml";
    for (file, backend) in [(SEVERAL, "postgres"), (SINGLE, "sqlite")] {
        let dir = tempfile::tempdir().unwrap();
        let config = kit_config_here(file, dir.path());
        let output = std::process::Command::new(binary())
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(file)).unwrap())
                .unwrap();
        assert_eq!(parsed["store"]["backend"].as_str(), Some(backend), "{file}");
    }
    // The overlay replaces the ConfigMap wholesale: everything but store: must stay in step.
    let without_store = |file: &str| {
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(file)).unwrap())
                .unwrap();
        value.as_mapping_mut().unwrap().remove("store").unwrap();
        value
    };
    assert_eq!(
        without_store(SEVERAL),
        without_store(SINGLE),
        "{SINGLE} differs from {SEVERAL} outside store:"
    );
}
