//! HTTPS on the client listener with certificates made at test time by the `openssl` CLI (as an
//! operator would make them): curl and the official SDK over HTTP/1.1 and HTTP/2, hot reload of the
//! pair, client certificates as identities, plain HTTP refused; and the key lifecycle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tl_gateway::body;
use tl_gateway::metrics::counter_value;

use crate::sdk::{python, start_emulator};
use crate::support::*;

/// A test PKI: a CA and certificates it signs, written by `openssl`.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed (scripts/test and .ci/run install it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

impl Pki {
    fn new(dir: &Path) -> Pki {
        let pki = Pki {
            dir: dir.to_owned(),
        };
        pki.ca("ca");
        pki
    }

    fn ca(&self, name: &str) {
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        let mut args = vec!["req", "-x509", "-new"];
        args.extend(EC);
        args.extend([
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "3650",
            "-subj",
            "/CN=tl-gateway test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&self.dir, &args);
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `NAME.pem` and `NAME.key` signed by `ca` with these extensions.
    fn leaf(&self, ca: &str, name: &str, subject: &str, extensions: &str) {
        let (key, csr, cert, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        let mut args = vec!["req", "-new"];
        args.extend(EC);
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(&self.dir, &args);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "825",
                "-sha256",
                "-extfile",
                &ext,
            ],
        );
    }

    fn server(&self, name: &str) {
        self.leaf(
            "ca",
            name,
            "/CN=localhost",
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        );
    }

    fn client(&self, ca: &str, name: &str, cn: &str) {
        self.leaf(
            ca,
            name,
            &format!("/O=TL/CN={cn}"),
            &format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://tl/{cn}\n"),
        );
    }

    /// Lowercase hex serial of `NAME.pem`.
    fn serial(&self, name: &str) -> String {
        let output = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(self.path(&format!("{name}.pem")))
            .output()
            .unwrap();
        serial_of(&String::from_utf8_lossy(&output.stdout))
    }

    /// SHA-256 of `NAME.pem`'s DER, lowercase hex.
    fn fingerprint(&self, name: &str) -> String {
        let output = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.path(&format!("{name}.pem")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase()
    }

    fn tls_yaml(&self, cert: &str, client_ca: bool) -> String {
        let mut yaml = format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            self.path(&format!("{cert}.pem")).display(),
            self.path(&format!("{cert}.key")).display()
        );
        if client_ca {
            yaml.push_str(&format!(
                "  client_ca_file: {}\n",
                self.path("ca.pem").display()
            ));
        }
        yaml
    }
}

fn serial_of(text: &str) -> String {
    text.trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_lowercase()
}

/// Copy `from` over `to` the way a secret swap does: write beside, rename over.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(tmp, to).unwrap();
}

/// `curl` against the gateway; returns (exit code, stdout).
async fn curl(args: Vec<String>) -> (i32, String) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is needed (scripts/test installs it)")
    })
    .await
    .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn https(gateway: &TestGateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gateway.addr.port())
}

