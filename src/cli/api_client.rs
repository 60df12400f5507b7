//! What every client of the gateway's own API (`/tl-gateway/v1/…`) on the command line shares:
//! which gateway (`--gateway URL`), the caller's personal key (`TL_GATEWAY_KEY` or `--key-file`,
//! never a command-line argument, where `ps` would show it), one JSON call whose refusal becomes
//! the error message, and the few helpers that print its answers.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use serde_json::Value;

/// Which gateway, and with which key.
#[derive(Debug, Args)]
pub struct Target {
    /// The gateway's URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub gateway: String,
    /// A file holding your personal key (default: the TL_GATEWAY_KEY environment variable).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Print the gateway's JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    /// The caller's personal key, trimmed.
    pub fn key(&self) -> Result<String, String> {
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

    /// `--gateway` without a trailing slash, checked to be an http(s) URL.
    pub fn base(&self) -> Result<&str, String> {
        let base = self.gateway.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "--gateway {base:?}: give the URL with http:// or https://"
            ));
        }
        Ok(base)
    }

    /// The gateway's URL for `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> Result<Uri, String> {
        let base = self.base()?;
        format!("{base}{path}")
            .parse()
            .map_err(|_| format!("--gateway {base:?} is not a URL"))
    }
}

/// One path segment, percent-encoded: anything but `A-Z a-z 0-9 - . _ ~` is escaped, so an id
/// given on the command line can never reach another route (`..`, `/`, `?`).
pub fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.chars().all(|c| c == '.') {
        // `.` and `..` are dot-segments a URL parser may resolve away.
        return out.replace('.', "%2E");
    }
    out
}

/// One call to `/tl-gateway/v1/{path}`; a non-2xx answer becomes `STATUS code: message`.
pub async fn call(
    to: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let key = to.key()?;
    let uri = to.url(&format!("/tl-gateway/v1/{path}"))?;
    let client: Client<_, Full<Bytes>> =
        crate::outbound::client(Duration::from_secs(10)).map_err(|e| e.to_string())?;
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
    Err(refusal(status, &value, &bytes))
}

/// The one-line error for a refused call: `403 policy_denied: message`.
fn refusal(status: StatusCode, value: &Value, bytes: &[u8]) -> String {
    let code = value["code"].as_str().unwrap_or("error");
    let message = value["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_owned());
    let hint = if status == StatusCode::NOT_FOUND && code == "route_unknown" {
        " (is --gateway a tl-gateway, and a version that has this API?)"
    } else {
        ""
    };
    format!("{} {code}: {message}{hint}", status.as_u16())
}

/// `GET {collection}[?state=S]`: the records under `field`, one `line` each, `none` when there are
/// none (or the whole answer as JSON with `--json`). Approvals and deferred calls list this way.
pub async fn list_records(
    to: &Target,
    collection: &str,
    field: &str,
    state: Option<String>,
    none: &str,
    line: impl Fn(&Value) -> String,
) -> Result<(), String> {
    let query = state
        .map(|s| format!("?state={}", segment(&s)))
        .unwrap_or_default();
    let answer = call(to, Method::GET, &format!("{collection}{query}"), None).await?;
    if to.json {
        println!("{answer:#}");
        return Ok(());
    }
    let records = answer[field].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        println!("{none}");
    }
    for record in &records {
        println!("{}", line(record));
    }
    Ok(())
}

/// `METHOD {path}` on one record (with an optional JSON body), printed by `print`.
pub async fn on_record(
    to: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
    print: fn(&Target, &Value),
) -> Result<(), String> {
    let answer = call(to, method, path, body).await?;
    print(to, &answer);
    Ok(())
}

/// A JSON value as text: strings bare, `null` as `-`.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A JSON array as `a, b, c`.
pub fn list(value: &Value) -> String {
    value
        .as_array()
        .map(|items| items.iter().map(text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart; no trailing
/// blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            for _ in cell.chars().count()..pad {
                line.push(' ');
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(gateway: &str) -> Target {
        Target {
            gateway: gateway.into(),
            key_file: None,
            json: false,
        }
    }

    #[test]
    fn the_gateway_url_needs_a_scheme_and_loses_its_trailing_slash() {
        let to = target("http://127.0.0.1:8080/");
        assert_eq!(to.base().unwrap(), "http://127.0.0.1:8080");
        assert_eq!(
            to.url("/tl-gateway/v1/clients").unwrap().to_string(),
            "http://127.0.0.1:8080/tl-gateway/v1/clients"
        );
        assert!(target("127.0.0.1:8080")
            .url("/x")
            .unwrap_err()
            .contains("http://"));
    }

    #[test]
    fn the_key_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "tlgw_abc\n").unwrap();
        let mut to = target("http://gw");
        to.key_file = Some(file.clone());
        assert_eq!(to.key().unwrap(), "tlgw_abc");
        std::fs::write(&file, " \n").unwrap();
        assert_eq!(to.key().unwrap_err(), "the key is empty");
        to.key_file = Some(dir.path().join("missing"));
        assert!(to.key().unwrap_err().starts_with("cannot read "));
    }

    #[test]
    fn a_segment_cannot_leave_its_place_in_the_path() {
        assert_eq!(segment("bob"), "bob");
        assert_eq!(segment("laptop-2027.v1_x~"), "laptop-2027.v1_x~");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn a_refusal_is_status_code_and_message() {
        let body = serde_json::json!({"code": "policy_denied", "message": "needs a role in [admin]", "request_id": "r1"});
        assert_eq!(
            refusal(StatusCode::FORBIDDEN, &body, b""),
            "403 policy_denied: needs a role in [admin]"
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, &Value::Null, b"bad gateway\n"),
            "502 error: bad gateway"
        );
        let unknown = serde_json::json!({"code": "route_unknown", "message": "no route"});
        assert!(refusal(StatusCode::NOT_FOUND, &unknown, b"").contains("is --gateway a tl-gateway"));
    }

    #[test]
    fn a_table_aligns_its_columns() {
        let rows = vec![
            vec!["alice".to_owned(), "admin".to_owned(), "config".to_owned()],
            vec![
                "bob-the-builder".to_owned(),
                "-".to_owned(),
                "store".to_owned(),
            ],
        ];
        assert_eq!(
            table(&["ID", "ROLES", "SOURCE"], &rows),
            "ID               ROLES  SOURCE\n\
             alice            admin  config\n\
             bob-the-builder  -      store\n"
        );
    }
}
