//! The audit log: hash-chained JSON Lines, written by one group-commit writer, fsync'd before a
//! destructive request is forwarded (the audit record contract in docs/architecture.md).
//!
//! One writer thread owns the file. Requests hand it events through a bounded queue; the writer
//! takes everything queued, appends it with one write and one `fdatasync`, then answers every waiter,
//! so concurrent deletes share flushes instead of queueing behind each other's.
//!
//! Records are of two kinds. Intents, outcomes and reconciliations must never be lost: they go first
//! in every batch, and an outcome whose batch failed is kept and written once the file accepts
//! writes again. Refusals (`denied`) are bounded: beyond `max_denied_per_client` per client and
//! second they are coalesced into one `denied_summary` record per client and second, and while the
//! audit volume has less than `reserve` bytes free they are not written at all (counted and
//! logged), so a flood of refused requests cannot take the space a permitted delete needs.
//!
//! A request waits at most `enqueue_timeout` in all for its intent to be durable (queue, write and
//! fsync); otherwise it is refused with 503 `audit_unavailable` and never forwarded.

pub mod layer;
pub mod reconcile;
pub mod record;
pub mod settings;
pub mod verify;
mod writer;

use self::writer::Writer;

pub use self::layer::{AuditScope, ScopeMatch};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use self::record::{chain, check_line, Event, Line, Phase, GENESIS};
use crate::metrics::AuditMetrics;
use crate::units::rfc3339;

/// Audit settings (from `audit:` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The live JSON Lines file.
    pub path: PathBuf,
    /// `fdatasync` after every batch (default true).
    pub fsync: bool,
    /// Rotate when the live file reaches this size (bytes).
    pub max_file_size: u64,
    /// Events waiting for the writer, at most.
    pub queue_capacity: usize,
    /// How long a request waits in all for its intent to be durable before it is refused.
    pub enqueue_timeout: Duration,
    /// How much of the live file's end is scanned for unresolved intents at start-up.
    pub scan_bytes: u64,
    /// `denied` records per client and second; more are coalesced into one `denied_summary`.
    pub max_denied_per_client: u32,
    /// Free bytes kept on the audit volume for intents and outcomes: below it, refusals are not
    /// recorded.
    pub reserve: u64,
    /// Permission bits of a newly created audit file.
    pub file_mode: u32,
    /// Rotated files kept beside the live one (the oldest beyond are removed; `None`: all kept).
    pub max_rotated_files: Option<usize>,
}

impl AuditSettings {
    /// Defaults for a file at `path`.
    pub fn new(path: PathBuf) -> Self {
        AuditSettings {
            path,
            fsync: true,
            max_file_size: 100 * 1024 * 1024,
            queue_capacity: 4096,
            enqueue_timeout: Duration::from_secs(2),
            scan_bytes: 16 * 1024 * 1024,
            max_denied_per_client: 10,
            reserve: 64 * 1024 * 1024,
            file_mode: 0o600,
            max_rotated_files: None,
        }
    }
}

/// Why an event could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The record was not durable within `enqueue_timeout` (queue full, or the disk too slow).
    #[error("the audit record was not durable within audit.enqueue_timeout")]
    QueueFull,
    /// The writer is gone.
    #[error("the audit writer has stopped")]
    WriterStopped,
    /// Writing or syncing failed.
    #[error("the audit log cannot be written: {0}")]
    Io(String),
}

/// An intent left without a resolving outcome by an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The intent's request id.
    pub request_id: String,
    /// The gateway's id of the request (absent in records of older versions).
    pub audit_id: Option<String>,
    /// Its route id.
    pub operation: String,
    /// Its canonical path.
    pub path: String,
    /// Its path parameters.
    pub params: std::collections::BTreeMap<String, String>,
    /// Its client.
    pub client: Option<String>,
    /// Its sequence number.
    pub seq: u64,
    /// Why it is open: no outcome at all, or an outcome that does not tell whether it took effect.
    pub why: String,
}

impl Unresolved {
    /// The id a `reconciled` record names in `resolves`.
    pub fn key(&self) -> &str {
        self.audit_id.as_deref().unwrap_or(&self.request_id)
    }
}

struct Job {
    /// `None` for a flush: answered once everything queued before it is written.
    event: Option<Event>,
    reply: Option<oneshot::Sender<Result<u64, AuditError>>>,
}

