//! The partitioned layout (`oncely_partitions=...`): what the shared suite cannot see. Which
//! partitions purge drops, that a key stays unique across partitions, and that a schema opened
//! in the other layout is a clear error.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    ClaimOutcome, ClaimRequest, Clock, Error, Key, ManualClock, Oncely, Scope, Store, Timestamp,
};
use oncely_postgres::PostgresStore;
use oncely_postgres::partitions::MIGRATIONS;
use sqlx::PgPool;

const HOUR: Duration = Duration::from_secs(3600);

/// A URL in a fresh, empty schema; `name` says which test's it is.
async fn fresh_schema(name: &str) -> String {
    oncely_conformance::servers::postgres_url(&format!("oncely_part_{name}")).await
}

/// An hourly store in a fresh schema, its partitions prepared around `ManualClock`'s start
/// (2026-01-01T00:00Z) and `ahead` hours after it; a pool on the same schema.
async fn hourly(name: &str, ahead: u32) -> (Arc<PostgresStore>, PgPool, ManualClock) {
    let url = fresh_schema(name).await;
    let store = PostgresStore::connect(&format!(
        "{url}&oncely_partitions=hourly&oncely_partitions_ahead={ahead}"
    ))
    .await
    .unwrap();
    let clock = ManualClock::default();
    store.create_partitions(clock.now()).await.unwrap();
    (Arc::new(store), PgPool::connect(&url).await.unwrap(), clock)
}

/// The time partitions of `oncely_records` (not DEFAULT), by name.
async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'oncely_records'::regclass AND c.relname <> 'oncely_records_default' \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The partition (table) holding `key`'s rows, one entry per row.
async fn home(pool: &PgPool, key: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM oncely_records WHERE key = $1")
        .bind(key.as_bytes())
        .fetch_all(pool)
        .await
        .unwrap()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

fn expect_new(outcome: ClaimOutcome) -> oncely_core::Claim {
    match outcome {
        ClaimOutcome::New(claim) => claim,
        other => panic!("expected New, got {other:?}"),
    }
}

#[tokio::test]
async fn purge_drops_whole_expired_partitions_and_never_one_holding_a_live_record() {
    let (store, pool, clock) = hourly("drops", 4).await;
    let s = Scope::default();
    let short = Oncely::new(store.clone())
        .with_clock(clock.clone())
        .with_retention(Duration::from_secs(20 * 60));
    let long = short.clone().with_retention(3 * HOUR);
    // Ten records expire at 00:20, in the 00:00 partition.
    for i in 0..10 {
        let c = expect_new(
            short
                .claim(&s, &key(&format!("old-{i}")), None)
                .await
                .unwrap(),
        );
        short.complete(&c, b"").await.unwrap();
    }
    // Claimed at 00:00 (its lease ends in the 00:00 partition), completed with a longer
    // retention: the row moves to the 03:00 partition.
    let moved = expect_new(long.claim(&s, &key("moved"), None).await.unwrap());
    assert_eq!(home(&pool, "moved").await, ["oncely_records_20260101_00"]);
    long.complete(&moved, b"kept").await.unwrap();
    assert_eq!(home(&pool, "moved").await, ["oncely_records_20260101_03"]);
    // A holder whose lease ran out completes late: its record moves forward too.
    let late = expect_new(long.claim(&s, &key("late"), None).await.unwrap());
    clock.advance(HOUR + Duration::from_secs(30 * 60));
    long.complete(&late, b"late").await.unwrap();
    assert_eq!(home(&pool, "late").await, ["oncely_records_20260101_04"]);

    // 02:00: the 00:00 and 01:00 partitions hold only expired records.
    clock.advance(Duration::from_secs(30 * 60));
    assert_eq!(short.purge(Duration::ZERO, 1_000).await.unwrap(), 10);
    let left = partitions(&pool).await;
    assert!(
        !left.contains(&"oncely_records_20260101_00".to_owned())
            && !left.contains(&"oncely_records_20260101_01".to_owned()),
        "{left:?}"
    );
    for live in [
        "oncely_records_20260101_02",
        "oncely_records_20260101_03",
        "oncely_records_20260101_04",
    ] {
        assert!(left.contains(&live.to_owned()), "{live} dropped: {left:?}");
    }
    // The purge created the partitions ahead of its cut-off too.
    assert!(
        left.contains(&"oncely_records_20260101_06".to_owned()),
        "{left:?}"
    );
    for (k, outcome) in [("moved", &b"kept"[..]), ("late", b"late")] {
        match short.claim(&s, &key(k), None).await.unwrap() {
            ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(outcome)),
            other => panic!("{k}: expected Duplicate, got {other:?}"),
        }
    }
    assert!(store.get(&s, &key("old-0")).await.unwrap().is_none());
    assert_eq!(short.stats().await.unwrap().records, 2);
}

