//! The policy tooling as a user runs it: `check`, `explain`, `test`, `keygen`.

use std::process::{Command, Output};

use crate::support::*;

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const EXAMPLE: &str = "config/gateway.example.yaml";

#[test]
fn the_shipped_policy_tests_pass() {
    let output = run(&["test", "--config", EXAMPLE, "config/policy-tests.yaml"]);
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains(" 0 failed"), "{text}");
    println!("{text}");
}

#[test]
fn test_fails_on_a_wrong_expectation_and_shows_the_explanation() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - client: bob\n    method: DELETE\n    target: /v1.3/assets/a1?force=true\n    expect: allow\n",
    )
    .unwrap();
    let output = run(&["test", "--config", EXAMPLE, cases.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("FAIL")
            && text.contains("expected allow, got deny by force-delete-admins-only"),
        "{text}"
    );
    assert!(text.contains("REFUSES bob"), "{text}");
}

#[test]
fn explain_exit_codes_are_0_allow_3_deny_2_rejected() {
    let cases = [
        ("alice", "DELETE", "/v1.3/assets/a1?force=true", 0, "ALLOW"),
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a1?force=on",
            3,
            "DENY by force-delete-admins-only",
        ),
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a1?force=true&force=false",
            2,
            "REJECT (400 request_ambiguous)",
        ),
        (
            "bob",
            "DELETE",
            "/v1.3/assets/a%2Fb",
            2,
            "REJECT (400 request_ambiguous)",
        ),
        (
            "bob",
            "PUT",
            "/v1.3/assets/a1",
            2,
            "REJECT (405 method_not_allowed)",
        ),
    ];
    for (client, method, target, code, shown) in cases {
        let output = run(&[
            "explain", "--config", EXAMPLE, "--client", client, method, target,
        ]);
        let text = stdout(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{method} {target}: {text}"
        );
        assert!(text.contains(shown), "{text}");
    }
    let output = run(&[
        "explain",
        "--config",
        EXAMPLE,
        "--client",
        "bob",
        "DELETE",
        "/v1.3/assets/a1?force=1",
    ]);
    let text = stdout(&output);
    assert!(
        text.contains("canonical: DELETE /v1.3/assets/a1?force=true"),
        "{text}"
    );
    assert!(text.contains("route:     assets.delete"), "{text}");
    let output = run(&[
        "explain",
        "--config",
        EXAMPLE,
        "--client",
        "mallory",
        "GET",
        "/v1.3/assets",
    ]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn check_names_the_file_line_and_key_of_a_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo_root().join(EXAMPLE)).unwrap();
    let cases = [
        (
            example.replace("      allow_roles: [admin]", "      allow_role: [admin]"),
            "unknown field `allow_role`",
        ),
        (
            example.replace(
                "path: /v1.3/assets/{asset_id}",
                "path: /v1.3/asset/{asset_id}",
            ),
            "is no TwelveLabs v1.3 route",
        ),
        (
            example.replace("query: { force: true }", "query: { forced: true }"),
            "has no query parameter \"forced\"",
        ),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("gateway.yaml");
        std::fs::write(&file, &text).unwrap();
        let output = run(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{expected}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains(expected), "{error}");
        assert!(error.contains(&format!("{}:", file.display())), "{error}");
        assert_eq!(error.lines().count(), 1, "one-line reason: {error}");
    }
    let output = run(&["check", "--config", EXAMPLE]);
    assert!(output.status.success());
}

#[test]
fn keygen_prints_a_key_whose_digest_it_prints() {
    let output = run(&["keygen", "--id", "carol", "--roles", "admin,ops"]);
    assert!(output.status.success());
    let text = stdout(&output);
    let key = text.lines().find(|l| l.starts_with("tlgw_")).unwrap();
    let digest = tl_gateway::auth::key_digest_hex(key);
    assert!(text.contains(&format!("key_sha256: {digest}")), "{text}");
    assert!(text.contains("roles: [admin, ops]"), "{text}");
}
