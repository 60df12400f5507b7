use std::path::Path;
use std::time::Duration;

use super::*;
use crate::classify::{Classifier, ClassifySettings};
use crate::config::Config;

const BASE: &str = r#"listen: 127.0.0.1:8080
upstream:
  url: https://api.twelvelabs.io
  api_key_env: TWELVELABS_API_KEY
clients:
  - id: alice
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
  - id: bob
    roles: [member]
    key_sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531
  - id: carol
    roles: [viewer]
    key_sha256: 0000000000000000000000000000000000000000000000000000000000000001
"#;

fn config(policy: &str) -> Config {
    Config::parse(Path::new("t.yaml"), &format!("{BASE}{policy}")).unwrap_or_else(|e| panic!("{e}"))
}

fn principal(config: &Config, id: &str) -> Principal {
    let c = config.clients.iter().find(|c| c.id.as_str() == id).unwrap();
    Principal {
        client: c.id.clone(),
        roles: c.roles.clone().into(),
        credential: None,
    }
}

/// Evaluate `method target` as `client`: "allow", "deny:<rule>" or "reject".
fn decide(config: &Config, client: &str, method: &str, target: &str) -> String {
    let classifier = Classifier::new(config.classify.clone());
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let op = match classifier.classify(
        &method,
        http::Version::HTTP_11,
        &target.parse().unwrap(),
        &http::HeaderMap::new(),
        false,
    ) {
        Ok(op) => op,
        Err(_) => return "reject".into(),
    };
    let decision = config
        .compiled_policy
        .evaluate(&op, &principal(config, client));
    match decision.effect {
        Effect::Allow => "allow".into(),
        Effect::Deny => format!("deny:{}", decision.rule.unwrap()),
    }
}

const ADMINS_ONLY: &str = r#"policy:
  default: allow
  rules:
    - id: force-delete-admins-only
      match:
        method: DELETE
        path: /v1.3/assets/{asset_id}
        query: { force: true }
      allow_roles: [admin]
      message: ask an admin
"#;

#[test]
fn only_admins_may_force_delete() {
    let c = config(ADMINS_ONLY);
    let table = [
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a1?force=true",
            "deny:force-delete-admins-only",
        ),
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a1?force=1",
            "deny:force-delete-admins-only",
        ),
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a1?force=YES",
            "deny:force-delete-admins-only",
        ),
        ("bob", "DELETE", "/v1.3/assets/a1?force=false", "allow"),
        ("bob", "DELETE", "/v1.3/assets/a1", "allow"),
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a1?force=true&force=true",
            "reject",
        ),
        ("bob", "DELETE", "/v1.3/assets/a1?Force=true", "reject"),
        ("alice", "DELETE", "/v1.3/assets/a1?force=true", "allow"),
        ("bob", "GET", "/v1.3/assets/a1", "allow"),
        ("bob", "DELETE", "/v1.3/indexes/i1", "allow"),
    ];
    for (client, method, target, expected) in table {
        assert_eq!(
            decide(&c, client, method, target),
            expected,
            "{client} {method} {target}"
        );
    }
}

#[test]
fn the_deny_names_the_rule_and_its_message() {
    let c = config(ADMINS_ONLY);
    let classifier = Classifier::new(c.classify.clone());
    let op = classifier
        .classify(
            &Method::DELETE,
            http::Version::HTTP_11,
            &"/v1.3/assets/a1?force=true".parse().unwrap(),
            &http::HeaderMap::new(),
            false,
        )
        .unwrap();
    let decision = c.compiled_policy.evaluate(&op, &principal(&c, "bob"));
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(decision.message.as_deref(), Some("ask an admin"));
    assert_eq!(decision.matched.len(), 1);
}

