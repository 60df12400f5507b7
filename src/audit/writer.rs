//! The audit writer: one thread owns the file; it takes everything queued, writes intents,
//! outcomes and reconciliations first, refusals after (bounded, and not below `audit.reserve`),
//! with one write and one `fdatasync` per batch, rotating the file when it is full.

use super::*;

pub(super) struct Writer {
    pub(super) settings: Arc<AuditSettings>,
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) seq: u64,
    pub(super) prev_hash: String,
    pub(super) health: Arc<Mutex<Option<String>>>,
    pub(super) metrics: AuditMetrics,
    pub(super) denials: Arc<DenialWindows>,
    /// Whether the volume was below `reserve` at the last check.
    pub(super) below_reserve: bool,
}

/// What the writer holds between batches.
#[derive(Default)]
struct Pending {
    /// Intents, outcomes, reconciliations, flushes: first in every batch, never dropped lightly.
    critical: VecDeque<Job>,
    /// Refusals: after the critical ones, dropped when the volume is low or a batch fails.
    refusals: VecDeque<Job>,
    /// After a failed batch, outcomes wait until this instant before the next try (unless a
    /// request is waiting for an intent, which is tried at once).
    retry_at: Option<tokio::time::Instant>,
    retry_delay: Duration,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.critical.is_empty() && self.refusals.is_empty()
    }

    fn has_waiter(&self) -> bool {
        self.critical.iter().any(|j| j.reply.is_some())
    }

    fn due(&self, now: tokio::time::Instant) -> bool {
        !self.is_empty() && (self.has_waiter() || self.retry_at.is_none_or(|at| now >= at))
    }
}

