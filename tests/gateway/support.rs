//! Test harness: a recording upstream, an in-process gateway on port 0, HTTP/1.1 and h2c clients,
//! and the compiled binary for whole-process tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tl_gateway::body::{self, GatewayBody};
use tl_gateway::config::Config;
use tl_gateway::credentials::UpstreamKey;
use tl_gateway::reload::ReloadStats;
use tl_gateway::server::Gateway;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The example clients from the architecture contract.
pub const ALICE_KEY: &str = "tlgw_alice_example_key";
pub const BOB_KEY: &str = "tlgw_bob_example_key";
/// The real upstream key the tests give the gateway.
pub const UPSTREAM_KEY: &str = "tl-upstream-secret-0123456789abcdef";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// A loopback upstream that records every request and answers with a handler.
pub struct Upstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    _stop: oneshot::Sender<()>,
}

type Handler = Arc<
    dyn Fn(Recorded) -> futures_util::future::BoxFuture<'static, Response<GatewayBody>>
        + Send
        + Sync,
>;

impl Upstream {
    /// Answer every request with 200 `{"ok":true}` after reading its whole body.
    pub async fn recording() -> Upstream {
        Upstream::start(|_| async { json_response(StatusCode::OK, r#"{"ok":true}"#) }).await
    }

    /// Start with a handler that sees the recorded request (body already drained and counted).
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<GatewayBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task_log = log.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let log = task_log.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, mut body) = req.into_parts();
                            let mut body_len = 0u64;
                            while let Some(frame) = body.frame().await {
                                match frame {
                                    Ok(frame) => {
                                        if let Some(data) = frame.data_ref() {
                                            body_len += data.len() as u64;
                                        }
                                    }
                                    Err(_) => break,
                                }
                            }
                            let recorded = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body_len,
                            };
                            log.lock().unwrap().push(recorded.clone());
                            Ok::<_, Infallible>(handler(recorded).await)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            log,
            _stop: stop,
        }
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

/// A JSON response for test upstreams.
pub fn json_response(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body::full(body))
        .unwrap()
}

/// Configuration text for a gateway in front of `upstream`, reading its key from `key_file`.
///
/// One serving worker unless `extra` says otherwise: tests run in parallel, and a gateway per test
/// with a worker per CPU would start N² threads.
pub fn config_yaml(upstream: &str, key_file: &Path, extra: &str) -> String {
    let extra = if extra.contains("worker_threads:") {
        extra.to_owned()
    } else if extra.contains("\nserver:\n") || extra.starts_with("server:\n") {
        extra.replacen("server:\n", "server:\n  worker_threads: 1\n", 1)
    } else {
        format!("{extra}server:\n  worker_threads: 1\n")
    };
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream:
  url: {upstream}
  api_key_file: {key}
  connect_timeout: 2s
  request_timeout: 5s
clients:
  - id: alice
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
  - id: bob
    roles: [member]
    key_sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531
{extra}"#,
        key = key_file.display()
    )
}

/// Write the upstream key file and `gateway.yaml` into `dir`; returns the config file.
fn write_files(dir: &Path, upstream: &str, extra: &str) -> PathBuf {
    let key_file = dir.join("upstream-key");
    std::fs::write(&key_file, format!("{UPSTREAM_KEY}\n")).unwrap();
    let config_file = dir.join("gateway.yaml");
    std::fs::write(&config_file, config_yaml(upstream, &key_file, extra)).unwrap();
    config_file
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub reloads: Arc<ReloadStats>,
}

impl TestGateway {
    /// Start a gateway in front of `upstream` with the default test configuration.
    pub async fn start(upstream: &str) -> TestGateway {
        TestGateway::start_with(upstream, "", |_| {}).await
    }

