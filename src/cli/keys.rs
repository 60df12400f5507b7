//! Clients and their personal keys from a terminal.
//!
//! `tl-gateway clients list|show|create|disable|enable` and `tl-gateway keys issue|revoke|rotate`
//! call the gateway's API (`/tl-gateway/v1/clients`, `/tl-gateway/v1/me/keys`) with the caller's
//! own key (`TL_GATEWAY_KEY` or `--key-file`, see `api_client`); managing other clients needs a role
//! in the gateway's `keys.admin_roles`, and its refusal is the error message. A new key is printed
//! once, alone on stdout, so `KEY=$(tl-gateway keys issue bob …)` captures only the key; everything
//! said about it goes to stderr. `keygen` (offline: a key and its YAML entry) lives here too.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use http::Method;
use serde_json::{Map, Value};

use super::api_client::{call, list, segment, table, text, Target};
use crate::auth::key_digest_hex;
use crate::ids::{is_plain_id, ClientId, Role};

/// The clients subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// List every client (configured and stored) with its roles and how many keys are active.
    List {
        #[command(flatten)]
        to: Target,
    },
    /// Show one client and its keys (labels, states, expiry, last use; never a key).
    Show {
        #[command(flatten)]
        to: Target,
        /// The client id.
        #[arg(value_parser = client_id)]
        id: String,
    },
    /// Create a client in the gateway's store (then: `keys issue ID`).
    Create {
        #[command(flatten)]
        to: Target,
        /// The new client's id: 1-64 of A-Z a-z 0-9 . _ -
        #[arg(value_parser = client_id)]
        id: String,
        /// Comma-separated roles ('' for none).
        #[arg(long, value_parser = roles)]
        roles: RoleList,
    },
    /// Refuse every key of a stored client until it is enabled again.
    Disable {
        #[command(flatten)]
        to: Target,
        /// The client id.
        #[arg(value_parser = client_id)]
        id: String,
    },
    /// Accept a disabled client's keys again.
    Enable {
        #[command(flatten)]
        to: Target,
        /// The client id.
        #[arg(value_parser = client_id)]
        id: String,
    },
}

/// The keys subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a new key for a client: printed once, alone on stdout (the rest goes to stderr).
    Issue {
        #[command(flatten)]
        to: Target,
        /// The client id.
        #[arg(value_parser = client_id)]
        client: String,
        /// A label for the key (default: the gateway's).
        #[arg(long, value_parser = label)]
        label: Option<String>,
        /// When the key expires: a duration from now (90d) or an RFC 3339 time.
        #[arg(long, value_parser = expires)]
        expires: Option<String>,
    },
    /// Revoke a client's key by its label (then refused with 401 key_revoked).
    Revoke {
        #[command(flatten)]
        to: Target,
        /// The client id.
        #[arg(value_parser = client_id)]
        client: String,
        /// The key's label (`clients show CLIENT` lists them).
        #[arg(value_parser = label)]
        label: String,
    },
    /// Replace your own key: a new key printed once on stdout; the key you call with expires
    /// after the overlap.
    Rotate {
        #[command(flatten)]
        to: Target,
        /// A label for the new key (default: the gateway's).
        #[arg(long, value_parser = label)]
        label: Option<String>,
        /// When the new key expires: a duration from now (90d) or an RFC 3339 time.
        #[arg(long, value_parser = expires)]
        expires: Option<String>,
        /// How long the key you call with keeps working (default: the gateway's, 24h; 0s: at once).
        #[arg(long, value_parser = duration)]
        retire_after: Option<String>,
    },
}

/// Roles as given to `--roles`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleList(pub Vec<String>);

fn client_id(value: &str) -> Result<String, String> {
    value.parse::<ClientId>().map(|_| value.to_owned())
}

fn label(value: &str) -> Result<String, String> {
    if is_plain_id(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("label {value:?}: 1-64 of A-Z a-z 0-9 . _ -"))
    }
}

fn roles(value: &str) -> Result<RoleList, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.parse::<Role>().map(|_| r.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map(RoleList)
}

fn duration(value: &str) -> Result<String, String> {
    crate::units::parse_duration(value).map(|_| value.to_owned())
}

/// A duration (`90d`) or a time (`2027-03-01T00:00:00Z`, any RFC 3339 offset); the gateway has
/// the last word on the time.
fn expires(value: &str) -> Result<String, String> {
    let looks_like_a_time = value.len() >= 20
        && value.as_bytes()[..10].iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && matches!(value.as_bytes()[10], b'T' | b't');
    if crate::units::parse_duration(value).is_ok() || looks_like_a_time {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?}: give a duration (90d, 12h) or an RFC 3339 time (2027-03-01T00:00:00Z)"
        ))
    }
}

