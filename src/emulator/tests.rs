//! Emulator tests: requests go through `Emulator::handle` with in-memory bodies; one test
//! serves on a loopback socket.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};

use super::Emulator;

const KEY: &str = "tlk_test_key";

fn emu() -> Emulator {
    Emulator::new(KEY)
}

/// Sends a request with the right key and an optional JSON body; returns status and JSON.
async fn call(emu: &Emulator, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", KEY);
    let bytes = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&v).unwrap())
        }
        None => Bytes::new(),
    };
    send(emu, b.body(Full::new(bytes)).unwrap()).await
}

async fn send<B>(emu: &Emulator, req: Request<B>) -> (StatusCode, Value)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = emu.handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, json)
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A multipart/form-data body with text fields and one `file` part of `file_len` bytes.
fn multipart(fields: &[(&str, &str)], file_len: usize) -> (String, Vec<u8>) {
    let boundary = "----emutestboundary7d9";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if file_len > 0 {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.bin\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend((0..file_len).map(|i| (i % 251) as u8));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn requires_the_api_key() {
    let e = emu();
    let (st, body) = send(
        &e,
        Request::get("/v1.3/assets")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "api_key_invalid");
    assert!(body["message"].is_string());

    let req = Request::get("/v1.3/assets")
        .header("x-api-key", "wrong")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&e, req).await.0, StatusCode::UNAUTHORIZED);

    assert_eq!(
        call(&e, "GET", "/v1.3/assets", None).await.0,
        StatusCode::OK
    );
    let recs = e.requests();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].uri, "/v1.3/assets");
    assert!(recs[0].headers.get("x-api-key").is_none());
    assert_eq!(recs[2].headers["x-api-key"], KEY);
}

#[tokio::test]
async fn json_responses_have_content_type() {
    let e = emu();
    let resp = e
        .handle(
            Request::get("/v1.3/indexes")
                .header("x-api-key", KEY)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn pagination_edges() {
    let e = emu();
    for i in 0..12 {
        e.create_asset(&format!("v{i}.mp4"));
    }
    let (st, p1) = call(&e, "GET", "/v1.3/assets?page=1&page_limit=5", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        p1["page_info"],
        json!({"limit_per_page": 5, "page": 1, "total_page": 3, "total_results": 12})
    );
    // Newest first.
    assert_eq!(p1["data"][0]["filename"], "v11.mp4");
    let p3 = call(&e, "GET", "/v1.3/assets?page=3&page_limit=5", None)
        .await
        .1;
    assert_eq!(ids(&p3).len(), 2);
    // Past the end: 200 and empty data, which stops the SDK's iteration.
    let (st, p4) = call(&e, "GET", "/v1.3/assets?page=4&page_limit=5", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(ids(&p4).is_empty());
    assert_eq!(p4["page_info"]["total_results"], 12);
    // Defaults: page 1, 10 per page.
    let d = call(&e, "GET", "/v1.3/assets", None).await.1;
    assert_eq!(ids(&d).len(), 10);
    assert_eq!(d["page_info"]["limit_per_page"], 10);
    assert_eq!(d["page_info"]["page"], 1);
    // Max 50.
    assert_eq!(
        call(&e, "GET", "/v1.3/assets?page_limit=50", None).await.0,
        StatusCode::OK
    );
    for bad in [
        "page=0",
        "page=-1",
        "page=x",
        "page=",
        "page_limit=0",
        "page_limit=51",
        "page_limit=1.5",
    ] {
        let (st, body) = call(&e, "GET", &format!("/v1.3/assets?{bad}"), None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "parameter_invalid", "{bad}");
    }
    // Every list paginates the same way.
    let idx = e.create_index("i");
    let (st, body) = call(
        &e,
        "GET",
        &format!("/v1.3/indexes/{idx}/indexed-assets?page_limit=99"),
        None,
    )
    .await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let empty = call(&e, "GET", "/v1.3/entity-collections", None).await.1;
    assert_eq!(empty["page_info"]["total_page"], 0);
}

#[tokio::test]
async fn delete_conflicts_unless_forced() {
    let e = emu();
    let d = e.seed_demo();
    let uri = format!("/v1.3/assets/{}", d.referenced_asset_id);
    for u in [uri.clone(), format!("{uri}?force=false")] {
        let (st, body) = call(&e, "DELETE", &u, None).await;
        assert_eq!(st, StatusCode::CONFLICT);
        assert!(body["code"].is_string());
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("Set the force query parameter to true to override"));
    }
    for bad in ["True", "1", "yes", ""] {
        let (st, body) = call(&e, "DELETE", &format!("{uri}?force={bad}"), None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "parameter_invalid");
    }
    assert!(e.asset_exists(&d.referenced_asset_id));
    let (st, body) = call(&e, "DELETE", &format!("{uri}?force=true"), None).await;
    assert_eq!((st, body), (StatusCode::OK, Value::Null));
    assert!(!e.asset_exists(&d.referenced_asset_id));
    let (st, body) = call(&e, "GET", &uri, None).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("resource_not_exist"))
    );
    let (st, body) = call(&e, "DELETE", &uri, None).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("resource_not_exist"))
    );

    // Unreferenced: a plain delete works.
    let u = format!("/v1.3/assets/{}", d.unreferenced_asset_id);
    assert_eq!(call(&e, "DELETE", &u, None).await.0, StatusCode::OK);
    assert!(!e.asset_exists(&d.unreferenced_asset_id));
}

