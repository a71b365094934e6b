//! The schema: applied on first use, or by the user from the shipped SQL with `migrate=false`.

use std::sync::Arc;

use oncely_core::{ClaimOutcome, Error, Key, Oncely, Scope};
use oncely_sqlite::{MIGRATIONS, SqliteOptions, SqliteStore};

fn options(url: &str) -> SqliteOptions {
    url.parse().unwrap()
}

#[test]
fn migrate_false_on_an_empty_file_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite:{}?migrate=false",
        dir.path().join("empty.db").display()
    );
    let err = SqliteStore::open(options(&url)).unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let latest = MIGRATIONS.last().unwrap().0;
    assert!(
        err.to_string()
            .contains(&format!("schema version 0, expected {latest}")),
        "{err}"
    );
}

#[test]
fn the_shipped_sql_applied_by_hand_is_what_the_store_expects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("by-hand.db");
    {
        // What a user running their own migrations does with stores/sqlite/migrations/.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut shipped: Vec<_> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
        shipped.sort();
        assert_eq!(shipped.len(), MIGRATIONS.len(), "one file per migration");
        for (file, (version, applied)) in shipped.iter().zip(MIGRATIONS) {
            let sql = std::fs::read_to_string(file).unwrap();
            assert_eq!(
                &sql, applied,
                "the shipped file is the one the store applies"
            );
            conn.execute_batch(&sql).unwrap();
            conn.pragma_update(None, "user_version", version).unwrap();
        }
    }
    let url = format!("sqlite:{}?migrate=false", path.display());
    let store = SqliteStore::open(options(&url)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let oncely = Oncely::new(Arc::new(store));
        let key = Key::new("k").unwrap();
        let claim = oncely
            .claim(&Scope::default(), &key, None)
            .await
            .unwrap()
            .into_new()
            .unwrap();
        oncely.complete(&claim, b"ok").await.unwrap();
        assert!(matches!(
            oncely.claim(&Scope::default(), &key, None).await.unwrap(),
            ClaimOutcome::Duplicate(_)
        ));
    });
}

#[test]
fn a_schema_newer_than_this_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open(SqliteOptions::new(&path)).unwrap_err();
    assert!(
        err.to_string().contains("schema version 99 is newer"),
        "{err}"
    );
}

#[test]
fn reopening_applies_nothing_twice_and_keeps_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for round in 0..3 {
        let oncely = Oncely::new(Arc::new(
            SqliteStore::open(SqliteOptions::new(&path)).unwrap(),
        ));
        rt.block_on(async {
            let outcome = oncely
                .claim(&Scope::default(), &Key::new("k").unwrap(), None)
                .await
                .unwrap();
            match (round, outcome) {
                (0, ClaimOutcome::New(claim)) => oncely.complete(&claim, b"once").await.unwrap(),
                (_, ClaimOutcome::Duplicate(rec)) => assert_eq!(rec.outcome(), Some(&b"once"[..])),
                (round, other) => panic!("round {round}: {other:?}"),
            }
        });
    }
}

#[test]
fn many_openers_of_one_new_file_all_succeed() {
    // Several processes starting at once on a fresh file contend for the switch to WAL and for
    // the schema; every one of them must open, none may fail with "database is locked".
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("fresh-{round}.db"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(SqliteOptions::new(path)).map(drop)
                })
            })
            .collect();
        for opener in openers {
            opener
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}
