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

#[test]
fn records_of_a_version_4_file_are_kept_through_the_scope_ids_migration() {
    use oncely_core::{RecordState, Store, Timestamp};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    {
        // A file as oncely left it before scopes had ids: the schema up to version 4, records of
        // two scopes, a UUID key stored as its 16 bytes, one claim in flight.
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 4) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", version).unwrap();
        }
        conn.execute_batch(&format!(
            "INSERT INTO oncely_records VALUES
                 ('payments', 'order-1', 11, 1, NULL, 1000, 4102444800000, x'6f6e6365'),
                 ('emails', 'order-1', 12, 2, NULL, 1000, 4102444800000, x'74776963'),
                 ('payments', unhex('{}'), 13, 1, NULL, 1000, 5000, x'');
             INSERT INTO oncely_claims VALUES
                 ('emails', 'order-2', 14, 1, NULL, 1000, 4102444800000);",
            uuid.replace('-', "")
        ))
        .unwrap();
    }
    let store = SqliteStore::open(SqliteOptions::new(&path)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let get = |scope: &str, key: &str| {
            let (scope, key) = (Scope::new(scope).unwrap(), Key::new(key).unwrap());
            let store = &store;
            async move { store.get(&scope, &key).await.unwrap() }
        };
        let once = get("payments", "order-1").await.unwrap();
        assert_eq!((once.token, once.outcome()), (11, Some(&b"once"[..])));
        assert_eq!(
            (once.created_at, once.expires_at),
            (
                Timestamp::from_millis(1000),
                Timestamp::from_millis(4_102_444_800_000)
            )
        );
        let twice = get("emails", "order-1").await.unwrap();
        assert_eq!(
            (twice.token, twice.attempt, twice.outcome()),
            (12, 2, Some(&b"twic"[..]))
        );
        let in_flight = get("emails", "order-2").await.unwrap();
        assert_eq!(
            (in_flight.token, &in_flight.state),
            (14, &RecordState::InProgress)
        );
        assert_eq!(get("payments", uuid).await.unwrap().token, 13);
        assert_eq!(get("emails", uuid).await, None);
        assert_eq!(get("other", "order-1").await, None);

        // Claims see them, and a new scope gets an id of its own.
        let oncely = Oncely::new(Arc::new(
            SqliteStore::open(SqliteOptions::new(&path)).unwrap(),
        ));
        let claim = |scope: &str, key: &str| {
            let (scope, key) = (Scope::new(scope).unwrap(), Key::new(key).unwrap());
            let oncely = &oncely;
            async move { oncely.claim(&scope, &key, None).await.unwrap() }
        };
        assert!(matches!(
            claim("payments", "order-1").await,
            ClaimOutcome::Duplicate(_)
        ));
        assert!(matches!(
            claim("emails", "order-2").await,
            ClaimOutcome::InProgress { .. }
        ));
        assert!(matches!(
            claim("refunds", "order-1").await,
            ClaimOutcome::New(_)
        ));

        // The expired one is purged through the new index; the others stay.
        let purged = store
            .purge(Timestamp::from_millis(6_000), 100)
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert_eq!(get("payments", uuid).await, None);
        assert!(get("payments", "order-1").await.is_some());
    });
}