#[test]
fn every_matching_rule_must_admit_and_order_does_not_change_the_effect() {
    let rules = [
        r#"    - id: deletes-need-member
      match: { method: DELETE }
      allow_roles: [member, admin]
"#,
        r#"    - id: index-deletes-admins
      match: { operation: indexes.delete }
      allow_roles: [admin]
"#,
    ];
    for order in [[0, 1], [1, 0]] {
        let policy = format!("policy:\n  rules:\n{}{}", rules[order[0]], rules[order[1]]);
        let c = config(&policy);
        assert_eq!(decide(&c, "bob", "DELETE", "/v1.3/assets/a1"), "allow");
        assert_eq!(
            decide(&c, "bob", "DELETE", "/v1.3/indexes/i1"),
            "deny:index-deletes-admins"
        );
        assert_eq!(
            decide(&c, "carol", "DELETE", "/v1.3/assets/a1"),
            "deny:deletes-need-member"
        );
        assert_eq!(decide(&c, "alice", "DELETE", "/v1.3/indexes/i1"), "allow");
        // carol is refused by both; the first refusing rule in file order is named.
        let first = if order[0] == 0 {
            "deletes-need-member"
        } else {
            "index-deletes-admins"
        };
        assert_eq!(
            decide(&c, "carol", "DELETE", "/v1.3/indexes/i1"),
            format!("deny:{first}")
        );
    }
}

#[test]
fn read_only_clients_and_allow_clients() {
    let policy = r#"policy:
  rules:
    - id: viewers-read-only
      match: { clients: [carol], method: DELETE }
      allow_roles: []
    - id: carol-may-not-upload
      match: { clients: [carol], operation: assets.create }
      allow_roles: []
    - id: index-deletes
      match: { method: DELETE, path: "/v1.3/indexes/{index-id}" }
      allow_clients: [bob]
"#;
    let c = config(policy);
    assert_eq!(decide(&c, "carol", "GET", "/v1.3/assets"), "allow");
    assert_eq!(
        decide(&c, "carol", "DELETE", "/v1.3/assets/a1"),
        "deny:viewers-read-only"
    );
    assert_eq!(
        decide(&c, "carol", "POST", "/v1.3/assets"),
        "deny:carol-may-not-upload"
    );
    assert_eq!(decide(&c, "bob", "POST", "/v1.3/assets"), "allow");
    assert_eq!(decide(&c, "bob", "DELETE", "/v1.3/indexes/i1"), "allow");
    assert_eq!(
        decide(&c, "alice", "DELETE", "/v1.3/indexes/i1"),
        "deny:index-deletes"
    );
}

#[test]
fn dry_run_rules_record_but_never_block() {
    let policy = r#"policy:
  rules:
    - id: trial-no-index-deletes
      match: { operation: indexes.delete }
      allow_roles: [admin]
      mode: dry_run
"#;
    let c = config(policy);
    assert_eq!(decide(&c, "bob", "DELETE", "/v1.3/indexes/i1"), "allow");
    let classifier = Classifier::new(c.classify.clone());
    let op = classifier
        .classify(
            &Method::DELETE,
            http::Version::HTTP_11,
            &"/v1.3/indexes/i1".parse().unwrap(),
            &http::HeaderMap::new(),
            false,
        )
        .unwrap();
    let decision = c.compiled_policy.evaluate(&op, &principal(&c, "bob"));
    assert_eq!(
        decision.dry_run_denials,
        vec!["trial-no-index-deletes".parse::<RuleId>().unwrap()]
    );
    let decision = c.compiled_policy.evaluate(&op, &principal(&c, "alice"));
    assert!(decision.dry_run_denials.is_empty());
}

#[test]
fn default_deny_admits_only_what_a_rule_admits() {
    let policy = r#"policy:
  default: deny
  rules:
    - id: members-read-assets
      match: { method: GET, path: /v1.3/assets }
      allow_roles: [member, admin]
"#;
    let c = config(policy);
    assert_eq!(decide(&c, "bob", "GET", "/v1.3/assets"), "allow");
    assert_eq!(
        decide(&c, "carol", "GET", "/v1.3/assets"),
        "deny:members-read-assets"
    );
    assert_eq!(
        decide(&c, "bob", "GET", "/v1.3/indexes"),
        "deny:policy.default"
    );
    assert_eq!(
        decide(&c, "bob", "GET", "/v1.3/not-a-route"),
        "deny:policy.default"
    );
}

#[test]
fn unknown_routes_meet_only_route_independent_rules() {
    let policy = r#"policy:
  rules:
    - id: carol-nothing
      match: { clients: [carol] }
      allow_roles: []
    - id: asset-reads
      match: { operation: assets.list }
      allow_roles: [admin]
"#;
    let c = config(policy);
    assert_eq!(
        decide(&c, "carol", "GET", "/v1.3/new-endpoint"),
        "deny:carol-nothing"
    );
    assert_eq!(decide(&c, "bob", "GET", "/v1.3/new-endpoint"), "allow");
    assert_eq!(decide(&c, "bob", "GET", "/v1.3/assets"), "deny:asset-reads");
}

