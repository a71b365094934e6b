//! The disk fills under the SQLite store: a claim or complete that cannot be written fails with
//! a clear error, nothing acknowledged is lost, the file stays sound, and the store goes on, not
//! reopened, once there is space again. On a small tmpfs of the test's own
//! ([`SmallDisk`](oncely_conformance::faults::SmallDisk)).

use std::sync::Arc;

use oncely_conformance::faults::SmallDisk;
use oncely_core::{ClaimOutcome, Error, Key, Oncely, Scope};
use oncely_sqlite::{SqliteOptions, SqliteStore};

/// Room for the write-ahead log to grow to its checkpoint (1,000 pages, about 4 MiB) once the
/// space is back.
const DISK: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let disk = tokio::task::spawn_blocking(|| SmallDisk::mount(DISK))
        .await
        .unwrap();
    let db = disk.path().join("oncely.db");
    let oncely = Oncely::new(Arc::new(
        SqliteStore::open(SqliteOptions::new(&db)).unwrap(),
    ));
    let scope = Scope::new("orders").unwrap();
    // All but 1 MiB taken, so the store meets the limit after a few dozen records.
    let filler = disk.fill("filler", (DISK - (1 << 20)) as usize);
    let outcome = vec![b'x'; 2_000];

    let mut acknowledged = Vec::new();
    let failure = loop {
        let key = Key::new(format!("o-{}", acknowledged.len())).unwrap();
        let claim = match oncely.claim(&scope, &key, None).await {
            Ok(ClaimOutcome::New(claim)) => claim,
            Ok(other) => panic!("{key}: a fresh key answered {other:?}"),
            Err(error) => break error,
        };
        match oncely.complete(&claim, &outcome).await {
            Ok(()) => acknowledged.push(key),
            Err(error) => break error,
        }
        assert!(acknowledged.len() < 10_000, "the disk never filled");
    };
    eprintln!("full after {} records: {failure}", acknowledged.len());
    assert!(
        acknowledged.len() > 10,
        "only {} records fit",
        acknowledged.len()
    );
    assert!(
        matches!(failure, Error::Unavailable { .. }),
        "an outage of the store, not a failed claim: {failure:?}"
    );
    assert!(
        failure.to_string().contains("full"),
        "the error says the disk is full: {failure}"
    );

    // Still full: what was acknowledged reads back.
    for key in &acknowledged {
        match oncely.claim(&scope, key, None).await {
            Ok(ClaimOutcome::Duplicate(record)) => assert_eq!(record.outcome(), Some(&outcome[..])),
            other => panic!("{key} was acknowledged, and is now {other:?}"),
        }
    }

    // Space again: the same store goes on.
    std::fs::remove_file(filler).unwrap();
    let mut after = Vec::new();
    for n in 0..100 {
        let key = Key::new(format!("after-{n}")).unwrap();
        let Ok(ClaimOutcome::New(claim)) = oncely.claim(&scope, &key, None).await else {
            panic!("{key}: no claim once there is space again");
        };
        oncely.complete(&claim, &outcome).await.unwrap();
        after.push(key);
    }
    drop(oncely);

    // The file is sound, and every acknowledged record is in it, before and after the full disk.
    let check = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(check);
    let oncely = Oncely::new(Arc::new(
        SqliteStore::open(SqliteOptions::new(&db)).unwrap(),
    ));
    for key in acknowledged.iter().chain(&after) {
        assert!(
            matches!(
                oncely.claim(&scope, key, None).await,
                Ok(ClaimOutcome::Duplicate(_))
            ),
            "{key} is lost after reopening"
        );
    }
}