#[tokio::test]
async fn forced_delete_unlinks_entities() {
    let e = emu();
    let d = e.seed_demo();
    let before = e.entity_asset_ids(&d.entity_id).unwrap();
    assert!(before.contains(&d.referenced_asset_id));
    assert_eq!(before.len(), 2);
    let ents = call(
        &e,
        "GET",
        &format!("/v1.3/assets/{}/entities", d.referenced_asset_id),
        None,
    )
    .await
    .1;
    assert_eq!(ids(&ents), vec![d.entity_id.clone()]);
    let ent = &ents["data"][0];
    assert_eq!(ent["entity_collection_id"], d.entity_collection_id.as_str());
    assert_eq!(ent["status"], "ready");
    assert!(ent["metadata"].is_object());
    assert!(ent["created_at"].as_str().unwrap().ends_with('Z'));

    let uri = format!("/v1.3/assets/{}?force=true", d.referenced_asset_id);
    assert_eq!(call(&e, "DELETE", &uri, None).await.0, StatusCode::OK);
    let after = e.entity_asset_ids(&d.entity_id).unwrap();
    assert_eq!(after.len(), 1);
    assert!(!after.contains(&d.referenced_asset_id));
    let ent = call(
        &e,
        "GET",
        &format!(
            "/v1.3/entity-collections/{}/entities/{}",
            d.entity_collection_id, d.entity_id
        ),
        None,
    )
    .await
    .1;
    assert_eq!(ent["asset_ids"], json!(after));
}

