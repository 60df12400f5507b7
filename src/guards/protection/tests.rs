use super::*;
use crate::classify::{Classifier, ClassifySettings, UnknownRoutes};
use crate::guards::{IndexedAssetRef, References};

fn op(unknown: UnknownRoutes, method: http::Method, target: &str) -> Operation {
    let classifier = Classifier::new(ClassifySettings {
        unknown_routes: unknown,
        ..ClassifySettings::default()
    });
    classifier
        .classify(
            &method,
            http::Version::HTTP_11,
            &target.parse().unwrap(),
            &http::HeaderMap::new(),
            method == http::Method::PATCH,
        )
        .unwrap()
}

#[test]
fn protection_reads_ids_from_every_changing_route_and_from_unknown_unsafe_ones() {
    let protection = Protection::new(&ProtectedSettings {
        indexes: vec!["i1".into()],
        entity_collections: vec!["c1".into()],
        assets: vec!["a1".into()],
        message: None,
        allow_additions: false,
    });
    let at = |method, target| {
        protection
            .protected_in_path(&op(UnknownRoutes::Forward, method, target))
            .map(|p| format!("{} {}", p.kind, p.id))
    };
    use http::Method;
    assert_eq!(
        at(Method::DELETE, "/v1.3/indexes/i1").as_deref(),
        Some("index i1")
    );
    assert_eq!(at(Method::DELETE, "/v1.3/indexes/i2"), None);
    assert_eq!(
        at(Method::PATCH, "/v1.3/indexes/i1/indexed-assets/x").as_deref(),
        Some("index i1")
    );
    assert_eq!(at(Method::GET, "/v1.3/indexes/i1"), None, "reads pass");
    assert_eq!(at(Method::HEAD, "/v1.3/indexes/i1"), None, "reads pass");
    // Changes that destroy nothing are changes too (issue #21).
    assert_eq!(
        at(Method::PUT, "/v1.3/indexes/i1").as_deref(),
        Some("index i1")
    );
    assert_eq!(
        at(Method::PATCH, "/v1.3/entity-collections/c1").as_deref(),
        Some("entity collection c1")
    );
    assert_eq!(
        at(Method::POST, "/v1.3/indexes/i1/indexed-assets").as_deref(),
        Some("index i1")
    );
    assert_eq!(
        at(Method::POST, "/v1.3/entity-collections/c1/entities").as_deref(),
        Some("entity collection c1")
    );
    assert_eq!(at(Method::PUT, "/v1.3/indexes/i2"), None);
    assert_eq!(
        at(Method::DELETE, "/v1.3/entity-collections/c1/entities/e1").as_deref(),
        Some("entity collection c1")
    );
    assert_eq!(
        at(Method::DELETE, "/v1.3/assets/a1").as_deref(),
        Some("asset a1")
    );
    assert_eq!(
        at(Method::PUT, "/v1.3/assets/a1/user-metadata").as_deref(),
        Some("asset a1")
    );
    // A route the gateway does not know, forwarded under routes.unknown: forward.
    assert_eq!(
        at(Method::POST, "/v1.3/indexes/i1/brand-new-thing").as_deref(),
        Some("index i1")
    );
    assert_eq!(at(Method::GET, "/v1.3/indexes/i1/brand-new-thing"), None);
    let references = References {
        indexed_assets: vec![IndexedAssetRef {
            id: "ia".into(),
            index_id: "i1".into(),
            index_name: None,
        }],
        entities: vec![],
        complete: true,
    };
    assert!(matches!(
        protection.check_references(&references),
        Err(GatewayError::ResourceProtected { id, .. }) if id == "i1"
    ));
    let nothing = References {
        complete: true,
        ..References::default()
    };
    assert!(protection.check_references(&nothing).is_ok());
    // A listing cut short cannot show the delete stays clear of the hold.
    assert!(protection.check_references(&References::default()).is_err());
}

fn held(allow_additions: bool) -> Protection {
    Protection::new(&ProtectedSettings {
        indexes: vec!["i1".into()],
        entity_collections: vec!["c1".into()],
        assets: vec!["a1".into()],
        message: None,
        allow_additions,
    })
}

