//! `tl-gateway approvals list|show|approve|deny|cancel --gateway URL [ID]`: the gateway's approvals
//! API (`/tl-gateway/v1/approvals`) from a terminal. The caller's personal key comes from
//! `TL_GATEWAY_KEY` or `--key-file` (never a command-line argument, where `ps` would show it).

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::api_client::{list, list_records, on_record, segment, text, Target};

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

/// Run one approvals command; the gateway's refusals become the error message.
pub async fn run(command: ApprovalsCommand) -> Result<(), String> {
    match command {
        ApprovalsCommand::List { to, state } => {
            list_records(&to, "approvals", "approvals", state, "no approvals", |a| {
                format!(
                    "{}  {:<9}  {:<10}  {} {}  (rule {}, asked {})",
                    text(&a["id"]),
                    text(&a["state"]),
                    text(&a["requester"]),
                    text(&a["method"]),
                    text(&a["target"]),
                    text(&a["rule"]),
                    text(&a["created_at"]),
                )
            })
            .await
        }
        ApprovalsCommand::Show { to, id } => {
            let path = format!("approvals/{}", segment(&id));
            on_record(&to, Method::GET, &path, None, print_approval).await
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
    let path = format!("approvals/{}/{action}", segment(id));
    let body = serde_json::json!({ "comment": comment });
    on_record(to, Method::POST, &path, Some(body), print_approval).await
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
