//! A legal hold covers every change (issue #21, item 6): held indexes, entity collections and
//! assets are read-only through the gateway, whether the path or the body names them; additions to
//! a held index only with `guards.protected.allow_additions`; everything else passes with its body
//! byte for byte.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tl_gateway::body::{self, GatewayBody};
use tokio::net::TcpListener;

use crate::support::*;

const HELD_INDEX: &str = "6298d673f1090f1100476d4d";
const FREE_INDEX: &str = "6298d673f1090f1100476d4e";
const HELD_COLLECTION: &str = "6298d673f1090f1100476c01";
const FREE_COLLECTION: &str = "6298d673f1090f1100476c02";
const HELD_ASSET: &str = "6298d673f1090f1100476a01";
const FREE_ASSET: &str = "6298d673f1090f1100476a02";
const ENTITY: &str = "6298d673f1090f1100476e01";
const STORE: &str = "6298d673f1090f1100476b01";

/// One request as the upstream received it, body included.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    body: Bytes,
}

/// An upstream that keeps every request's whole body and answers 200 `{"ok":true}`.
struct BodyUpstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl BodyUpstream {
    async fn start() -> BodyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            // Only complete requests are recorded (an upload cut off is not one).
                            let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
                                return Ok::<_, Infallible>(json_response(
                                    StatusCode::BAD_REQUEST,
                                    r#"{"code":"cut_off"}"#,
                                ));
                            };
                            log.lock().unwrap().push(Seen {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                body,
                            });
                            Ok(json_response(StatusCode::OK, r#"{"ok":true}"#))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        BodyUpstream {
            url: format!("http://{addr}"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn hold_yaml(allow_additions: bool) -> String {
    // The key only when set, so the default is what the tests without it exercise.
    let additions = if allow_additions {
        "    allow_additions: true\n"
    } else {
        ""
    };
    format!(
        r#"guards:
  protected:
    indexes: [{HELD_INDEX}]
    entity_collections: [{HELD_COLLECTION}]
    assets: [{HELD_ASSET}]
    message: "Legal hold: ask legal@example.com"
{additions}"#
    )
}

async fn gateway(upstream: &BodyUpstream, allow_additions: bool) -> TestGateway {
    TestGateway::start_with(&upstream.url, &hold_yaml(allow_additions), |config| {
        config.server.body_idle_timeout = Duration::from_millis(500);
    })
    .await
}

/// Send `body` (JSON, or the given content type) as alice.
async fn call_with(
    gateway: &TestGateway,
    method: Method,
    target: &str,
    content_type: &str,
    body: GatewayBody,
) -> (StatusCode, serde_json::Value) {
    let req = request(method, &gateway.url(target), Some(ALICE_KEY))
        .header("content-type", content_type)
        .body(body)
        .unwrap();
    let response = send(Proto::Http1, req).await;
    let status = response.status();
    let bytes = body_bytes(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn call(
    gateway: &TestGateway,
    method: Method,
    target: &str,
    json: &str,
) -> (StatusCode, serde_json::Value) {
    call_with(
        gateway,
        method,
        target,
        "application/json",
        full(json.to_owned()),
    )
    .await
}

/// A body sent in several chunks (no content-length: chunked on the wire).
fn chunked(parts: &[&[u8]]) -> GatewayBody {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
        .collect();
    body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

fn assert_protected(what: &str, (status, body): &(StatusCode, serde_json::Value), id: &str) {
    assert_eq!(*status, StatusCode::FORBIDDEN, "{what}: {body}");
    assert_eq!(body["code"], "resource_protected", "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(id) && message.contains("Legal hold"),
        "{what}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_hold_refuses_every_change_not_only_deletes() {
    let upstream = BodyUpstream::start().await;
    let gateway = gateway(&upstream, false).await;
    // The three changes issue #21 saw pass: rename, patch, a new indexed asset.
    let rename = call(
        &gateway,
        Method::PUT,
        &format!("/v1.3/indexes/{HELD_INDEX}"),
        r#"{"index_name":"renamed"}"#,
    )
    .await;
    assert_protected("rename a held index", &rename, HELD_INDEX);
    let patch = call(
        &gateway,
        Method::PATCH,
        &format!("/v1.3/entity-collections/{HELD_COLLECTION}"),
        r#"{"name":"renamed"}"#,
    )
    .await;
    assert_protected("patch a held collection", &patch, HELD_COLLECTION);
    let add = call(
        &gateway,
        Method::POST,
        &format!("/v1.3/indexes/{HELD_INDEX}/indexed-assets"),
        &format!(r#"{{"asset_id":"{FREE_ASSET}"}}"#),
    )
    .await;
    assert_protected("index into a held index", &add, HELD_INDEX);
    for (method, target) in [
        (
            Method::POST,
            format!("/v1.3/entity-collections/{HELD_COLLECTION}/entities"),
        ),
        (
            Method::PATCH,
            format!("/v1.3/entity-collections/{HELD_COLLECTION}/entities/{ENTITY}"),
        ),
        (
            Method::POST,
            format!("/v1.3/entity-collections/{HELD_COLLECTION}/entities/{ENTITY}/assets"),
        ),
        (
            Method::PATCH,
            format!("/v1.3/assets/{HELD_ASSET}/user-metadata"),
        ),
    ] {
        let answer = call(&gateway, method.clone(), &target, r#"{"name":"x"}"#).await;
        assert_eq!(answer.0, StatusCode::FORBIDDEN, "{method} {target}");
        assert_eq!(answer.1["code"], "resource_protected");
    }
    assert!(
        upstream.seen().is_empty(),
        "nothing reached the upstream: {:?}",
        upstream.seen()
    );
    // Reading is not changing.
    let response = get(
        &gateway.url(&format!("/v1.3/indexes/{HELD_INDEX}")),
        Some(ALICE_KEY),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Unheld containers change as before.
    let rename = call(
        &gateway,
        Method::PUT,
        &format!("/v1.3/indexes/{FREE_INDEX}"),
        r#"{"index_name":"renamed"}"#,
    )
    .await;
    assert_eq!(rename.0, StatusCode::OK);
    assert_eq!(upstream.seen().len(), 2);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_asset_named_in_a_body_is_refused() {
    let upstream = BodyUpstream::start().await;
    let gateway = gateway(&upstream, false).await;
    let entity_assets =
        format!("/v1.3/entity-collections/{FREE_COLLECTION}/entities/{ENTITY}/assets");
    let both = format!(r#"{{"asset_ids":["{FREE_ASSET}","{HELD_ASSET}"]}}"#);
    for method in [Method::POST, Method::DELETE] {
        let answer = call(&gateway, method.clone(), &entity_assets, &both).await;
        assert_protected(&format!("{method} entity assets"), &answer, HELD_ASSET);
    }
    let answer = call(
        &gateway,
        Method::POST,
        &format!("/v1.3/indexes/{FREE_INDEX}/indexed-assets"),
        &format!(r#"{{"asset_id":"{HELD_ASSET}","enable_video_stream":true}}"#),
    )
    .await;
    assert_protected("index a held asset", &answer, HELD_ASSET);
    let answer = call(
        &gateway,
        Method::POST,
        &format!("/v1.3/entity-collections/{FREE_COLLECTION}/entities"),
        &format!(r#"{{"name":"w","asset_ids":["{HELD_ASSET}"]}}"#),
    )
    .await;
    assert_protected("an entity of a held asset", &answer, HELD_ASSET);
    let answer = call(
        &gateway,
        Method::POST,
        &format!("/v1.3/knowledge-stores/{STORE}/items"),
        &format!(r#"{{"asset_type":"video","asset_id":"{HELD_ASSET}"}}"#),
    )
    .await;
    assert_protected(
        "a knowledge-store item of a held asset",
        &answer,
        HELD_ASSET,
    );
    // The same body in pieces, without a content-length.
    let (head, tail) = both.as_bytes().split_at(20);
    let answer = call_with(
        &gateway,
        Method::DELETE,
        &entity_assets,
        "application/json",
        chunked(&[head, tail]),
    )
    .await;
    assert_protected("a chunked body", &answer, HELD_ASSET);

    // What cannot be read is refused, never guessed.
    let (status, body) = call(&gateway, Method::POST, &entity_assets, r#"{"asset_ids":["#).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("request_body_invalid"))
    );
    let repeated = format!(r#"{{"asset_ids":["{FREE_ASSET}"],"asset_ids":["{HELD_ASSET}"]}}"#);
    let (status, body) = call(&gateway, Method::POST, &entity_assets, &repeated).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("request_ambiguous"))
    );
    let (status, body) = call_with(
        &gateway,
        Method::POST,
        &entity_assets,
        "application/x-www-form-urlencoded",
        full(format!("asset_ids={HELD_ASSET}")),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("request_body_invalid"))
    );
    let huge = format!(
        r#"{{"asset_ids":["{FREE_ASSET}"],"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, body) = call(&gateway, Method::POST, &entity_assets, &huge).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("request_body_too_large")
        ),
        "{body}"
    );
    let (head, tail) = huge.as_bytes().split_at(40 * 1024);
    let (status, body) = call_with(
        &gateway,
        Method::POST,
        &entity_assets,
        "application/json",
        chunked(&[head, tail]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("request_body_too_large")
        ),
        "without a content-length: {body}"
    );
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_additions_lets_a_new_indexed_asset_into_a_held_index_and_nothing_else() {
    let upstream = BodyUpstream::start().await;
    let gateway = gateway(&upstream, true).await;
    let add = format!("/v1.3/indexes/{HELD_INDEX}/indexed-assets");
    let json = format!(r#"{{"asset_id":"{FREE_ASSET}"}}"#);
    let (status, _) = call(&gateway, Method::POST, &add, &json).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.clone(), seen[0].path.as_str()),
        (Method::POST, add.as_str())
    );
    assert_eq!(seen[0].body, json.as_bytes());
    // A held asset stays out, even of a held index.
    let answer = call(
        &gateway,
        Method::POST,
        &add,
        &format!(r#"{{"asset_id":"{HELD_ASSET}"}}"#),
    )
    .await;
    assert_protected("a held asset", &answer, HELD_ASSET);
    for (method, target) in [
        (Method::PUT, format!("/v1.3/indexes/{HELD_INDEX}")),
        (Method::DELETE, format!("/v1.3/indexes/{HELD_INDEX}")),
        (
            Method::PATCH,
            format!("/v1.3/indexes/{HELD_INDEX}/indexed-assets/{ENTITY}"),
        ),
        (
            Method::DELETE,
            format!("/v1.3/indexes/{HELD_INDEX}/indexed-assets/{ENTITY}"),
        ),
        (
            Method::PATCH,
            format!("/v1.3/entity-collections/{HELD_COLLECTION}"),
        ),
        (
            Method::POST,
            format!("/v1.3/entity-collections/{HELD_COLLECTION}/entities"),
        ),
    ] {
        let body = match method {
            Method::DELETE => body::empty(),
            _ => full(r#"{"index_name":"x"}"#),
        };
        let answer = call_with(&gateway, method.clone(), &target, "application/json", body).await;
        assert_eq!(answer.0, StatusCode::FORBIDDEN, "{method} {target}");
        assert_eq!(answer.1["code"], "resource_protected");
    }
    assert_eq!(upstream.seen().len(), 1);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprotected_ids_pass_with_the_identical_body() {
    let upstream = BodyUpstream::start().await;
    let gateway = gateway(&upstream, false).await;
    let entity_assets =
        format!("/v1.3/entity-collections/{FREE_COLLECTION}/entities/{ENTITY}/assets");
    let json =
        format!("{{ \"asset_ids\" : [ \"{FREE_ASSET}\" ] ,\n \"note\": \"caf\u{e9} \\u00e9\" }}\n");
    for method in [Method::POST, Method::DELETE] {
        let (status, _) = call(&gateway, method, &entity_assets, &json).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (head, tail) = json.as_bytes().split_at(7);
    let (status, _) = call_with(
        &gateway,
        Method::POST,
        &entity_assets,
        "application/json; charset=utf-8",
        chunked(&[head, b"", tail]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.path, entity_assets);
        assert_eq!(
            s.body,
            json.as_bytes(),
            "the upstream sees the identical body"
        );
    }
    assert_eq!(seen[1].method, Method::DELETE);
    gateway.shutdown().await;
}

/// A `POST /v1.3/tasks` upload: the fields, then a file part of `file_len` bytes.
fn task_upload(fields: &[(&str, &str)], file_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!(
                "--b0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"--b0undary\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"v.mp4\"\r\nContent-Type: video/mp4\r\n\r\n");
    out.extend((0..file_len).map(|i| (i % 251) as u8));
    out.extend_from_slice(b"\r\n--b0undary--\r\n");
    out
}

const FORM: &str = "multipart/form-data; boundary=b0undary";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_upload_into_a_held_index_is_refused_from_the_head_of_its_body() {
    let upstream = BodyUpstream::start().await;
    let gateway = gateway(&upstream, false).await;
    let held = task_upload(&[("index_id", HELD_INDEX)], 256 * 1024);
    let answer = call_with(&gateway, Method::POST, "/v1.3/tasks", FORM, full(held)).await;
    assert_protected("a task into a held index", &answer, HELD_INDEX);
    // The index after the file part cannot be seen in time: refused, not guessed.
    let late = {
        let mut body = task_upload(&[], 1024);
        let end = body.len() - b"--b0undary--\r\n".len();
        body.truncate(end);
        body.extend_from_slice(
            format!("--b0undary\r\nContent-Disposition: form-data; name=\"index_id\"\r\n\r\n{FREE_INDEX}\r\n--b0undary--\r\n").as_bytes(),
        );
        body
    };
    let (status, body) = call_with(&gateway, Method::POST, "/v1.3/tasks", FORM, full(late)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "resource_protected");
    // An unheld index first and a held one again after the file: the upload never completes
    // upstream, whether the second index_id arrives with the head or long after it.
    for file_len in [1024, 2 * 1024 * 1024] {
        let mut twice = task_upload(&[("index_id", FREE_INDEX)], file_len);
        let end = twice.len() - b"--b0undary--\r\n".len();
        twice.truncate(end);
        twice.extend_from_slice(
            format!("--b0undary\r\nContent-Disposition: form-data; name=\"index_id\"\r\n\r\n{HELD_INDEX}\r\n--b0undary--\r\n").as_bytes(),
        );
        let pieces: Vec<&[u8]> = twice.chunks(7_777).collect();
        let (status, body) = call_with(
            &gateway,
            Method::POST,
            "/v1.3/tasks",
            FORM,
            chunked(&pieces),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("request_body_invalid")),
            "{file_len}: {body}"
        );
    }
    assert!(upstream.seen().is_empty());
    // An unheld index: forwarded whole, head and streamed rest, byte for byte.
    let free = task_upload(
        &[("index_id", FREE_INDEX), ("enable_video_stream", "true")],
        3 * 1024 * 1024 + 17,
    );
    let pieces: Vec<&[u8]> = free.chunks(10_000).collect();
    let (status, _) = call_with(
        &gateway,
        Method::POST,
        "/v1.3/tasks",
        FORM,
        chunked(&pieces),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].body == free,
        "the upstream sees the identical upload"
    );
    // A search names an index but changes nothing: not held back.
    let search = "--b0undary\r\nContent-Disposition: form-data; name=\"index_id\"\r\n\r\n6298d673f1090f1100476d4d\r\n--b0undary\r\nContent-Disposition: form-data; name=\"query_text\"\r\n\r\nwitness\r\n--b0undary--\r\n";
    let (status, _) = call_with(&gateway, Method::POST, "/v1.3/search", FORM, full(search)).await;
    assert_eq!(status, StatusCode::OK);
    gateway.shutdown().await;

    // With allow_additions a task may add to a held index.
    let gateway = self::gateway(&upstream, true).await;
    let held = task_upload(&[("index_id", HELD_INDEX)], 1024);
    let (status, _) = call_with(
        &gateway,
        Method::POST,
        "/v1.3/tasks",
        FORM,
        full(held.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.seen().last().unwrap().body, held);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_on_a_checked_route_times_out() {
    let upstream = BodyUpstream::start().await;
    let gateway = gateway(&upstream, false).await;
    let target = format!("/v1.3/entity-collections/{FREE_COLLECTION}/entities/{ENTITY}/assets");
    let head = format!(
        "POST {target} HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"asset_ids\":["
    );
    let answer = raw_http1(gateway.addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    assert!(upstream.seen().is_empty());
    gateway.shutdown().await;
}
