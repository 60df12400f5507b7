//! `tl-gateway approvals list|show|approve|deny|cancel --gateway URL [ID]`: the gateway's approvals
//! API (`/tl-gateway/v1/approvals`) from a terminal. The caller's personal key comes from
//! `TL_GATEWAY_KEY` or `--key-file` (never a command-line argument, where `ps` would show it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The approvals subcommands.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals you may see (approvers: all; others: their own), newest first.
    List {
        #[command(flatten)]
        to: Target,
        /// Only this state (pending, approved, denied, expired, used, cancelled); default: all.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one approval, with what a forced delete would unlink.
    Show {
        #[command(flatten)]
        to: Target,
        /// The approval id (apr_…).
        id: String,
    },
    /// Approve a pending request (you must hold an approver role and not be its requester).
    Approve {
        #[command(flatten)]
        to: Target,
        /// The approval id.
        id: String,
        /// A comment for the record.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        #[command(flatten)]
        to: Target,
        /// The approval id.
        id: String,
        /// A comment for the record.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Withdraw your own request.
    Cancel {
        #[command(flatten)]
        to: Target,
        /// The approval id.
        id: String,
    },
}

/// Which gateway, and with which key.
#[derive(Debug, Args)]
pub struct Target {
    /// The gateway's URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    gateway: String,
    /// A file holding your personal key (default: the TL_GATEWAY_KEY environment variable).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Print the gateway's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

impl Target {
    fn key(&self) -> Result<String, String> {
        let key = match &self.key_file {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
            None => std::env::var("TL_GATEWAY_KEY").map_err(|_| {
                "no key: set TL_GATEWAY_KEY to your personal key, or pass --key-file FILE"
                    .to_owned()
            })?,
        };
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        Ok(key)
    }

    fn url(&self, path: &str) -> Result<Uri, String> {
        let base = self.gateway.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "--gateway {base:?}: give the URL with http:// or https://"
            ));
        }
        format!("{base}{path}")
            .parse()
            .map_err(|_| format!("--gateway {base:?} is not a URL"))
    }
}

/// Run one approvals command; the gateway's refusals become the error message.
pub async fn run(command: ApprovalsCommand) -> Result<(), String> {
    match command {
        ApprovalsCommand::List { to, state } => {
            let query = state.map(|s| format!("?state={s}")).unwrap_or_default();
            let answer = call(&to, Method::GET, &format!("approvals{query}"), None).await?;
            if to.json {
                println!("{answer:#}");
                return Ok(());
            }
            let list = answer["approvals"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no approvals");
            }
            for a in &list {
                println!(
                    "{}  {:<9}  {:<10}  {} {}  (rule {}, asked {})",
                    text(&a["id"]),
                    text(&a["state"]),
                    text(&a["requester"]),
                    text(&a["method"]),
                    text(&a["target"]),
                    text(&a["rule"]),
                    text(&a["created_at"]),
                );
            }
            Ok(())
        }
        ApprovalsCommand::Show { to, id } => {
            let answer = call(&to, Method::GET, &format!("approvals/{id}"), None).await?;
            print_approval(&to, &answer);
            Ok(())
        }
        ApprovalsCommand::Approve { to, id, comment } => decide(&to, &id, "approve", comment).await,
        ApprovalsCommand::Deny { to, id, comment } => decide(&to, &id, "deny", comment).await,
        ApprovalsCommand::Cancel { to, id } => decide(&to, &id, "cancel", None).await,
    }
}

async fn decide(
    to: &Target,
    id: &str,
    action: &str,
    comment: Option<String>,
) -> Result<(), String> {
    let body = serde_json::json!({ "comment": comment });
    let answer = call(
        to,
        Method::POST,
        &format!("approvals/{id}/{action}"),
        Some(body),
    )
    .await?;
    print_approval(to, &answer);
    Ok(())
}

fn print_approval(to: &Target, a: &Value) {
    if to.json {
        println!("{a:#}");
        return;
    }
    println!("approval:  {}", text(&a["id"]));
    println!("state:     {}", text(&a["state"]));
    println!("request:   {} {}", text(&a["method"]), text(&a["target"]));
    println!("requester: {}", text(&a["requester"]));
    println!(
        "rule:      {} (approvers: a role in [{}], {} needed)",
        text(&a["rule"]),
        list(&a["approver_roles"]),
        a["approvals_required"]
    );
    println!("asked:     {}", text(&a["created_at"]));
    println!("expires:   {}", text(&a["expires_at"]));
    if let Some(decisions) = a["decisions"].as_array() {
        for d in decisions {
            let comment = d["comment"]
                .as_str()
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            println!(
                "decided:   {} by {} at {}{comment}",
                text(&d["decision"]),
                text(&d["client"]),
                text(&d["at"])
            );
        }
    }
    match &a["references"] {
        Value::Null => println!("unlinks:   (no reference listing)"),
        refs => {
            let indexed = refs["indexed_assets"].as_array().map_or(0, Vec::len);
            let entities = refs["entities"].as_array().map_or(0, Vec::len);
            let partial = if refs["complete"] == false {
                " (listing incomplete)"
            } else {
                ""
            };
            println!("unlinks:   {indexed} indexed asset(s), {entities} entit(y/ies){partial}");
            for item in refs["indexed_assets"].as_array().into_iter().flatten() {
                println!(
                    "           indexed asset {} in index {}",
                    text(&item["id"]),
                    text(&item["index_id"])
                );
            }
            for item in refs["entities"].as_array().into_iter().flatten() {
                println!(
                    "           entity {} in collection {}",
                    text(&item["id"]),
                    text(&item["collection_id"])
                );
            }
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value
        .as_array()
        .map(|items| items.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// One call to `/tl-gateway/v1/{path}`; a non-2xx answer becomes `code: message`.
async fn call(
    to: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let key = to.key()?;
    let uri = to.url(&format!("/tl-gateway/v1/{path}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", key)
        .header(header::ACCEPT, "application/json");
    let payload = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(payload))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| format!("{}: no answer within 30 s", to.gateway))?
        .map_err(|e| format!("{}: {e}", to.gateway))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{}: {e}", to.gateway))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let code = value["code"].as_str().unwrap_or("error");
    let message = value["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let hint = if status == StatusCode::NOT_FOUND && code == "route_unknown" {
        " (is --gateway a tl-gateway?)"
    } else {
        ""
    };
    Err(format!("{} {code}: {message}{hint}", status.as_u16()))
}
