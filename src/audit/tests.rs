use super::record::{Event, Phase};
use super::verify::{chain_files, verify};
use super::*;

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
    let (log, unresolved) = AuditLog::open(settings(dir.path())).unwrap();
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
    let (log, _) = AuditLog::open(settings(dir.path())).unwrap();
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
    let (log, _) = AuditLog::open(settings(dir.path())).unwrap();
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
    let stats = log.stats();
    assert_eq!(stats.records.load(Ordering::Relaxed), 64);
    assert!(stats.batches.load(Ordering::Relaxed) <= 64);
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
    let (log, _) = AuditLog::open(settings(dir.path())).unwrap();
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
    let (log, _) = AuditLog::open(s.clone()).unwrap();
    for i in 0..12 {
        log.write_durable(event(&format!("r{i}"), Phase::Intent))
            .await
            .unwrap();
        // Distinct rotation timestamps.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(log);
    let files = chain_files(&s.path);
    assert!(files.len() > 2, "{files:?}");
    let verified = verify(&files, false).unwrap();
    assert_eq!(verified.seq_range, Some((1, 12)));
    // Reopening after a rotation continues the chain.
    let (log, _) = AuditLog::open(s.clone()).unwrap();
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
    let (log, _) = AuditLog::open(settings(dir.path())).unwrap();
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

    let (log, unresolved) = AuditLog::open(settings(dir.path())).unwrap();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(unresolved[0].request_id, "crashed");
    assert_eq!(unresolved[0].params["asset_id"], "a1");
    assert_eq!(log.stats().unresolved_intents.load(Ordering::Relaxed), 1);
    let mut resolution = event("reconcile-1", Phase::Reconciled);
    resolution.resolves = Some("crashed".into());
    assert_eq!(log.write_durable(resolution).await.unwrap(), 4);
    drop(log);
    assert!(verify(&[path], false).is_ok());
    let (_, unresolved) = AuditLog::open(settings(dir.path())).unwrap();
    assert!(unresolved.is_empty());
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_unwritable_device_fails_durable_writes_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let (log, _) = AuditLog::open(AuditSettings::new(path)).unwrap();
    assert!(log.readiness().is_ok());
    let error = log
        .write_durable(event("r1", Phase::Intent))
        .await
        .unwrap_err();
    assert!(matches!(error, AuditError::Io(_)), "{error}");
    assert!(log.readiness().unwrap_err().contains("cannot write"));
    assert_eq!(log.stats().write_errors.load(Ordering::Relaxed), 1);
}