#[test]
fn allow_additions_lets_new_items_into_a_held_index_and_nothing_else() {
    use http::Method;
    let protection = held(true);
    let at = |method, target| {
        protection
            .protected_in_path(&op(UnknownRoutes::Forward, method, target))
            .map(|p| p.id)
    };
    assert_eq!(at(Method::POST, "/v1.3/indexes/i1/indexed-assets"), None);
    assert_eq!(at(Method::PUT, "/v1.3/indexes/i1").as_deref(), Some("i1"));
    assert_eq!(
        at(Method::DELETE, "/v1.3/indexes/i1").as_deref(),
        Some("i1")
    );
    assert_eq!(
        at(Method::PATCH, "/v1.3/indexes/i1/indexed-assets/x").as_deref(),
        Some("i1")
    );
    assert_eq!(
        at(Method::POST, "/v1.3/entity-collections/c1/entities").as_deref(),
        Some("c1"),
        "additions are to indexes only"
    );
    // The asset named in the body is still checked; the index in a task upload is not.
    let create = op(
        UnknownRoutes::Forward,
        Method::POST,
        "/v1.3/indexes/i1/indexed-assets",
    );
    assert_eq!(protection.body_fields(&create).len(), 1);
    let task = op(UnknownRoutes::Forward, Method::POST, "/v1.3/tasks");
    assert!(protection.body_fields(&task).is_empty());
    assert_eq!(held(false).body_fields(&task).len(), 1);
    // Nothing held of the kind a body names: the body is not read.
    let only_indexes = Protection::new(&ProtectedSettings {
        indexes: vec!["i1".into()],
        ..ProtectedSettings::default()
    });
    assert!(only_indexes.body_fields(&create).is_empty());
    assert!(only_indexes
        .body_fields(&op(UnknownRoutes::Forward, Method::GET, "/v1.3/indexes/i2"))
        .is_empty());
}