#[test]
fn rules_that_name_no_route_or_parameter_are_errors() {
    let bad = [
        (
            "match: { path: \"/v1.3/asset/{asset_id}\" }",
            "is no TwelveLabs v1.3 route",
        ),
        (
            "match: { method: PUT, path: \"/v1.3/assets/{asset_id}\" }",
            "has no PUT route",
        ),
        (
            "match: { operation: assets.destroy }",
            "is no TwelveLabs v1.3 route id",
        ),
        (
            "match: { operation: assets.delete, method: GET }",
            "is a DELETE route",
        ),
        (
            "match: { operation: assets.delete, query: { forced: true } }",
            "has no query parameter \"forced\"",
        ),
        (
            "match: { operation: assets.list, query: { page: true } }",
            "the rule compares a boolean",
        ),
    ];
    for (matcher, expected) in bad {
        let policy = format!(
            "policy:\n  rules:\n    - id: r\n      {matcher}\n      allow_roles: [admin]\n"
        );
        let error = Config::parse(Path::new("t.yaml"), &format!("{BASE}{policy}"))
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{matcher}: {error}");
        assert!(error.contains("t.yaml:"), "{error}");
    }
}

#[test]
fn rules_that_can_never_match_are_warned_about() {
    let policy = r#"policy:
  rules:
    - id: nobody
      match: { method: GET, query: { force: true } }
      allow_roles: [admin]
    - id: deny-all-deletes
      match: { method: DELETE }
      allow_roles: []
"#;
    let c = config(policy);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("nobody") && w.contains("can never match")),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("deny-all-deletes") && w.contains("denies everyone")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn evaluation_only_visits_rules_that_can_match_the_route() {
    let mut policy = String::from("policy:\n  rules:\n");
    for i in 0..200 {
        policy.push_str(&format!("    - id: idx-{i}\n      match: {{ operation: indexes.delete }}\n      allow_roles: [admin]\n"));
    }
    policy.push_str("    - id: force\n      match: { operation: assets.delete, query: { force: true } }\n      allow_roles: [admin]\n");
    let c = config(&policy);
    let classifier = Classifier::new(ClassifySettings {
        rule_keys: c.classify.rule_keys.clone(),
        ..Default::default()
    });
    let op = classifier
        .classify(
            &Method::DELETE,
            http::Version::HTTP_11,
            &"/v1.3/assets/a?force=true".parse().unwrap(),
            &http::HeaderMap::new(),
            false,
        )
        .unwrap();
    assert_eq!(c.compiled_policy.candidates(&op).len(), 1);
}

const TWO_PERSON: &str = r#"policy:
  rules:
    - id: force-delete-two-person
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin, member]
      approval:
        approver_roles: [admin]
        approvals: 1
        ttl: 2h
    - id: members-read-only-indexes
      match: { method: DELETE, path: "/v1.3/indexes/{index_id}" }
      allow_roles: [admin]
guards:
  protected:
    indexes: [held-index]
    assets: [held-asset]
"#;

