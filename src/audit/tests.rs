use super::record::{Event, Phase};
use super::verify::{chain_files, verify};
use super::*;
use crate::metrics::Metrics;

/// Open a log with a fresh metrics registry.
fn open(settings: AuditSettings) -> std::io::Result<(AuditLog, Vec<Unresolved>)> {
    AuditLog::open(settings, Metrics::new().audit.clone())
}

fn event(request_id: &str, phase: Phase) -> Event {
    Event {
        time: rfc3339(SystemTime::now()),
        request_id: request_id.into(),
        phase: Some(phase),
        client: Some("alice".into()),
        method: "DELETE".into(),
        path: "/v1.3/assets/a1".into(),
        operation: "assets.delete".into(),
        params: [("asset_id".to_owned(), "a1".to_owned())].into(),
        ..Event::default()
    }
}

fn settings(dir: &Path) -> AuditSettings {
    AuditSettings::new(dir.join("audit.jsonl"))
}

#[tokio::test]
async fn records_chain_across_restarts_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (log, unresolved) = open(settings(dir.path())).unwrap();
    assert!(unresolved.is_empty());
    assert_eq!(
        log.write_durable(event("r1", Phase::Intent)).await.unwrap(),
        1
    );
    assert_eq!(
        log.write_durable(event("r1", Phase::Outcome))
            .await
            .unwrap(),
        2
    );
    drop(log);
    let (log, _) = open(settings(dir.path())).unwrap();
    assert_eq!(
        log.write_durable(event("r2", Phase::Denied)).await.unwrap(),
        3
    );
    let verified = verify(&[dir.path().join("audit.jsonl")], false).unwrap();
    assert_eq!(verified.records, 3);
    assert_eq!(verified.seq_range, Some((1, 3)));
    assert!(verified.starts_at_genesis);
}

#[tokio::test]
async fn concurrent_durable_writes_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(settings(dir.path())).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.write_durable(event(&format!("r{i}"), Phase::Intent))
                    .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    let metrics = log.metrics();
    assert_eq!(metrics.records.get(), 64);
    // Group commit: 64 writers waiting at once share fsyncs.
    let fsyncs = metrics.fsync.get_sample_count();
    assert!((1..64).contains(&fsyncs), "{fsyncs} fsyncs for 64 records");
    verify(&[dir.path().join("audit.jsonl")], false).unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

#[tokio::test]
async fn every_edit_removal_insertion_and_reordering_is_detected_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = open(settings(dir.path())).unwrap();
    for i in 0..5 {
        log.write_durable(event(&format!("r{i}"), Phase::Intent))
            .await
            .unwrap();
    }
    drop(log);
    let original = lines(&path);
    let mut tampered = Vec::new();
    let mut edited = original.clone();
    edited[2] = edited[2].replace("alice", "bobby");
    tampered.push(("edit", edited, 3));
    let mut removed = original.clone();
    removed.remove(2);
    tampered.push(("remove", removed, 3));
    let mut first_removed = original.clone();
    first_removed.remove(0);
    tampered.push(("remove first", first_removed, 1));
    let mut swapped = original.clone();
    swapped.swap(1, 2);
    tampered.push(("reorder", swapped, 2));
    let mut inserted = original.clone();
    inserted.insert(3, original[1].clone());
    tampered.push(("insert", inserted, 4));
    for (what, content, line) in tampered {
        write_lines(&path, &content);
        let error = verify(std::slice::from_ref(&path), false).unwrap_err();
        assert_eq!(error.line, line, "{what}: {error}");
    }
    write_lines(&path, &original);
    assert!(verify(&[path], false).is_ok());
}

#[tokio::test]
async fn rotation_keeps_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.max_file_size = 600;
    let (log, _) = open(s.clone()).unwrap();
    for i in 0..12 {
        log.write_durable(event(&format!("r{i}"), Phase::Intent))
            .await
            .unwrap();
        // No pause: several rotations fall in one millisecond and must not overwrite each other.
    }
    drop(log);
    let files = chain_files(&s.path);
    assert!(files.len() > 2, "{files:?}");
    let verified = verify(&files, false).unwrap();
    assert_eq!(verified.seq_range, Some((1, 12)));
    // Reopening after a rotation continues the chain.
    let (log, _) = open(s.clone()).unwrap();
    assert_eq!(
        log.write_durable(event("r12", Phase::Intent))
            .await
            .unwrap(),
        13
    );
    drop(log);
    assert_eq!(verify(&chain_files(&s.path), false).unwrap().records, 13);
    // A missing middle file breaks the chain.
    std::fs::remove_file(&files[1]).unwrap();
    assert!(verify(&chain_files(&s.path), false).is_err());
}

