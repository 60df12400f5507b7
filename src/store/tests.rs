//! The record store's contract, the same for every backend (PostgreSQL runs it in
//! `tests/gateway/store.rs`, against a real server).

use std::time::Duration;

use super::*;

/// Every backend must pass this.
pub async fn contract(store: &RecordStore) {
    let hour = Duration::from_secs(3600);
    assert_eq!(store.get("a").await.unwrap(), None);
    assert!(store.insert("a", "one", hour).await.unwrap());
    assert!(
        !store.insert("a", "two", hour).await.unwrap(),
        "a live document stays"
    );
    assert_eq!(store.get("a").await.unwrap().as_deref(), Some("one"));
    // Compare-and-swap: only from exactly the value held.
    assert!(!store.swap("a", "two", "three", hour).await.unwrap());
    assert!(store.swap("a", "one", "three", hour).await.unwrap());
    assert!(
        !store.swap("a", "one", "four", hour).await.unwrap(),
        "single use"
    );
    assert_eq!(store.get("a").await.unwrap().as_deref(), Some("three"));
    // Remove only what is held.
    assert!(!store.remove("a", "one").await.unwrap());
    assert!(store.remove("a", "three").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);
    // Expiry: an expired document reads as absent and can be created again.
    assert!(store
        .insert("b", "short", Duration::from_millis(30))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.get("b").await.unwrap(), None);
    assert!(!store.swap("b", "short", "x", hour).await.unwrap());
    assert!(store.insert("b", "again", hour).await.unwrap());
    let many = store
        .get_many(&["b".into(), "missing".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(many, vec![Some("again".into()), None, Some("again".into())]);
    // Indexes: newest first, paged with a (score, member) cursor, ties by member.
    for (member, score) in [("m1", 10), ("m2", 20), ("m3", 20), ("m4", 30), ("m5", 5)] {
        store.index_add("idx", member, score).await.unwrap();
    }
    let first = store.index_page("idx", None, 2).await.unwrap();
    assert_eq!(first, vec![("m4".into(), 30), ("m3".into(), 20)]);
    let second = store.index_page("idx", Some((20, "m3")), 2).await.unwrap();
    assert_eq!(second, vec![("m2".into(), 20), ("m1".into(), 10)]);
    assert_eq!(
        store.index_newest("idx", 10).await.unwrap(),
        vec!["m4", "m3", "m2", "m1", "m5"]
    );
    // What a bounded index forgets: after the newest `keep`, newest first.
    assert_eq!(
        store.index_beyond("idx", 3, 10).await.unwrap(),
        vec!["m1", "m5"]
    );
    assert_eq!(store.index_beyond("idx", 1, 1).await.unwrap(), vec!["m3"]);
    assert!(store.index_beyond("idx", 9, 10).await.unwrap().is_empty());
    store
        .index_remove("idx", &["m3".into(), "m1".into()])
        .await
        .unwrap();
    store.index_trim("idx", 6).await.unwrap();
    assert_eq!(
        store.index_newest("idx", 10).await.unwrap(),
        vec!["m4", "m2"]
    );
    assert!(store.index_newest("other", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&RecordStore::memory()).await;
}

#[tokio::test]
async fn a_sqlite_store_keeps_the_contract_and_its_records_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        backend: StoreBackend::Sqlite {
            path: dir.path().join("store.db"),
        },
        ..StoreSettings::default()
    };
    let up = prometheus::IntGauge::new("up", "up").unwrap();
    let store = RecordStore::open(&settings, up.clone()).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    assert_eq!(up.get(), 1);
    contract(&store).await;
    assert!(store
        .insert("kept", "across restarts", Duration::from_secs(60))
        .await
        .unwrap());
    drop(store);
    // Opened again (migrations already applied): the record is there.
    let again = RecordStore::open(&settings, up).await.unwrap();
    assert_eq!(
        again.get("kept").await.unwrap().as_deref(),
        Some("across restarts")
    );
}
