//! The audit log: hash-chained JSON Lines, written by one group-commit writer, fsync'd before a
//! destructive request is forwarded (contract: architecture.md §5).
//!
//! One writer thread owns the file. Requests hand it events through a bounded queue; the writer
//! takes everything queued, appends it with one write and one `fdatasync`, then answers every waiter,
//! so concurrent deletes share flushes instead of queueing behind each other's. If an event cannot
//! be made durable (write error, full disk, queue full past `enqueue_timeout`), the waiter gets an
//! error and the request is refused with 503 `audit_unavailable`.

pub mod layer;
pub mod record;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use self::record::{chain, check_line, rfc3339, Event, Line, Phase, GENESIS};

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
    /// How long a request waits for a place in a full queue before it is refused.
    pub enqueue_timeout: Duration,
    /// How much of the live file's end is scanned for unresolved intents at start-up.
    pub scan_bytes: u64,
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
        }
    }
}

/// Why an event could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The queue stayed full for `enqueue_timeout`.
    #[error("the audit queue is full")]
    QueueFull,
    /// The writer is gone.
    #[error("the audit writer has stopped")]
    WriterStopped,
    /// Writing or syncing failed.
    #[error("the audit log cannot be written: {0}")]
    Io(String),
}

/// Counters and a latency record for the metrics layer.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records written.
    pub records: AtomicU64,
    /// Failed writes (each failed batch counts once per record in it).
    pub write_errors: AtomicU64,
    /// Batches written (each one write + one fsync).
    pub batches: AtomicU64,
    /// Unresolved intents found at start-up.
    pub unresolved_intents: AtomicU64,
    /// Recent fsync durations in microseconds, drained by the metrics layer.
    pub fsync_micros: Mutex<Vec<u64>>,
}

/// An intent left without outcome by an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The intent's request id.
    pub request_id: String,
    /// Its route id.
    pub operation: String,
    /// Its path parameters.
    pub params: std::collections::BTreeMap<String, String>,
    /// Its client.
    pub client: Option<String>,
    /// Its sequence number.
    pub seq: u64,
}

struct Job {
    /// `None` for a flush: answered once everything queued before it is written.
    event: Option<Event>,
    reply: Option<oneshot::Sender<Result<u64, AuditError>>>,
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    settings: Arc<AuditSettings>,
    health: Arc<Mutex<Option<String>>>,
    stats: Arc<AuditStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("request_id", &self.event.as_ref().map(|e| &e.request_id))
            .finish()
    }
}

struct Writer {
    settings: Arc<AuditSettings>,
    file: File,
    len: u64,
    seq: u64,
    prev_hash: String,
    health: Arc<Mutex<Option<String>>>,
    stats: Arc<AuditStats>,
}

impl AuditLog {
    /// Open (or create) the log, recover the chain, find unresolved intents and start the writer.
    pub fn open(settings: AuditSettings) -> std::io::Result<(AuditLog, Vec<Unresolved>)> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let (seq, prev_hash, unresolved) = recover(&settings)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let settings = Arc::new(settings);
        let health = Arc::new(Mutex::new(None));
        let stats = Arc::new(AuditStats::default());
        stats
            .unresolved_intents
            .store(unresolved.len() as u64, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let writer = Writer {
            settings: settings.clone(),
            file,
            len,
            seq,
            prev_hash,
            health: health.clone(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("tl-gateway-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            AuditLog {
                tx,
                settings,
                health,
                stats,
            },
            unresolved,
        ))
    }

