//! The `audit:` section, read and compiled (`config` assembles it).

use std::path::PathBuf;

use serde::Deserialize;

use super::{AuditScope, AuditSettings, ScopeMatch};
use crate::settings::{Invalid, Seg};
use crate::units::{ByteSize, ConfigDuration};

/// Audit log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSection {
    /// Writer settings.
    pub settings: AuditSettings,
    /// Routes audited in addition to the destructive ones.
    pub scope: AuditScope,
    /// At start-up, ask the upstream about asset deletes left without outcome.
    pub reconcile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    path: PathBuf,
    fsync: Option<bool>,
    max_file_size: Option<ByteSize>,
    queue_capacity: Option<usize>,
    enqueue_timeout: Option<ConfigDuration>,
    #[serde(rename = "match", default)]
    matchers: Vec<RawAuditMatch>,
    reconcile: Option<bool>,
    max_denied_per_client: Option<u32>,
    reserve: Option<ByteSize>,
    file_mode: Option<String>,
    max_rotated_files: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditMatch {
    method: Option<String>,
    path: Option<String>,
    operation: Option<String>,
}

/// Compile `audit:`.
pub fn compile(raw: RawAudit) -> Result<AuditSection, Invalid> {
    let mut settings = AuditSettings::new(raw.path);
    settings.fsync = raw.fsync.unwrap_or(true);
    if let Some(size) = raw.max_file_size {
        if size.0 < 4096 {
            return Err(Invalid::new(
                &[Seg::Key("audit"), Seg::Key("max_file_size")],
                "must be at least 4KiB".into(),
            ));
        }
        settings.max_file_size = size.0;
    }
    if let Some(capacity) = raw.queue_capacity {
        settings.queue_capacity = capacity.max(1);
    }
    if let Some(timeout) = raw.enqueue_timeout {
        settings.enqueue_timeout = timeout.0;
    }
    if let Some(max) = raw.max_denied_per_client {
        settings.max_denied_per_client = max;
    }
    if let Some(reserve) = raw.reserve {
        settings.reserve = reserve.0;
    }
    settings.max_rotated_files = raw.max_rotated_files;
    if let Some(mode) = raw.file_mode {
        settings.file_mode = match mode.as_str() {
            "0600" | "600" => 0o600,
            "0640" | "640" => 0o640,
            _ => {
                return Err(Invalid::new(
                    &[Seg::Key("audit"), Seg::Key("file_mode")],
                    format!("{mode:?}: use \"0600\" (owner only) or \"0640\" (and the file's group, for a log shipper)"),
                ))
            }
        };
    }
    let mut matchers = Vec::with_capacity(raw.matchers.len());
    for (i, m) in raw.matchers.into_iter().enumerate() {
        let at = [Seg::Key("audit"), Seg::Key("match"), Seg::Index(i)];
        let method = m
            .method
            .as_deref()
            .map(|name| crate::matcher::read_method(name, &at))
            .transpose()?;
        matchers.push((
            i,
            ScopeMatch {
                method,
                path: m.path,
                operation: m.operation,
            },
        ));
    }
    let scope = AuditScope::compile(matchers.iter().map(|(_, m)| m)).map_err(|(i, e)| {
        Invalid::new(
            &[
                Seg::Key("audit"),
                Seg::Key("match"),
                Seg::Index(matchers[i].0),
            ],
            e,
        )
    })?;
    Ok(AuditSection {
        settings,
        scope,
        reconcile: raw.reconcile.unwrap_or(false),
    })
}
