//! Whole-process behaviour of the `tl-gateway` binary: log hygiene at trace level and graceful drain.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use tl_gateway::body;
use tokio::sync::mpsc;

use crate::support::*;

/// A running `tl-gateway` child process with its output collected.
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    output: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl GatewayProcess {
    /// Run `tl-gateway serve` in front of `upstream` with JSON logs and `rust_log`.
    pub fn serve(upstream: &str, rust_log: &str) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut process = GatewayProcess::serve_in(dir.path(), upstream, rust_log, "");
        process._dir = Some(dir);
        process
    }

    /// Run with its files (key, config, anything `extra` names) in `dir`, which outlives the process.
    pub fn serve_in(
        dir: &std::path::Path,
        upstream: &str,
        rust_log: &str,
        extra: &str,
    ) -> GatewayProcess {
        GatewayProcess::serve_limited(dir, upstream, rust_log, extra, None)
    }

    /// As `serve_in`, with the soft descriptor limit set to `nofile` (default: the hard limit).
    pub fn serve_limited(
        dir: &std::path::Path,
        upstream: &str,
        rust_log: &str,
        extra: &str,
        nofile: Option<u64>,
    ) -> GatewayProcess {
        let key_file = dir.join("upstream-key");
        std::fs::write(&key_file, format!("{UPSTREAM_KEY}\n")).unwrap();
        let config = dir.join("gateway.yaml");
        std::fs::write(
            &config,
            config_yaml(
                upstream,
                &key_file,
                &format!("logging:\n  format: json\n{extra}"),
            ),
        )
        .unwrap();
        // Through a shell so the soft descriptor limit can be raised to the hard one.
        let limit = nofile.map_or_else(|| "$(ulimit -Hn)".to_owned(), |n| n.to_string());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                r#"ulimit -n "{limit}" 2>/dev/null; exec "$0" serve --config "$1""#
            ))
            .arg(binary())
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let ready_tx = ready_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("tl-gateway serving") {
                        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                            let addr = json["listen"].as_str().unwrap().parse().unwrap();
                            let admin = json["admin"].as_str().unwrap().parse().unwrap();
                            let _ = ready_tx.send((addr, admin));
                        }
                    }
                    let mut all = output.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let (addr, admin) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("gateway did not start: {}", output.lock().unwrap()));
        GatewayProcess {
            child,
            addr,
            admin,
            output,
            _dir: None,
        }
    }

    /// Send a signal by name (TERM, HUP, INT).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Wait (bounded) until the output contains `needle`.
    pub fn wait_for_output(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.output.lock().unwrap().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the gateway process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the gateway process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait (bounded) for exit; returns the exit status and everything printed.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway did not exit: {}", self.output.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        let output = self.output.lock().unwrap().clone();
        (status, output)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_contain_the_upstream_key_or_a_client_key() {
    let upstream = Upstream::recording().await;
    let gateway = GatewayProcess::serve(&format!("http://{}", upstream.addr), "trace");
    let base = format!("http://{}", gateway.addr);
    const WRONG_KEY: &str = "tlgw_not_a_configured_key_123";

    let req = request(Method::GET, &format!("{base}/v1.3/assets"), Some(ALICE_KEY))
        .body(body::empty())
        .unwrap();
    assert_eq!(send(Proto::Http1, req).await.status(), StatusCode::OK);
    let req = request(
        Method::DELETE,
        &format!("{base}/v1.3/assets/abc?force=true"),
        None,
    )
    .header("authorization", format!("Bearer {BOB_KEY}"))
    .body(body::empty())
    .unwrap();
    assert_eq!(send(Proto::H2c, req).await.status(), StatusCode::OK);
    let req = request(
        Method::POST,
        &format!("{base}/v1.3/assets"),
        Some(ALICE_KEY),
    )
    .header("cookie", format!("k={BOB_KEY}"))
    .body(full("x".repeat(1000)))
    .unwrap();
    assert_eq!(send(Proto::H2c, req).await.status(), StatusCode::OK);
    let req = request(Method::GET, &format!("{base}/v1.3/assets"), Some(WRONG_KEY))
        .body(body::empty())
        .unwrap();
    assert_eq!(
        send(Proto::Http1, req).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Three forwarded requests, plus the reference guard's two lookups before the forced delete.
    assert_eq!(upstream.requests().len(), 5);
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.headers["x-api-key"] == UPSTREAM_KEY));

    gateway.terminate();
    let (status, output) = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert!(status.success(), "{output}");
    // The test only means something if trace-level output was really produced.
    assert!(
        output.contains("\"level\":\"TRACE\""),
        "no trace output at all"
    );
    assert!(
        output.lines().count() > 50,
        "suspiciously little output:\n{output}"
    );
    for secret in [UPSTREAM_KEY, ALICE_KEY, BOB_KEY, WRONG_KEY] {
        assert!(!output.contains(secret), "log output contains {secret}");
    }
    // Every request's response is logged once, in its span: id, route and client as learnt.
    let finished: Vec<serde_json::Value> = output
        .lines()
        .filter(|l| l.contains("finished processing request"))
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    assert_eq!(finished.len(), 4, "{output}");
    let delete = finished
        .iter()
        .find(|l| l["span"]["method"] == "DELETE")
        .expect("the delete's line");
    assert_eq!(delete["status"], 200);
    assert_eq!(delete["span"]["operation"], "assets.delete");
    assert_eq!(delete["span"]["client"], "bob");
    assert_eq!(
        delete["span"]["request_id"].as_str().map(str::len),
        Some(32)
    );
    assert!(finished.iter().any(|l| l["status"] == 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_kilobyte_target_makes_short_log_lines_whatever_the_answer() {
    let upstream = Upstream::recording().await;
    let gateway = GatewayProcess::serve(&format!("http://{}", upstream.addr), "info");
    let base = format!("http://{}", gateway.addr);
    let long = "a".repeat(60_000);
    // 414 without a key, 401 (short enough for the target limit, long for a log line) without one.
    for (path, status) in [
        (
            format!("/tl-gateway/v1/approvals/{long}"),
            StatusCode::URI_TOO_LONG,
        ),
        (
            format!("/v1.3/assets?filename={}", &long[..4000]),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let req = request(Method::GET, &format!("{base}{path}"), None)
            .body(body::empty())
            .unwrap();
        assert_eq!(send(Proto::Http1, req).await.status(), status);
    }
    gateway.terminate();
    let (_, output) = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    let finished: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("finished processing request"))
        .collect();
    assert_eq!(finished.len(), 2, "{output}");
    for line in output.lines() {
        assert!(
            line.len() < 2048,
            "a {} byte log line: {}…",
            line.len(),
            &line[..300]
        );
    }
    let paths: Vec<String> = finished
        .iter()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            json["span"]["path"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(
        paths
            .iter()
            .any(|p| p.ends_with(&format!("…[{} bytes]", 25 + long.len()))),
        "the long path is cut and marked: {paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_slow_request_finish_then_exits_zero() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    let upstream = Upstream::start(move |_| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(());
            tokio::time::sleep(Duration::from_millis(1500)).await;
            json_response(StatusCode::OK, r#"{"slow":"done"}"#)
        }
    })
    .await;
    let gateway = GatewayProcess::serve(&format!("http://{}", upstream.addr), "info");
    let url = format!("http://{}/v1.3/assets", gateway.addr);
    let in_flight = tokio::spawn(async move { get(&url, Some(ALICE_KEY)).await });

    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .unwrap();
    gateway.terminate();
    // While draining, readiness fails so load balancers stop sending new work.
    let readyz = format!("http://{}/readyz", gateway.admin);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = get(&readyz, None).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                body_json(response).await["checks"]["shutdown"],
                "shutting down"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never reported the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await["slow"], "done");
    let (status, output) = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("draining"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_working_keys_and_curl_lines() {
    let mut child = KillOnDrop(
        Command::new(binary())
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env_remove("TWELVELABS_API_KEY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let text = printed.join("\n");
    let key_of = |name: &str| {
        printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no key for {name}:\n{text}"))
            .to_owned()
    };
    let (alice, bob) = (key_of("alice "), key_of("bob "));
    assert!(
        alice.starts_with("tlgw_") && bob.starts_with("tlgw_") && alice != bob,
        "{text}"
    );

    let curl_lines: Vec<&str> = printed
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert_eq!(curl_lines.len(), 4, "{text}");
    let run = |line: &str| {
        let output = Command::new("sh")
            .arg("-c")
            .arg(line)
            .output()
            .expect("sh and curl are needed");
        assert!(output.status.success(), "{line}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // 1. A member's GET passes through to the emulator's asset list.
    let listed: serde_json::Value = serde_json::from_str(&run(curl_lines[0])).unwrap();
    assert!(
        listed["data"].as_array().is_some_and(|d| !d.is_empty()),
        "{listed}"
    );
    // 2. A wrong key gets 401 in TwelveLabs' error shape.
    let refused = run(curl_lines[1]);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains(r#""code":"unauthorized""#), "{refused}");
    // 3. A member's plain delete of the referenced asset reaches the upstream, whose 409 passes through.
    let conflict = run(curl_lines[2]);
    assert!(conflict.starts_with("HTTP/1.1 409"), "{conflict}");
    // 4. A member's forced delete asks for an admin's approval, on the page the demo prints.
    let asked = run(curl_lines[3]);
    assert!(asked.starts_with("HTTP/1.1 403"), "{asked}");
    assert!(asked.contains(r#""code":"approval_required""#), "{asked}");
    assert!(asked.contains("/tl-gateway/ui/"), "{asked}");
    let page = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("page:"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo prints the approvals page");
    let html = run(&format!("curl -s -i {page}"));
    assert!(html.starts_with("HTTP/1.1 200"), "{html}");
    assert!(
        html.contains("content-security-policy: default-src 'self'"),
        "{html}"
    );

    // The demo audits: the 409'd delete left an intent and (once the response ended) an outcome.
    let audit = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("audit:"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo prints its audit log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(audit).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no audit records in {audit}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let verified = Command::new(binary())
        .args(["audit", "verify", audit])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
    // Its directory is private and unpredictable (no pre-created symlink can catch it), its file
    // readable by the owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::Path::new(audit).parent().unwrap();
        let meta = std::fs::symlink_metadata(dir).unwrap();
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{dir:?}");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let random = name.strip_prefix("tl-gateway-demo-").unwrap();
        assert!(
            random.len() >= 16 && !random.contains(&child.id().to_string()),
            "{name}"
        );
        let file = std::fs::metadata(audit).unwrap();
        assert_eq!(file.permissions().mode() & 0o777, 0o600);
    }

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration() {
    let upstream = Upstream::recording().await;
    let gateway = GatewayProcess::serve(&format!("http://{}", upstream.addr), "info");
    gateway.signal("HUP");
    gateway.wait_for_output("SIGHUP: reloading the configuration");
    gateway.wait_for_output("configuration reloaded");
    // Still serving after the reload.
    let response = get(
        &format!("http://{}/v1.3/assets", gateway.addr),
        Some(ALICE_KEY),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    gateway.terminate();
    let (status, _) = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert!(status.success());
}
