//! OpenTelemetry traces (`telemetry.otlp`) end to end: the `tl-gateway` binary exports to an
//! OTLP/HTTP receiver on loopback that decodes each `ExportTraceServiceRequest` with the
//! `opentelemetry-proto` types, in front of a recording upstream, with a real audit log (fsync)
//! and a real Redis for the rate limit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tl_gateway::body;
use tokio::net::TcpListener;

use crate::process::GatewayProcess;
use crate::state::RedisServer;
use crate::support::*;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct SeenSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// What the receiver got: spans, and each export's path and headers.
#[derive(Default)]
struct Received {
    spans: Vec<SeenSpan>,
    exports: Vec<(String, HeaderMap)>,
}

/// An OTLP/HTTP receiver (protobuf) on loopback.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Received>> = Arc::default();
        let shared = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let received = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let received = received.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body.collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(bytes)
                                .expect("an ExportTraceServiceRequest");
                            let mut received = received.lock().unwrap();
                            received
                                .exports
                                .push((parts.uri.path().to_owned(), parts.headers));
                            for resource in export.resource_spans {
                                for scope in resource.scope_spans {
                                    for span in scope.spans {
                                        received.spans.push(SeenSpan {
                                            name: span.name,
                                            trace_id: hex(&span.trace_id),
                                            span_id: hex(&span.span_id),
                                            parent_span_id: hex(&span.parent_span_id),
                                            attributes: span
                                                .attributes
                                                .iter()
                                                .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                                                .collect(),
                                        });
                                    }
                                }
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(body::empty())
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, received }
    }

    /// The request span of the request with this id, once exported (bounded wait).
    async fn request_span(&self, request_id: &str) -> SeenSpan {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .received
                .lock()
                .unwrap()
                .spans
                .iter()
                .find(|s| {
                    s.name == "request"
                        && s.attributes.get("request_id").map(String::as_str) == Some(request_id)
                })
                .cloned();
            if let Some(span) = found {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no request span for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn children(&self, parent: &SeenSpan) -> Vec<SeenSpan> {
        self.received
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
            .cloned()
            .collect()
    }
}

const RECEIVER_TOKEN: &str = "receiver-token-5f1c";

/// The `traceparent` the upstream received with the request whose path starts with `path`.
fn upstream_traceparent(upstream: &Upstream, method: &Method, path: &str) -> Option<String> {
    upstream
        .requests()
        .iter()
        .rev()
        .find(|r| r.method == *method && r.uri.path().starts_with(path))
        .and_then(|r| r.headers.get("traceparent"))
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn call(
    gateway: &GatewayProcess,
    method: Method,
    target: &str,
    key: &str,
    traceparent: Option<&str>,
) -> (StatusCode, String) {
    let mut builder = request(
        method,
        &format!("http://{}{target}", gateway.addr),
        Some(key),
    );
    if let Some(parent) = traceparent {
        builder = builder
            .header("traceparent", parent)
            .header("tracestate", "client=1");
    }
    let response = send(Proto::Http1, builder.body(body::empty()).unwrap()).await;
    let status = response.status();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    body_bytes(response).await;
    (status, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_children_and_the_trace_context_rules() {
    let receiver = Receiver::start().await;
    let redis = RedisServer::start();
    let upstream = Upstream::start(|req| async move {
        let target = req.uri.path();
        if target.starts_with("/v1.3/assets/a1/indexed-assets") {
            return json_response(
                StatusCode::OK,
                r#"{"data":[{"_id":"ia1","index":{"_id":"i1","name":"product-videos"}}],"page_info":{"limit_per_page":50,"page":1,"total_page":1,"total_results":1}}"#,
            );
        }
        if target.starts_with("/v1.3/assets/a1/entities") {
            return json_response(
                StatusCode::OK,
                r#"{"data":[],"page_info":{"limit_per_page":50,"page":1,"total_page":1,"total_results":0}}"#,
            );
        }
        json_response(StatusCode::OK, r#"{"data":[]}"#)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let headers_file = dir.path().join("otlp-headers");
    std::fs::write(
        &headers_file,
        format!("# the receiver's credential\nx-receiver-token: {RECEIVER_TOKEN}\n"),
    )
    .unwrap();
    let extra = format!(
        r#"policy:
  rules:
    - id: force-delete-admins-only
      match: {{ method: DELETE, path: "/v1.3/assets/{{asset_id}}", query: {{ force: true }} }}
      allow_roles: [admin]
audit:
  path: {audit}
state:
  backend: redis
  redis:
    url: {redis}
rate_limits:
  - id: force-delete-budget
    match: {{ operation: assets.delete, query: {{ force: true }} }}
    per: global
    rate: 100/minute
    burst: 100
telemetry:
  otlp:
    endpoint: http://{receiver}
    protocol: http
    sample_ratio: 1
    headers_file: {headers}
    batch_delay: 50ms
  trust_traceparent_from: [alice]
"#,
        audit = dir.path().join("audit.jsonl").display(),
        redis = redis.url(),
        receiver = receiver.addr,
        headers = headers_file.display(),
    );
    let gateway = GatewayProcess::serve_in(
        dir.path(),
        &format!("http://{}", upstream.addr),
        "info",
        &extra,
    );

    // 1. A forced delete: the request span with its outcome, and its four kinds of child.
    let (status, id) = call(
        &gateway,
        Method::DELETE,
        "/v1.3/assets/a1?force=true",
        ALICE_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let root = receiver.request_span(&id).await;
    assert_eq!(root.parent_span_id, "", "a new trace: {root:?}");
    let attr = |name: &str| root.attributes.get(name).cloned().unwrap_or_default();
    assert_eq!(attr("route"), "assets.delete", "{root:?}");
    assert_eq!(attr("status"), "200", "{root:?}");
    assert_eq!(attr("client"), "alice", "{root:?}");
    assert_eq!(attr("decision"), "allow", "{root:?}");
    assert_eq!(attr("rules"), "force-delete-admins-only", "{root:?}");
    let children = receiver.children(&root);
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "reference_lookup",
        "state_store",
        "audit_intent",
        "upstream",
    ] {
        assert!(names.contains(&expected), "no {expected} span in {names:?}");
    }
    // The lookup's own upstream calls are its children.
    let lookup = children
        .iter()
        .find(|s| s.name == "reference_lookup")
        .unwrap();
    assert!(
        receiver
            .children(lookup)
            .iter()
            .any(|s| s.name == "upstream"),
        "the lookup's exchanges are not under it"
    );
    // The upstream saw the DELETE with the gateway's context: same trace, the exchange span.
    let exchange = children.iter().find(|s| s.name == "upstream").unwrap();
    assert_eq!(exchange.attributes.get("status").unwrap(), "200");
    let sent = upstream_traceparent(&upstream, &Method::DELETE, "/v1.3/assets/a1").unwrap();
    assert_eq!(
        sent,
        format!("00-{}-{}-01", root.trace_id, exchange.span_id),
        "the upstream's traceparent"
    );

    // 2. An untrusted client's trace context is ignored: a new trace, and not forwarded.
    let foreign_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let foreign = format!("00-{foreign_trace}-00f067aa0ba902b7-01");
    let (status, id) = call(
        &gateway,
        Method::GET,
        "/v1.3/indexes",
        BOB_KEY,
        Some(&foreign),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let span = receiver.request_span(&id).await;
    assert_ne!(span.trace_id, foreign_trace);
    assert_eq!(span.parent_span_id, "");
    let sent = upstream_traceparent(&upstream, &Method::GET, "/v1.3/indexes").unwrap();
    assert!(
        sent.starts_with(&format!("00-{}-", span.trace_id)),
        "{sent}"
    );
    let last = upstream.requests().last().unwrap().clone();
    assert!(last.headers.get("tracestate").is_none(), "{last:?}");

    // 3. A trusted client's is continued.
    let trusted_trace = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let (status, id) = call(
        &gateway,
        Method::GET,
        "/v1.3/indexes",
        ALICE_KEY,
        Some(&format!("00-{trusted_trace}-{parent_id}-01")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let span = receiver.request_span(&id).await;
    assert_eq!(span.trace_id, trusted_trace);
    assert_eq!(span.parent_span_id, parent_id);
    let sent = upstream_traceparent(&upstream, &Method::GET, "/v1.3/indexes").unwrap();
    assert!(sent.starts_with(&format!("00-{trusted_trace}-")), "{sent}");
    assert!(
        !sent.contains(parent_id),
        "the gateway's own span is the parent: {sent}"
    );

    // 4. A denied request says so.
    let (status, id) = call(
        &gateway,
        Method::DELETE,
        "/v1.3/assets/a2?force=true",
        BOB_KEY,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let span = receiver.request_span(&id).await;
    assert_eq!(span.attributes["decision"], "deny", "{span:?}");
    assert_eq!(span.attributes["rules"], "force-delete-admins-only");
    assert_eq!(span.attributes["code"], "policy_denied");
    assert_eq!(span.attributes["status"], "403");

    // Exports went to <endpoint>/v1/traces with the headers file's header; no key anywhere.
    {
        let received = receiver.received.lock().unwrap();
        assert!(received
            .exports
            .iter()
            .all(|(path, headers)| path == "/v1/traces"
                && headers["x-receiver-token"] == RECEIVER_TOKEN));
        for span in &received.spans {
            for (name, value) in &span.attributes {
                for secret in [ALICE_KEY, BOB_KEY, UPSTREAM_KEY, RECEIVER_TOKEN] {
                    assert!(
                        !value.contains(secret) && !name.contains(secret),
                        "{name}={value} in {span:?}"
                    );
                }
            }
        }
    }
    let metrics = reqwest_free_get(gateway.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"tl_gateway_trace_spans_dropped_total{reason="queue_full"} 0"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otlp_a_clients_trace_context_is_stripped_unless_trusted() {
    let upstream = Upstream::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::serve_in(
        dir.path(),
        &format!("http://{}", upstream.addr),
        "info",
        "telemetry:\n  trust_traceparent_from: [alice]\n",
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    call(
        &gateway,
        Method::GET,
        "/v1.3/indexes",
        BOB_KEY,
        Some(parent),
    )
    .await;
    let seen = upstream.requests().last().unwrap().clone();
    assert!(seen.headers.get("traceparent").is_none(), "{seen:?}");
    assert!(seen.headers.get("tracestate").is_none(), "{seen:?}");
    // A trusted client's passes through untouched (the gateway adds no span of its own).
    call(
        &gateway,
        Method::GET,
        "/v1.3/indexes",
        ALICE_KEY,
        Some(parent),
    )
    .await;
    let seen = upstream.requests().last().unwrap().clone();
    assert_eq!(seen.headers["traceparent"], parent);
    let metrics = reqwest_free_get(gateway.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"tl_gateway_trace_spans_dropped_total{reason="queue_full"} 0"#),
        "{metrics}"
    );
}

/// GET an admin path and return its body as text.
async fn reqwest_free_get(admin: SocketAddr, path: &str) -> String {
    let response = get(&format!("http://{admin}{path}"), None).await;
    String::from_utf8(body_bytes(response).await.to_vec()).unwrap()
}