#[tokio::test]
async fn list_by_asset_shapes_and_pages() {
    let e = emu();
    let d = e.seed_demo();
    let base = format!("/v1.3/assets/{}/indexed-assets", d.referenced_asset_id);
    let all = call(&e, "GET", &base, None).await.1;
    let mut got = ids(&all);
    got.sort();
    let mut want = d.indexed_asset_ids.clone();
    want.sort();
    assert_eq!(got, want);
    let first = &all["data"][0];
    assert_eq!(
        first.as_object().unwrap().len(),
        2,
        "only _id and index: {first}"
    );
    assert!(first["index"]["_id"].is_string());
    assert!(first["index"]["name"].is_string());
    assert!(first.get("index_id").is_none());
    let demo = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["index"]["_id"] == d.index_id.as_str())
        .unwrap();
    assert_eq!(demo["index"]["name"], "product-videos");

    let p2 = call(&e, "GET", &format!("{base}?page=2&page_limit=1"), None)
        .await
        .1;
    assert_eq!(ids(&p2).len(), 1);
    assert_eq!(
        p2["page_info"],
        json!({"limit_per_page": 1, "page": 2, "total_page": 2, "total_results": 2})
    );
    assert!(ids(
        &call(&e, "GET", &format!("{base}?page=3&page_limit=1"), None)
            .await
            .1
    )
    .is_empty());

    let none = call(
        &e,
        "GET",
        &format!("/v1.3/assets/{}/indexed-assets", d.unreferenced_asset_id),
        None,
    )
    .await;
    assert_eq!(none.0, StatusCode::OK);
    assert!(ids(&none.1).is_empty());
    let missing = call(
        &e,
        "GET",
        "/v1.3/assets/000000000000000000000000/entities",
        None,
    )
    .await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn direct_upload_is_streamed_and_counted() {
    let e = emu();
    let (ct, body) = multipart(
        &[
            ("method", "direct"),
            ("filename", "x.mp4"),
            ("user_metadata", r#"{"team":"qa"}"#),
        ],
        300_000,
    );
    let total = body.len() as u64;
    // Deliver the body in many small frames, as a socket would.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = body
        .chunks(7_000)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = Request::post("/v1.3/assets")
        .header("x-api-key", KEY)
        .header("content-type", ct)
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let (st, asset) = send(&e, req).await;
    assert_eq!(st, StatusCode::CREATED, "{asset}");
    assert_eq!(e.uploaded_bytes(), 300_000);
    assert_eq!(asset["filename"], "x.mp4");
    assert_eq!(asset["file_type"], "video/mp4");
    assert_eq!(asset["method"], "direct");
    assert_eq!(asset["status"], "ready");
    assert_eq!(asset["size"], 300_000);
    assert_eq!(asset["user_metadata"], json!({"team": "qa"}));
    let id = asset["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(e.asset_exists(id));
    assert_eq!(e.requests().last().unwrap().body_bytes, total);

    // A second upload adds to the counter.
    let (ct, body) = multipart(&[("method", "direct")], 1_000);
    let req = Request::post("/v1.3/assets")
        .header("x-api-key", KEY)
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (st, asset) = send(&e, req).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(asset["filename"], "clip.bin");
    assert_eq!(e.uploaded_bytes(), 301_000);
}

#[tokio::test]
async fn upload_validation() {
    let e = emu();
    let post = |ct: String, body: Vec<u8>| {
        Request::post("/v1.3/assets")
            .header("x-api-key", KEY)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    type Case<'a> = (&'a [(&'a str, &'a str)], usize, &'a str);
    let cases: Vec<Case> = vec![
        (&[], 10, "parameter_not_provided"),
        (&[("method", "direct")], 0, "parameter_not_provided"),
        (&[("method", "url")], 0, "parameter_not_provided"),
        (&[("method", "ftp")], 10, "parameter_invalid"),
        (
            &[("method", "direct"), ("enable_hls", "yes")],
            10,
            "parameter_invalid",
        ),
        (
            &[("method", "direct"), ("user_metadata", "[1]")],
            10,
            "parameter_invalid",
        ),
        (
            &[("method", "url"), ("url", "file:///etc/passwd")],
            0,
            "parameter_invalid",
        ),
    ];
    for (fields, len, code) in cases {
        let (ct, body) = multipart(fields, len);
        let (st, b) = send(&e, post(ct, body)).await;
        assert_eq!(
            (st, b["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{fields:?}"
        );
    }
    let (st, b) = send(&e, post("application/json".into(), b"{}".to_vec())).await;
    assert_eq!(
        (st, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let (ct, _) = multipart(&[], 0);
    let (st, _) = send(&e, post(ct, b"garbage".to_vec())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let (ct, body) = multipart(
        &[
            ("method", "url"),
            ("url", "https://cdn.example.com/a/talk.mov?sig=1"),
            ("enable_hls", "true"),
        ],
        0,
    );
    let (st, a) = send(&e, post(ct, body)).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(a["filename"], "talk.mov");
    assert_eq!(a["method"], "url");
    assert_eq!(a["file_type"], "video/quicktime");
    assert_eq!(a["hls"]["status"], "ready");
    // File parts of the four rejected forms above were still received and counted.
    assert_eq!(e.uploaded_bytes(), 40);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let e = emu();
    for uri in [
        "/v1.3/nope",
        "/assets",
        "/v1.3",
        "/v1.3/assets/",
        "/v1.3/assets/a/b/c",
        "/v1.3/assets/multipart-uploads",
    ] {
        let (st, b) = call(&e, "GET", uri, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(b["code"], "resource_not_exist", "{uri}");
    }
    let resp = e
        .handle(
            Request::put("/v1.3/assets")
                .header("x-api-key", KEY)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let b: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(b["code"].is_string() && b["message"].is_string());
    assert_eq!(
        call(&e, "POST", "/v1.3/assets/abc", None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(&e, "POST", "/v1.3/indexes/i/videos", None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(&e, "GET", "/v1.3/entity-collections/c/entities/bulk", None)
            .await
            .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn every_allowed_method_is_routed() {
    let e = emu();
    let paths = [
        ("/v1.3/assets", "GET, POST"),
        ("/v1.3/assets/a", "GET, DELETE"),
        ("/v1.3/assets/a/indexed-assets", "GET"),
        ("/v1.3/assets/a/entities", "GET"),
        ("/v1.3/assets/a/user-metadata", "PUT, PATCH, DELETE"),
        ("/v1.3/indexes", "GET, POST"),
        ("/v1.3/indexes/i", "GET, PUT, DELETE"),
        ("/v1.3/indexes/i/indexed-assets", "GET, POST"),
        ("/v1.3/indexes/i/videos", "GET"),
        ("/v1.3/indexes/i/indexed-assets/x", "GET, PATCH, DELETE"),
        ("/v1.3/indexes/i/videos/x", "GET, PATCH, DELETE"),
        ("/v1.3/entity-collections", "GET, POST"),
        ("/v1.3/entity-collections/c", "GET, PATCH, DELETE"),
        ("/v1.3/entity-collections/c/entities", "GET, POST"),
        ("/v1.3/entity-collections/c/entities/bulk", "POST"),
        (
            "/v1.3/entity-collections/c/entities/e",
            "GET, PATCH, DELETE",
        ),
        (
            "/v1.3/entity-collections/c/entities/e/assets",
            "POST, DELETE",
        ),
    ];
    for (path, allowed) in paths {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let st = call(&e, m, path, None).await.0;
            let expect_allowed = allowed.split(", ").any(|a| a == m);
            assert_eq!(
                st != StatusCode::METHOD_NOT_ALLOWED,
                expect_allowed,
                "{m} {path} -> {st}"
            );
        }
    }
}

#[tokio::test]
async fn list_filters() {
    let e = emu();
    let a = e.create_asset("Keynote.MP4");
    let b = e.create_asset("photo.jpg");
    let c = e.create_asset("notes.pdf");
    let q = |s: &str| format!("/v1.3/assets?{s}");
    let got = ids(
        &call(&e, "GET", &q(&format!("asset_ids={a}&asset_ids={c}")), None)
            .await
            .1,
    );
    assert_eq!(got, vec![c.clone(), a.clone()]);
    let got = ids(&call(&e, "GET", &q("asset_types=image"), None).await.1);
    assert_eq!(got, vec![b.clone()]);
    let got = ids(&call(
        &e,
        "GET",
        &q("asset_types=image&asset_types=document"),
        None,
    )
    .await
    .1);
    assert_eq!(got, vec![c.clone(), b.clone()]);
    let got = ids(&call(&e, "GET", &q("filename=keyNOTE"), None).await.1);
    assert_eq!(got, vec![a.clone()]);
    let got = ids(&call(&e, "GET", &q("filename=o%2Ej"), None).await.1);
    assert_eq!(got, vec![b.clone()]);
    let (st, body) = call(&e, "GET", &q("asset_types=hologram"), None).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );

    let c1 = e.create_entity_collection("people");
    e.create_entity_collection("places");
    let got = ids(
        &call(&e, "GET", "/v1.3/entity-collections?name=people", None)
            .await
            .1,
    );
    assert_eq!(got, vec![c1]);
}

#[tokio::test]
async fn indexes_and_indexed_assets() {
    let e = emu();
    let a = e.create_asset("a.mp4");
    let body = json!({"index_name": "mine", "models": [{"model_name": "marengo3.0", "model_options": ["visual"]}]});
    let (st, created) = call(&e, "POST", "/v1.3/indexes", Some(body.clone())).await;
    assert_eq!(st, StatusCode::CREATED);
    let idx = created["_id"].as_str().unwrap().to_owned();
    let (st, err) = call(&e, "POST", "/v1.3/indexes", Some(body)).await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("index_name_already_exists"))
    );
    let (st, err) = call(
        &e,
        "POST",
        "/v1.3/indexes",
        Some(json!({"index_name": "x"})),
    )
    .await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_not_provided"))
    );

    let (st, ia) = call(
        &e,
        "POST",
        &format!("/v1.3/indexes/{idx}/indexed-assets"),
        Some(json!({"asset_id": a})),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(ia["asset_id"], a.as_str());
    let ia_id = ia["_id"].as_str().unwrap().to_owned();
    let (st, _) = call(
        &e,
        "POST",
        &format!("/v1.3/indexes/{idx}/indexed-assets"),
        Some(json!({"asset_id": "ffffffffffffffffffffffff"})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let index = call(&e, "GET", &format!("/v1.3/indexes/{idx}"), None)
        .await
        .1;
    assert_eq!(index["index_name"], "mine");
    assert_eq!(index["video_count"], 1);
    let list = call(
        &e,
        "GET",
        &format!("/v1.3/indexes/{idx}/indexed-assets"),
        None,
    )
    .await
    .1;
    assert_eq!(ids(&list), vec![ia_id.clone()]);
    assert_eq!(list["data"][0]["system_metadata"]["filename"], "a.mp4");

    // Referenced now: plain delete conflicts.
    assert_eq!(
        call(&e, "DELETE", &format!("/v1.3/assets/{a}"), None)
            .await
            .0,
        StatusCode::CONFLICT
    );

    let ia_uri = format!("/v1.3/indexes/{idx}/indexed-assets/{ia_id}");
    assert_eq!(
        call(
            &e,
            "PATCH",
            &ia_uri,
            Some(json!({"user_metadata": {"k": 1}}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&e, "GET", &ia_uri, None).await.1["user_metadata"],
        json!({"k": 1})
    );
    assert_eq!(
        call(
            &e,
            "PUT",
            &format!("/v1.3/indexes/{idx}"),
            Some(json!({"index_name": "renamed"}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let refs = call(&e, "GET", &format!("/v1.3/assets/{a}/indexed-assets"), None)
        .await
        .1;
    assert_eq!(
        refs["data"][0]["index"],
        json!({"_id": idx, "name": "renamed"})
    );

    // Deleting the index cascades to its indexed assets, which frees the asset.
    assert_eq!(
        call(&e, "DELETE", &format!("/v1.3/indexes/{idx}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&e, "GET", &ia_uri, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&e, "DELETE", &format!("/v1.3/assets/{a}"), None)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn entities_link_and_unlink() {
    let e = emu();
    let a = e.create_asset("a.jpg");
    let b = e.create_asset("b.jpg");
    let (st, col) = call(
        &e,
        "POST",
        "/v1.3/entity-collections",
        Some(json!({"name": "cast"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let c = col["_id"].as_str().unwrap().to_owned();
    let ents = format!("/v1.3/entity-collections/{c}/entities");
    let (st, err) = call(
        &e,
        "POST",
        &ents,
        Some(json!({"name": "x", "asset_ids": []})),
    )
    .await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let (st, err) = call(
        &e,
        "POST",
        &ents,
        Some(json!({"name": "x", "asset_ids": ["nope"]})),
    )
    .await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let (st, ent) = call(
        &e,
        "POST",
        &ents,
        Some(json!({"name": "Ann", "asset_ids": [a], "metadata": {"role": "lead"}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = ent["_id"].as_str().unwrap().to_owned();
    let assets = format!("{ents}/{id}/assets");
    let (st, ent) = call(&e, "POST", &assets, Some(json!({"asset_ids": [b, a]}))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ent["asset_ids"], json!([a, b]));
    // DELETE carries a JSON body.
    let (st, ent) = call(&e, "DELETE", &assets, Some(json!({"asset_ids": [a]}))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ent["asset_ids"], json!([b]));
    assert!(e.requests().last().unwrap().body_bytes > 0);
    let (st, err) = call(&e, "DELETE", &assets, Some(json!({"asset_ids": [b]}))).await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let (st, err) = call(&e, "DELETE", &assets, None).await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_not_provided"))
    );

    let (st, bulk) = call(
        &e,
        "POST",
        &format!("{ents}/bulk"),
        Some(json!({"entities": [{"name": "Bo", "asset_ids": [b]}, {"name": "Cy", "asset_ids": ["missing"]}]})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        (
            bulk["success_count"].as_u64(),
            bulk["failed_count"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(bulk["errors"][0]["entity_index"], 1);
    let list = call(&e, "GET", &format!("{ents}?name=Bo"), None).await.1;
    assert_eq!(list["page_info"]["total_results"], 1);

    let (st, ent) = call(
        &e,
        "PATCH",
        &format!("{ents}/{id}"),
        Some(json!({"metadata": {"x": "y"}})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ent["metadata"], json!({"x": "y"}));
    // Deleting the collection removes its entities.
    assert_eq!(
        call(&e, "DELETE", &format!("/v1.3/entity-collections/{c}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert!(e.entity_asset_ids(&id).is_none());
    assert!(e.asset_exists(&a));
}

#[tokio::test]
async fn asset_user_metadata() {
    let e = emu();
    let a = e.create_asset("a.mp4");
    let uri = format!("/v1.3/assets/{a}/user-metadata");
    let asset_uri = format!("/v1.3/assets/{a}");
    let get = || call(&e, "GET", &asset_uri, None);
    assert_eq!(
        call(
            &e,
            "PUT",
            &uri,
            Some(json!({"user_metadata": {"a": 1, "b": "x"}}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(get().await.1["user_metadata"], json!({"a": 1, "b": "x"}));
    assert_eq!(
        call(
            &e,
            "PATCH",
            &uri,
            Some(json!({"user_metadata": {"a": null, "c": true}}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(get().await.1["user_metadata"], json!({"b": "x", "c": true}));
    let (st, err) = call(
        &e,
        "PATCH",
        &uri,
        Some(json!({"user_metadata": {"n": {"deep": 1}}})),
    )
    .await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
    let (st, err) = call(&e, "PUT", &uri, Some(json!({}))).await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_not_provided"))
    );
    assert_eq!(call(&e, "DELETE", &uri, None).await.0, StatusCode::OK);
    assert!(get().await.1.get("user_metadata").is_none());
    let (st, _) = call(
        &e,
        "DELETE",
        "/v1.3/assets/ffffffffffffffffffffffff/user-metadata",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, err) = call(&e, "PUT", &uri, None).await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_not_provided"))
    );
    let req = Request::put(&uri)
        .header("x-api-key", KEY)
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let (st, err) = send(&e, req).await;
    assert_eq!(
        (st, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("parameter_invalid"))
    );
}

#[test]
fn requests_are_bounded() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = emu();
    rt.block_on(async {
        for i in 0..(super::state::MAX_RECORDED + 5) {
            let req = Request::get(format!("/v1.3/assets?page={}", i + 1))
                .body(Full::new(Bytes::new()))
                .unwrap();
            e.handle(req).await;
        }
    });
    let recs = e.requests();
    assert_eq!(recs.len(), super::state::MAX_RECORDED);
    assert_eq!(recs[0].uri, "/v1.3/assets?page=6");
}

#[test]
fn rfc3339_formatting() {
    assert_eq!(super::state::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(super::state::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(super::state::rfc3339(1_764_513_045), "2025-11-30T14:30:45Z");
}

#[tokio::test]
async fn serves_http1_and_h2c_until_shutdown() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let e = emu();
    e.create_asset("a.mp4");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(e.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    for h2 in [false, true] {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http();
        let req = Request::get(format!("http://{addr}/v1.3/assets"))
            .header("x-api-key", KEY)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["page_info"]["total_results"], 1);
    }
    let versions: Vec<_> = e.requests().iter().map(|r| r.version).collect();
    assert_eq!(
        versions,
        vec![http::Version::HTTP_11, http::Version::HTTP_2]
    );
    tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