/// Run one clients command.
pub async fn run_clients(command: ClientsCommand) -> Result<(), String> {
    match command {
        ClientsCommand::List { to } => {
            let answer = call(&to, Method::GET, "clients", None).await?;
            if to.json {
                println!("{answer:#}");
            } else {
                print!("{}", clients_table(&answer));
            }
            Ok(())
        }
        ClientsCommand::Show { to, id } => {
            let answer = call(&to, Method::GET, &client_path(&id), None).await?;
            print_client(&to, &answer);
            Ok(())
        }
        ClientsCommand::Create { to, id, roles } => {
            let body = serde_json::json!({ "id": id, "roles": roles.0 });
            let answer = call(&to, Method::POST, "clients", Some(body)).await?;
            print_client(&to, &answer);
            eprintln!(
                "created client {id}; give it a key: tl-gateway keys issue {id} --gateway {}",
                to.base()?
            );
            Ok(())
        }
        ClientsCommand::Disable { to, id } => set_disabled(&to, &id, true).await,
        ClientsCommand::Enable { to, id } => set_disabled(&to, &id, false).await,
    }
}

async fn set_disabled(to: &Target, id: &str, disabled: bool) -> Result<(), String> {
    let body = serde_json::json!({ "disabled": disabled });
    let answer = call(to, Method::PATCH, &client_path(id), Some(body)).await?;
    print_client(to, &answer);
    Ok(())
}

/// Run one keys command.
pub async fn run_keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Issue {
            to,
            client,
            label,
            expires,
        } => {
            let body = key_body(label, expires, None);
            let path = format!("{}/keys", client_path(&client));
            let answer = call(&to, Method::POST, &path, Some(body)).await?;
            if to.json {
                println!("{answer:#}");
                return Ok(());
            }
            let (key, notes) = issued(&answer, &client, to.base()?)?;
            println!("{key}");
            for note in notes {
                eprintln!("{note}");
            }
            Ok(())
        }
        KeysCommand::Revoke { to, client, label } => {
            let path = format!("{}/keys/{}", client_path(&client), segment(&label));
            let answer = call(&to, Method::DELETE, &path, None).await?;
            if !to.json {
                println!("revoked key '{label}' of client {client}");
            }
            print_client(&to, &answer);
            Ok(())
        }
        KeysCommand::Rotate {
            to,
            label,
            expires,
            retire_after,
        } => {
            let body = key_body(label, expires, retire_after);
            let answer = call(&to, Method::POST, "me/keys", Some(body)).await?;
            if to.json {
                println!("{answer:#}");
                return Ok(());
            }
            let (key, notes) = rotated(&answer, &to, SystemTime::now())?;
            println!("{key}");
            for note in notes {
                eprintln!("{note}");
            }
            Ok(())
        }
    }
}

fn client_path(id: &str) -> String {
    format!("clients/{}", segment(id))
}

/// The body of `POST …/keys`: only what was given, so the gateway's defaults apply otherwise.
fn key_body(label: Option<String>, expires: Option<String>, retire_after: Option<String>) -> Value {
    let mut body = Map::new();
    for (name, value) in [
        ("label", label),
        ("expires", expires),
        ("retire_presented_after", retire_after),
    ] {
        if let Some(value) = value {
            body.insert(name.into(), Value::String(value));
        }
    }
    Value::Object(body)
}

/// The new key (for stdout, alone) and what to say about it (for stderr, never the key).
fn issued(answer: &Value, client: &str, base: &str) -> Result<(String, Vec<String>), String> {
    let key = new_key(answer)?;
    let notes = vec![
        format!(
            "issued key '{}' for client {client}, {}; it is shown only this once",
            text(&answer["label"]),
            expiry(&answer["expires"])
        ),
        sdk_hint(base),
    ];
    Ok((key, notes))
}

/// The new key and what to say about it and the key it replaces.
fn rotated(answer: &Value, to: &Target, now: SystemTime) -> Result<(String, Vec<String>), String> {
    let key = new_key(answer)?;
    let mut notes = vec![format!(
        "new key '{}', {}; it is shown only this once",
        text(&answer["label"]),
        expiry(&answer["expires"])
    )];
    let retires = &answer["retires"];
    notes.push(match (&retires["label"], retires["at"].as_str()) {
        (Value::Null, _) | (_, None) => {
            "the key you called with keeps working (the gateway set no end to it)".to_owned()
        }
        (old, Some(at)) => {
            let past = humantime::parse_rfc3339_weak(at).is_ok_and(|t| t <= now);
            if past {
                format!("the key you called with ('{}') no longer works", text(old))
            } else {
                format!(
                    "the key you called with ('{}') stops working at {at}",
                    text(old)
                )
            }
        }
    });
    notes.push(match &to.key_file {
        Some(file) => format!("put the new key in {} before then", file.display()),
        None => "set TL_GATEWAY_KEY (and every SDK client) to the new key before then".to_owned(),
    });
    Ok((key, notes))
}