impl Job {
    fn is_refusal(&self) -> bool {
        self.reply.is_none()
            && self
                .event
                .as_ref()
                .and_then(|e| e.phase)
                .is_some_and(Phase::is_refusal)
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("request_id", &self.event.as_ref().map(|e| &e.request_id))
            .finish()
    }
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    settings: Arc<AuditSettings>,
    health: Arc<Mutex<Option<String>>>,
    metrics: AuditMetrics,
    denials: Arc<DenialWindows>,
}

impl AuditLog {
    /// Open (or create) the log, recover the chain, find unresolved intents and start the writer.
    pub fn open(
        settings: AuditSettings,
        metrics: AuditMetrics,
    ) -> std::io::Result<(AuditLog, Vec<Unresolved>)> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let (seq, prev_hash, unresolved) = recover(&settings)?;
        let file = open_live(&settings)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let settings = Arc::new(settings);
        let health = Arc::new(Mutex::new(None));
        metrics
            .unresolved_intents
            .set(i64::try_from(unresolved.len()).unwrap_or(i64::MAX));
        let denials = Arc::new(DenialWindows::new(settings.max_denied_per_client));
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let writer = Writer {
            settings: settings.clone(),
            file,
            len,
            seq,
            prev_hash,
            health: health.clone(),
            metrics: metrics.clone(),
            denials: denials.clone(),
            below_reserve: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("tl-gateway-audit".into())
            .spawn(move || runtime.block_on(writer.run(rx)))?;
        Ok((
            AuditLog {
                tx,
                settings,
                health,
                metrics,
                denials,
            },
            unresolved,
        ))
    }

    /// Whether the audit volume has `reserve` bytes free: below it, bookkeeping that can be asked
    /// for at will (approvals asked or withdrawn) is refused, like refusals are not recorded, so it
    /// cannot take the space an intent or an outcome needs. Unknown free space counts as room.
    pub fn has_room_for_bookkeeping(&self) -> bool {
        free_bytes(&self.settings.path).is_none_or(|free| free >= self.settings.reserve)
    }

    /// Append `event` and wait until it is durable; returns its sequence number. Waits at most
    /// `enqueue_timeout` in all.
    pub async fn write_durable(&self, event: Event) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            event: Some(event),
            reply: Some(reply),
        };
        let wait = async {
            self.tx
                .send(job)
                .await
                .map_err(|_| AuditError::WriterStopped)?;
            answer.await.unwrap_or(Err(AuditError::WriterStopped))
        };
        match tokio::time::timeout(self.settings.enqueue_timeout, wait).await {
            Ok(result) => result,
            Err(_) => {
                self.metrics.write_errors.inc();
                Err(AuditError::QueueFull)
            }
        }
    }

    /// Append `event` without waiting for it (outcomes and reconciliations).
    pub fn write(&self, event: Event) {
        let job = Job {
            event: Some(event),
            reply: None,
        };
        if let Err(mpsc::error::TrySendError::Full(job)) = self.tx.try_send(job) {
            // Never drop such a record silently: wait for room off the request path.
            let tx = self.tx.clone();
            let timeout = self.settings.enqueue_timeout;
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                if tx.send_timeout(job, timeout).await.is_err() {
                    metrics.write_errors.inc();
                    metrics.dropped.inc();
                    tracing::error!("audit queue full: a record could not be queued");
                }
            });
        }
    }

    /// Record a refusal: written as it is up to `max_denied_per_client` per client and second, then
    /// coalesced; dropped (counted) if the queue is full.
    pub fn denied(&self, event: Event) {
        let (ended, this) = self.denials.admit(event, unix_second());
        if this.is_none() {
            self.metrics.coalesced.inc();
        }
        for event in ended.into_iter().chain(this) {
            let job = Job {
                event: Some(event),
                reply: None,
            };
            if self.tx.try_send(job).is_err() {
                self.metrics.dropped.inc();
            }
        }
    }

    /// Wait until everything queued so far has been written (at shutdown: outcomes of the last
    /// requests must not die with the process).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            event: None,
            reply: Some(reply),
        };
        self.tx
            .send_timeout(job, self.settings.enqueue_timeout)
            .await
            .map_err(|_| AuditError::QueueFull)?;
        answer
            .await
            .unwrap_or(Err(AuditError::WriterStopped))
            .map(|_| ())
    }

    /// `Ok` while the sink is writable (for `/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        match self.health.lock() {
            Ok(guard) => guard.clone().map_or(Ok(()), Err),
            Err(_) => Err("audit state unavailable".into()),
        }
    }

    /// The log's metrics.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }

    /// The live file.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }
}

