use super::*;
use crate::credentials::KeySource;
use crate::matcher::QueryValue;
use http::Method;

const MINIMAL: &str = r#"listen: 127.0.0.1:8080           # client-facing listener
admin_listen: 127.0.0.1:9464     # /metrics /healthz /readyz

upstream:
  url: https://api.twelvelabs.io # scheme://host[:port]; request paths (/v1.3/...) are appended as classified
  api_key_file: /run/secrets/twelvelabs-api-key   # re-read on change: key rotation without restart
  # api_key_env: TWELVELABS_API_KEY                # the alternative; exactly one of the two

clients:                         # team members; only SHA-256 hex digests of their keys are stored
  - id: alice                    # key: tlgw_alice_example_key
    roles: [admin]
    key_sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6
  - id: bob                      # key: tlgw_bob_example_key
    roles: [member]
    key_sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531

policy:
  default: allow                 # for requests no rule matches: allow | deny
  rules:
    - id: force-delete-admins-only
      match:
        method: DELETE
        path: /v1.3/assets/{asset_id}
        query: { force: true }
      allow_roles: [admin]
      message: Force-deleting an asset unlinks it from every index and entity; ask an admin.

audit:
  path: ./data/audit.jsonl
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("gw.yaml"), text)
}

#[test]
fn the_minimal_contract_file_parses() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        config.upstream.origin.to_string(),
        "https://api.twelvelabs.io"
    );
    assert_eq!(
        config.upstream.key_source,
        KeySource::File("/run/secrets/twelvelabs-api-key".into())
    );
    assert_eq!(config.clients.len(), 2);
    assert_eq!(config.clients[1].id.as_str(), "bob");
    assert_eq!(
        config.policy.rules[0].id.as_str(),
        "force-delete-admins-only"
    );
    assert_eq!(
        config.policy.rules[0].matcher.query.get("force"),
        Some(&QueryValue::Bool(true))
    );
    assert_eq!(config.policy.rules[0].matcher.method, Some(Method::DELETE));
    assert_eq!(
        config.audit.unwrap().settings.path,
        PathBuf::from("./data/audit.jsonl")
    );
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(5));
}

#[test]
fn the_shipped_example_parses() {
    let text = include_str!("../../config/gateway.example.yaml");
    let config = parse(text).unwrap();
    assert_eq!(config.logging.format, LogFormat::Json);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.upstream.max_idle_connections, 128);
}

#[test]
fn idle_upstream_connections_default_to_nginx_s_keepalive_and_can_be_set() {
    assert_eq!(
        parse(MINIMAL).unwrap().upstream.max_idle_connections,
        DEFAULT_MAX_IDLE_CONNECTIONS
    );
    let text = MINIMAL.replace(
        "  url: https://api.twelvelabs.io ",
        "  max_idle_connections: 8\n  url: https://api.twelvelabs.io ",
    );
    assert_ne!(text, MINIMAL);
    assert_eq!(parse(&text).unwrap().upstream.max_idle_connections, 8);
}

fn error_of(text: &str) -> ConfigError {
    parse(text).expect_err("should be rejected")
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let text = MINIMAL.replace("  url: https", "  urls: https");
    let error = error_of(&text);
    assert_eq!(error.line, Some(5), "{error}");
    assert!(
        error.to_string().contains("unknown field `urls`"),
        "{error}"
    );
    assert!(error.to_string().starts_with("gw.yaml:5: "), "{error}");

    let text = MINIMAL.replace("      allow_roles: [admin]", "      allow_role: [admin]");
    let error = error_of(&text);
    assert!(error.to_string().contains("allow_role"), "{error}");
    assert_eq!(error.line, Some(25), "{error}");

    let text = MINIMAL.replace("  path: ./data", "  paht: ./data");
    assert!(error_of(&text).to_string().contains("unknown field `paht`"));
}

