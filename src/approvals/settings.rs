//! The `approvals:` section, read and compiled (`config` assembles it).

use std::path::PathBuf;

use serde::Deserialize;

use super::notify::NotifySettings;
use crate::settings::{Invalid, Seg};
use crate::units::{ByteSize, ConfigDuration};

/// The `approvals:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsSettings {
    /// The gateway's URL as clients reach it (`approval_required` messages, webhook links);
    /// default: taken from the request's `Host`.
    pub public_url: Option<String>,
    /// Where new requests and decisions are posted.
    pub notify: Option<NotifySettings>,
    /// Pending approvals one requester may have at once (more: 429).
    pub max_pending_per_client: usize,
    /// The largest request body an approval can cover (larger: 413).
    pub max_body_bytes: usize,
    /// New approvals one requester may ask for per minute (more: 429).
    pub max_asks_per_client: u32,
    /// How long finished approvals are kept.
    pub keep_decided: std::time::Duration,
    /// Finished approvals kept per requester (older ones forgotten).
    pub max_decided_per_client: usize,
}

impl Default for ApprovalsSettings {
    fn default() -> Self {
        ApprovalsSettings {
            public_url: None,
            notify: None,
            max_pending_per_client: crate::approvals::DEFAULT_MAX_PENDING_PER_CLIENT,
            max_body_bytes: crate::approvals::body::DEFAULT_MAX_BODY_BYTES,
            max_asks_per_client: crate::approvals::DEFAULT_MAX_ASKS_PER_CLIENT,
            keep_decided: crate::approvals::DEFAULT_KEEP_DECIDED,
            max_decided_per_client: crate::approvals::DEFAULT_MAX_DECIDED_PER_CLIENT,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    public_url: Option<String>,
    notify: Option<RawNotify>,
    max_pending_per_client: Option<usize>,
    max_body_bytes: Option<ByteSize>,
    max_asks_per_client: Option<u32>,
    keep_decided: Option<ConfigDuration>,
    max_decided_per_client: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook_url: Option<String>,
    webhook_url_file: Option<PathBuf>,
    timeout: Option<ConfigDuration>,
    max_attempts: Option<u32>,
    secret_file: Option<PathBuf>,
}

/// Compile `approvals:` (absent: the defaults).
pub fn compile(raw: Option<RawApprovals>) -> Result<ApprovalsSettings, Invalid> {
    let Some(raw) = raw else {
        return Ok(ApprovalsSettings::default());
    };
    let at = |keys: &[&'static str]| {
        std::iter::once(Seg::Key("approvals"))
            .chain(keys.iter().map(|k| Seg::Key(k)))
            .collect::<Vec<_>>()
    };
    let http_url = |url: &str| url.starts_with("http://") || url.starts_with("https://");
    if let Some(url) = &raw.public_url {
        if !http_url(url) {
            return Err(Invalid::new(
                &at(&["public_url"]),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
    }
    let notify = match raw.notify {
        None => None,
        Some(n) => {
            let url = crate::settings::inline_or_file(
                n.webhook_url,
                n.webhook_url_file,
                &at(&["notify"]),
                ("webhook_url", "webhook_url_file"),
            )?;
            if !http_url(&url) || url.parse::<http::Uri>().is_err() {
                return Err(Invalid::new(
                    &at(&["notify", "webhook_url"]),
                    "not an http:// or https:// URL".into(),
                ));
            }
            let defaults = NotifySettings::default();
            let secret_at = [
                Seg::Key("approvals"),
                Seg::Key("notify"),
                Seg::Key("secret_file"),
            ];
            let secret = match &n.secret_file {
                None => None,
                Some(file) => {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        Invalid::new(&secret_at, format!("cannot read {}: {e}", file.display()))
                    })?;
                    let secret = text.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
                    if secret.len() < 16 {
                        return Err(Invalid::new(
                            &secret_at,
                            "the signing secret must be at least 16 bytes".into(),
                        ));
                    }
                    Some(secret)
                }
            };
            Some(NotifySettings {
                url,
                timeout: n.timeout.map_or(defaults.timeout, |d| d.0),
                max_attempts: n.max_attempts.unwrap_or(defaults.max_attempts).max(1),
                secret,
            })
        }
    };
    Ok(ApprovalsSettings {
        public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        notify,
        max_pending_per_client: raw
            .max_pending_per_client
            .unwrap_or(crate::approvals::DEFAULT_MAX_PENDING_PER_CLIENT)
            .max(1),
        max_body_bytes: raw
            .max_body_bytes
            .map_or(crate::approvals::body::DEFAULT_MAX_BODY_BYTES, |b| {
                b.0.min(16 * 1024 * 1024) as usize
            }),
        max_asks_per_client: raw
            .max_asks_per_client
            .unwrap_or(crate::approvals::DEFAULT_MAX_ASKS_PER_CLIENT)
            .max(1),
        keep_decided: raw
            .keep_decided
            .map_or(crate::approvals::DEFAULT_KEEP_DECIDED, |d| d.0),
        max_decided_per_client: raw
            .max_decided_per_client
            .unwrap_or(crate::approvals::DEFAULT_MAX_DECIDED_PER_CLIENT)
            .max(1),
    })
}
