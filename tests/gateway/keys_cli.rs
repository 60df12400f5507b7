//! `tl-gateway clients …` and `tl-gateway keys …` as a user runs them, against a gateway with the
//! clients/keys API (`/tl-gateway/v1/clients`, `/tl-gateway/v1/me/keys`) on a SQLite store: an admin
//! creates a client, issues it a key (alone on stdout), the key works, is revoked and stops working;
//! a member is refused with the gateway's words; a YAML client is read-only; a client rotates its
//! own key read from a file.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::sdk::start_emulator;
use crate::support::*;

/// A gateway with a SQLite store in `dir`, in front of the emulator.
async fn gateway(dir: &Path) -> TestGateway {
    let (_emulator, upstream) = start_emulator().await;
    let extra = format!(
        "store:\n  backend: sqlite\n  sqlite:\n    path: {}\nkeys:\n  assignable_roles: [member, ops]\n",
        dir.join("store.db").display()
    );
    TestGateway::start_with(&upstream, &extra, |_| {}).await
}

/// Where the key comes from.
enum Key<'a> {
    Env(&'a str),
    File(&'a Path),
}

/// `tl-gateway ARGS --gateway URL` with the caller's key.
async fn cli(gateway: &TestGateway, key: Key<'_>, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .args(["--gateway", &gateway.url("")])
        .env_remove("TL_GATEWAY_KEY");
    match key {
        Key::Env(key) => {
            command.env("TL_GATEWAY_KEY", key);
        }
        Key::File(file) => {
            command.arg("--key-file").arg(file);
        }
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        out(output),
        err(output)
    );
    out(output)
}

/// The key `keys issue` / `keys rotate` printed: stdout is exactly one line, the key.
#[track_caller]
fn printed_key(output: &Output) -> String {
    let text = ok(output);
    let key = text.strip_suffix('\n').unwrap_or(&text);
    assert!(
        key.starts_with("tlgw_") && !key.contains(char::is_whitespace),
        "stdout must be the key alone: {text:?}"
    );
    assert!(!err(output).contains(key), "the key on stderr too");
    key.to_owned()
}

/// Wait (bounded by the store's refresh) until `GET /v1.3/assets` with `key` answers as `wanted`
/// says; the refusal's code, if any.
async fn until(
    gateway: &TestGateway,
    key: &str,
    wanted: impl Fn(StatusCode) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let response = get(&gateway.url("/v1.3/assets"), Some(key)).await;
        let got = response.status();
        let body = body_json(response).await;
        if wanted(got) {
            return body["code"].as_str().map(str::to_owned);
        }
        assert!(Instant::now() < deadline, "still {got} ({body})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn works(status: StatusCode) -> bool {
    status == StatusCode::OK
}

fn unauthorized(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED
}

/// A disabled client's key: refused, whether as 401 or 403.
fn refused(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_a_client_issues_a_key_that_works_and_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(dir.path()).await;
    let admin = || Key::Env(ALICE_KEY);

    let created = cli(
        &gateway,
        admin(),
        &["clients", "create", "carol", "--roles", "member,ops"],
    )
    .await;
    let text = ok(&created);
    assert!(
        text.contains("client:    carol") && text.contains("roles:     member,ops"),
        "{text}"
    );
    assert!(
        err(&created).contains("tl-gateway keys issue carol"),
        "{}",
        err(&created)
    );
    let again = cli(
        &gateway,
        admin(),
        &["clients", "create", "carol", "--roles", "member"],
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
    assert!(err(&again).contains("409 client_exists"), "{}", err(&again));

    let issued = cli(
        &gateway,
        admin(),
        &[
            "keys",
            "issue",
            "carol",
            "--label",
            "laptop",
            "--expires",
            "90d",
        ],
    )
    .await;
    let key = printed_key(&issued);
    let notes = err(&issued);
    assert!(
        notes.contains("'laptop'") && notes.contains("expires "),
        "{notes}"
    );
    assert!(
        notes.contains(&format!("base_url=\"{}/v1.3\"", gateway.url(""))),
        "{notes}"
    );
    until(&gateway, &key, works).await;

    let listed = ok(&cli(&gateway, admin(), &["clients", "list"]).await);
    let carol = listed
        .lines()
        .find(|l| l.starts_with("carol "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        carol.contains("member,ops") && carol.contains("store") && carol.contains("1 (1 active)"),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains("config")),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(
            &cli(&gateway, admin(), &["clients", "list", "--json"]).await
        ))
        .unwrap();
    assert!(json["clients"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "carol" && c["source"] == "store"));

    let shown = ok(&cli(&gateway, admin(), &["clients", "show", "carol"]).await);
    let laptop = shown
        .lines()
        .find(|l| l.starts_with("laptop "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        laptop.contains("active") && laptop.contains("alice"),
        "{shown}"
    );
    assert!(!shown.contains(&key));

    let revoked = ok(&cli(&gateway, admin(), &["keys", "revoke", "carol", "laptop"]).await);
    assert!(
        revoked.contains("revoked key 'laptop' of client carol") && revoked.contains("revoked"),
        "{revoked}"
    );
    assert_eq!(
        until(&gateway, &key, unauthorized).await.as_deref(),
        Some("key_revoked")
    );

    // Disabled, a client's keys stop working; enabled, they work again.
    let second = printed_key(&cli(&gateway, admin(), &["keys", "issue", "carol"]).await);
    until(&gateway, &second, works).await;
    let disabled = ok(&cli(&gateway, admin(), &["clients", "disable", "carol"]).await);
    assert!(disabled.contains("disabled:  yes"), "{disabled}");
    until(&gateway, &second, refused).await;
    let enabled = ok(&cli(&gateway, admin(), &["clients", "enable", "carol"]).await);
    assert!(enabled.contains("disabled:  no"), "{enabled}");
    until(&gateway, &second, works).await;

    let missing = cli(&gateway, admin(), &["clients", "show", "nobody"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        err(&missing).contains("404 client_not_found"),
        "{}",
        err(&missing)
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_refused_in_the_gateways_words_and_a_yaml_client_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(dir.path()).await;
    ok(&cli(
        &gateway,
        Key::Env(ALICE_KEY),
        &["clients", "create", "erin", "--roles", "member"],
    )
    .await);
    for args in [
        &["keys", "issue", "erin"][..],
        &["keys", "revoke", "erin", "key-1"],
        &["clients", "disable", "erin"],
        &["clients", "create", "mallory", "--roles", "admin"],
    ] {
        let refused = cli(&gateway, Key::Env(BOB_KEY), args).await;
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        let message = err(&refused);
        assert!(
            message.starts_with("tl-gateway: 403 policy_denied: ") && message.lines().count() == 1,
            "{args:?}: {message}"
        );
        assert!(out(&refused).is_empty(), "{args:?}");
    }
    let yaml = cli(
        &gateway,
        Key::Env(ALICE_KEY),
        &["clients", "disable", "bob"],
    )
    .await;
    assert_eq!(yaml.status.code(), Some(1));
    assert!(
        err(&yaml).contains("409 client_read_only"),
        "{}",
        err(&yaml)
    );
    // Usage errors are clap's exit 2, before any call.
    let usage = cli(&gateway, Key::Env(ALICE_KEY), &["keys", "issue"]).await;
    assert_eq!(usage.status.code(), Some(2));
    let usage = cli(
        &gateway,
        Key::Env(ALICE_KEY),
        &["keys", "issue", "bob", "--expires", "soon"],
    )
    .await;
    assert_eq!(usage.status.code(), Some(2));
    let no_key = Command::new(binary())
        .args(["clients", "list", "--gateway", &gateway.url("")])
        .env_remove("TL_GATEWAY_KEY")
        .output()
        .unwrap();
    assert_eq!(no_key.status.code(), Some(1));
    assert!(err(&no_key).contains("TL_GATEWAY_KEY"));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rotates_its_own_key_and_the_old_one_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(dir.path()).await;
    ok(&cli(
        &gateway,
        Key::Env(ALICE_KEY),
        &["clients", "create", "dave", "--roles", "member"],
    )
    .await);
    let first = printed_key(
        &cli(
            &gateway,
            Key::Env(ALICE_KEY),
            &["keys", "issue", "dave", "--label", "one"],
        )
        .await,
    );
    until(&gateway, &first, works).await;
    let key_file = dir.path().join("dave.key");
    std::fs::write(&key_file, format!("{first}\n")).unwrap();

    // With the default overlap the old key keeps working for a while.
    let rotated = cli(
        &gateway,
        Key::File(&key_file),
        &["keys", "rotate", "--label", "two"],
    )
    .await;
    let second = printed_key(&rotated);
    let notes = err(&rotated);
    assert!(
        notes.contains("new key 'two'")
            && notes.contains("the key you called with ('one') stops working at ")
            && notes.contains(&format!("put the new key in {}", key_file.display())),
        "{notes}"
    );
    until(&gateway, &second, works).await;
    assert_eq!(
        get(&gateway.url("/v1.3/assets"), Some(&first))
            .await
            .status(),
        StatusCode::OK
    );

    // At once: the key that called stops working.
    std::fs::write(&key_file, &second).unwrap();
    let rotated = cli(
        &gateway,
        Key::File(&key_file),
        &["keys", "rotate", "--label", "three", "--retire-after", "0s"],
    )
    .await;
    let third = printed_key(&rotated);
    assert!(
        err(&rotated).contains("the key you called with ('two') no longer works"),
        "{}",
        err(&rotated)
    );
    until(&gateway, &third, works).await;
    until(&gateway, &second, unauthorized).await;

    let shown = ok(&cli(&gateway, Key::Env(ALICE_KEY), &["clients", "show", "dave"]).await);
    for label in ["one ", "two ", "three "] {
        assert!(shown.lines().any(|l| l.starts_with(label)), "{shown}");
    }
    gateway.shutdown().await;
}
