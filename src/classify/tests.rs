use super::*;

fn classifier() -> Classifier {
    Classifier::new(ClassifySettings::default())
}

fn run(method: &str, target: &str) -> Result<Operation, GatewayError> {
    run_with(&classifier(), method, target, false)
}

fn run_with(
    c: &Classifier,
    method: &str,
    target: &str,
    body: bool,
) -> Result<Operation, GatewayError> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    c.classify(
        &method,
        Version::HTTP_11,
        &target.parse().unwrap(),
        &HeaderMap::new(),
        body,
    )
}

fn reason(result: Result<Operation, GatewayError>) -> &'static str {
    match result {
        Err(GatewayError::RequestAmbiguous(what)) => what,
        other => panic!("expected request_ambiguous, got {other:?}"),
    }
}

#[test]
fn sdk_targets_classify_to_routes_and_forward_unchanged() {
    let cases = [
        ("GET", "/v1.3/assets?page=1&page_limit=10", "assets.list"),
        (
            "DELETE",
            "/v1.3/assets/6298d673f1090f1100476d4c?force=true",
            "assets.delete",
        ),
        (
            "DELETE",
            "/v1.3/assets/6298d673f1090f1100476d4c",
            "assets.delete",
        ),
        (
            "GET",
            "/v1.3/assets/multipart-uploads",
            "multipart_uploads.list",
        ),
        (
            "GET",
            "/v1.3/assets/a1/indexed-assets?page=2&page_limit=5",
            "assets.indexed_assets.list",
        ),
        (
            "POST",
            "/v1.3/connections:authorize",
            "connections.authorize",
        ),
        (
            "GET",
            "/v1.3/assets?page=1&asset_ids=a1&asset_ids=a2&asset_types=video",
            "assets.list",
        ),
        ("HEAD", "/v1.3/assets/a1", "assets.retrieve"),
        // Values at, and just past, the length kept inline.
        (
            "GET",
            "/v1.3/assets?asset_ids=abcdefghijklmnopqrstuv&asset_ids=abcdefghijklmnopqrstuvw&asset_ids=6298d673f1090f1100476d4c",
            "assets.list",
        ),
    ];
    for (method, target, route) in cases {
        let op = run(method, target).unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        assert_eq!(op.route_id(), route, "{target}");
        assert_eq!(op.path_and_query(), target, "{target}");
        // Already canonical: the request's own target is forwarded as it is.
        assert!(op.target_is(target), "{target}");
        assert!(!op.target_is(&format!("{target}&")) && !op.target_is(&target[1..]));
    }
    let op = run(
        "GET",
        "/v1.3/assets?page=1&filename=a-name-longer-than-twenty-two.mp4",
    )
    .unwrap();
    assert_eq!(op.query.text("page"), Some("1"));
    assert_eq!(
        op.query.text("filename"),
        Some("a-name-longer-than-twenty-two.mp4")
    );
    // The longest route with 24-character ids is kept inline; a longer path on the heap.
    let id = "6298d673f1090f1100476d4c";
    let longest = format!("/v1.3/knowledge-stores/{id}/item-collections/{id}/items/remove");
    let op = run("POST", &longest).unwrap();
    assert_eq!(&*op.path, longest);
    assert!(matches!(op.path, InlineStr::Inline { .. }), "{longest}");
    let long = format!("/v1.3/assets/{}", "a".repeat(120));
    let op = run("GET", &long).unwrap();
    assert_eq!(
        (&*op.path, op.route_id()),
        (long.as_str(), "assets.retrieve")
    );
    let op = run("DELETE", "/v1.3/assets/abc?force=true").unwrap();
    assert_eq!(op.param("asset_id"), Some("abc"));
    assert_eq!(op.query.bool("force"), Some(true));
}

#[test]
fn every_true_spelling_counts_as_true_and_is_forwarded_canonically() {
    for spelling in [
        "true", "TRUE", "True", "1", "t", "T", "yes", "YES", "y", "on", "On",
    ] {
        let op = run("DELETE", &format!("/v1.3/assets/abc?force={spelling}")).unwrap();
        assert_eq!(op.query.bool("force"), Some(true), "{spelling}");
        assert_eq!(
            op.path_and_query(),
            "/v1.3/assets/abc?force=true",
            "{spelling}"
        );
        // A rewritten target is rebuilt, never the client's own spelling forwarded.
        let target = format!("/v1.3/assets/abc?force={spelling}");
        assert_eq!(op.target_is(&target), spelling == "true", "{spelling}");
    }
}

