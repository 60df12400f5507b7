//! The `upstream:` section, read and compiled (`config` assembles it): where requests go, the real
//! key's source, timeouts, versions and the connection budget.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::UpstreamOrigin;
use crate::credentials::KeySource;
use crate::settings::{Invalid, Seg};
use crate::units::ConfigDuration;

/// The fixed upstream origin and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSection {
    /// Scheme, host and port: the only place a connection can go.
    pub origin: UpstreamOrigin,
    /// Where the real TwelveLabs key comes from.
    pub key_source: KeySource,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving response headers.
    pub request_timeout: Duration,
    /// API versions forwarded (first path segment), default `[v1.3]`.
    pub api_versions: Vec<String>,
    /// Requests to the upstream at once, at most (none: unlimited).
    pub max_concurrency: Option<usize>,
    /// How long a request waits for an upstream slot before 503 `overloaded`.
    pub queue_timeout: Duration,
    /// Idle upstream connections kept open per serving worker (nginx's `keepalive`).
    pub max_idle_connections: usize,
}

/// Default for `upstream.max_idle_connections` (per serving worker).
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    url: String,
    api_key_file: Option<PathBuf>,
    api_key_env: Option<String>,
    connect_timeout: Option<ConfigDuration>,
    request_timeout: Option<ConfigDuration>,
    api_versions: Option<Vec<String>>,
    max_concurrency: Option<usize>,
    queue_timeout: Option<ConfigDuration>,
    max_idle_connections: Option<usize>,
}

/// Compile `upstream:`.
pub fn compile(raw: RawUpstream) -> Result<UpstreamSection, Invalid> {
    let origin = raw
        .url
        .parse()
        .map_err(|e| Invalid::new(&[Seg::Key("upstream"), Seg::Key("url")], e))?;
    let key_source = match (raw.api_key_file, raw.api_key_env) {
        (Some(file), None) => KeySource::File(file),
        (None, Some(var)) if !var.is_empty() => KeySource::Env(var),
        (None, Some(_)) => {
            return Err(Invalid::new(
                &[Seg::Key("upstream"), Seg::Key("api_key_env")],
                "must name an environment variable".into(),
            ))
        }
        _ => {
            return Err(Invalid::new(
                &[Seg::Key("upstream")],
                "set exactly one of api_key_file and api_key_env".into(),
            ))
        }
    };
    let connect_timeout = raw.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
    let request_timeout = raw
        .request_timeout
        .map_or(Duration::from_secs(300), |d| d.0);
    for (key, value) in [
        ("connect_timeout", connect_timeout),
        ("request_timeout", request_timeout),
    ] {
        if value.is_zero() {
            return Err(Invalid::new(
                &[Seg::Key("upstream"), Seg::Key(key)],
                "must be greater than zero".into(),
            ));
        }
    }
    let api_versions = raw.api_versions.unwrap_or_else(|| vec!["v1.3".to_owned()]);
    for (i, version) in api_versions.iter().enumerate() {
        let plain = version.strip_prefix('v').is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
        if !plain {
            return Err(Invalid::new(
                &[
                    Seg::Key("upstream"),
                    Seg::Key("api_versions"),
                    Seg::Index(i),
                ],
                format!("{version:?} is not an API version like v1.3"),
            ));
        }
    }
    if api_versions.is_empty() {
        return Err(Invalid::new(
            &[Seg::Key("upstream"), Seg::Key("api_versions")],
            "list at least one API version (v1.3)".into(),
        ));
    }
    Ok(UpstreamSection {
        origin,
        key_source,
        connect_timeout,
        request_timeout,
        api_versions,
        max_concurrency: raw.max_concurrency.map(|n| n.max(1)),
        queue_timeout: raw.queue_timeout.map_or(Duration::from_secs(5), |d| d.0),
        max_idle_connections: raw
            .max_idle_connections
            .unwrap_or(DEFAULT_MAX_IDLE_CONNECTIONS),
    })
}