fn unix_second() -> u64 {
    crate::units::now_secs() as u64
}

/// Open the live file for appending, created with `file_mode` (an existing file is brought down to
/// it, so upgrading tightens an older, world-readable file).
fn open_live(settings: &AuditSettings) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(settings.file_mode)
        .open(&settings.path)?;
    let metadata = file.metadata()?;
    if metadata.is_file() && metadata.permissions().mode() & 0o777 != settings.file_mode {
        file.set_permissions(std::fs::Permissions::from_mode(settings.file_mode))?;
    }
    Ok(file)
}

/// Free bytes for unprivileged writers on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Per-client denial windows: which refusals are written as they are, and the summaries of the rest.
#[derive(Debug)]
struct DenialWindows {
    max: u32,
    windows: Mutex<HashMap<String, DenialWindow>>,
}

#[derive(Debug)]
struct DenialWindow {
    second: u64,
    written: u32,
    /// The first record coalesced in this window, the template of its summary.
    template: Option<Event>,
    count: u64,
    rules: BTreeSet<String>,
    last_request_id: String,
}

impl DenialWindows {
    fn new(max: u32) -> Self {
        DenialWindows {
            max,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The records to write for this denial now: the summary of this client's previous window if
    /// it just ended, and the denial itself unless it is coalesced.
    fn admit(&self, event: Event, second: u64) -> (Option<Event>, Option<Event>) {
        let Ok(mut windows) = self.windows.lock() else {
            return (None, Some(event));
        };
        let client = event.client.clone().unwrap_or_default();
        let window = windows.entry(client).or_insert_with(|| DenialWindow {
            second,
            written: 0,
            template: None,
            count: 0,
            rules: BTreeSet::new(),
            last_request_id: String::new(),
        });
        let mut ended = None;
        if window.second != second {
            ended = window.summary();
            window.second = second;
            window.written = 0;
        }
        if window.written < self.max {
            window.written += 1;
            return (ended, Some(event));
        }
        window.count += 1;
        window.rules.insert(
            event
                .rule
                .clone()
                .or(event.error.clone())
                .unwrap_or_default(),
        );
        window.last_request_id = event.request_id.clone();
        if window.template.is_none() {
            window.template = Some(event);
        }
        (ended, None)
    }

    /// Summaries of every window that ended before `second` (clients that went quiet).
    fn expired(&self, second: u64) -> Vec<Event> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        let mut summaries = Vec::new();
        windows.retain(|_, window| {
            if window.second >= second {
                return true;
            }
            summaries.extend(window.summary());
            false
        });
        summaries
    }
}

impl DenialWindow {
    /// The `denied_summary` for what this window coalesced, if anything; resets it.
    fn summary(&mut self) -> Option<Event> {
        let mut summary = self.template.take()?;
        summary.time = rfc3339(SystemTime::now());
        summary.phase = Some(Phase::DeniedSummary);
        summary.first_request_id = Some(std::mem::take(&mut summary.request_id));
        summary.last_request_id = Some(std::mem::take(&mut self.last_request_id));
        summary.count = Some(std::mem::take(&mut self.count));
        summary.rules = Some(std::mem::take(&mut self.rules).into_iter().collect());
        summary.audit_id = None;
        summary.rule = None;
        summary.error = None;
        summary.status = None;
        summary.duration_ms = None;
        summary.force = None;
        summary.params.clear();
        Some(summary)
    }
}

/// Rotated siblings of the live file, oldest first (their names end in a sortable timestamp).
pub fn rotated_files(live: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The newest `limit` records of the log at `live` that `keep` accepts (the live file, then the
/// newest rotated one if the live file holds fewer), newest first, as written (with `seq` and
/// hashes). Reads at most a few MiB of each file's end, never the whole log; for the approvals
/// page, not for verification.
pub fn recent(
    live: &Path,
    limit: usize,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> std::io::Result<Vec<serde_json::Value>> {
    const WINDOW: u64 = 4 * 1024 * 1024;
    // From the newest line back, parsing only until `limit` records are kept.
    let take = |text: &str, newest: &mut Vec<serde_json::Value>| {
        for line in text.lines().rev() {
            if newest.len() >= limit {
                break;
            }
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(line) {
                if keep(&record) {
                    newest.push(record);
                }
            }
        }
    };
    let mut newest = Vec::with_capacity(limit.min(64));
    take(&read_tail(live, WINDOW)?, &mut newest);
    if newest.len() < limit {
        if let Some(previous) = rotated_files(live).last() {
            take(&read_tail(previous, WINDOW)?, &mut newest);
        }
    }
    Ok(newest)
}

/// Read the end of a file: at most `limit` bytes, starting at a line boundary.
fn read_tail(path: &Path, limit: u64) -> std::io::Result<String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        // A device (e.g. /dev/full) has no history to read, and reading it may never end.
        return Ok(String::new());
    }
    let len = metadata.len();
    let start = len.saturating_sub(limit);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        let cut = text.find('\n').map_or(text.len(), |i| i + 1);
        text.drain(..cut);
    }
    Ok(text)
}

/// Recover the chain's last seq and hash, and the intents left without an outcome.
fn recover(settings: &AuditSettings) -> std::io::Result<(u64, String, Vec<Unresolved>)> {
    let live = &settings.path;
    let mut text = read_tail(live, settings.scan_bytes)?;
    // A record torn by a crash mid-write is cut off so the chain stays verifiable.
    if !text.is_empty() && !text.ends_with('\n') {
        let keep = text.rfind('\n').map_or(0, |i| i + 1);
        let torn = text.len() - keep;
        let file = OpenOptions::new().write(true).open(live)?;
        let len = file.metadata()?.len();
        file.set_len(len - torn as u64)?;
        tracing::warn!(file = %live.display(), bytes = torn, "cut off a torn audit record at the end of the log");
        text.truncate(keep);
    }
    let mut lines: Vec<Line> = text.lines().filter_map(|l| check_line(l).ok()).collect();
    if lines.is_empty() {
        // The live file may have just been rotated: continue the chain from the newest rotated file.
        if let Some(last) = rotated_files(live).last() {
            let tail = read_tail(last, 1024 * 1024)?;
            lines = tail.lines().filter_map(|l| check_line(l).ok()).collect();
        }
    }
    let (seq, prev) = lines
        .last()
        .map_or((0, GENESIS.to_owned()), |l| (l.seq, l.hash.clone()));
    Ok((seq, prev, unresolved(&lines)))
}

/// Intents with no later record that settles them: an outcome telling the upstream's answer (or
/// that the request was never forwarded), or a reconciliation. Records are paired by the gateway's
/// `audit_id`; lines of older versions without one pair by request id.
///
/// An outcome of a forwarded request whose answer is unknown (the client disconnected, the upstream
/// timed out or broke the exchange) does not settle it: the delete may have happened.
pub fn unresolved(lines: &[Line]) -> Vec<Unresolved> {
    let mut open: Vec<Unresolved> = Vec::new();
    let key_of = |event: &Event| {
        event
            .audit_id
            .clone()
            .unwrap_or_else(|| event.request_id.clone())
    };
    for line in lines {
        let event = &line.event;
        match event.phase {
            Some(Phase::Intent) => open.push(Unresolved {
                request_id: event.request_id.clone(),
                audit_id: event.audit_id.clone(),
                operation: event.operation.clone(),
                path: event.path.clone(),
                params: event.params.clone(),
                client: event.client.clone(),
                seq: line.seq,
                why: "no outcome was recorded".into(),
            }),
            Some(Phase::Outcome) => {
                let key = key_of(event);
                let settled = event.forwarded == Some(false)
                    || event.upstream_status.is_some()
                    || event.forwarded.is_none();
                if settled {
                    open.retain(|u| u.key() != key);
                } else if let Some(open) = open.iter_mut().find(|u| u.key() == key) {
                    open.why = format!(
                        "it was forwarded, but its outcome is unknown ({})",
                        event.error.as_deref().unwrap_or("no answer")
                    );
                }
            }
            Some(Phase::Denied) => {
                let key = key_of(event);
                open.retain(|u| u.key() != key)
            }
            Some(Phase::Reconciled) => {
                let resolves = event.resolves.clone().unwrap_or_else(|| key_of(event));
                open.retain(|u| u.key() != resolves)
            }
            Some(Phase::DeniedSummary | Phase::Approval | Phase::Admin | Phase::Deferred)
            | None => {}
        }
    }
    open
}

#[cfg(test)]
mod tests;
