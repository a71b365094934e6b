//! The disk fills under the SQLite store: a claim or complete that cannot be written fails with
//! a clear error, nothing acknowledged is lost, the file stays sound, and the store goes on, not
//! reopened, once there is space again; the same for the inbox and the outbox in the caller's
//! transactions. On a small tmpfs of the test's own
//! ([`SmallDisk`](oncely_conformance::faults::SmallDisk)).

use std::sync::Arc;

use oncely_conformance::faults::SmallDisk;
use oncely_core::inbox::{Inbox, InboxClaim};
use oncely_core::outbox::{Outbox, OutboxMessage};
use oncely_core::{ClaimOutcome, Error, Key, Oncely, Scope};
use oncely_sqlite::inbox::{self, SqliteInbox};
use oncely_sqlite::outbox::SqliteOutbox;
use oncely_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use oncely_sqlite::sqlx::{self, Connection, Executor};
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

/// What failed first when the disk filled under a transaction of the caller's.
#[derive(Debug)]
enum Failed {
    /// The inbox's claim.
    Claim(Error),
    /// The caller's own statement.
    Own(sqlx::Error),
    /// The outbox's enqueue.
    Enqueue(Error),
    /// The commit.
    Commit(sqlx::Error),
}

/// One order in one transaction on `conn`: the inbox's claim of `o-{n}`, the caller's row and
/// the event, committed together, or rolled back whole at the first step that fails. Plain
/// `BEGIN IMMEDIATE` / `COMMIT` / `ROLLBACK`: SQLite keeps a transaction whose COMMIT met a
/// full disk open, and this rolls it back on the spot.
async fn place(conn: &mut SqliteConnection, n: usize, body: &[u8]) -> Result<(), Failed> {
    let key = Key::new(format!("o-{n}")).unwrap();
    conn.execute("BEGIN IMMEDIATE").await.unwrap();
    let steps = async {
        match Inbox::new(scope()).claim(conn, &key, None).await {
            Ok(InboxClaim::New) => {}
            Ok(other) => panic!("{key}: a fresh key answered {other:?}"),
            Err(e) => return Err(Failed::Claim(e)),
        }
        sqlx::query("INSERT INTO orders (id, body) VALUES (?1, ?2)")
            .bind(key.as_str())
            .bind(body)
            .execute(&mut *conn)
            .await
            .map_err(Failed::Own)?;
        let event = OutboxMessage::new(key.as_str(), body.to_vec());
        Outbox::new()
            .enqueue(conn, &event)
            .await
            .map_err(Failed::Enqueue)?;
        conn.execute("COMMIT").await.map_err(Failed::Commit)?;
        Ok(())
    };
    let placed = steps.await;
    if placed.is_err() {
        // SQLite may have rolled back already (then this is a no-op error).
        let _ = conn.execute("ROLLBACK").await;
    }
    placed
}

fn scope() -> Scope {
    Scope::new("orders").unwrap()
}

/// `(orders, events)` in the file.
async fn counts(conn: &mut SqliteConnection) -> (usize, usize) {
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM oncely_outbox")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (orders as usize, events as usize)
}

/// The disk fills under transactions that claim in the inbox, write the caller's row and
/// enqueue an event: whichever step meets it fails, an inbox or outbox step with
/// `Error::Unavailable` (an outage: a consumer gives the message back rather than counting an
/// attempt); every committed transaction reads back whole, the file stays sound, and the same
/// connection goes on once there is space again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_and_outbox_on_a_full_disk_fail_clearly_and_lose_nothing() {
    let disk = tokio::task::spawn_blocking(|| SmallDisk::mount(DISK))
        .await
        .unwrap();
    let db = disk.path().join("shop.db");
    let options = SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        // A small page cache: a large write spills to the file inside the statement, so the
        // inbox's and the outbox's own statements meet the full disk, not only the commit.
        .pragma("cache_size", "16");
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    inbox::migrate(&mut conn).await.unwrap();
    conn.execute("CREATE TABLE orders (id TEXT NOT NULL, body BLOB NOT NULL)")
        .await
        .unwrap();
    let filler = disk.fill("filler", (DISK - (1 << 20)) as usize);
    let body = vec![b'x'; 16_000];

    let mut committed = 0;
    let failure = loop {
        match place(&mut conn, committed, &body).await {
            Ok(()) => committed += 1,
            Err(failed) => break failed,
        }
        assert!(committed < 10_000, "the disk never filled");
    };
    eprintln!("full after {committed} orders: {failure:?}");
    assert!(committed > 5, "only {committed} orders fit");
    let full = |e: &Error| matches!(e, Error::Unavailable { .. }) && e.to_string().contains("full");
    match &failure {
        Failed::Claim(e) | Failed::Enqueue(e) => {
            assert!(full(e), "an outage saying the disk is full: {e:?}")
        }
        Failed::Own(e) | Failed::Commit(e) => assert!(
            e.to_string().contains("full"),
            "SQLite says the disk is full: {e}"
        ),
    }
    // An event larger than the space left fails in the outbox's own statement, an outcome
    // larger than it in the inbox's: each an outage saying so, its transaction rolled back.
    let big = vec![b'y'; 4 << 20];
    conn.execute("BEGIN IMMEDIATE").await.unwrap();
    let event = OutboxMessage::new("o-big", big.clone());
    match Outbox::new().enqueue(&mut conn, &event).await {
        Err(e) => assert!(full(&e), "the outbox on a full disk: {e:?}"),
        Ok(id) => panic!("a 4 MiB event enqueued on a full disk: {id:?}"),
    }
    let _ = conn.execute("ROLLBACK").await;
    conn.execute("BEGIN IMMEDIATE").await.unwrap();
    let key = Key::new("o-big").unwrap();
    let inbox = Inbox::new(scope());
    assert_eq!(
        inbox.claim(&mut conn, &key, None).await.unwrap(),
        InboxClaim::New
    );
    match inbox.record_outcome(&mut conn, &key, &big).await {
        Err(e) => assert!(full(&e), "the inbox on a full disk: {e:?}"),
        Ok(()) => panic!("a 4 MiB outcome recorded on a full disk"),
    }
    let _ = conn.execute("ROLLBACK").await;

    // Every committed order reads back whole, and nothing else: no half of a transaction.
    assert_eq!(counts(&mut conn).await, (committed, committed));

    // Space again: the same connection goes on.
    std::fs::remove_file(filler).unwrap();
    for n in committed..committed + 20 {
        place(&mut conn, n, &body)
            .await
            .unwrap_or_else(|e| panic!("order {n} once there is space again: {e:?}"));
    }
    let total = committed + 20;
    conn.close().await.unwrap();

    // The file is sound, and reopened it holds every committed order, its event and its key.
    let check = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(check);
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&db))
        .await
        .unwrap();
    assert_eq!(counts(&mut conn).await, (total, total));
    conn.execute("BEGIN IMMEDIATE").await.unwrap();
    for n in 0..total {
        let key = Key::new(format!("o-{n}")).unwrap();
        assert!(
            matches!(
                inbox.claim(&mut conn, &key, None).await,
                Ok(InboxClaim::Duplicate(_))
            ),
            "{key} is lost after reopening"
        );
    }
    conn.execute("ROLLBACK").await.unwrap();
}