#[test]
fn bad_values_are_named() {
    let text = MINIMAL.replace(
        "7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531",
        "7D57A37F",
    );
    let error = error_of(&text);
    assert!(
        error.to_string().contains("clients[1]: invalid key_sha256"),
        "{error}"
    );
    // serde reports the item that holds the bad value.
    assert_eq!(error.line, Some(13), "{error}");

    let text = MINIMAL.replace("https://api.twelvelabs.io #", "ftp://api.twelvelabs.io #");
    let error = error_of(&text);
    assert!(error.to_string().contains("upstream.url"), "{error}");
    assert_eq!(error.line, Some(5), "{error}");

    let text = MINIMAL.replace(
        "https://api.twelvelabs.io #",
        "https://api.twelvelabs.io/v1.3 #",
    );
    assert!(error_of(&text).to_string().contains("scheme://host[:port]"));

    let text = MINIMAL.replace("  url: https", "  connect_timeout: 5 seconds\n  url: https");
    assert!(error_of(&text).to_string().contains("invalid duration"));
}

#[test]
fn key_source_must_be_exactly_one() {
    let both = MINIMAL.replace(
        "  # api_key_env: TWELVELABS_API_KEY",
        "  api_key_env: TWELVELABS_API_KEY",
    );
    let error = error_of(&both);
    assert!(
        error
            .to_string()
            .contains("exactly one of api_key_file and api_key_env"),
        "{error}"
    );
    assert_eq!(error.line, Some(4));
    let neither = MINIMAL.replace("  api_key_file: /run/secrets/twelvelabs-api-key", "");
    assert!(error_of(&neither).to_string().contains("exactly one"));
}

#[test]
fn duplicates_are_refused_with_the_line_of_the_second() {
    let text = MINIMAL.replace("  - id: bob ", "  - id: alice ");
    let error = error_of(&text);
    assert!(
        error.to_string().contains("duplicate client id \"alice\""),
        "{error}"
    );
    assert_eq!(error.line, Some(13), "{error}");

    let text = MINIMAL.replace(
        "7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531",
        "d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6",
    );
    assert!(error_of(&text).to_string().contains("same key digest"));

    let text = format!(
        "{}    - id: force-delete-admins-only\n      match: {{ method: GET }}\n      allow_roles: []\n",
        MINIMAL.replace("\naudit:\n  path: ./data/audit.jsonl\n", "")
    );
    let error = error_of(&text);
    assert!(error.to_string().contains("duplicate rule id"), "{error}");
    assert_eq!(error.line, Some(27), "{error}");
}

#[test]
fn rules_must_say_whom_they_admit_and_name_known_clients() {
    let text = MINIMAL.replace("      allow_roles: [admin]\n", "");
    assert!(error_of(&text)
        .to_string()
        .contains("admits nobody by omission"));
    let text = MINIMAL.replace(
        "      allow_roles: [admin]\n",
        "      allow_clients: [mallory]\n",
    );
    assert!(error_of(&text)
        .to_string()
        .contains("unknown client \"mallory\""));
    let text = MINIMAL.replace("method: DELETE", "method: DELET");
    assert!(error_of(&text).to_string().contains("unknown method"));
}

#[test]
fn locate_finds_nested_keys_and_items() {
    let path = [Seg::Key("clients"), Seg::Index(1), Seg::Key("roles")];
    assert_eq!(locate(MINIMAL, &path), Some(14));
    let path = [
        Seg::Key("policy"),
        Seg::Key("rules"),
        Seg::Index(0),
        Seg::Key("match"),
        Seg::Key("query"),
    ];
    assert_eq!(locate(MINIMAL, &path), Some(24));
    assert_eq!(locate(MINIMAL, &[Seg::Key("nothing")]), None);
}