#[test]
fn a_rule_with_approval_admits_and_names_the_approval_it_needs() {
    let c = config(TWO_PERSON);
    let classifier = Classifier::new(c.classify.clone());
    let op = classifier
        .classify(
            &Method::DELETE,
            http::Version::HTTP_11,
            &"/v1.3/assets/a1?force=true".parse().unwrap(),
            &http::HeaderMap::new(),
            false,
        )
        .unwrap();
    let decision = c.compiled_policy.evaluate(&op, &principal(&c, "bob"));
    assert_eq!(decision.effect, Effect::Allow);
    let approval = decision.approval.expect("needs approval");
    assert_eq!(approval.rule.as_str(), "force-delete-two-person");
    assert_eq!(approval.rules.len(), 1);
    assert_eq!(approval.rules[0].1.approvals, 1);
    assert_eq!(approval.ttl, Duration::from_secs(7200));
    assert_eq!(approval.use_within, Duration::from_secs(900));
    // A plain delete matches no approval rule; a refused request asks for no approval.
    assert_eq!(decide(&c, "bob", "DELETE", "/v1.3/assets/a1"), "allow");
    let op = classifier
        .classify(
            &Method::DELETE,
            http::Version::HTTP_11,
            &"/v1.3/assets/a1?force=true".parse().unwrap(),
            &http::HeaderMap::new(),
            false,
        )
        .unwrap();
    let refused = c.compiled_policy.evaluate(&op, &principal(&c, "carol"));
    assert_eq!(refused.effect, Effect::Deny);
    assert!(refused.approval.is_none());
    // Only alice holds the approver role: a request by her could never be approved.
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("force-delete-two-person") && w.contains("could never be approved")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn approval_settings_that_cannot_work_are_errors() {
    for (bad, why) in [
        ("approver_roles: []", "nobody could approve"),
        (
            "approver_roles: [admin]\n        approvals: 0",
            "at least 1",
        ),
        (
            "approver_roles: [admin]\n        use_within: 0s",
            "longer than zero",
        ),
    ] {
        let text = TWO_PERSON.replace("approver_roles: [admin]\n        approvals: 1", bad);
        let error = Config::parse(Path::new("t.yaml"), &format!("{BASE}{text}"))
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(error.to_string().contains(why), "{bad}: {error}");
    }
}

#[test]
fn explain_and_test_show_approvals_and_protection() {
    use crate::guards::Protection;
    let c = config(TWO_PERSON);
    let classifier = Classifier::new(c.classify.clone());
    let protection = Protection::new(&c.protected);
    let run = |client: &str, method: &str, target: &str| {
        let p = explain::principal_for(&c.clients, client).unwrap();
        explain::explain(
            &classifier,
            &c.compiled_policy,
            &protection,
            &p,
            method,
            target,
        )
        .unwrap()
    };
    let (verdict, account) = run("bob", "DELETE", "/v1.3/assets/a1?force=true");
    assert_eq!(verdict.name(), "approval");
    assert_eq!(verdict.exit_code(), 4);
    assert!(
        account.contains("requires approval by [admin]"),
        "{account}"
    );
    assert!(
        account.contains("a reference lookup before forwarding decides"),
        "{account}"
    );
    let (verdict, account) = run("alice", "DELETE", "/v1.3/indexes/held-index");
    assert_eq!(verdict.name(), "deny");
    assert!(
        account.contains(
            "DENY by guards.protected (403 resource_protected): index held-index is protected"
        ),
        "{account}"
    );
    let (verdict, _) = run("alice", "DELETE", "/v1.3/assets/held-asset?force=true");
    assert_eq!(
        verdict.name(),
        "deny",
        "protection first: no approval is asked for"
    );
    let (verdict, account) = run("alice", "DELETE", "/v1.3/assets/a1");
    assert_eq!(verdict.name(), "allow");
    assert!(
        !account.contains("lookup:"),
        "a plain delete needs no lookup: {account}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        r#"cases:
  - { client: bob, method: DELETE, target: "/v1.3/assets/a1?force=true", expect: approval, rule: force-delete-two-person }
  - { client: alice, method: DELETE, target: /v1.3/indexes/held-index, expect: deny, rule: guards.protected }
  - { client: bob, method: DELETE, target: /v1.3/assets/a1, expect: allow }
  - { name: wrong on purpose, client: bob, method: DELETE, target: "/v1.3/assets/a1?force=true", expect: allow }
"#,
    )
    .unwrap();
    let (report, total, failures) = explain::run_cases(
        &classifier,
        &c.compiled_policy,
        &protection,
        &c.clients,
        &cases,
    )
    .unwrap();
    assert_eq!((total, failures), (4, 1), "{report}");
    assert!(
        report.contains("got approval by force-delete-two-person"),
        "{report}"
    );
}

#[test]
fn every_rule_asking_for_approval_must_be_satisfied_and_the_shortest_times_apply() {
    let extra = TWO_PERSON.replace(
        "    - id: members-read-only-indexes",
        r#"    - id: force-delete-security-too
      match: { operation: assets.delete, query: { force: true } }
      allow_roles: [admin, member]
      approval:
        approver_roles: [viewer]
        approvals: 2
        use_within: 5m
    - id: members-read-only-indexes"#,
    );
    let c = config(&extra);
    let classifier = Classifier::new(c.classify.clone());
    let op = classifier
        .classify(
            &Method::DELETE,
            http::Version::HTTP_11,
            &"/v1.3/assets/a1?force=true".parse().unwrap(),
            &http::HeaderMap::new(),
            false,
        )
        .unwrap();
    let approval = c
        .compiled_policy
        .evaluate(&op, &principal(&c, "bob"))
        .approval
        .unwrap();
    let rules: Vec<&str> = approval.rules.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        rules,
        ["force-delete-two-person", "force-delete-security-too"]
    );
    assert_eq!(approval.rule.as_str(), "force-delete-two-person");
    assert_eq!(
        approval.ttl,
        Duration::from_secs(3600),
        "the default 1h beats 2h"
    );
    assert_eq!(approval.use_within, Duration::from_secs(300));
    let roles: Vec<&str> = approval
        .approver_roles()
        .iter()
        .map(|r| r.as_str())
        .collect();
    assert_eq!(roles, ["admin", "viewer"]);
}