#[test]
fn json_bodies_are_read_at_every_field_that_names_a_resource() {
    let protection = held(false);
    let fields = |id: &str| {
        BODY_IDS
            .iter()
            .find(|(route, _)| *route == id)
            .map(|(_, f)| *f)
            .unwrap()
    };
    let check =
        |route: &str, body: &str| match protection.check_json(fields(route), body.as_bytes()) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.code().to_owned(),
        };
    let assets = "entity_collections.entities.assets.create";
    assert_eq!(check(assets, r#"{"asset_ids":["a2","a3"]}"#), "ok");
    assert_eq!(
        check(assets, r#"{"asset_ids":["a2","a1"]}"#),
        "resource_protected"
    );
    assert_eq!(check(assets, r#"{"asset_ids":"a1"}"#), "resource_protected");
    assert_eq!(
        check(assets, r#"[{"asset_ids":["a1"]}]"#),
        "resource_protected"
    );
    assert_eq!(
        check(assets, r#"{"asset_ids":[["a1"]]}"#),
        "resource_protected"
    );
    assert_eq!(
        check(assets, r#"{"other":"a1"}"#),
        "ok",
        "only the listed fields"
    );
    assert_eq!(
        check(assets, r#"{"asset_ids":["a2"],"asset_ids":["a1"]}"#),
        "request_ambiguous"
    );
    assert_eq!(
        check(assets, r#"{"asset_ids":["a2"]"#),
        "request_body_invalid"
    );
    assert_eq!(check(assets, ""), "request_body_invalid");
    assert_eq!(
        check(assets, r#"{"asset_\u0069ds":["a1"]}"#),
        "resource_protected",
        "escapes read as the upstream reads them"
    );
    let indexed = "indexes.indexed_assets.create";
    assert_eq!(
        check(indexed, r#"{"asset_id":"a1","enable_video_stream":true}"#),
        "resource_protected"
    );
    assert_eq!(
        check(
            indexed,
            r#"{"asset_id":"a2","user_metadata":{"asset_id":"a1"}}"#
        ),
        "ok"
    );
    let bulk = "entity_collections.entities.bulk.create";
    assert_eq!(
        check(
            bulk,
            r#"{"entities":[{"name":"x","asset_ids":["a2"]},{"name":"y","asset_ids":["a1"]}]}"#
        ),
        "resource_protected"
    );
    assert_eq!(
        check(bulk, r#"{"entities":[{"name":"x","asset_ids":["a2"]}]}"#),
        "ok"
    );
    assert_eq!(
        check(
            "knowledge_stores.items.create",
            r#"{"asset_type":"video","asset_id":"a1"}"#
        ),
        "resource_protected"
    );
}

#[test]
fn every_body_route_exists_and_takes_a_body() {
    for (id, fields) in BODY_IDS {
        let route = crate::routes::RouteTable::v1_3()
            .by_id(id)
            .unwrap_or_else(|| panic!("{id} is not a route"));
        assert_ne!(route.body, crate::routes::BodyKind::None, "{id}");
        assert!(!fields.is_empty());
    }
}

fn form(parts: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, value) in parts {
        out.extend_from_slice(b"--XyZ\r\n");
        match file {
            Some(f) => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: video/mp4\r\n\r\n").as_bytes()),
            None => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--XyZ--\r\n");
    out
}

#[test]
fn a_form_is_read_up_to_its_first_file_part() {
    let body = form(&[
        ("index_id", None, "i1"),
        ("video_file", Some("a.mp4"), "\0\0binary"),
        ("index_id", None, "i2"),
    ]);
    let fields = |scan| match scan {
        Scan::Done(form) => form.fields,
        Scan::More => panic!("more"),
        Scan::Malformed(why) => panic!("{why}"),
    };
    assert_eq!(
        fields(scan_form(&body, "XyZ", true)),
        vec![("index_id".to_owned(), "i1".to_owned())]
    );
    // Only the head is needed: everything up to the file part's headers.
    let cut = memchr::memmem::find(&body, b"\0\0").unwrap();
    assert_eq!(fields(scan_form(&body[..cut], "XyZ", false)).len(), 1);
    assert!(matches!(scan_form(&body[..20], "XyZ", false), Scan::More));
    let url = form(&[
        ("video_url", None, "https://x/v.mp4"),
        ("index_id", None, "i2"),
    ]);
    assert_eq!(fields(scan_form(&url, "XyZ", true)).len(), 2);
    let unnamed_file = b"--XyZ\r\nContent-Disposition: form-data; name=\"video_file\"\r\n\r\n\0\0";
    assert!(fields(scan_form(unnamed_file, "XyZ", false)).is_empty());
    assert!(matches!(
        scan_form(
            b"--XyZ\r\nContent-Type: text/plain\r\n\r\ni1\r\n--XyZ--",
            "XyZ",
            true
        ),
        Scan::Malformed(_)
    ));
    assert!(matches!(
        scan_form(b"no delimiter", "XyZ", true),
        Scan::Malformed(_)
    ));
    assert_eq!(
        form_boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
        Some("XyZ")
    );
    assert_eq!(
        form_boundary("multipart/form-data; boundary=a; boundary=b"),
        None
    );
    assert_eq!(form_boundary("application/json"), None);
}

#[test]
fn the_rest_of_a_form_is_watched_for_a_checked_field_across_any_chunking() {
    let file: String = (0..5000)
        .map(|i| match i % 97 {
            0 => "\r\n--XyZ".chars().next().unwrap(),
            _ => (b'a' + (i % 26) as u8) as char,
        })
        .collect();
    // Content that looks almost like a delimiter, never the whole boundary.
    let file = file.replace("\ra", "\r\n--Xy");
    let late = form(&[
        ("index_id", None, "i2"),
        ("video_file", Some("a.mp4"), &file),
        ("index_id", None, "i1"),
    ]);
    let clean = form(&[
        ("index_id", None, "i2"),
        ("video_file", Some("a.mp4"), &file),
        ("enable_video_stream", None, "true"),
    ]);
    let file_at = |body: &[u8]| match scan_form(body, "XyZ", true) {
        Scan::Done(form) => form.file_at.unwrap(),
        _ => panic!("not a form"),
    };
    for size in [1, 2, 3, 5, 7, 8, 9, 13, 64, 100, 1000, 4096, 100_000] {
        for (body, refused) in [(&late, true), (&clean, false)] {
            let mut watch = Watch::new("XyZ", vec!["index_id"]);
            let result = body[file_at(body)..]
                .chunks(size)
                .try_for_each(|chunk| watch.feed(chunk));
            assert_eq!(result.is_err(), refused, "chunks of {size}: {result:?}");
        }
    }
}