#[test]
fn keys_with_labels_and_expiry_and_certificate_identities_are_validated() {
    let with = |clients: &str, extra: &str| {
        let text = MINIMAL.replace(
            "  - id: bob                      # key: tlgw_bob_example_key\n    roles: [member]\n    key_sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531\n",
            clients,
        );
        parse(&format!("{text}{extra}"))
    };
    let rotated = with(
        "  - id: bob\n    keys:\n      - { sha256: 7d57a37f514defd6a6e7361ae2b3be5af72dad6d06820f70fd62ed46e768f531, label: laptop-2026, expires: 2027-03-01T00:00:00Z }\n      - { sha256: 0000000000000000000000000000000000000000000000000000000000000002, label: laptop-2027 }\n",
        "",
    )
    .unwrap();
    let bob = &rotated.clients[1];
    assert_eq!(bob.keys.len(), 2);
    assert_eq!(bob.keys[0].label, "laptop-2026");
    assert_eq!(
        bob.keys[0].expires,
        Some(humantime::parse_rfc3339("2027-03-01T00:00:00Z").unwrap())
    );
    assert_eq!(bob.keys[1].expires, None);
    assert_eq!(rotated.clients[0].keys[0].label, "default");

    let problems = [
        (
            "  - id: bob\n    key_sha256: 0000000000000000000000000000000000000000000000000000000000000002\n    keys: [{ sha256: 0000000000000000000000000000000000000000000000000000000000000003 }]\n",
            "not both",
        ),
        (
            "  - id: bob\n    keys: [{ sha256: 0000000000000000000000000000000000000000000000000000000000000002, label: a }, { sha256: 0000000000000000000000000000000000000000000000000000000000000003, label: a }]\n",
            "used twice",
        ),
        (
            "  - id: bob\n    keys: [{ sha256: 0000000000000000000000000000000000000000000000000000000000000002, expires: next week }]\n",
            "RFC 3339",
        ),
        (
            "  - id: bob\n    keys: [{ sha256: d7488ca6175fed1af2450dea5acac0dc06f2e7a5199459878eca70385645fac6 }]\n",
            "configured twice",
        ),
        ("  - id: bob\n    roles: [member]\n", "no credential"),
        (
            "  - id: bob\n    cert_subject: CN=reporting.svc\n",
            "only with tls.client_ca_file",
        ),
    ];
    for (clients, why) in problems {
        let error = with(clients, "")
            .err()
            .unwrap_or_else(|| panic!("accepted: {clients}"));
        assert!(error.to_string().contains(why), "{clients}: {error}");
    }
    let tls = "tls:\n  cert_file: /etc/tls/tls.crt\n  key_file: /etc/tls/tls.key\n  client_ca_file: /etc/tls/ca.crt\n  min_version: \"1.3\"\n";
    let by_cert = with(
        "  - id: bob\n    roles: [member]\n    cert_subject: \"URI:spiffe://tl/reporting\"\n",
        tls,
    )
    .unwrap();
    assert_eq!(
        by_cert.clients[1].cert_subject,
        Some(crate::auth::CertSubject::Uri(
            "spiffe://tl/reporting".into()
        ))
    );
    // An untyped subject: which name would it match? The error names the line and the fix.
    let error = with(
        "  - id: bob\n    roles: [member]\n    cert_subject: reporting.svc\n",
        tls,
    )
    .err()
    .unwrap();
    assert_eq!(error.line, Some(15), "{error}");
    assert!(
        error.to_string().contains(r#"clients[1].cert_subject: cert_subject "reporting.svc" must say which name it matches: "CN=reporting.svc", "DNS:reporting.svc" or "URI:spiffe://...""#),
        "{error}"
    );
    let twice =
        "  - id: bob\n    cert_subject: DNS:a.svc\n  - id: carol\n    cert_subject: DNS:a.svc\n";
    let error = with(twice, tls).err().unwrap();
    assert!(error.to_string().contains("names two clients"), "{error}");
    // The same text as a CN and as a DNS name are two different names.
    assert!(with(&twice.replacen("DNS:", "CN=", 1), tls).is_ok());
    // Revocation lists need the client CA.
    let crl = "tls:\n  cert_file: /etc/tls/tls.crt\n  key_file: /etc/tls/tls.key\n  client_crl_file: /etc/tls/ca.crl\n";
    let error = with("", crl).err().unwrap();
    assert!(error.to_string().contains("tls.client_crl_file"), "{error}");
    let with_ca = with("", &format!("{tls}  client_crl_file: /etc/tls/ca.crl\n")).unwrap();
    assert_eq!(
        with_ca.tls.unwrap().client_crl_file.as_deref(),
        Some(Path::new("/etc/tls/ca.crl"))
    );
    assert!(by_cert.clients[1].keys.is_empty());
    assert_eq!(
        by_cert.tls.unwrap().min_version,
        crate::tls::TlsVersion::Tls13
    );
    let error = with("", &tls.replace("\"1.3\"", "\"1.1\"")).err().unwrap();
    assert!(error.to_string().contains("tls.min_version"), "{error}");
}

#[test]
fn connections_have_an_age_limit_of_an_hour_unless_told_otherwise() {
    let age = |server: &str| {
        parse(&format!("{MINIMAL}{server}"))
            .unwrap()
            .server
            .max_connection_age
    };
    assert_eq!(age(""), Some(Duration::from_secs(3600)));
    assert_eq!(
        age("server:\n  max_connection_age: 10m\n"),
        Some(Duration::from_secs(600))
    );
    assert_eq!(age("server:\n  max_connection_age: 0s\n"), None);
    assert!(parse(&format!("{MINIMAL}server:\n  max_connection_age: soon\n")).is_err());
}

#[test]
fn ui_oidc_is_validated_at_load_and_names_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("oidc-secret");
    std::fs::write(&secret, "s3cret-value\n").unwrap();
    let section = |issuer: &str, extra: &str| {
        format!(
            "{MINIMAL}ui:\n  oidc:\n    issuer: {issuer}\n    client_id: tl-gateway\n    client_secret_file: {}\n    redirect_url: https://gw.example.com/tl-gateway/ui/callback\n    roles_claim: groups\n    role_map: {{ \"tl-admins\": [admin] }}\n{extra}",
            secret.display()
        )
    };
    let config = parse(&section("https://idp.example.com/realms/team", "")).unwrap();
    let oidc = config.ui.oidc.as_ref().unwrap();
    assert_eq!(oidc.client_secret.0, "s3cret-value");
    assert_eq!(oidc.session_ttl, std::time::Duration::from_secs(8 * 3600));
    assert!(oidc.secure_cookies);
    assert!(!config.ui.allow_key_sign_in);
    // The secret never shows in the configuration's debug form.
    assert!(!format!("{config:?}").contains("s3cret-value"));
    let config = parse(&section(
        "https://idp.example.com",
        "  allow_key_sign_in: true\n",
    ))
    .unwrap();
    assert!(config.ui.allow_key_sign_in);

    let error = parse(&section("http://idp.example.com", ""))
        .unwrap_err()
        .to_string();
    assert!(error.contains("ui.oidc.issuer"), "{error}");
    let error = parse(&section("https://idp.example.com", "    colour: blue\n"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("colour"), "{error}");
    assert!(parse(MINIMAL).unwrap().ui.oidc.is_none());
}

#[test]
fn telemetry_otlp_is_read_and_its_errors_name_the_key_and_line() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.telemetry, TelemetryConfig::default());

    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("otlp-headers");
    std::fs::write(&headers, "authorization: Bearer s3cret\n").unwrap();
    let text = format!(
        "{MINIMAL}telemetry:\n  otlp:\n    endpoint: http://collector:4318\n    sample_ratio: 0.01\n    headers_file: {}\n  trust_traceparent_from: [alice]\n",
        headers.display()
    );
    let config = parse(&text).unwrap();
    let otlp = config.telemetry.otlp.as_ref().unwrap();
    assert_eq!(otlp.traces_url(), "http://collector:4318/v1/traces");
    assert_eq!(otlp.protocol, crate::telemetry::OtlpProtocol::Http);
    assert_eq!(otlp.sample_ratio, 0.01);
    assert_eq!(otlp.headers[0].0, "authorization");
    assert_eq!(
        config.telemetry.trust_traceparent_from,
        vec!["alice".parse::<ClientId>().unwrap()]
    );

    let error = error_of(&format!(
        "{MINIMAL}telemetry:\n  otlp:\n    endpoint: http://collector:4318\n    sample_ratio: 2\n"
    ));
    assert_eq!(error.line, Some(33), "{error}");
    assert!(
        error.to_string().contains("telemetry.otlp.sample_ratio"),
        "{error}"
    );
    let error = error_of(&format!(
        "{MINIMAL}telemetry:\n  otlp:\n    endpoint: collector:4318\n"
    ));
    assert!(
        error.to_string().contains("telemetry.otlp.endpoint"),
        "{error}"
    );
    let error = error_of(&format!(
        "{MINIMAL}telemetry:\n  otlp:\n    endpoint: http://c:4318\n    protocol: thrift\n"
    ));
    assert!(error.to_string().contains("thrift"), "{error}");
    std::fs::write(&headers, "authorization Bearer s3cret\n").unwrap();
    let error = error_of(&format!(
        "{MINIMAL}telemetry:\n  otlp:\n    endpoint: http://c:4318\n    headers_file: {}\n",
        headers.display()
    ));
    assert!(
        error.to_string().contains("telemetry.otlp.headers_file")
            && error.to_string().contains("line 1"),
        "{error}"
    );
    assert!(!error.to_string().contains("s3cret"), "{error}");
}