    /// Append `event` and wait until it is durable; returns its sequence number.
    pub async fn write_durable(&self, event: Event) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            event: Some(event),
            reply: Some(reply),
        };
        match self
            .tx
            .send_timeout(job, self.settings.enqueue_timeout)
            .await
        {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                return Err(AuditError::QueueFull);
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(AuditError::WriterStopped),
        }
        answer.await.unwrap_or(Err(AuditError::WriterStopped))
    }

    /// Append `event` without waiting for it (outcomes and denials).
    pub fn write(&self, event: Event) {
        let job = Job {
            event: Some(event),
            reply: None,
        };
        if let Err(mpsc::error::TrySendError::Full(job)) = self.tx.try_send(job) {
            // Never drop a record silently: wait for room off the request path.
            let tx = self.tx.clone();
            let timeout = self.settings.enqueue_timeout;
            let stats = self.stats.clone();
            tokio::spawn(async move {
                if tx.send_timeout(job, timeout).await.is_err() {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("audit queue full: a record could not be queued");
                }
            });
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

    /// Counters for the metrics layer.
    pub fn stats(&self) -> Arc<AuditStats> {
        self.stats.clone()
    }

    /// The live file.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        const MAX_BATCH: usize = 1024;
        // Records nobody waits for (outcomes, denials) from a failed batch: retried first next time,
        // so a full disk that recovers loses none of them (bounded, so a dead disk cannot eat memory).
        const MAX_CARRIED: usize = 100_000;
        let mut carried: Vec<Job> = Vec::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut buffer = Vec::with_capacity(256 * 1024);
        while let Some(first) = rx.blocking_recv() {
            batch.append(&mut carried);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            buffer.clear();
            let (mut seq, mut prev) = (self.seq, self.prev_hash.clone());
            let mut seqs = Vec::with_capacity(batch.len());
            for job in &batch {
                let Some(event) = &job.event else {
                    seqs.push(seq);
                    continue;
                };
                seq += 1;
                let (line, hash) = chain(event, seq, &prev);
                buffer.extend_from_slice(&line);
                prev = hash;
                seqs.push(seq);
            }
            let records = batch.iter().filter(|j| j.event.is_some()).count() as u64;
            let result = self.append(&buffer);
            match &result {
                Ok(()) => {
                    self.seq = seq;
                    self.prev_hash = prev;
                    self.len += buffer.len() as u64;
                    self.stats.records.fetch_add(records, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut health) = self.health.lock() {
                        if health.take().is_some() {
                            tracing::info!("audit log is writable again");
                        }
                    }
                }
                Err(error) => {
                    self.stats
                        .write_errors
                        .fetch_add(records, Ordering::Relaxed);
                    tracing::error!(file = %self.settings.path.display(), %error, records, "audit write failed");
                    if let Ok(mut health) = self.health.lock() {
                        *health = Some(format!(
                            "cannot write {}: {error}",
                            self.settings.path.display()
                        ));
                    }
                    // Keep the file a whole number of records.
                    let _ = self.file.set_len(self.len);
                }
            }
            for (job, seq) in batch.drain(..).zip(seqs) {
                match job.reply {
                    Some(reply) => {
                        let _ = reply.send(result.clone().map(|()| seq).map_err(AuditError::Io));
                    }
                    None if result.is_err() && carried.len() < MAX_CARRIED => carried.push(job),
                    None => {}
                }
            }
            if result.is_ok() && self.len >= self.settings.max_file_size {
                if let Err(error) = self.rotate() {
                    tracing::error!(%error, "audit log rotation failed; continuing in the same file");
                }
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.file.write_all(bytes).map_err(|e| e.to_string())?;
        if self.settings.fsync {
            let started = Instant::now();
            self.file.sync_data().map_err(|e| e.to_string())?;
            if let Ok(mut samples) = self.stats.fsync_micros.lock() {
                if samples.len() < 100_000 {
                    samples.push(started.elapsed().as_micros() as u64);
                }
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = rfc3339(SystemTime::now()).replace([':', '-'], "");
        let name = self
            .settings
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rotated = self.settings.path.with_file_name(format!("{name}.{stamp}"));
        std::fs::rename(&self.settings.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.path)?;
        self.len = 0;
        tracing::info!(rotated = %rotated.display(), seq = self.seq, "audit log rotated; the chain continues in a new file");
        Ok(())
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

/// Intents with no later outcome, denial or reconciliation for the same request id.
pub fn unresolved(lines: &[Line]) -> Vec<Unresolved> {
    let mut open: Vec<Unresolved> = Vec::new();
    for line in lines {
        match line.event.phase {
            Some(Phase::Intent) => open.push(Unresolved {
                request_id: line.event.request_id.clone(),
                operation: line.event.operation.clone(),
                params: line.event.params.clone(),
                client: line.event.client.clone(),
                seq: line.seq,
            }),
            Some(Phase::Outcome) | Some(Phase::Denied) => {
                open.retain(|u| u.request_id != line.event.request_id)
            }
            Some(Phase::Reconciled) => {
                let resolves = line
                    .event
                    .resolves
                    .as_deref()
                    .unwrap_or(&line.event.request_id);
                open.retain(|u| u.request_id != resolves)
            }
            None => {}
        }
    }
    open
}

#[cfg(test)]
mod tests;
