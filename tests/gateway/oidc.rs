//! Signing in to the page with a real OpenID Connect provider (`ui.oidc`): the certified Node.js
//! `oidc-provider` (tests/oidc, installed by `scripts/setup-oidc-provider`), started per test on a
//! free loopback port. These tests drive the authorization-code flow with a plain HTTP client —
//! the provider's development login form, then the gateway's callback — and check every refusal
//! the issue names; `tests/browser/oidc_keys_ui.py` drives the same flow in a real Chromium.
//!
//! Without node or the installed provider these tests fail (they never skip).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::{header, HeaderMap, Method, StatusCode};
use tl_gateway::body;

use crate::approvals::two_person;
use crate::sdk::{python, start_emulator};
use crate::support::*;

pub const CLIENT_ID: &str = "tl-gateway";
pub const CLIENT_SECRET: &str = "test-client-secret-0123456789abcdef";

/// The provider: a Node.js process printing `issuer URL` once it listens.
pub struct Provider {
    pub issuer: String,
    _process: KillOnDrop,
}

impl Provider {
    /// Start one that sends people back to `redirect_url`.
    pub fn start(redirect_url: &str) -> Provider {
        let dir = repo_root().join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "tests/oidc/node_modules is missing: run scripts/setup-oidc-provider (scripts/test does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("provider.js"))
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .env("OIDC_REDIRECT_URIS", redirect_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (Debian's nodejs) must be installed: scripts/test installs it");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Whatever it prints later is read and dropped (a closed pipe would kill it: EPIPE).
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let issuer = line
            .trim()
            .strip_prefix("issuer ")
            .unwrap_or_else(|| panic!("the provider did not start: {line:?}"))
            .to_owned();
        Provider {
            issuer,
            _process: KillOnDrop(child),
        }
    }

    /// Make the provider's next ID token `audience` (for another client) or `unknown-key`.
    pub async fn tamper(&self, mode: &str) {
        let (status, _, _) = exchange(
            Method::POST,
            &format!("{}/__test/tamper", self.issuer),
            &[],
            Some(mode.to_owned()),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}

/// A free loopback port for the gateway (its redirect URL must be known to the provider first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ui.oidc` for `provider`, writing the client secret into `dir`.
pub fn oidc_yaml(dir: &std::path::Path, issuer: &str, port: u16, extra: &str) -> String {
    let secret = dir.join("oidc-client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    format!(
        "ui:\n  oidc:\n    issuer: {issuer}\n    client_id: {CLIENT_ID}\n    client_secret_file: {}\n    redirect_url: http://127.0.0.1:{port}/tl-gateway/ui/callback\n    scopes: [openid, email, profile, groups]\n    client_claim: email\n    roles_claim: groups\n    role_map: {{ \"tl-admins\": [admin], \"tl-members\": [member] }}\n{extra}",
        secret.display()
    )
}

/// A gateway with `ui.oidc` and a provider for it; `extra` goes below `ui.oidc` (e.g.
/// `    session_ttl: 1s\n`), `more` at the top level.
pub async fn start(upstream: &str, extra: &str, more: &str) -> (TestGateway, Provider) {
    let port = free_port();
    let provider = Provider::start(&format!("http://127.0.0.1:{port}/tl-gateway/ui/callback"));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}{more}",
        oidc_yaml(dir.path(), &provider.issuer, port, extra)
    );
    let gateway = TestGateway::start_with(upstream, &yaml, |config| {
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    // The secret is read at load: its directory may go now.
    drop(dir);
    (gateway, provider)
}

/// One HTTP/1.1 exchange: status, headers, body text.
pub async fn exchange(
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> (StatusCode, HeaderMap, String) {
    let mut builder = request(method, url, None);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let req = match body {
        Some(text) => builder.body(full(text)).unwrap(),
        None => builder.body(body::empty()).unwrap(),
    };
    let response = send(Proto::Http1, req).await;
    let status = response.status();
    let headers = response.headers().clone();
    let text = String::from_utf8_lossy(&body_bytes(response).await).into_owned();
    (status, headers, text)
}

/// The `name=value` pairs a response sets, by name.
fn set_cookies(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect()
}

fn cookie_header(jar: &BTreeMap<String, String>) -> String {
    jar.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn location(headers: &HeaderMap) -> String {
    headers[header::LOCATION].to_str().unwrap().to_owned()
}

/// Where a sign-in stands when the provider sends the browser back: the callback URL (with code
/// and state) and the gateway's login cookie.
pub struct Callback {
    pub url: String,
    pub login_cookie: String,
}

/// `GET /tl-gateway/ui/login`, then the provider's login form as `login`; stops at the redirect
/// back to the gateway.
pub async fn authorize(gateway: &TestGateway, provider: &Provider, login: &str) -> Callback {
    let (status, headers, text) =
        exchange(Method::GET, &gateway.url("/tl-gateway/ui/login"), &[], None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    let login_cookie = set_cookies(&headers)["tlgw_login"].clone();
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly")
            && set.contains("SameSite=Lax")
            && set.contains("Path=/tl-gateway/ui/callback"),
        "{set}"
    );
    let mut url = location(&headers);
    assert!(url.starts_with(&provider.issuer), "{url}");
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("nonce="),
        "{url}"
    );
    let mut jar = BTreeMap::new();
    let callback = gateway.url("/tl-gateway/ui/callback");
    for _ in 0..10 {
        let absolute = if url.starts_with('/') {
            format!("{}{url}", provider.issuer)
        } else {
            url.clone()
        };
        if absolute.starts_with(&callback) {
            return Callback {
                url: absolute,
                login_cookie,
            };
        }
        let (status, headers, text) = exchange(
            Method::GET,
            &absolute,
            &[("cookie", cookie_header(&jar))],
            None,
        )
        .await;
        jar.extend(set_cookies(&headers));
        if status.is_redirection() {
            url = location(&headers);
            continue;
        }
        // The development login form: post the login name (any password).
        assert_eq!(status, StatusCode::OK, "{absolute}: {text}");
        let action = text
            .split("action=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no form at {absolute}: {text}"))
            .to_owned();
        let form = format!("prompt=login&login={login}&password=any");
        let (status, headers, text) = exchange(
            Method::POST,
            &if action.starts_with('/') {
                format!("{}{action}", provider.issuer)
            } else {
                action
            },
            &[
                ("cookie", cookie_header(&jar)),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
            Some(form),
        )
        .await;
        assert!(status.is_redirection(), "{status}: {text}");
        jar.extend(set_cookies(&headers));
        url = location(&headers);
    }
    panic!("the provider never sent the browser back");
}

/// Finish a sign-in: the callback's status, headers and body.
pub async fn finish(callback: &Callback) -> (StatusCode, HeaderMap, String) {
    exchange(
        Method::GET,
        &callback.url,
        &[("cookie", format!("tlgw_login={}", callback.login_cookie))],
        None,
    )
    .await
}

/// A signed-in person: the session cookie and the CSRF token `me` hands out.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
    pub me: serde_json::Value,
}

/// Sign in as `login`; the session.
pub async fn sign_in(gateway: &TestGateway, provider: &Provider, login: &str) -> Session {
    let callback = authorize(gateway, provider, login).await;
    let (status, headers, text) = finish(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    assert_eq!(location(&headers), "./");
    let set: Vec<String> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("tlgw_session="))
        .unwrap_or_else(|| panic!("{set:?}"));
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/tl-gateway/"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(
        !session.contains("Secure"),
        "plain http redirect_url: {session}"
    );
    let cookie = set_cookies(&headers)["tlgw_session"].clone();
    let (status, me) = call(gateway, &cookie, None, Method::GET, "me", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    Session {
        cookie,
        csrf: me["csrf_token"].as_str().unwrap().to_owned(),
        me,
    }
}

/// A call of the gateway's API with the session cookie and, if given, a CSRF header.
pub async fn call(
    gateway: &TestGateway,
    cookie: &str,
    csrf: Option<&str>,
    method: Method,
    path: &str,
    json: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut headers = vec![("cookie", format!("tlgw_session={cookie}"))];
    if let Some(csrf) = csrf {
        headers.push(("x-tl-gateway-csrf", csrf.to_owned()));
    }
    if json.is_some() {
        headers.push(("content-type", "application/json".into()));
    }
    let (status, _, text) = exchange(
        method,
        &gateway.url(&format!("/tl-gateway/v1/{path}")),
        &headers,
        json.map(|j| j.to_string()),
    )
    .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn assert_refused(status: StatusCode, text: &str, code: &str, words: &str) {
    let body: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    assert_eq!(body["code"], code, "{status} {text}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains(words),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_with_the_provider_and_the_api_answers_their_session_as_it_answers_keys() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::recording().await;
    let audit = dir.path().join("audit.jsonl");
    let (gateway, provider) = start(
        &format!("http://{}", upstream.addr),
        "",
        &format!("audit:\n  path: {}\n", audit.display()),
    )
    .await;
    let (status, _, text) = exchange(
        Method::GET,
        &gateway.url("/tl-gateway/ui/sign-in.json"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::json!({"oidc": true, "key_sign_in": false})
    );

    let alice = sign_in(&gateway, &provider, "alice").await;
    assert_eq!(alice.me["client"], "alice@example.com");
    assert_eq!(alice.me["roles"], serde_json::json!(["admin"]));
    assert_eq!(alice.me["auth"], "oidc");
    assert_eq!(alice.me["can_manage_keys"], true);
    // Keys see the same API: a key's `me` has no CSRF token (nothing to protect).
    let (_, by_key) = api_call(&gateway.url(""), Method::GET, "me", ALICE_KEY, None).await;
    assert_eq!(by_key["auth"], "key");
    assert!(by_key["csrf_token"].is_null());

    // An id with @ and + as a path segment of the gateway's API, created by a signed-in admin.
    let (status, body) = call(
        &gateway,
        &alice.cookie,
        Some(&alice.csrf),
        Method::POST,
        "clients",
        Some(serde_json::json!({"id": "bob+tl@example.com", "roles": ["member"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, issued) = call(
        &gateway,
        &alice.cookie,
        Some(&alice.csrf),
        Method::POST,
        "clients/bob+tl@example.com/keys",
        Some(serde_json::json!({"label": "laptop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let (status, list) = call(&gateway, &alice.cookie, None, Method::GET, "clients", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.to_string().contains("bob+tl@example.com"), "{list}");

    // The member signs in, sees their own key and rotates it (naming it: no key was presented).
    let bob = sign_in(&gateway, &provider, "bob").await;
    assert_eq!(bob.me["client"], "bob+tl@example.com");
    assert_eq!(bob.me["roles"], serde_json::json!(["member"]));
    assert_eq!(bob.me["keys"][0]["label"], "laptop", "{}", bob.me);
    let (status, rotated) = call(
        &gateway,
        &bob.cookie,
        Some(&bob.csrf),
        Method::POST,
        "me/keys",
        Some(serde_json::json!({"replaces": "laptop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["retires"]["label"], "laptop");
    let (status, body) = call(&gateway, &bob.cookie, None, Method::GET, "clients", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Every audit record of a session's call names how it authenticated: oidc, issuer, subject.
    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let create = records
        .iter()
        .find(|r| r["operation"] == "gateway.clients.create" && r["phase"] == "intent")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(create["client"], "alice@example.com");
    assert_eq!(create["auth"], "oidc");
    assert_eq!(create["issuer"], provider.issuer.as_str());
    assert_eq!(create["subject"], "alice");
    assert!(create.get("key_label").is_none());
    // The keys API's own record of the change names the actor's sign-in the same way.
    let created = records
        .iter()
        .find(|r| r["phase"] == "admin" && r["event"] == "client_created")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(created["actor"], "alice@example.com");
    assert_eq!(created["auth"], "oidc");
    assert_eq!(created["subject"], "alice");
    let rotate = records
        .iter()
        .find(|r| r["operation"] == "gateway.keys.rotate" && r["phase"] == "intent")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(rotate["subject"], "bob");
    // The cookie and the CSRF token are no key: never in a log line or record.
    assert!(!text.contains(&alice.cookie) && !text.contains(&alice.csrf));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_state_is_refused() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(&format!("http://{}", upstream.addr), "", "").await;
    let mut callback = authorize(&gateway, &provider, "alice").await;
    let forged = callback.url.replace("state=", "state=forged");
    callback.url = forged;
    let (status, headers, text) = finish(&callback).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_refused(status, &text, "sign_in_failed", "state");
    assert!(headers
        .get_all(header::SET_COOKIE)
        .iter()
        .all(|c| !c.to_str().unwrap().starts_with("tlgw_session=")));
    // A callback without the login cookie (another browser) is refused too.
    let (status, _, text) = exchange(Method::GET, &callback.url, &[], None).await;
    assert_refused(status, &text, "sign_in_failed", "no sign-in in progress");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_code_is_refused() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(&format!("http://{}", upstream.addr), "", "").await;
    let callback = authorize(&gateway, &provider, "alice").await;
    let (status, _, text) = finish(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    // The same answer again: the pending sign-in was used up.
    let (status, _, text) = finish(&callback).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_refused(status, &text, "sign_in_failed", "already finished");
    // The same code with a fresh sign-in's state and cookie: the provider refuses the code (used
    // before, and not for this PKCE verifier).
    let fresh = authorize(&gateway, &provider, "alice").await;
    let state = |url: &str| {
        url.split(['?', '&'])
            .find_map(|p| p.strip_prefix("state="))
            .unwrap()
            .to_owned()
    };
    let replay = Callback {
        url: callback
            .url
            .replace(&state(&callback.url), &state(&fresh.url)),
        login_cookie: fresh.login_cookie,
    };
    let (status, _, text) = finish(&replay).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert_refused(status, &text, "sign_in_failed", "refused the code");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_another_audience_or_signed_with_an_unknown_key_is_refused() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(&format!("http://{}", upstream.addr), "", "").await;
    for (mode, words) in [
        ("audience", "not issued for this gateway"),
        ("unknown-key", "signature"),
    ] {
        let callback = authorize(&gateway, &provider, "alice").await;
        provider.tamper(mode).await;
        let (status, headers, text) = finish(&callback).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{mode}: {text}");
        assert_refused(status, &text, "sign_in_failed", words);
        assert!(
            headers
                .get_all(header::SET_COOKIE)
                .iter()
                .all(|c| !c.to_str().unwrap().starts_with("tlgw_session=")),
            "{mode}"
        );
    }
    // The provider itself is fine: an untampered sign-in still works.
    let alice = sign_in(&gateway, &provider, "alice").await;
    assert_eq!(alice.me["client"], "alice@example.com");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_provider_rotated_to_is_fetched_again_on_its_unknown_kid() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(&format!("http://{}", upstream.addr), "", "").await;
    // The gateway discovered the provider (and its keys) at the first /login; the provider then
    // signs with a key it publishes only from now on: the gateway fetches the keys again.
    let callback = authorize(&gateway, &provider, "alice").await;
    provider.tamper("rotated-key").await;
    let (status, _, text) = finish(&callback).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{text}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_ended_session_is_refused() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(
        &format!("http://{}", upstream.addr),
        "    session_ttl: 2s\n",
        "",
    )
    .await;
    let alice = sign_in(&gateway, &provider, "alice").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = call(&gateway, &alice.cookie, None, Method::GET, "me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "session_expired", "{body}");

    // Sign-out ends the server-side session: the cookie alone is worth nothing after it.
    let alice = sign_in(&gateway, &provider, "alice").await;
    let logout = gateway.url("/tl-gateway/ui/logout");
    let cookie = ("cookie", format!("tlgw_session={}", alice.cookie));
    let (status, _, text) =
        exchange(Method::POST, &logout, std::slice::from_ref(&cookie), None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "sign-out needs the CSRF token: {text}"
    );
    let (status, headers, _) = exchange(
        Method::POST,
        &logout,
        &[cookie, ("x-tl-gateway-csrf", alice.csrf.clone())],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (status, body) = call(&gateway, &alice.cookie, None, Method::GET, "me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "session_expired", "{body}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_without_the_csrf_header_is_refused() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(&format!("http://{}", upstream.addr), "", "").await;
    let alice = sign_in(&gateway, &provider, "alice").await;
    let create = |id: &str| Some(serde_json::json!({"id": id, "roles": ["member"]}));
    // What a cross-site form or fetch can send: the cookie, no custom header.
    let (status, _, text) = exchange(
        Method::POST,
        &gateway.url("/tl-gateway/v1/clients"),
        &[
            ("cookie", format!("tlgw_session={}", alice.cookie)),
            ("origin", "https://evil.example".into()),
            ("content-type", "text/plain".into()),
        ],
        Some(r#"{"id":"mallory","roles":["admin"]}"#.into()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_refused(status, &text, "csrf_failed", "x-tl-gateway-csrf");
    // A wrong token, and the token of another session, are refused alike.
    let bob = sign_in(&gateway, &provider, "bob").await;
    for wrong in ["0".repeat(64), bob.csrf.clone()] {
        let (status, body) = call(
            &gateway,
            &alice.cookie,
            Some(&wrong),
            Method::POST,
            "clients",
            create("mallory"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["code"], "csrf_failed");
    }
    // Nothing was created; with the right token it is.
    let (status, _) = call(
        &gateway,
        &alice.cookie,
        None,
        Method::GET,
        "clients/mallory",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(
        &gateway,
        &alice.cookie,
        Some(&alice.csrf),
        Method::POST,
        "clients",
        create("carol-svc"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The session is for the gateway's own API only: a TwelveLabs call needs a key.
    let (status, _, _) = exchange(
        Method::GET,
        &gateway.url("/v1.3/indexes"),
        &[("cookie", format!("tlgw_session={}", alice.cookie))],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_with_no_mapped_group_is_signed_in_with_no_rights() {
    let upstream = Upstream::recording().await;
    let (gateway, provider) = start(&format!("http://{}", upstream.addr), "", "").await;
    let carol = sign_in(&gateway, &provider, "carol").await;
    assert_eq!(carol.me["client"], "carol@example.com");
    assert_eq!(carol.me["roles"], serde_json::json!([]));
    assert_eq!(carol.me["can_manage_keys"], false);
    let (status, body) = call(&gateway, &carol.cookie, None, Method::GET, "clients", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ui_oidc_the_page_signs_in_with_keys_as_before() {
    let upstream = Upstream::recording().await;
    let gateway = TestGateway::start(&format!("http://{}", upstream.addr)).await;
    let (status, _, text) = exchange(
        Method::GET,
        &gateway.url("/tl-gateway/ui/sign-in.json"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        serde_json::json!({"oidc": false, "key_sign_in": true})
    );
    for path in [
        "/tl-gateway/ui/login",
        "/tl-gateway/ui/callback?code=x&state=y",
    ] {
        let (status, _, _) = exchange(Method::GET, &gateway.url(path), &[], None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // A cookie means nothing without ui.oidc.
    let (status, _, _) = exchange(
        Method::GET,
        &gateway.url("/tl-gateway/v1/me"),
        &[("cookie", "tlgw_session=abc".into())],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    gateway.shutdown().await;
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("TL_GATEWAY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium package (scripts/test and .ci/run do) or set TL_GATEWAY_CHROMIUM",
        path.display()
    );
    path
}

/// The acceptance test in a real browser: sign in as an admin with the provider, create a client
/// and issue it a key on the Keys tab, the official SDK uses it, revoke it, the SDK gets 401
/// `key_revoked`; approve a member's forced delete as the signed-in admin; sign in as a member and
/// rotate their own key. Saves the Keys tab's screenshot (`TL_GATEWAY_SCREENSHOT_KEYS` keeps it,
/// e.g. `docs/keys-tab.png`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_and_a_member_manage_keys_on_the_page_signed_in_with_a_real_provider() {
    let python = python();
    let chromium = chromium();
    let (emulator, upstream) = start_emulator().await;
    emulator.seed_demo();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, provider) = start(
        &upstream,
        "",
        &two_person(&dir.path().join("audit.jsonl"), ""),
    )
    .await;
    let screenshot = match std::env::var_os("TL_GATEWAY_SCREENSHOT_KEYS") {
        Some(path) => repo_root().join(path),
        None => dir.path().join("keys-tab.png"),
    };
    let mut command = Command::new(python);
    command
        .arg(repo_root().join("tests/browser/oidc_keys_ui.py"))
        .args(["--gateway", &gateway.url("")])
        .args(["--admin-key", ALICE_KEY])
        .args(["--member-key", BOB_KEY])
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--chromium")
        .arg(&chromium);
    let text = run_checked(command, "browser test").await;
    assert!(text.contains("keys UI: all checks passed"), "{text}");
    let forced = emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::DELETE && r.uri.to_string().contains("force=true"))
        .count();
    assert_eq!(forced, 1);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    drop(provider);
    gateway.shutdown().await;
}