#[tokio::test]
async fn intents_without_outcome_are_reported_at_start_up_and_torn_lines_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (log, _) = open(settings(dir.path())).unwrap();
    log.write_durable(event("done", Phase::Intent))
        .await
        .unwrap();
    log.write_durable(event("done", Phase::Outcome))
        .await
        .unwrap();
    log.write_durable(event("crashed", Phase::Intent))
        .await
        .unwrap();
    drop(log);
    // A crash mid-write leaves half a record.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":4,\"time\":\"2026");
    std::fs::write(&path, text).unwrap();

    let (log, unresolved) = open(settings(dir.path())).unwrap();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(unresolved[0].request_id, "crashed");
    assert_eq!(unresolved[0].params["asset_id"], "a1");
    assert_eq!(log.metrics().unresolved_intents.get(), 1);
    let mut resolution = event("reconcile-1", Phase::Reconciled);
    resolution.resolves = Some("crashed".into());
    assert_eq!(log.write_durable(resolution).await.unwrap(), 4);
    drop(log);
    assert!(verify(&[path], false).is_ok());
    let (_, unresolved) = open(settings(dir.path())).unwrap();
    assert!(unresolved.is_empty());
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_unwritable_device_fails_durable_writes_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let (log, _) = open(AuditSettings::new(path)).unwrap();
    assert!(log.readiness().is_ok());
    let error = log
        .write_durable(event("r1", Phase::Intent))
        .await
        .unwrap_err();
    assert!(matches!(error, AuditError::Io(_)), "{error}");
    assert!(log.readiness().unwrap_err().contains("cannot write"));
    assert_eq!(log.metrics().write_errors.get(), 1);
}

fn line(seq: u64, event: Event) -> Line {
    Line {
        seq,
        event,
        prev_hash: String::new(),
        hash: String::new(),
    }
}

#[test]
fn intents_are_settled_by_their_audit_id_and_only_by_an_outcome_that_tells_what_happened() {
    let with_id = |request_id: &str, id: &str, phase: Phase| Event {
        audit_id: Some(id.into()),
        ..event(request_id, phase)
    };
    let answered = Event {
        forwarded: Some(true),
        upstream_status: Some(200),
        ..with_id("same", "a1", Phase::Outcome)
    };
    let never_sent = Event {
        forwarded: Some(false),
        error: Some("audit_unavailable".into()),
        ..with_id("same", "a2", Phase::Outcome)
    };
    let unknown = Event {
        forwarded: Some(true),
        error: Some("client_disconnected".into()),
        ..with_id("same", "a3", Phase::Outcome)
    };
    let lines = vec![
        line(1, with_id("same", "a1", Phase::Intent)),
        line(2, with_id("same", "a2", Phase::Intent)),
        line(3, with_id("same", "a3", Phase::Intent)),
        line(4, with_id("same", "a4", Phase::Intent)),
        // A denial with the same (client-chosen) request id settles nothing.
        line(5, with_id("same", "d1", Phase::Denied)),
        line(6, answered),
        line(7, never_sent),
        line(8, unknown),
    ];
    let open = unresolved(&lines);
    let ids: Vec<&str> = open.iter().map(Unresolved::key).collect();
    assert_eq!(ids, ["a3", "a4"]);
    assert!(
        open[0].why.contains("client_disconnected"),
        "{}",
        open[0].why
    );
    assert_eq!(open[1].why, "no outcome was recorded");

    // A reconciliation settles by the id it names.
    let mut reconciled = with_id("same", "a3", Phase::Reconciled);
    reconciled.resolves = Some("a3".into());
    let mut lines = lines;
    lines.push(line(9, reconciled));
    let ids: Vec<String> = unresolved(&lines)
        .iter()
        .map(|u| u.key().to_owned())
        .collect();
    assert_eq!(ids, ["a4"]);
}

