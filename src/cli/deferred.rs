//! `tl-gateway deferred list|show|cancel --gateway URL [ID]`: the gateway's deferred calls (the
//! undo window, `/tl-gateway/v1/deferred`) from a terminal. The caller's personal key comes from
//! `TL_GATEWAY_KEY` or `--key-file`, as for `approvals`.

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::api_client::{list, list_records, on_record, segment, text, Target};

/// The deferred subcommands.
#[derive(Debug, Subcommand)]
pub enum DeferredCommand {
    /// List deferred calls you may see (your own, those you may cancel; auditors: all), newest
    /// first.
    List {
        #[command(flatten)]
        to: Target,
        /// Only this state (scheduled, cancelled, executing, executed, refused, unresolved);
        /// default: all.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one deferred call, with what a forced delete would unlink and how it ended.
    Show {
        #[command(flatten)]
        to: Target,
        /// The deferred call's id (dfr_…).
        id: String,
    },
    /// Cancel a scheduled call (its requester, or a role in the rule's cancel_roles).
    Cancel {
        #[command(flatten)]
        to: Target,
        /// The deferred call's id.
        id: String,
    },
}

/// Run one deferred command; the gateway's refusals become the error message.
pub async fn run(command: DeferredCommand) -> Result<(), String> {
    match command {
        DeferredCommand::List { to, state } => {
            list_records(
                &to,
                "deferred",
                "deferred",
                state,
                "no deferred calls",
                |d| {
                    format!(
                        "{}  {:<10}  {:<10}  {} {}  (rule {}, runs {})",
                        text(&d["id"]),
                        text(&d["state"]),
                        text(&d["requester"]),
                        text(&d["method"]),
                        text(&d["target"]),
                        text(&d["rule"]),
                        text(&d["execute_at"]),
                    )
                },
            )
            .await
        }
        DeferredCommand::Show { to, id } => {
            let path = format!("deferred/{}", segment(&id));
            on_record(&to, Method::GET, &path, None, print_call).await
        }
        DeferredCommand::Cancel { to, id } => {
            let path = format!("deferred/{}/cancel", segment(&id));
            on_record(&to, Method::POST, &path, None, print_call).await
        }
    }
}

fn print_call(to: &Target, d: &Value) {
    if to.json {
        println!("{d:#}");
        return;
    }
    println!("deferred:  {}", text(&d["id"]));
    println!("state:     {}", text(&d["state"]));
    println!("request:   {} {}", text(&d["method"]), text(&d["target"]));
    println!("requester: {}", text(&d["requester"]));
    println!(
        "rule:      {} (cancel: the requester or a role in [{}])",
        text(&d["rule"]),
        list(&d["cancel_roles"])
    );
    println!("scheduled: {}", text(&d["created_at"]));
    println!("runs at:   {}", text(&d["execute_at"]));
    if let Some(by) = d["cancelled_by"].as_str() {
        println!("cancelled: by {by}");
    }
    if let Some(approval) = d["approval_id"].as_str() {
        println!(
            "approval:  {approval} (approved by {})",
            list(&d["approvers"])
        );
    }
    if let Value::Object(refs) = &d["references"] {
        let indexed = refs
            .get("indexed_assets")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let entities = refs
            .get("entities")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        println!("unlinks:   {indexed} indexed asset(s), {entities} entit(y/ies)");
    }
    if let Value::Object(outcome) = &d["outcome"] {
        let code = outcome
            .get("code")
            .and_then(Value::as_str)
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        println!(
            "outcome:   status {}{code}, forwarded {} at {}",
            outcome.get("status").unwrap_or(&Value::Null),
            outcome.get("forwarded").unwrap_or(&Value::Null),
            outcome.get("at").and_then(Value::as_str).unwrap_or("")
        );
        if let Some(message) = outcome.get("message").and_then(Value::as_str) {
            println!("           {message}");
        }
    }
}