    /// Start with extra YAML appended and a hook to adjust the parsed config.
    pub async fn start_with(
        upstream: &str,
        extra: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let config_file = write_files(dir.path(), upstream, extra);
        let mut config = Config::load(&config_file).unwrap();
        adjust(&mut config);
        let key = UpstreamKey::load(&config.upstream.key_source).unwrap();
        TestGateway::run(Gateway::bind(&config, key).await.unwrap(), dir)
    }

    /// Start from a configuration file in the gateway's directory, reloading it on change.
    pub async fn start_reloadable(upstream: &str, extra: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let config_file = write_files(dir.path(), upstream, extra);
        let config = Config::load(&config_file).unwrap();
        let key = UpstreamKey::load(&config.upstream.key_source).unwrap();
        let gateway = Gateway::bind(&config, key)
            .await
            .unwrap()
            .reload_from(config_file);
        TestGateway::run(gateway, dir)
    }

    fn run(gateway: Gateway, dir: tempfile::TempDir) -> TestGateway {
        let reloads = gateway.reload_stats();
        let addr = gateway.local_addr().unwrap();
        let admin = gateway.admin_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async move {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            admin,
            dir,
            stop: Some(stop),
            task: Some(task),
            reloads,
        }
    }

    /// Replace the configuration file (write, then rename) with `extra` appended to the base.
    pub fn rewrite_config(&self, upstream: &str, extra: &str) {
        let text = config_yaml(upstream, &self.key_file(), extra);
        let tmp = self.dir.path().join("gateway.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.path().join("gateway.yaml")).unwrap();
    }

    /// The key file this gateway watches.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("upstream-key")
    }

    /// `http://addr` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stop and wait for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Which protocol a test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    H2c,
}

/// Send one request over a fresh client of the given protocol.
pub async fn send(proto: Proto, req: Request<GatewayBody>) -> Response<Incoming> {
    let mut builder = Client::builder(TokioExecutor::new());
    if proto == Proto::H2c {
        builder.http2_only(true);
    }
    let client: Client<_, GatewayBody> = builder.build_http();
    client.request(req).await.unwrap()
}

/// A request builder with a target URL and optional personal key.
pub fn request(method: Method, url: &str, key: Option<&str>) -> http::request::Builder {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    builder
}

/// `GET url` with `key` over HTTP/1.1.
pub async fn get(url: &str, key: Option<&str>) -> Response<Incoming> {
    send(
        Proto::Http1,
        request(Method::GET, url, key).body(body::empty()).unwrap(),
    )
    .await
}

/// The whole body as bytes.
pub async fn body_bytes(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// The whole body as JSON.
pub async fn body_json(response: Response<Incoming>) -> serde_json::Value {
    let bytes = body_bytes(response).await;
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

/// Send raw bytes on a fresh TCP connection and return everything read until close or 5 s.
pub async fn raw_http1(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A full body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    body::boxed(Full::new(bytes.into()))
}

/// The compiled `tl-gateway` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tl-gateway")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Wait for it to exit by itself (bounded by the caller); the guard is spent.
    pub fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.0.wait();
        std::mem::forget(self);
        status
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `command` off the async runtime and require it to succeed; its stdout and stderr together.
pub async fn run_checked(mut command: std::process::Command, what: &str) -> String {
    let program = format!("{:?}", command.get_program());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// Read one request head from a raw connection, byte by byte (so nothing after it is consumed);
/// `None` if the connection ends first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// Call the gateway's own API at `base` (`http://addr`): `path` below `/tl-gateway/v1/`, the
/// caller's key, an optional JSON body; the status and the JSON answer (`Null` if none).
pub async fn api_call(
    base: &str,
    method: Method,
    path: &str,
    key: &str,
    json: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let builder = request(method, &format!("{base}/tl-gateway/v1/{path}"), Some(key));
    let req = match json {
        Some(json) => builder
            .header("content-type", "application/json")
            .body(full(json.to_string()))
            .unwrap(),
        None => builder.body(tl_gateway::body::empty()).unwrap(),
    };
    let response = send(Proto::Http1, req).await;
    let status = response.status();
    let bytes = body_bytes(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