#[tokio::test]
async fn a_partition_bigger_than_the_purge_limit_is_purged_row_by_row_then_dropped() {
    let (store, pool, clock) = hourly("limit", 2).await;
    let oncely = Oncely::new(store)
        .with_clock(clock.clone())
        .with_retention(Duration::from_secs(60));
    for i in 0..10 {
        let c = expect_new(
            oncely
                .claim(&Scope::default(), &key(&format!("k{i}")), None)
                .await
                .unwrap(),
        );
        oncely.complete(&c, b"").await.unwrap();
    }
    clock.advance(2 * HOUR);
    // Purge removes at most its limit, so the partition cannot go whole yet.
    assert_eq!(oncely.purge(Duration::ZERO, 4).await.unwrap(), 4);
    assert!(
        partitions(&pool)
            .await
            .contains(&"oncely_records_20260101_00".to_owned())
    );
    // Six left: they fit, and go with their partition.
    assert_eq!(oncely.purge(Duration::ZERO, 6).await.unwrap(), 6);
    assert!(
        !partitions(&pool)
            .await
            .contains(&"oncely_records_20260101_00".to_owned())
    );
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 0);
}

#[tokio::test]
async fn concurrent_claims_of_one_key_across_a_partition_boundary_yield_exactly_one_new() {
    const CLAIMANTS: usize = 32;
    let (store, pool, clock) = hourly("boundary", 3).await;
    let lease = Duration::from_secs(30);
    // Half the claimants' leases would end at 00:59:59.999, half at 01:00:00.000: their fresh
    // records belong to two partitions, where no unique index could see both.
    let boundary = clock.now().saturating_add(HOUR);
    let before = boundary.saturating_sub(lease + Duration::from_millis(1));
    for round in 0..8 {
        let k = key(&format!("k{round}"));
        if round % 2 == 1 {
            // An expired record to take over, in a partition of its own (00:00).
            let old = ClaimRequest::new(Scope::default(), k.clone(), None, lease);
            expect_new(store.claim(&old, clock.now()).await.unwrap());
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(CLAIMANTS));
        let tasks: Vec<_> = (0..CLAIMANTS)
            .map(|i| {
                let (store, barrier, k) = (store.clone(), barrier.clone(), k.clone());
                tokio::spawn(async move {
                    let now = Timestamp::from_millis(before.as_millis() + (i % 2) as i64);
                    let req = ClaimRequest::new(Scope::default(), k, None, lease);
                    barrier.wait().await;
                    store.claim(&req, now).await.unwrap()
                })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            match task.await.unwrap() {
                ClaimOutcome::New(_) => new += 1,
                ClaimOutcome::InProgress { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(new, 1, "round {round}");
        let rows = home(&pool, &format!("k{round}")).await;
        assert_eq!(rows.len(), 1, "round {round}: rows in {rows:?}");
    }
}

#[tokio::test]
async fn records_beyond_the_last_partition_wait_in_default_then_move_into_their_own() {
    let (store, pool, clock) = hourly("strays", 1).await;
    let oncely = Oncely::new(store.clone())
        .with_clock(clock.clone())
        .with_retention(5 * HOUR);
    let c = expect_new(
        oncely
            .claim(&Scope::default(), &key("far"), None)
            .await
            .unwrap(),
    );
    oncely.complete(&c, b"far").await.unwrap();
    // Partitions exist for 00:00 and 01:00 only: a record expiring at 05:00 lands in DEFAULT.
    assert_eq!(home(&pool, "far").await, ["oncely_records_default"]);
    // Partitions up to 05:00 are created; the record moves into its own.
    store
        .create_partitions(clock.now().saturating_add(4 * HOUR))
        .await
        .unwrap();
    assert_eq!(home(&pool, "far").await, ["oncely_records_20260101_05"]);
    assert!(matches!(
        oncely
            .claim(&Scope::default(), &key("far"), None)
            .await
            .unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

#[tokio::test]
async fn opening_a_schema_in_the_other_layout_is_a_clear_error() {
    let invalid = |result: oncely_core::Result<PostgresStore>, want: &str| match result {
        Err(Error::InvalidUrl { reason, .. }) => assert!(reason.contains(want), "{reason}"),
        other => panic!("expected InvalidUrl saying {want:?}, got {other:?}"),
    };
    let plain = fresh_schema("plain").await;
    PostgresStore::connect(&plain).await.unwrap();
    invalid(
        PostgresStore::connect(&format!("{plain}&oncely_partitions=daily")).await,
        "is not partitioned: remove oncely_partitions from the URL",
    );

    let daily = fresh_schema("daily").await;
    PostgresStore::connect(&format!("{daily}&oncely_partitions=daily"))
        .await
        .unwrap();
    invalid(
        PostgresStore::connect(&daily).await,
        "is partitioned (daily): add oncely_partitions=daily to the URL",
    );
    invalid(
        PostgresStore::connect(&format!("{daily}&oncely_partitions=hourly")).await,
        "this schema is partitioned daily: use oncely_partitions=daily",
    );
    // The layout it was created with still opens, however often.
    PostgresStore::connect(&format!("{daily}&oncely_partitions=daily"))
        .await
        .unwrap();
    invalid(
        PostgresStore::connect(&format!("{daily}&oncely_partitions=weekly")).await,
        "oncely_partitions must be daily, hourly or off, not `weekly`",
    );
}

#[tokio::test]
async fn the_shipped_partitioned_sql_applied_by_hand_is_what_the_store_expects() {
    let url = fresh_schema("by_hand").await;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/0001_records_partitioned.sql"
    ))
    .unwrap();
    assert_eq!(
        sql, MIGRATIONS[0].1,
        "the shipped file is the one the store applies"
    );
    let pool = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    // Without the granularity recorded, the store says what to insert.
    let opened = PostgresStore::connect(&format!(
        "{url}&oncely_migrate=false&oncely_partitions=daily"
    ))
    .await;
    assert!(
        matches!(&opened, Err(Error::InvalidUrl { reason, .. }) if reason.contains("INSERT INTO oncely_partitioning")),
        "{opened:?}"
    );
    sqlx::query("INSERT INTO oncely_partitioning (granularity) VALUES ('daily')")
        .execute(&pool)
        .await
        .unwrap();
    let store = PostgresStore::connect(&format!(
        "{url}&oncely_migrate=false&oncely_partitions=daily"
    ))
    .await
    .unwrap();
    // Partitions were created from the system clock: today's and the next eight.
    assert_eq!(partitions(&pool).await.len(), 9);
    let oncely = Oncely::new(Arc::new(store));
    let claim = expect_new(
        oncely
            .claim(&Scope::default(), &key("k"), None)
            .await
            .unwrap(),
    );
    oncely.complete(&claim, b"ok").await.unwrap();
    assert!(matches!(
        oncely
            .claim(&Scope::default(), &key("k"), None)
            .await
            .unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
    assert_ne!(home(&pool, "k").await, ["oncely_records_default"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_racing_claims_and_completes_lose_no_live_record_and_never_duplicate_a_key() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    const WORKERS: usize = 6;
    const KEYS: usize = 40;
    let (store, pool, clock) = hourly("race", 2).await;
    // One clock for everyone, moved forward by the purger; a claim may read it a little late.
    let now = Arc::new(AtomicI64::new(clock.now().as_millis()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (store, now, stop) = (store.clone(), now.clone(), stop.clone());
            tokio::spawn(async move {
                // (key, token, expires_at) of every complete that succeeded.
                let mut completed = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let k = format!("k{}", (i * 7 + w as u64) % KEYS as u64);
                    let at = Timestamp::from_millis(now.load(Ordering::SeqCst));
                    let req =
                        ClaimRequest::new(Scope::default(), key(&k), None, Duration::from_secs(30));
                    if let ClaimOutcome::New(claim) = store.claim(&req, at).await.unwrap() {
                        if i.is_multiple_of(5) {
                            // Lost if the clock passed its lease and another took it over.
                            match store.release(&claim).await {
                                Ok(()) | Err(Error::ClaimLost { .. }) => {}
                                Err(e) => panic!("release: {e}"),
                            }
                        } else {
                            // Retentions from 10 minutes to 5 hours: some land in DEFAULT.
                            let expires =
                                at.saturating_add(Duration::from_secs(600 * (1 + i % 30)));
                            match store.complete(&claim, k.as_bytes(), expires).await {
                                Ok(()) => completed.push((k, claim.token, expires)),
                                Err(Error::ClaimLost { .. }) => {}
                                Err(e) => panic!("complete: {e}"),
                            }
                        }
                    }
                }
                completed
            })
        })
        .collect();
    let mut purged = 0;
    for _ in 0..40 {
        let at = now.fetch_add(10 * 60 * 1000, Ordering::SeqCst);
        purged += store
            .purge(Timestamp::from_millis(at), 1_000_000)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut completed = Vec::new();
    for w in workers {
        completed.extend(w.await.unwrap());
    }
    let end = Timestamp::from_millis(now.load(Ordering::SeqCst));
    assert!(purged > 0 && !completed.is_empty(), "the race ran");
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM oncely_records GROUP BY scope, key HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(twice, 0, "a key stored twice");
    // The last complete of each key still live at the end is what the store holds.
    for (k, token, expires) in &completed {
        if *expires <= end {
            continue;
        }
        let rec = store
            .get(&Scope::default(), &key(k))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{k}: live record lost"));
        let latest = completed
            .iter()
            .filter(|(k2, ..)| k2 == k)
            .max_by_key(|(_, _, e)| *e)
            .unwrap();
        if rec.token == *token {
            assert_eq!(rec.expires_at, *expires);
        } else {
            assert!(latest.2 >= *expires, "{k}: a live record was replaced");
        }
    }
    // Dropped partitions are gone; the ones ahead exist.
    let left = partitions(&pool).await;
    assert!(
        !left.contains(&"oncely_records_20260101_00".to_owned()),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_purge_with_an_old_cut_off_still_keeps_partitions_ready_ahead_of_now() {
    let (store, pool, clock) = hourly("ahead_of_now", 2).await;
    // Those the connect created around the system clock go, as if the instance had run for days.
    let now: Vec<String> = partitions(&pool)
        .await
        .into_iter()
        .filter(|p| !p.starts_with("oncely_records_20260101"))
        .collect();
    assert_eq!(now.len(), 3, "{now:?}");
    for p in &now {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {p}")))
            .execute(&pool)
            .await
            .unwrap();
    }
    // The suite's clock is months behind the system's: the purge's cut-off is far in the past.
    store.purge(clock.now(), 100).await.unwrap();
    let left = partitions(&pool).await;
    for p in &now {
        assert!(left.contains(p), "{p} not recreated: {left:?}");
    }
}