fn new_key(answer: &Value) -> Result<String, String> {
    match answer["key"].as_str() {
        Some(key) if !key.is_empty() && !key.contains(char::is_whitespace) => Ok(key.to_owned()),
        _ => Err("the gateway's answer holds no key".into()),
    }
}

fn expiry(expires: &Value) -> String {
    match expires.as_str() {
        Some(at) => format!("expires {at}"),
        None => "never expires".into(),
    }
}

/// How an SDK uses the key through this gateway (the key itself is on stdout only).
fn sdk_hint(base: &str) -> String {
    format!("python: TwelveLabs(api_key=\"<the key on stdout>\", base_url=\"{base}/v1.3\")")
}

/// `3 (2 active)`.
fn key_count(client: &Value) -> String {
    let keys = client["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let active = keys.iter().filter(|k| k["state"] == "active").count();
    format!("{} ({active} active)", keys.len())
}

fn yes_no(value: &Value) -> &'static str {
    if value == true {
        "yes"
    } else {
        "no"
    }
}

fn roles_text(client: &Value) -> String {
    match list(&client["roles"]) {
        roles if roles.is_empty() => "-".into(),
        roles => roles.replace(", ", ","),
    }
}

/// The `clients list` table.
fn clients_table(answer: &Value) -> String {
    let clients = answer["clients"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if clients.is_empty() {
        return "no clients\n".into();
    }
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                text(&c["id"]),
                roles_text(c),
                text(&c["source"]),
                yes_no(&c["disabled"]).into(),
                key_count(c),
            ]
        })
        .collect();
    table(&["ID", "ROLES", "SOURCE", "DISABLED", "KEYS"], &rows)
}

/// One client and its keys.
fn client_details(client: &Value) -> String {
    let mut out = format!(
        "client:    {}\nroles:     {}\nsource:    {}\ndisabled:  {}\nkeys:      {}\n",
        text(&client["id"]),
        roles_text(client),
        text(&client["source"]),
        yes_no(&client["disabled"]),
        key_count(client)
    );
    let keys = client["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !keys.is_empty() {
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                [
                    "label",
                    "state",
                    "expires",
                    "last_used",
                    "created_at",
                    "created_by",
                ]
                .iter()
                .map(|field| text(&k[*field]))
                .collect()
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["LABEL", "STATE", "EXPIRES", "LAST USED", "CREATED", "BY"],
            &rows,
        ));
    }
    out
}

fn print_client(to: &Target, client: &Value) {
    if to.json {
        println!("{client:#}");
    } else {
        print!("{}", client_details(client));
    }
}

/// `keygen`: a new random key (printed once) and the YAML that holds only its digest.
pub fn keygen(
    id: &str,
    roles: &[String],
    label: Option<&str>,
    expires: Option<&str>,
) -> Result<(), String> {
    let id: ClientId = id.parse()?;
    let roles = roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<Vec<_>, _>>()?;
    let expires = match expires {
        None => None,
        Some(text) => Some(match humantime::parse_duration(text) {
            Ok(duration) => SystemTime::now() + duration,
            Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
                format!("--expires {text:?}: give a duration (90d) or an RFC 3339 time")
            })?,
        }),
    };
    if let Some(label) = label {
        if !is_plain_id(label) {
            return Err(format!("--label {label:?}: 1-64 of A-Z a-z 0-9 . _ -"));
        }
    }
    let key = super::new_client_key();
    let roles = roles
        .iter()
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    println!("# Personal key for {id}: hand it over once; the gateway stores only its digest.");
    println!("{key}");
    println!();
    if label.is_none() && expires.is_none() {
        println!("# Add under `clients:` in the gateway configuration:");
        println!("  - id: {id}");
        println!("    roles: [{roles}]");
        println!("    key_sha256: {}", key_digest_hex(&key));
        return Ok(());
    }
    let label = label.unwrap_or("key");
    // Whole seconds: the form the configuration reads back.
    let expires = expires.map(|at| {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(seconds))
            .to_string()
    });
    let entry = match &expires {
        Some(at) => format!(
            "{{ sha256: {}, label: {label}, expires: {at} }}",
            key_digest_hex(&key)
        ),
        None => format!("{{ sha256: {}, label: {label} }}", key_digest_hex(&key)),
    };
    println!("# A new client: add under `clients:`");
    println!("  - id: {id}");
    println!("    roles: [{roles}]");
    println!("    keys:");
    println!("      - {entry}");
    println!();
    println!(
        "# Rotating an existing client's key: add the line below to its `keys:` (the old key keeps"
    );
    println!("# working until its own expires, or until you remove it).");
    println!("      - {entry}");
    Ok(())
}

#[cfg(test)]
mod tests;
