use std::time::Duration;

use clap::Parser;
use serde_json::json;

use super::*;
use crate::cli::{Cli, Command};

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    Cli::try_parse_from(std::iter::once("tl-gateway").chain(args.iter().copied()))
        .map(|c| c.command)
}

fn keys(args: &[&str]) -> KeysCommand {
    match parse(&[&["keys"], args].concat()) {
        Ok(Command::Keys { command }) => command,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn clients(args: &[&str]) -> ClientsCommand {
    match parse(&[&["clients"], args].concat()) {
        Ok(Command::Clients { command }) => command,
        other => panic!("{args:?}: {other:?}"),
    }
}

/// A usage error: clap's exit code 2, as for every other command.
fn usage_error(args: &[&str]) -> String {
    let error = parse(args).expect_err("a usage error");
    assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
    error.to_string()
}

const GW: [&str; 2] = ["--gateway", "http://gw:8080"];

#[test]
fn cli_keys_issue_takes_a_client_a_label_and_an_expiry() {
    let command = keys(
        &[
            &["issue", "bob", "--label", "laptop-2027", "--expires", "90d"],
            &GW[..],
        ]
        .concat(),
    );
    let KeysCommand::Issue {
        to,
        client,
        label,
        expires,
    } = command
    else {
        panic!("{command:?}")
    };
    assert_eq!(to.gateway, "http://gw:8080");
    assert_eq!(client, "bob");
    assert_eq!(label.as_deref(), Some("laptop-2027"));
    assert_eq!(expires.as_deref(), Some("90d"));
    for at in [
        "2027-03-01T00:00:00Z",
        "2027-03-01T00:00:00+02:00",
        "2027-03-01T00:00:00.5Z",
    ] {
        let KeysCommand::Issue { expires, .. } =
            keys(&[&["issue", "bob", "--expires", at], &GW[..]].concat())
        else {
            panic!()
        };
        assert_eq!(expires.as_deref(), Some(at));
    }
}

#[test]
fn cli_bad_ids_labels_and_times_are_usage_errors() {
    usage_error(&["keys", "issue", "--gateway", "http://gw"]);
    usage_error(&["keys", "issue", "bob"]);
    assert!(usage_error(&[&["keys", "issue", "bo/b"], &GW[..]].concat()).contains("client id"));
    assert!(
        usage_error(&[&["keys", "issue", "bob", "--label", "my key"], &GW[..]].concat())
            .contains("1-64")
    );
    assert!(
        usage_error(&[&["keys", "issue", "bob", "--expires", "soon"], &GW[..]].concat())
            .contains("RFC 3339")
    );
    usage_error(
        &[
            &["keys", "issue", "bob", "--expires", "2027-03-01"],
            &GW[..],
        ]
        .concat(),
    );
    usage_error(&[&["keys", "revoke", "bob", "a/b"], &GW[..]].concat());
    usage_error(&[&["keys", "revoke", "bob"], &GW[..]].concat());
    usage_error(&[&["keys", "rotate", "--retire-after", "1 day"], &GW[..]].concat());
    usage_error(&[&["clients", "create", "carol"], &GW[..]].concat());
    usage_error(
        &[
            &["clients", "create", "carol", "--roles", "ops team"],
            &GW[..],
        ]
        .concat(),
    );
    usage_error(&[&["clients", "show", "a b"], &GW[..]].concat());
    // The key is never an argument.
    usage_error(&[&["keys", "rotate", "--key", "tlgw_x"], &GW[..]].concat());
}

#[test]
fn cli_keys_rotate_and_revoke_parse() {
    let KeysCommand::Rotate {
        to,
        label,
        expires,
        retire_after,
    } = keys(
        &[
            &["rotate", "--retire-after", "0s", "--key-file", "/k"],
            &GW[..],
        ]
        .concat(),
    )
    else {
        panic!()
    };
    assert_eq!(to.key_file.as_deref(), Some(std::path::Path::new("/k")));
    assert_eq!((label, expires), (None, None));
    assert_eq!(retire_after.as_deref(), Some("0s"));
    let KeysCommand::Revoke { client, label, .. } =
        keys(&[&["revoke", "bob", "laptop"], &GW[..]].concat())
    else {
        panic!()
    };
    assert_eq!((client.as_str(), label.as_str()), ("bob", "laptop"));
}

#[test]
fn cli_clients_create_takes_comma_separated_roles_or_none() {
    let ClientsCommand::Create { id, roles, .. } =
        clients(&[&["create", "carol", "--roles", "member, ops,"], &GW[..]].concat())
    else {
        panic!()
    };
    assert_eq!(id, "carol");
    assert_eq!(roles, RoleList(vec!["member".into(), "ops".into()]));
    let ClientsCommand::Create { roles, .. } =
        clients(&[&["create", "carol", "--roles", ""], &GW[..]].concat())
    else {
        panic!()
    };
    assert_eq!(roles, RoleList(vec![]));
    for sub in ["list", "show", "disable", "enable"] {
        let args: Vec<&str> = if sub == "list" {
            vec![sub, "--json"]
        } else {
            vec![sub, "bob", "--json"]
        };
        let command = clients(&[&args[..], &GW[..]].concat());
        let to = match command {
            ClientsCommand::List { to }
            | ClientsCommand::Show { to, .. }
            | ClientsCommand::Disable { to, .. }
            | ClientsCommand::Enable { to, .. }
            | ClientsCommand::Create { to, .. } => to,
        };
        assert!(to.json, "{sub}");
    }
}

#[test]
fn cli_key_bodies_carry_only_what_was_given() {
    assert_eq!(key_body(None, None, None), json!({}));
    assert_eq!(
        key_body(Some("ci".into()), Some("90d".into()), Some("0s".into())),
        json!({"label": "ci", "expires": "90d", "retire_presented_after": "0s"})
    );
    assert_eq!(client_path("bob"), "clients/bob");
}

#[test]
fn cli_an_issued_key_is_alone_on_stdout_and_never_on_stderr() {
    let key = "tlgw_0123456789abcdefghij0123456789abcdefghij";
    let answer = json!({"key": key, "label": "laptop", "expires": "2027-03-01T00:00:00Z"});
    let (out, notes) = issued(&answer, "bob", "http://gw:8080").unwrap();
    assert_eq!(out, key);
    assert!(notes.iter().all(|n| !n.contains(key)), "{notes:?}");
    assert_eq!(
        notes[0],
        "issued key 'laptop' for client bob, expires 2027-03-01T00:00:00Z; it is shown only this once"
    );
    assert_eq!(
        notes[1],
        "python: TwelveLabs(api_key=\"<the key on stdout>\", base_url=\"http://gw:8080/v1.3\")"
    );
    let (_, notes) = issued(
        &json!({"key": key, "label": "k", "expires": null}),
        "bob",
        "http://gw",
    )
    .unwrap();
    assert!(notes[0].contains("never expires"), "{notes:?}");
    for bad in [
        json!({"label": "k"}),
        json!({"key": ""}),
        json!({"key": "tlgw_a\ntlgw_b"}),
    ] {
        assert_eq!(
            issued(&bad, "bob", "http://gw").unwrap_err(),
            "the gateway's answer holds no key"
        );
    }
}

#[test]
fn cli_a_rotation_says_when_the_old_key_stops_working() {
    let now = humantime::parse_rfc3339("2026-12-07T00:00:00Z").unwrap();
    let key = "tlgw_new";
    let env = Target {
        gateway: "http://gw".into(),
        key_file: None,
        json: false,
    };
    let later = json!({"key": key, "label": "laptop-2", "expires": null, "retires": {"label": "laptop", "at": "2026-12-08T00:00:00Z"}});
    let (out, notes) = rotated(&later, &env, now).unwrap();
    assert_eq!(out, key);
    assert_eq!(
        notes[0],
        "new key 'laptop-2', never expires; it is shown only this once"
    );
    assert_eq!(
        notes[1],
        "the key you called with ('laptop') stops working at 2026-12-08T00:00:00Z"
    );
    assert!(notes[2].contains("TL_GATEWAY_KEY"));
    assert!(notes.iter().all(|n| !n.contains(key)));
    let at_once = json!({"key": key, "label": "l", "retires": {"label": "laptop", "at": "2026-12-07T00:00:00Z"}});
    let file = Target {
        key_file: Some("/home/me/.tl-key".into()),
        ..env
    };
    let (_, notes) = rotated(&at_once, &file, now + Duration::from_millis(5)).unwrap();
    assert_eq!(
        notes[1],
        "the key you called with ('laptop') no longer works"
    );
    assert_eq!(notes[2], "put the new key in /home/me/.tl-key before then");
    let (_, notes) = rotated(
        &json!({"key": key, "label": "l", "retires": null}),
        &file,
        now,
    )
    .unwrap();
    assert!(notes[1].contains("keeps working"), "{notes:?}");
}

fn sample_clients() -> Value {
    json!({"clients": [
        {"id": "alice", "roles": ["admin"], "source": "config", "disabled": false,
         "keys": [{"label": "default", "created_at": null, "created_by": null, "expires": null, "last_used": "2026-12-06T10:00:00Z", "state": "active"}]},
        {"id": "bob", "roles": ["member", "ops"], "source": "store", "disabled": true,
         "keys": [
            {"label": "laptop", "created_at": "2026-12-01T09:00:00Z", "created_by": "alice", "expires": "2027-03-01T00:00:00Z", "last_used": null, "state": "active"},
            {"label": "old", "created_at": "2026-01-01T09:00:00Z", "created_by": "alice", "expires": null, "last_used": null, "state": "revoked"}
         ]},
        {"id": "svc", "roles": [], "source": "store", "disabled": false, "keys": []}
    ]})
}

#[test]
fn cli_clients_list_is_a_table_with_key_counts() {
    assert_eq!(
        clients_table(&sample_clients()),
        "ID     ROLES       SOURCE  DISABLED  KEYS\n\
         alice  admin       config  no        1 (1 active)\n\
         bob    member,ops  store   yes       2 (1 active)\n\
         svc    -           store   no        0 (0 active)\n"
    );
    assert_eq!(clients_table(&json!({"clients": []})), "no clients\n");
}

#[test]
fn cli_clients_show_lists_the_keys() {
    let bob = &sample_clients()["clients"][1];
    assert_eq!(
        client_details(bob),
        "client:    bob\n\
         roles:     member,ops\n\
         source:    store\n\
         disabled:  yes\n\
         keys:      2 (1 active)\n\
         \n\
         LABEL   STATE    EXPIRES               LAST USED  CREATED               BY\n\
         laptop  active   2027-03-01T00:00:00Z  -          2026-12-01T09:00:00Z  alice\n\
         old     revoked  -                     -          2026-01-01T09:00:00Z  alice\n"
    );
    let svc = &sample_clients()["clients"][2];
    assert!(client_details(svc).ends_with("keys:      0 (0 active)\n"));
}