#[test]
fn records_of_older_versions_still_pair_by_request_id() {
    let lines = vec![
        line(1, event("r1", Phase::Intent)),
        line(2, event("r2", Phase::Intent)),
        line(3, event("r1", Phase::Outcome)),
    ];
    let open = unresolved(&lines);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].request_id, "r2");
}

#[test]
fn denials_beyond_the_limit_are_coalesced_into_one_summary_per_client_and_second() {
    let windows = DenialWindows::new(3);
    let denial = |client: &str, i: usize, rule: &str| Event {
        client: Some(client.into()),
        rule: Some(rule.into()),
        ..event(&format!("{client}-{i}"), Phase::Denied)
    };
    let mut written = 0;
    for i in 0..10 {
        let (ended, this) = windows.admit(
            denial("bob", i, if i % 2 == 0 { "r-even" } else { "r-odd" }),
            100,
        );
        assert!(ended.is_none());
        written += usize::from(this.is_some());
    }
    // Another client has its own allowance.
    assert!(windows.admit(denial("carol", 0, "r"), 100).1.is_some());
    assert_eq!(written, 3);
    // The next second: bob's old window is summarised as his next denial arrives.
    let (ended, this) = windows.admit(denial("bob", 10, "r-even"), 101);
    assert!(this.is_some(), "a new second, a new allowance");
    let summary = ended.expect("the previous window's summary");
    assert_eq!(summary.phase, Some(Phase::DeniedSummary));
    assert_eq!(summary.count, Some(7));
    assert_eq!(summary.first_request_id.as_deref(), Some("bob-3"));
    assert_eq!(summary.last_request_id.as_deref(), Some("bob-9"));
    assert_eq!(
        summary.rules,
        Some(vec!["r-even".to_owned(), "r-odd".to_owned()])
    );
    // Quiet clients' windows are summarised by the writer's tick; carol coalesced nothing.
    for i in 11..20 {
        windows.admit(denial("bob", i, "r-even"), 101);
    }
    let summaries = windows.expired(102);
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0].count,
        Some(7),
        "10 in second 101, 3 of them written"
    );
    assert!(windows.expired(103).is_empty());
}

#[tokio::test]
async fn refusals_are_not_written_below_the_reserve_but_intents_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.reserve = u64::MAX;
    let (log, _) = open(settings).unwrap();
    log.denied(event("d1", Phase::Denied));
    assert_eq!(
        log.write_durable(event("i1", Phase::Intent)).await.unwrap(),
        1
    );
    log.flush().await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"phase\":\"intent\""));
    assert_eq!(log.metrics().suppressed.get(), 1);
    assert_eq!(log.metrics().below_reserve.get(), 1);
}

#[tokio::test]
async fn an_unwritable_file_answers_a_waiting_intent_at_once_and_keeps_outcomes_for_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let mut settings = AuditSettings::new(path);
    settings.reserve = 0;
    let (log, _) = open(settings).unwrap();
    for i in 0..2_000 {
        log.denied(event(&format!("d{i}"), Phase::Denied));
        log.write(event(&format!("o{i}"), Phase::Outcome));
    }
    let started = std::time::Instant::now();
    let result = log.write_durable(event("i1", Phase::Intent)).await;
    assert!(matches!(result, Err(AuditError::Io(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(log.readiness().is_err());
    assert_eq!(log.metrics().writable.get(), 0);
}

#[tokio::test]
async fn rotation_keeps_at_most_max_rotated_files_and_the_rest_verifies_as_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.max_file_size = 600;
    s.max_rotated_files = Some(2);
    let (log, _) = open(s.clone()).unwrap();
    for i in 0..12 {
        log.write_durable(event(&format!("r{i}"), Phase::Intent))
            .await
            .unwrap();
    }
    drop(log);
    assert_eq!(rotated_files(&s.path).len(), 2);
    let files = chain_files(&s.path);
    assert!(
        verify(&files, false).is_err(),
        "the oldest records are gone"
    );
    let window = verify(&files, true).unwrap();
    assert_eq!(window.seq_range.map(|(_, last)| last), Some(12));
}