impl Writer {
    const MAX_BATCH: usize = 1024;
    /// Outcomes kept in memory while the disk refuses writes (beyond: dropped, counted, logged).
    const MAX_CARRIED: usize = 100_000;
    /// Refusals waiting for the writer, at most.
    const MAX_REFUSALS: usize = 16_384;

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut pending = Pending::default();
        // Summaries of windows that ended are written within a quarter second of the next tick.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            if !pending.due(tokio::time::Instant::now()) {
                if !open && pending.is_empty() {
                    return;
                }
                let retry = pending.retry_at;
                tokio::select! {
                    job = rx.recv(), if open => match job {
                        Some(job) => self.accept(&mut pending, job),
                        None => open = false,
                    },
                    _ = tick.tick() => {
                        for summary in self.denials.expired(unix_second()) {
                            self.accept(&mut pending, Job { event: Some(summary), reply: None });
                        }
                        if !open && pending.retry_at.is_some() {
                            // Shutting down with a disk that refuses writes: give up the rest.
                            return;
                        }
                    }
                    () = sleep_until(retry), if retry.is_some() => {}
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.accept(&mut pending, job);
                if pending.critical.len() >= Self::MAX_BATCH {
                    break;
                }
            }
            if pending.due(tokio::time::Instant::now()) {
                self.write_batch(&mut pending);
            }
        }
    }

    fn accept(&self, pending: &mut Pending, job: Job) {
        if job.is_refusal() {
            if pending.refusals.len() >= Self::MAX_REFUSALS {
                self.metrics.dropped.inc();
            } else {
                pending.refusals.push_back(job);
            }
        } else {
            pending.critical.push_back(job);
        }
    }

    /// Whether the volume has room for refusals; logs when that changes.
    fn refusals_allowed(&mut self) -> bool {
        let Some(free) = free_bytes(&self.settings.path) else {
            return true;
        };
        self.metrics
            .free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
        let below = free < self.settings.reserve;
        self.metrics.below_reserve.set(i64::from(below));
        if std::mem::replace(&mut self.below_reserve, below) != below {
            if below {
                tracing::warn!(file = %self.settings.path.display(), free, reserve = self.settings.reserve, "audit volume below audit.reserve: refusals are no longer recorded, intents and outcomes still are");
            } else {
                tracing::info!(file = %self.settings.path.display(), free, "audit volume above audit.reserve again: refusals are recorded again");
            }
        }
        !below
    }

    fn write_batch(&mut self, pending: &mut Pending) {
        let mut batch: Vec<Job> = Vec::with_capacity(Self::MAX_BATCH);
        // Requests waiting for their intent go first, wherever they are queued: outcomes carried
        // from failed batches must never keep an intent out of the next try.
        let mut rest = VecDeque::with_capacity(pending.critical.len());
        for job in pending.critical.drain(..) {
            if job.reply.is_some() && batch.len() < Self::MAX_BATCH {
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        pending.critical = rest;
        // While backing off after a failure, only the waiters are tried: a small write may fit
        // where the carried backlog does not.
        let backing_off = pending
            .retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at);
        if backing_off {
            self.write_jobs(pending, batch);
            return;
        }
        while batch.len() < Self::MAX_BATCH {
            match pending.critical.pop_front() {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        if !pending.refusals.is_empty() {
            if self.refusals_allowed() {
                while batch.len() < Self::MAX_BATCH {
                    match pending.refusals.pop_front() {
                        Some(job) => batch.push(job),
                        None => break,
                    }
                }
            } else {
                let suppressed = pending.refusals.len() as u64;
                pending.refusals.clear();
                self.metrics.suppressed.inc_by(suppressed);
            }
        }
        self.write_jobs(pending, batch);
    }

    /// Chain, append and sync `batch`, then answer its waiters; a failure keeps its outcomes.
    fn write_jobs(&mut self, pending: &mut Pending, batch: Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        let mut buffer = Vec::with_capacity(256 * batch.len());
        let (mut seq, mut prev) = (self.seq, self.prev_hash.clone());
        let mut outcome: Vec<Result<u64, AuditError>> = Vec::with_capacity(batch.len());
        for job in &batch {
            let Some(event) = &job.event else {
                outcome.push(Ok(seq));
                continue;
            };
            match chain(event, seq + 1, &prev) {
                Ok((line, hash)) => {
                    seq += 1;
                    buffer.extend_from_slice(&line);
                    prev = hash;
                    outcome.push(Ok(seq));
                }
                // Fail closed for this record alone: never an empty or partial line.
                Err(error) => {
                    tracing::error!(%error, "audit record refused");
                    outcome.push(Err(AuditError::Io(error)));
                }
            }
        }
        let records = seq - self.seq;
        let result = if buffer.is_empty() {
            Ok(())
        } else {
            self.append(&buffer)
        };
        match &result {
            Ok(()) => {
                self.seq = seq;
                self.prev_hash = prev;
                self.len += buffer.len() as u64;
                self.metrics.records.inc_by(records);
                pending.retry_at = None;
                pending.retry_delay = Duration::ZERO;
                self.metrics.writable.set(1);
                if let Ok(mut health) = self.health.lock() {
                    if health.take().is_some() {
                        tracing::info!("audit log is writable again");
                    }
                }
            }
            Err(error) => {
                self.metrics.write_errors.inc_by(records.max(1));
                tracing::error!(file = %self.settings.path.display(), %error, records, "audit write failed");
                self.metrics.writable.set(0);
                if let Ok(mut health) = self.health.lock() {
                    *health = Some(format!(
                        "cannot write {}: {error}",
                        self.settings.path.display()
                    ));
                }
                // Keep the file a whole number of records.
                let _ = self.file.set_len(self.len);
                pending.retry_delay = (pending.retry_delay * 2)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                pending.retry_at = Some(tokio::time::Instant::now() + pending.retry_delay);
            }
        }
        // Rotate before answering, so a writer that was answered sees the files as they stay.
        if result.is_ok() && self.len >= self.settings.max_file_size {
            if let Err(error) = self.rotate() {
                tracing::error!(%error, "audit log rotation failed; continuing in the same file");
            }
        }
        let mut carried = Vec::new();
        for (job, written) in batch.into_iter().zip(outcome) {
            let answer = match (&result, written) {
                (Ok(()), written) => written,
                (Err(error), _) => Err(AuditError::Io(error.clone())),
            };
            match job.reply {
                Some(reply) => {
                    let _ = reply.send(answer);
                }
                None if answer.is_ok() => {}
                None if job.is_refusal() => self.metrics.dropped.inc(),
                // An outcome whose batch failed: written first once the file accepts writes.
                None => carried.push(job),
            }
        }
        for job in carried.into_iter().rev() {
            pending.critical.push_front(job);
        }
        if pending.critical.len() > Self::MAX_CARRIED {
            let excess = pending.critical.len() - Self::MAX_CARRIED;
            let kept = pending.critical.split_off(excess);
            let lost = std::mem::replace(&mut pending.critical, kept);
            for job in lost {
                match job.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(AuditError::QueueFull));
                    }
                    None => self.metrics.dropped.inc(),
                }
            }
            tracing::error!(
                lost = excess,
                "the audit log has refused writes for so long that outcome records were given up"
            );
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.file.write_all(bytes).map_err(|e| e.to_string())?;
        if self.settings.fsync {
            let started = Instant::now();
            self.file.sync_data().map_err(|e| e.to_string())?;
            self.metrics.fsync.observe(started.elapsed().as_secs_f64());
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
        // Two rotations within one millisecond must not overwrite a rotated file: number the
        // second (the suffix still sorts after the first).
        let mut rotated = self.settings.path.with_file_name(format!("{name}.{stamp}"));
        let mut n = 0;
        while rotated.exists() {
            n += 1;
            rotated = self
                .settings
                .path
                .with_file_name(format!("{name}.{stamp}.{n:03}"));
        }
        std::fs::rename(&self.settings.path, &rotated)?;
        self.file = open_live(&self.settings)?;
        self.len = 0;
        tracing::info!(rotated = %rotated.display(), seq = self.seq, "audit log rotated; the chain continues in a new file");
        if let Some(keep) = self.settings.max_rotated_files {
            let rotated = rotated_files(&self.settings.path);
            let excess = rotated.len().saturating_sub(keep);
            for old in &rotated[..excess] {
                match std::fs::remove_file(old) {
                    Ok(()) => {
                        tracing::info!(removed = %old.display(), "oldest rotated audit file removed (audit.max_rotated_files)")
                    }
                    Err(error) => {
                        tracing::warn!(file = %old.display(), %error, "could not remove an old rotated audit file")
                    }
                }
            }
        }
        Ok(())
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