/// The serial of the certificate the gateway serves now (a new connection).
async fn served_serial(gateway: &TestGateway) -> String {
    let port = gateway.addr.port();
    let text = tokio::task::spawn_blocking(move || {
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap();
    serial_of(&text)
}

async fn readyz(gateway: &TestGateway) -> (StatusCode, serde_json::Value) {
    let response = get(&format!("http://{}/readyz", gateway.admin), None).await;
    let status = response.status();
    (status, body_json(response).await)
}

async fn metrics(gateway: &TestGateway) -> String {
    let response = get(&format!("http://{}/metrics", gateway.admin), None).await;
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_https_over_http1_and_http2_and_plain_http_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    let (_emulator, upstream) = start_emulator().await;
    let gateway = TestGateway::start_with(&upstream, &pki.tls_yaml("server", false), |_| {}).await;
    let ca = pki.path("ca.pem").display().to_string();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out) = curl(vec![
            "--cacert".into(),
            ca.clone(),
            flag.into(),
            "-H".into(),
            format!("x-api-key: {BOB_KEY}"),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code} %{http_version}".into(),
            https(&gateway, "/v1.3/assets"),
        ])
        .await;
        assert_eq!((code, out.as_str()), (0, format!("200 {version}").as_str()));
    }
    // Without trusting the CA, curl refuses the certificate.
    let (code, _) = curl(vec![https(&gateway, "/v1.3/assets")]).await;
    assert_eq!(code, 60, "unknown CA");
    // Plain HTTP to the TLS port: a clean 400 in the TwelveLabs error shape, then close.
    let (code, out) = curl(vec![
        "-i".into(),
        format!("http://127.0.0.1:{}/v1.3/assets", gateway.addr.port()),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#""code":"tls_required""#), "{out}");
    let text = metrics(&gateway).await;
    assert!(
        counter_value(
            &text,
            r#"tl_gateway_tls_handshake_failures_total{reason="plain_http"}"#
        )
        .unwrap()
            >= 1.0
    );
    let expiry =
        counter_value(&text, "tl_gateway_tls_certificate_expiry_timestamp_seconds").unwrap();
    let in_days = (expiry - std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64()) / 86_400.0;
    assert!(
        (820.0..830.0).contains(&in_days),
        "expires in {in_days} days"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_sockets_silent_before_or_in_the_handshake_make_room_for_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    let (_emulator, upstream) = start_emulator().await;
    // Deadlines far away: only eviction can free a place within the test's time.
    let yaml = format!(
        "{}server:\n  max_connections: 10\n  header_read_timeout: 60s\n  worker_threads: 1\n",
        pki.tls_yaml("server", false)
    );
    let gateway = TestGateway::start_with(&upstream, &yaml, |_| {}).await;
    let mut silent = Vec::new();
    for i in 0..10 {
        let mut socket = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        if i % 2 == 1 {
            // The first byte of a TLS record, then nothing: stuck in the handshake.
            tokio::io::AsyncWriteExt::write_all(&mut socket, &[0x16])
                .await
                .unwrap();
        }
        silent.push(socket);
    }
    let open = r#"tl_gateway_open_connections{listener="client"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter_value(&metrics(&gateway).await, open) < Some(10.0) {
        assert!(
            Instant::now() < deadline,
            "the silent sockets were not admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let (code, out) = curl(vec![
        "--max-time".into(),
        "5".into(),
        "--cacert".into(),
        pki.path("ca.pem").display().to_string(),
        "-H".into(),
        format!("x-api-key: {BOB_KEY}"),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        https(&gateway, "/v1.3/assets"),
    ])
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "200"),
        "a client waited behind silent sockets"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let evicted = r#"tl_gateway_connections_closed_total{listener="client",reason="evicted"}"#;
    assert!(counter_value(&metrics(&gateway).await, evicted) >= Some(1.0));
    drop(silent);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_works_over_https_with_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    let (emulator, upstream) = start_emulator().await;
    let seeded = emulator.seed_demo();
    let gateway = TestGateway::start_with(&upstream, &pki.tls_yaml("server", false), |_| {}).await;
    let script = r#"
import os, ssl, sys, httpx
from twelvelabs import TwelveLabs
trust = ssl.create_default_context(cafile=os.environ["TL_CA"])
for http2 in (False, True):
    seen = {}
    def note(response):
        seen["version"] = response.http_version
    http = httpx.Client(http2=http2, verify=trust, event_hooks={"response": [note]})
    client = TwelveLabs(api_key=os.environ["TL_API_KEY"], base_url=os.environ["TL_BASE_URL"], httpx_client=http)
    ids = [a.id for a in client.assets.list(request_options={"max_retries": 0})]
    assert os.environ["TL_ASSET"] in ids, ids
    want = "HTTP/2" if http2 else "HTTP/1.1"
    assert seen["version"] == want, seen
    print("ok", seen["version"], len(ids), "assets")
"#;
    let python = python();
    let base = https(&gateway, "/v1.3");
    let ca = pki.path("ca.pem");
    let asset = seeded.referenced_asset_id.clone();
    let script = script.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &script])
            .env("TL_CA", ca)
            .env("TL_API_KEY", BOB_KEY)
            .env("TL_BASE_URL", base)
            .env("TL_ASSET", asset)
            .env_remove("TWELVELABS_BASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        out.contains("ok HTTP/1.1") && out.contains("ok HTTP/2"),
        "{out}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_pair_is_served_without_a_restart_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("first");
    pki.server("second");
    pki.server("third");
    // The gateway reads live.pem / live.key, which the test replaces like a secret swap.
    std::fs::copy(pki.path("first.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("first.key"), pki.path("live.key")).unwrap();
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &pki.tls_yaml("live", false),
        |_| {},
    )
    .await;
    assert_eq!(served_serial(&gateway).await, pki.serial("first"));
    assert_eq!(readyz(&gateway).await.0, StatusCode::OK);

    // A renewed pair: new connections get it within seconds, without a restart.
    replace(&pki.path("second.key"), &pki.path("live.key"));
    replace(&pki.path("second.pem"), &pki.path("live.pem"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(&gateway).await != pki.serial("second") {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken replacement (the third certificate with the second's key): the second stays, the
    // reason shows in /readyz (still 200, degraded: the replica serves its last good certificate,
    // and every replica reading the same secret would fail together) and in the metrics.
    replace(&pki.path("third.pem"), &pki.path("live.pem"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = readyz(&gateway).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["degraded"] == true {
            break body;
        }
        assert!(Instant::now() < deadline, "readiness did not turn: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = body["checks"]["tls"].as_str().unwrap();
    assert!(why.contains("do not belong together"), "{why}");
    assert_eq!(served_serial(&gateway).await, pki.serial("second"));
    assert!(
        counter_value(
            &metrics(&gateway).await,
            r#"tl_gateway_tls_reloads_total{result="failure"}"#
        )
        .unwrap()
            >= 1.0
    );
    // Fixed: no longer degraded, serving the third.
    replace(&pki.path("third.key"), &pki.path("live.key"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&gateway).await.1["degraded"] != false {
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_serial(&gateway).await, pki.serial("third"));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_clients_under_policy_and_a_foreign_one_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    pki.client("ca", "reporting", "reporting.svc");
    pki.client("ca", "cleanup", "cleanup.svc");
    pki.client("ca", "stranger", "stranger.svc");
    pki.ca("other-ca");
    pki.client("other-ca", "foreign", "reporting.svc");
    let upstream = Upstream::recording().await;
    let extra = format!(
        r#"{tls}policy:
  rules:
    - id: force-delete-admins-only
      match: {{ method: DELETE, path: "/v1.3/assets/{{asset_id}}", query: {{ force: true }} }}
      allow_roles: [admin]
audit:
  path: {audit}
"#,
        tls = pki.tls_yaml("server", true),
        audit = dir.path().join("audit.jsonl").display()
    );
    let cleanup_fingerprint = pki.fingerprint("cleanup");
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |config| {
        let mut by_subject =
            tl_gateway::auth::ClientSettings::with_key("reporting", &["member"], [0; 32]);
        by_subject.keys.clear();
        by_subject.cert_subject = Some("CN=reporting.svc".parse().unwrap());
        let mut by_digest =
            tl_gateway::auth::ClientSettings::with_key("cleanup", &["admin"], [0; 32]);
        by_digest.keys.clear();
        by_digest.cert_sha256 = tl_gateway::units::parse_hex::<32>(&cleanup_fingerprint);
        config.clients.push(by_subject);
        config.clients.push(by_digest);
    })
    .await;
    let ca = pki.path("ca.pem").display().to_string();
    let as_cert = |name: &str| {
        vec![
            "--cacert".to_owned(),
            ca.clone(),
            "--cert".to_owned(),
            pki.path(&format!("{name}.pem")).display().to_string(),
            "--key".to_owned(),
            pki.path(&format!("{name}.key")).display().to_string(),
        ]
    };
    let status_of = |mut args: Vec<String>, method: &str, path: &str| {
        args.extend([
            "-X".into(),
            method.into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            https(&gateway, path),
        ]);
        curl(args)
    };
    // The member service reads, but may not force-delete; the admin service may.
    assert_eq!(
        status_of(as_cert("reporting"), "GET", "/v1.3/assets").await,
        (0, "200".into())
    );
    assert_eq!(
        status_of(as_cert("reporting"), "DELETE", "/v1.3/assets/a1?force=true").await,
        (0, "403".into())
    );
    assert_eq!(
        status_of(as_cert("cleanup"), "DELETE", "/v1.3/assets/a1?force=true").await,
        (0, "200".into())
    );
    // A verified certificate that names no client, without a key: 401; with a key: the key decides.
    assert_eq!(
        status_of(as_cert("stranger"), "GET", "/v1.3/assets").await,
        (0, "401".into())
    );
    let mut stranger_with_key = as_cert("stranger");
    stranger_with_key.extend(["-H".into(), format!("x-api-key: {BOB_KEY}")]);
    assert_eq!(
        status_of(stranger_with_key, "GET", "/v1.3/assets").await,
        (0, "200".into())
    );
    // A certificate and a key of different clients: 401.
    let mut both = as_cert("reporting");
    both.extend(["-H".into(), format!("x-api-key: {ALICE_KEY}")]);
    assert_eq!(
        status_of(both, "GET", "/v1.3/assets").await,
        (0, "401".into())
    );
    // Keys still work without a certificate.
    assert_eq!(
        status_of(
            vec![
                "--cacert".into(),
                ca.clone(),
                "-H".into(),
                format!("x-api-key: {BOB_KEY}")
            ],
            "GET",
            "/v1.3/assets"
        )
        .await,
        (0, "200".into())
    );
    // A certificate from another CA fails the handshake: no HTTP status at all.
    let (code, out) = status_of(as_cert("foreign"), "GET", "/v1.3/assets").await;
    assert_ne!(code, 0, "the handshake must fail ({out})");
    assert!(out == "000" || out.is_empty(), "{out}");
    // The audit log names the certificate of the forced delete.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
        if let Some(intent) = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["phase"] == "intent")
        {
            assert_eq!(intent["client"], "cleanup");
            assert_eq!(intent["certificate"], cleanup_fingerprint.as_str());
            assert!(intent.get("key_label").is_none());
            break;
        }
        assert!(Instant::now() < deadline, "no intent record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_overlap_while_rotating_and_are_named_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let upstream = Upstream::recording().await;
    let digest = tl_gateway::auth::key_digest_hex;
    let extra = format!(
        r#"audit:
  path: {}
"#,
        audit.display()
    );
    let old_key = "tlgw_dave_old_laptop_key";
    let new_key = "tlgw_dave_new_laptop_key";
    let next_key = "tlgw_dave_next_laptop_key";
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |config| {
        let mut dave = tl_gateway::auth::ClientSettings::with_key("dave", &["admin"], [0; 32]);
        let key = |text: &str, label: &str, expires: Option<std::time::SystemTime>| {
            tl_gateway::auth::ClientKey {
                sha256: tl_gateway::units::parse_hex::<32>(&digest(text)).unwrap(),
                label: label.into(),
                expires,
                revoked: false,
            }
        };
        let now = std::time::SystemTime::now();
        dave.keys = vec![
            key(old_key, "laptop-2026", Some(now - Duration::from_secs(60))),
            key(
                new_key,
                "laptop-2027",
                Some(now + Duration::from_secs(3 * 86_400)),
            ),
            key(next_key, "laptop-2028", None),
        ];
        config.clients.push(dave);
    })
    .await;
    let delete = |key: &'static str, target: &str| {
        let req = request(Method::DELETE, &gateway.url(target), Some(key))
            .body(body::empty())
            .unwrap();
        send(Proto::Http1, req)
    };
    let response = delete(old_key, "/v1.3/indexes/i1").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = body_json(response).await;
    assert_eq!(body["code"], "key_expired");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("key 'laptop-2026' of client dave expired at"),
        "{message}"
    );
    // An unknown key is a different answer.
    let response = delete("tlgw_nobody", "/v1.3/indexes/i1").await;
    assert_eq!(body_json(response).await["code"], "unauthorized");
    // Both overlapping keys work while rotating.
    assert_eq!(
        delete(new_key, "/v1.3/indexes/i2").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        delete(next_key, "/v1.3/indexes/i3").await.status(),
        StatusCode::OK
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let labels: Vec<String> = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["phase"] == "intent")
            .map(|r| r["key_label"].as_str().unwrap_or("").to_owned())
            .collect();
        if labels.len() == 2 {
            assert_eq!(labels, ["laptop-2027", "laptop-2028"]);
            break;
        }
        assert!(Instant::now() < deadline, "intents: {labels:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!std::fs::read_to_string(&audit).unwrap().contains(new_key));
    let text = metrics(&gateway).await;
    let expiry = counter_value(
        &text,
        r#"tl_gateway_client_key_expiry_timestamp_seconds{client="dave",label="laptop-2027"}"#,
    )
    .unwrap();
    let in_days = (expiry - std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64()) / 86_400.0;
    assert!((2.9..3.1).contains(&in_days), "{in_days}");
    let seen = counter_value(
        &text,
        r#"tl_gateway_client_last_seen_timestamp_seconds{client="dave"}"#,
    )
    .unwrap();
    assert!((std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64() - seen).abs() < 60.0);
    assert_eq!(
        counter_value(
            &text,
            r#"tl_gateway_client_last_seen_timestamp_seconds{client="alice"}"#
        ),
        Some(0.0),
        "declared for every client before its first request"
    );
    gateway.shutdown().await;
}

#[test]
fn check_refuses_a_mismatched_or_expired_certificate_and_keygen_prints_a_key_entry_it_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    pki.server("other");
    let key_file = dir.path().join("upstream-key");
    std::fs::write(&key_file, UPSTREAM_KEY).unwrap();
    let check = |tls: &str| {
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, config_yaml("http://127.0.0.1:9", &key_file, tls)).unwrap();
        Command::new(binary())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let ok = check(&pki.tls_yaml("server", true));
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("tls: "),
        "{ok:?}"
    );
    let mismatched = pki
        .tls_yaml("server", false)
        .replace("server.key", "other.key");
    let bad = check(&mismatched);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("do not belong together"),
        "{bad:?}"
    );
    // An expired certificate (openssl ca with explicit dates).
    std::fs::create_dir(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("db/index.txt"), "").unwrap();
    std::fs::write(dir.path().join("db/serial"), "1000\n").unwrap();
    std::fs::write(
        dir.path().join("db/ca.cnf"),
        "[ca]\ndefault_ca = tca\n[tca]\ndatabase = db/index.txt\nserial = db/serial\nnew_certs_dir = db\ndefault_md = sha256\npolicy = pol\nunique_subject = no\n[pol]\ncommonName = supplied\n[ext]\nsubjectAltName = DNS:localhost\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir.path(),
        &[
            "ca",
            "-batch",
            "-config",
            "db/ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            "server.csr",
            "-out",
            "expired.pem",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-extensions",
            "ext",
            "-notext",
        ],
    );
    std::fs::copy(
        dir.path().join("server.key"),
        dir.path().join("expired.key"),
    )
    .unwrap();
    let expired = check(&pki.tls_yaml("expired", false));
    assert!(!expired.status.success());
    assert!(
        String::from_utf8_lossy(&expired.stderr).contains("expired at 2020-02-01"),
        "{expired:?}"
    );

    // keygen --label --expires prints an entry the configuration accepts.
    let keygen = Command::new(binary())
        .args([
            "keygen",
            "--id",
            "erin",
            "--roles",
            "member",
            "--label",
            "laptop-2027",
            "--expires",
            "90d",
        ])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let out = String::from_utf8_lossy(&keygen.stdout);
    let key = out.lines().nth(1).unwrap().trim().to_owned();
    assert!(key.starts_with("tlgw_"));
    let entry: String = out
        .lines()
        .skip_while(|l| !l.starts_with("  - id: erin"))
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(entry.contains("label: laptop-2027, expires: "), "{out}");
    let config = dir.path().join("keys.yaml");
    std::fs::write(
        &config,
        config_yaml("http://127.0.0.1:9", &key_file, "")
            .replace("clients:\n", &format!("clients:\n{entry}")),
    )
    .unwrap();
    let parsed = tl_gateway::config::Config::load(&config).unwrap();
    let erin = parsed
        .clients
        .iter()
        .find(|c| c.id.as_str() == "erin")
        .unwrap();
    assert_eq!(erin.keys[0].label, "laptop-2027");
    assert_eq!(
        erin.keys[0].sha256,
        tl_gateway::units::parse_hex::<32>(&tl_gateway::auth::key_digest_hex(&key)).unwrap()
    );
    let left = erin.keys[0]
        .expires
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        (89 * 86_400..=90 * 86_400).contains(&left.as_secs()),
        "{left:?}"
    );
}

/// `openssl ca` bookkeeping in `db/`, to sign with chosen dates, revoke and publish CRLs.
fn ca_database(pki: &Pki) {
    let db = pki.path("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("serial"), "1000\n").unwrap();
    std::fs::write(db.join("crlnumber"), "1000\n").unwrap();
    std::fs::write(
        db.join("ca.cnf"),
        "[ca]\ndefault_ca = tca\n[tca]\ndatabase = db/index.txt\nserial = db/serial\ncrlnumber = db/crlnumber\nnew_certs_dir = db\ndefault_md = sha256\ndefault_crl_days = 30\npolicy = pol\nunique_subject = no\n[pol]\ncommonName = supplied\n[client]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n",
    )
    .unwrap();
}

/// Publish the CA's current CRL as `NAME` (PEM).
fn publish_crl(pki: &Pki, name: &str) {
    openssl(
        &pki.dir,
        &[
            "ca",
            "-batch",
            "-config",
            "db/ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-gencrl",
            "-out",
            name,
        ],
    );
}

/// An X.509 time (`YYYYMMDDHHMMSSZ`) `offset` seconds from now.
fn asn1_time(offset: i64) -> String {
    let now = std::time::UNIX_EPOCH.elapsed().unwrap().as_secs() as i64;
    let at = std::time::UNIX_EPOCH + Duration::from_secs((now + offset) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace(['-', ':', 'T'], "")
}

/// A connection to the gateway that presents `NAME.pem`, kept open across requests.
struct CertConnection {
    sender: hyper::client::conn::http1::SendRequest<tl_gateway::body::GatewayBody>,
    connection: tokio::task::JoinHandle<()>,
}

async fn connect_with(
    gateway: &TestGateway,
    pki: &Pki,
    name: &str,
) -> Result<CertConnection, std::io::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(CertConnection { sender, connection })
}

impl CertConnection {
    /// `GET /tl-gateway/v1/me` on this connection: (status, body), or `None` if it is closed.
    async fn me(&mut self) -> Option<(StatusCode, serde_json::Value)> {
        self.sender.ready().await.ok()?;
        let request = http::Request::get("/tl-gateway/v1/me")
            .header("host", "localhost")
            .body(body::empty())
            .unwrap();
        let response = self.sender.send_request(request).await.ok()?;
        let status = response.status();
        Some((status, body_json(response).await))
    }
}

/// Who a fresh connection presenting `NAME.pem` is, by `/tl-gateway/v1/me`: `Ok(client)`,
/// `Err(code)` for a refusal, `Err("handshake")` when the handshake fails.
async fn identity(gateway: &TestGateway, pki: &Pki, name: &str) -> Result<String, String> {
    let mut connection = match connect_with(gateway, pki, name).await {
        Ok(connection) => connection,
        Err(_) => return Err("handshake".into()),
    };
    // TLS 1.3: a refused client certificate shows on the first read.
    let Some((status, body)) = connection.me().await else {
        return Err("handshake".into());
    };
    if status == StatusCode::OK {
        Ok(body["client"].as_str().unwrap().to_owned())
    } else {
        Err(body["code"].as_str().unwrap().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_subjects_match_only_their_kind_of_name_and_several_cns_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    let client_ext = |san: &str| {
        format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n{san}")
    };
    pki.leaf("ca", "cn", "/O=TL/CN=reporting.svc", &client_ext(""));
    // A DNS name equal to a CN subject is a different name.
    pki.leaf(
        "ca",
        "dns-as-cn",
        "/CN=other.svc",
        &client_ext("subjectAltName=DNS:reporting.svc\n"),
    );
    pki.leaf(
        "ca",
        "dns",
        "/CN=other.svc",
        &client_ext("subjectAltName=DNS:web.svc\n"),
    );
    pki.leaf("ca", "cn-as-dns", "/CN=web.svc", &client_ext(""));
    pki.leaf(
        "ca",
        "uri",
        "/CN=batch",
        &client_ext("subjectAltName=URI:spiffe://tl/batch\n"),
    );
    pki.leaf(
        "ca",
        "uri-as-cn",
        r"/CN=spiffe:\/\/tl\/batch",
        &client_ext(""),
    );
    // Two CNs naming two clients: neither is chosen (the last one used to win).
    pki.leaf(
        "ca",
        "two-clients",
        "/CN=bob.svc/CN=alice.svc",
        &client_ext(""),
    );
    pki.leaf("ca", "one-client", "/CN=team/CN=alice.svc", &client_ext(""));
    // Not a client certificate (serverAuth only), with a configured CN.
    pki.leaf(
        "ca",
        "server-only",
        "/CN=reporting.svc",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:reporting.svc\n",
    );
    let upstream = Upstream::recording().await;
    let clients = [
        ("reporting", "CN=reporting.svc"),
        ("web", "DNS:web.svc"),
        ("batch", "URI:spiffe://tl/batch"),
        ("alice-svc", "CN=alice.svc"),
        ("bob-svc", "CN=bob.svc"),
    ];
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &pki.tls_yaml("server", true),
        |config| {
            for (id, subject) in clients {
                let mut client =
                    tl_gateway::auth::ClientSettings::with_key(id, &["member"], [0; 32]);
                client.keys.clear();
                client.cert_subject = Some(subject.parse().unwrap());
                config.clients.push(client);
            }
        },
    )
    .await;
    let expected: [(&str, Result<&str, &str>); 9] = [
        ("cn", Ok("reporting")),
        ("dns-as-cn", Err("unauthorized")),
        ("dns", Ok("web")),
        ("cn-as-dns", Err("unauthorized")),
        ("uri", Ok("batch")),
        ("uri-as-cn", Err("unauthorized")),
        ("two-clients", Err("unauthorized")),
        ("one-client", Ok("alice-svc")),
        ("server-only", Err("handshake")),
    ];
    for (name, want) in expected {
        let got = identity(&gateway, &pki, name).await;
        assert_eq!(
            got.as_deref().map_err(String::as_str),
            want,
            "certificate {name}"
        );
    }
    gateway.shutdown().await;
}

#[test]
fn check_refuses_an_untyped_cert_subject_with_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    let key_file = dir.path().join("upstream-key");
    std::fs::write(&key_file, UPSTREAM_KEY).unwrap();
    let config = dir.path().join("gateway.yaml");
    let text = config_yaml(
        "http://127.0.0.1:9",
        &key_file,
        &pki.tls_yaml("server", true),
    )
    .replace(
        "clients:\n",
        "clients:\n  - id: reporting\n    roles: [member]\n    cert_subject: reporting.svc\n",
    );
    std::fs::write(&config, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("cert_subject"))
        .unwrap()
        + 1;
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("gateway.yaml:{line}")), "{stderr}");
    assert!(
        stderr.contains(r#"clients[0].cert_subject: cert_subject "reporting.svc" must say which name it matches: "CN=reporting.svc", "DNS:reporting.svc" or "URI:spiffe://...""#),
        "{stderr}"
    );
    // Typed, it passes.
    std::fs::write(
        &config,
        text.replace(
            "cert_subject: reporting.svc",
            "cert_subject: CN=reporting.svc",
        ),
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_fails_new_handshakes_and_its_live_connection_ends_at_its_age()
{
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    pki.client("ca", "reporting", "reporting.svc");
    pki.client("ca", "cleanup", "cleanup.svc");
    ca_database(&pki);
    publish_crl(&pki, "empty.crl");
    std::fs::copy(pki.path("empty.crl"), pki.path("live.crl")).unwrap();
    let upstream = Upstream::recording().await;
    let extra = format!(
        "{}  client_crl_file: {}\nserver:\n  max_connection_age: 3s\n",
        pki.tls_yaml("server", true),
        pki.path("live.crl").display()
    );
    let gateway = TestGateway::start_with(&format!("http://{}", upstream.addr), &extra, |config| {
        for (id, cn) in [
            ("reporting", "CN=reporting.svc"),
            ("cleanup", "CN=cleanup.svc"),
        ] {
            let mut client = tl_gateway::auth::ClientSettings::with_key(id, &["member"], [0; 32]);
            client.keys.clear();
            client.cert_subject = Some(cn.parse().unwrap());
            config.clients.push(client);
        }
    })
    .await;
    let mut live = connect_with(&gateway, &pki, "reporting").await.unwrap();
    let (status, body) = live.me().await.unwrap();
    assert_eq!(
        (status, body["client"].as_str()),
        (StatusCode::OK, Some("reporting"))
    );

    // Revoked, and the new CRL swapped in: new handshakes with it fail, others still work.
    openssl(
        &pki.dir,
        &[
            "ca",
            "-batch",
            "-config",
            "db/ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-revoke",
            "reporting.pem",
        ],
    );
    publish_crl(&pki, "revoked.crl");
    replace(&pki.path("revoked.crl"), &pki.path("live.crl"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while identity(&gateway, &pki, "reporting").await != Err("handshake".into()) {
        assert!(
            Instant::now() < deadline,
            "the revoked certificate still connects"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        identity(&gateway, &pki, "cleanup").await,
        Ok("cleanup".into())
    );

    // The connection made before the revocation ends by itself at its age (3 s).
    tokio::time::timeout(Duration::from_secs(10), &mut live.connection)
        .await
        .expect("the old connection outlived server.max_connection_age")
        .unwrap();
    assert!(live.me().await.is_none());
    assert!(
        counter_value(
            &metrics(&gateway).await,
            r#"tl_gateway_connections_closed_total{listener="client",reason="max_age"}"#
        )
        .unwrap()
            >= 1.0
    );
    // A CRL file that does not parse keeps the last good set (and counts as a failed reload).
    std::fs::write(
        pki.path("broken.crl"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    replace(&pki.path("broken.crl"), &pki.path("live.crl"));
    let failed = r#"tl_gateway_tls_reloads_total{result="failure"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter_value(&metrics(&gateway).await, failed) < Some(1.0) {
        assert!(Instant::now() < deadline, "the broken CRL was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        identity(&gateway, &pki, "reporting").await,
        Err("handshake".into())
    );
    assert_eq!(
        identity(&gateway, &pki, "cleanup").await,
        Ok("cleanup".into())
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_live_connection_whose_certificate_has_expired_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server("server");
    ca_database(&pki);
    // A client certificate valid for a few more seconds.
    let mut args = vec!["req", "-new"];
    args.extend(EC);
    args.extend([
        "-nodes",
        "-keyout",
        "short.key",
        "-out",
        "short.csr",
        "-subj",
        "/CN=reporting.svc",
    ]);
    openssl(&pki.dir, &args);
    let (start, end) = (asn1_time(-60), asn1_time(6));
    openssl(
        &pki.dir,
        &[
            "ca",
            "-batch",
            "-config",
            "db/ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            "short.csr",
            "-out",
            "short.pem",
            "-startdate",
            &start,
            "-enddate",
            &end,
            "-extensions",
            "client",
            "-notext",
        ],
    );
    let expires = Instant::now() + Duration::from_secs(6);
    let fingerprint = pki.fingerprint("short");
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &pki.tls_yaml("server", true),
        |config| {
            // By its digest: the check is on the certificate, however it names the client.
            let mut client =
                tl_gateway::auth::ClientSettings::with_key("reporting", &["member"], [0; 32]);
            client.keys.clear();
            client.cert_sha256 = tl_gateway::units::parse_hex::<32>(&fingerprint);
            config.clients.push(client);
        },
    )
    .await;
    let mut live = connect_with(&gateway, &pki, "short").await.unwrap();
    let (status, body) = live.me().await.unwrap();
    assert_eq!(
        (status, body["client"].as_str()),
        (StatusCode::OK, Some("reporting"))
    );
    // Past notAfter (whole seconds), on the same connection.
    tokio::time::sleep_until((expires + Duration::from_millis(1500)).into()).await;
    let (status, body) = live.me().await.expect("the connection is still open");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "certificate_expired", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("expired at"),
        "{body}"
    );
    gateway.shutdown().await;
}

/// Write `from`'s contents over `to` without changing what the file watcher compares (size and
/// modification time): padded to `to`'s size (PEM readers skip trailing blank lines).
fn replace_unnoticed(from: &Path, to: &Path) {
    let old = std::fs::metadata(to).unwrap();
    let mut bytes = std::fs::read(from).unwrap();
    assert!(
        bytes.len() as u64 <= old.len(),
        "{} is longer",
        from.display()
    );
    bytes.resize(old.len() as usize, b'\n');
    std::fs::write(to, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(to)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    let new = std::fs::metadata(to).unwrap();
    assert_eq!(
        (new.len(), new.modified().unwrap()),
        (old.len(), old.modified().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_files_and_a_failed_reload_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for name in ["first", "second", "third"] {
        pki.server(name);
    }
    // live.pem has room for any of them (PEM readers skip the padding).
    let mut first = std::fs::read(pki.path("first.pem")).unwrap();
    first.resize(first.len() + 64, b'\n');
    std::fs::write(pki.path("live.pem"), first).unwrap();
    std::fs::copy(pki.path("first.key"), pki.path("live.key")).unwrap();
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start_with(
        &format!("http://{}", upstream.addr),
        &pki.tls_yaml("live", false),
        |_| {},
    )
    .await;
    assert_eq!(served_serial(&gateway).await, pki.serial("first"));

    // A change the watcher cannot see (same size, same time): only SIGHUP loads it.
    replace_unnoticed(&pki.path("second.pem"), &pki.path("live.pem"));
    replace_unnoticed(&pki.path("second.key"), &pki.path("live.key"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_serial(&gateway).await,
        pki.serial("first"),
        "the watcher saw it"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_serial(&gateway).await != pki.serial("second") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the TLS files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A key that does not load (mid-rotation): the reload fails and the second pair stays...
    let key_len = std::fs::metadata(pki.path("third.key")).unwrap().len() as usize;
    std::fs::write(pki.path("garbage.key"), vec![b'x'; key_len]).unwrap();
    replace(&pki.path("garbage.key"), &pki.path("live.key"));
    let failed = r#"tl_gateway_tls_reloads_total{result="failure"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter_value(&metrics(&gateway).await, failed) < Some(1.0) {
        assert!(Instant::now() < deadline, "the bad key was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_serial(&gateway).await, pki.serial("second"));
    // ...then the right files appear without a change the watcher can see: the retry loads them.
    replace_unnoticed(&pki.path("third.pem"), &pki.path("live.pem"));
    replace_unnoticed(&pki.path("third.key"), &pki.path("live.key"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_serial(&gateway).await != pki.serial("third") {
        assert!(
            Instant::now() < deadline,
            "the failed reload was not tried again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readyz(&gateway).await.0, StatusCode::OK);
    gateway.shutdown().await;
}