#[test]
fn false_spellings_are_omitted_upstream() {
    for spelling in ["false", "FALSE", "0", "f", "F", "off", "OFF"] {
        let op = run("DELETE", &format!("/v1.3/assets/abc?force={spelling}")).unwrap();
        assert_eq!(op.query.bool("force"), Some(false), "{spelling}");
        assert_eq!(op.path_and_query(), "/v1.3/assets/abc", "{spelling}");
        assert!(!op.target_is(&format!("/v1.3/assets/abc?force={spelling}")));
        assert!(op.target_is("/v1.3/assets/abc"));
    }
}

#[test]
fn ambiguous_force_readings_are_refused() {
    let targets = [
        "force=true&force=true",
        "force=false&force=true",
        "force=",
        "force",
        "force=%74rue",
        "force=true%20",
        "force=+true",
        "force=tru",
        "force=maybe",
        "force=no",
        "force=n",
        "force=False",
        "force=Off",
        "force=2",
        "Force=true",
        "FORCE=1",
        "force[]=true",
        "force[0]=true",
        "force.x=true",
        "%66orce=true",
        "force%00=true",
        "force=true&",
        "&force=true",
        "force=true&&page=1",
        "_method=DELETE",
        "force=true;x=1",
        "unknown=1",
    ];
    for query in targets {
        let what = reason(run("DELETE", &format!("/v1.3/assets/abc?{query}")));
        assert!(!what.is_empty(), "{query}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    for target in [
        "/v1.3/assets/a%2Fb",
        "/v1.3/assets/%61",
        "/v1.3/assets/a;force=true",
        "/v1.3/assets/./a",
        "/v1.3/assets/../indexes/x",
        "/v1.3//assets",
        "/v1.3/assets/",
        "/v1.3/assets/a*",
        "/v1.3/assets/abc?",
        "/v1.3/assets/a\\b",
    ] {
        if let Ok(uri) = target.parse::<Uri>() {
            let result = classifier().classify(
                &Method::DELETE,
                Version::HTTP_11,
                &uri,
                &HeaderMap::new(),
                false,
            );
            assert!(
                matches!(result, Err(GatewayError::RequestAmbiguous(_))),
                "{target}: {result:?}"
            );
        }
    }
}

#[test]
fn wrong_methods_get_405_with_the_route_methods() {
    match run("PUT", "/v1.3/assets/abc") {
        Err(GatewayError::MethodNotAllowed { allowed, .. }) => {
            assert!(
                allowed.contains(&Method::GET) && allowed.contains(&Method::DELETE),
                "{allowed:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    for method in ["TRACE", "CONNECT", "delete", "DELETEX", "PROPFIND"] {
        assert!(
            matches!(
                run(method, "/v1.3/assets"),
                Err(GatewayError::MethodNotAllowed { .. })
            ),
            "{method}"
        );
    }
}

#[test]
fn unknown_routes_follow_the_configured_treatment() {
    let safe = classifier();
    let op = run_with(&safe, "GET", "/v1.3/brand-new-endpoint?x=1", false).unwrap();
    assert!(op.route.is_none());
    assert_eq!(op.path_and_query(), "/v1.3/brand-new-endpoint?x=1");
    assert!(matches!(
        run_with(&safe, "DELETE", "/v1.3/brand-new-endpoint", false),
        Err(GatewayError::RouteUnknown)
    ));
    assert!(matches!(
        run_with(&safe, "GET", "/v1.2/assets", false),
        Err(GatewayError::RouteUnknown)
    ));
    assert!(matches!(
        run_with(&safe, "GET", "/", false),
        Err(GatewayError::RouteUnknown)
    ));

    let reject = Classifier::new(ClassifySettings {
        unknown_routes: UnknownRoutes::Reject,
        ..Default::default()
    });
    assert!(matches!(
        run_with(&reject, "GET", "/v1.3/brand-new-endpoint", false),
        Err(GatewayError::RouteUnknown)
    ));
    let forward = Classifier::new(ClassifySettings {
        unknown_routes: UnknownRoutes::Forward,
        ..Default::default()
    });
    assert!(run_with(&forward, "DELETE", "/v1.3/brand-new-endpoint", false).is_ok());
    // Even `forward` never reaches an API version that is not listed.
    assert!(matches!(
        run_with(&forward, "DELETE", "/v1.2/assets/abc", false),
        Err(GatewayError::RouteUnknown)
    ));
}

#[test]
fn bodies_are_refused_on_routes_that_take_none() {
    assert_eq!(
        reason(run_with(&classifier(), "DELETE", "/v1.3/assets/abc", true)),
        "a request body on a route that takes none"
    );
    assert!(run_with(
        &classifier(),
        "DELETE",
        "/v1.3/entity-collections/c1/entities/e1/assets",
        true
    )
    .is_ok());
    assert!(run_with(&classifier(), "POST", "/v1.3/assets", true).is_ok());
}

#[test]
fn keys_named_by_rules_are_read_strictly_on_every_route() {
    let settings = ClassifySettings {
        rule_keys: ["force".to_owned()].into(),
        rule_bool_keys: ["force".to_owned()].into(),
        ..Default::default()
    };
    let c = Classifier::new(settings);
    let op = run_with(&c, "GET", "/v1.3/brand-new?force=yes", false).unwrap();
    assert_eq!(op.query.bool("force"), Some(true));
    assert!(matches!(
        run_with(&c, "GET", "/v1.3/brand-new?Force=1", false),
        Err(GatewayError::RequestAmbiguous(_))
    ));
    assert!(matches!(
        run_with(&c, "GET", "/v1.3/brand-new?force=1&force=0", false),
        Err(GatewayError::RequestAmbiguous(_))
    ));
    for escaped in ["force=%74rue", "force=+true", "force=ok", "force=no"] {
        let target = format!("/v1.3/brand-new?{escaped}");
        assert!(
            matches!(
                run_with(&c, "GET", &target, false),
                Err(GatewayError::RequestAmbiguous(_))
            ),
            "{target}"
        );
    }
}

#[test]
fn absolute_form_and_method_override_are_refused() {
    let absolute = classifier().classify(
        &Method::GET,
        Version::HTTP_11,
        &"http://evil.example/v1.3/assets".parse().unwrap(),
        &HeaderMap::new(),
        false,
    );
    assert!(matches!(absolute, Err(GatewayError::RequestAmbiguous(_))));
    for header in METHOD_OVERRIDE_HEADERS {
        let mut headers = HeaderMap::new();
        headers.insert(header, "DELETE".parse().unwrap());
        let overridden = classifier().classify(
            &Method::POST,
            Version::HTTP_11,
            &"/v1.3/assets".parse().unwrap(),
            &headers,
            false,
        );
        assert!(
            matches!(overridden, Err(GatewayError::RequestAmbiguous(_))),
            "{header}"
        );
    }
}

#[test]
fn object_filters_of_list_routes_take_bracket_keys_but_nothing_else_does() {
    let op = run(
        "GET",
        "/v1.3/indexes/i1/indexed-assets?page=1&duration[gte]=5&user_metadata[owner]=ann",
    )
    .unwrap();
    assert_eq!(op.route_id(), "indexes.indexed_assets.list");
    assert_eq!(
        op.path_and_query(),
        "/v1.3/indexes/i1/indexed-assets?page=1&duration[gte]=5&user_metadata[owner]=ann"
    );
    for target in [
        "/v1.3/indexes/i1/indexed-assets?duration[gte]=5&duration[gte]=6",
        "/v1.3/indexes/i1/indexed-assets?page[x]=1",
        "/v1.3/indexes/i1/indexed-assets?duration[]=5",
        "/v1.3/assets/a1?force[x]=true",
    ] {
        let method = if target.contains("force") {
            "DELETE"
        } else {
            "GET"
        };
        assert!(
            matches!(run(method, target), Err(GatewayError::RequestAmbiguous(_))),
            "{target}"
        );
    }
}

#[test]
fn escaped_values_of_keys_a_text_rule_compares_are_refused() {
    let c = Classifier::new(ClassifySettings {
        rule_keys: ["index_id".to_owned()].into(),
        ..Default::default()
    });
    assert!(run_with(&c, "GET", "/v1.3/tasks?index_id=secret-idx", false).is_ok());
    for target in [
        "/v1.3/tasks?index_id=secret%2Didx",
        "/v1.3/tasks?index_id=secret+idx",
    ] {
        assert!(
            matches!(
                run_with(&c, "GET", target, false),
                Err(GatewayError::RequestAmbiguous(_))
            ),
            "{target}"
        );
    }
}

#[test]
fn a_path_longer_than_any_route_still_has_its_ids_checked() {
    let tail = "/x".repeat(20);
    // A bad id early in a long path is refused, as in a short one.
    let err = run("GET", &format!("/v1.3/assets/a:b{tail}")).unwrap_err();
    assert!(matches!(err, GatewayError::RequestAmbiguous(_)), "{err:?}");
    // A good one makes an unknown route (forwarded as safe under the default), never a match.
    let op = run("GET", &format!("/v1.3/assets/a1{tail}")).unwrap();
    assert!(op.route.is_none());
    assert_eq!(op.path_and_query(), format!("/v1.3/assets/a1{tail}"));
}
