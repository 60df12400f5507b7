//! `tl-gateway audit verify` and `audit search`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::record::{check_line, Line, GENESIS};

/// A broken chain: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct ChainBroken {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers.
    pub seq_range: Option<(u64, u64)>,
    /// Whether the first record starts the chain (prev_hash = genesis); false when older files are
    /// not part of the check.
    pub starts_at_genesis: bool,
}

/// Check each record's hash, the `prev_hash` links and `seq` continuity across `files` in order
/// (oldest rotated file first, the live file last). The first record must start the chain (seq 1,
/// genesis `prev_hash`), so removing the oldest records is detected too; with `partial`, the chain
/// may start anywhere (for verifying a window after old files were pruned).
pub fn verify(files: &[PathBuf], partial: bool) -> Result<Verified, ChainBroken> {
    let mut previous: Option<(u64, String)> = None;
    let mut verified = Verified {
        records: 0,
        seq_range: None,
        starts_at_genesis: false,
    };
    for file in files {
        let broken = |line: usize, reason: String| ChainBroken {
            file: file.clone(),
            line,
            reason,
        };
        let reader =
            std::fs::File::open(file).map_err(|e| broken(0, format!("cannot open: {e}")))?;
        for (i, text) in BufReader::new(reader).lines().enumerate() {
            let number = i + 1;
            let text = text.map_err(|e| broken(number, format!("cannot read: {e}")))?;
            let line = check_line(&text).map_err(|reason| broken(number, reason))?;
            match &previous {
                None => {
                    verified.starts_at_genesis = line.prev_hash == GENESIS && line.seq == 1;
                    if !verified.starts_at_genesis && !partial {
                        return Err(broken(
                            number,
                            format!(
                                "the chain does not start here (seq {}): earlier records are missing; give every file oldest first, or --partial to check from this record on",
                                line.seq
                            ),
                        ));
                    }
                }
                Some((seq, hash)) => {
                    if line.seq != seq + 1 {
                        return Err(broken(
                            number,
                            format!("seq {} follows seq {seq} (a record was removed, inserted or reordered)", line.seq),
                        ));
                    }
                    if &line.prev_hash != hash {
                        return Err(broken(
                            number,
                            "prev_hash does not match the previous record's hash".into(),
                        ));
                    }
                }
            }
            let first = verified.seq_range.map_or(line.seq, |(first, _)| first);
            verified.seq_range = Some((first, line.seq));
            verified.records += 1;
            previous = Some((line.seq, line.hash));
        }
    }
    Ok(verified)
}

/// Filters for `audit search`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Client id.
    pub client: Option<String>,
    /// Route id.
    pub operation: Option<String>,
    /// A resource id: any path parameter equal to it.
    pub resource: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Inclusive lower bound (RFC 3339 prefix, e.g. `2026-11-30` or `2026-11-30T16:00`).
    pub since: Option<String>,
    /// Exclusive upper bound (RFC 3339 prefix).
    pub until: Option<String>,
}

impl Filter {
    /// Whether `line` passes every given filter.
    pub fn accepts(&self, line: &Line) -> bool {
        let e = &line.event;
        self.client
            .as_ref()
            .is_none_or(|c| e.client.as_ref() == Some(c))
            && self.operation.as_ref().is_none_or(|o| &e.operation == o)
            && self
                .resource
                .as_ref()
                .is_none_or(|r| e.params.values().any(|v| v == r))
            && self
                .request_id
                .as_ref()
                .is_none_or(|r| &e.request_id == r || e.resolves.as_ref() == Some(r))
            && self
                .since
                .as_ref()
                .is_none_or(|s| e.time.as_str() >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|u| e.time.as_str() < u.as_str())
    }
}

/// Matching records from `files`, as human-readable lines or the original JSON lines.
pub fn search(files: &[PathBuf], filter: &Filter, json: bool) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut count = 0;
    for file in files {
        let reader = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for text in BufReader::new(reader).lines() {
            let text = text.map_err(|e| format!("{}: {e}", file.display()))?;
            let Ok(line) = serde_json::from_str::<Line>(&text) else {
                continue;
            };
            if !filter.accepts(&line) {
                continue;
            }
            count += 1;
            if json {
                out.push_str(&text);
                out.push('\n');
            } else {
                let _ = writeln!(out, "{}", human(&line));
            }
        }
    }
    Ok((out, count))
}

fn human(line: &Line) -> String {
    let e = &line.event;
    let phase = e
        .phase
        .map_or("?".to_owned(), |p| format!("{p:?}").to_lowercase());
    let params: Vec<String> = e.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut text = format!(
        "{} #{} {:<10} {:<8} {} {} {} [{}]",
        e.time,
        line.seq,
        phase,
        e.client.as_deref().unwrap_or("-"),
        e.method,
        e.operation,
        params.join(" "),
        e.request_id
    );
    if let Some(force) = e.force {
        let _ = write!(text, " force={force}");
    }
    if let Some(rule) = &e.rule {
        let _ = write!(text, " rule={rule}");
    }
    if let Some(status) = e.status {
        let _ = write!(text, " status={status}");
    }
    if let Some(error) = &e.error {
        let _ = write!(text, " error={error}");
    }
    if let Some(refs) = &e.references {
        let _ = write!(
            text,
            " unlinks: {} indexed asset(s), {} entity(ies){}",
            refs.indexed_assets.len(),
            refs.entities.len(),
            if refs.complete {
                ""
            } else {
                " (listing truncated)"
            }
        );
    }
    text
}

/// The files of a log in chain order: rotated siblings of `live` (oldest first), then `live`.
pub fn chain_files(live: &Path) -> Vec<PathBuf> {
    let mut files = super::rotated_files(live);
    files.push(live.to_owned());
    files
}