const DEFERRING: &str = r#"policy:
  rules:
    - id: force-delete-later
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}", query: { force: true } }
      allow_roles: [admin, member]
      defer: { delay: 15m, cancel_roles: [admin] }
    - id: any-delete-later
      match: { method: DELETE, path: "/v1.3/assets/{asset_id}" }
      allow_roles: [admin, member]
      defer: { delay: 2s, cancel_roles: [member] }
"#;

#[test]
fn deferring_rules_give_the_longest_delay_every_cancel_role_and_the_first_rule() {
    let c = config(DEFERRING);
    let classifier = Classifier::new(c.classify.clone());
    let op = |target: &str| {
        classifier
            .classify(
                &Method::DELETE,
                http::Version::HTTP_11,
                &target.parse().unwrap(),
                &http::HeaderMap::new(),
                false,
            )
            .unwrap()
    };
    let both = c
        .compiled_policy
        .evaluate(&op("/v1.3/assets/a1?force=true"), &principal(&c, "bob"));
    assert_eq!(both.effect, Effect::Allow);
    let defer = both.defer.expect("deferred");
    assert_eq!(defer.rule.as_str(), "force-delete-later");
    assert_eq!(defer.delay, Duration::from_secs(900));
    let roles: Vec<&str> = defer.cancel_roles.iter().map(|r| r.as_str()).collect();
    assert_eq!(roles, ["admin", "member"]);
    let one = c
        .compiled_policy
        .evaluate(&op("/v1.3/assets/a1"), &principal(&c, "bob"))
        .defer
        .expect("deferred");
    assert_eq!(one.rule.as_str(), "any-delete-later");
    assert_eq!(one.delay, Duration::from_secs(2));
    // A refused request is not deferred.
    let refused = c
        .compiled_policy
        .evaluate(&op("/v1.3/assets/a1"), &principal(&c, "carol"));
    assert_eq!(refused.effect, Effect::Deny);
    assert!(refused.defer.is_none());
}

#[test]
fn defer_on_a_route_with_a_body_or_a_gateway_operation_or_without_a_delay_is_an_error() {
    for (rule, why) in [
        (
            "match: { method: PUT, path: \"/v1.3/assets/{asset_id}/user-metadata\" }\n      defer: { delay: 15m }",
            "request body",
        ),
        ("match: { method: POST }\n      defer: { delay: 15m }", "request body"),
        (
            "match: { operation: gateway.approvals.cancel }\n      defer: { delay: 15m }",
            "gateway",
        ),
        (
            "match: { method: DELETE }\n      defer: { delay: 0s }",
            "longer than zero",
        ),
        (
            "match: { method: DELETE }\n      defer: { delay: 31d }",
            "at most 30d",
        ),
    ] {
        let text = format!("policy:\n  rules:\n    - id: later\n      allow_roles: [admin]\n      {rule}\n");
        let error = Config::parse(Path::new("t.yaml"), &format!("{BASE}{text}"))
            .err()
            .unwrap_or_else(|| panic!("{rule} accepted"));
        assert!(error.to_string().contains(why), "{rule}: {error}");
    }
    // Some DELETE routes take a body (entity asset links): a rule on a bodiless route is fine.
    config("policy:\n  rules:\n    - id: later\n      match: { operation: indexes.delete }\n      allow_roles: [admin]\n      defer: { delay: 15m }\n");
}
