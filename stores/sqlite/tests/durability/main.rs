//! What the SQLite store acknowledged survives a power loss, not only `kill -9`.
//!
//! `kill -9` ends the process but the kernel keeps its page cache: a write that was never
//! fsynced still reaches the disk, so `tests/kill9.rs` stays green with `synchronous=OFF`. Here
//! the store runs on a fault-injecting VFS ([`powerloss`], below) that keeps every write in
//! memory until the file is synced, as a page cache would, and writes it to the real file only
//! then. A simulated power loss drops every write not yet synced; the file is then reopened with
//! SQLite's plain unix VFS, which sees only the bytes that were synced, and every claim and
//! completion the store acknowledged must still be there.
//!
//! Many tasks claim and complete keys; once a few hundred completions are acknowledged, the
//! power is cut *as the WAL is next synced with frames in it not yet synced*: with
//! `synchronous=FULL` that is the sync of a commit, so the batch being committed is lost and
//! its callers must have been told it failed. This turns red when:
//!
//! - `synchronous` is lowered: in WAL mode NORMAL syncs the WAL only at checkpoints and OFF
//!   never, so commits acknowledged since the last sync are lost (the cut comes at the next
//!   checkpoint, or after 2 s without a sync);
//! - the store answers before its transaction committed: the answers of the batch whose commit
//!   the power loss interrupts are already out, and their records are gone.
//!
//! The store selects the VFS through its path, a SQLite URI (`file:PATH?vfs=oncely-powerloss`):
//! it opens its connection with `SQLITE_OPEN_URI`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
use oncely_sqlite::{SqliteOptions, SqliteStore};

/// Concurrent claimers, so the power loss lands in a group-committed batch.
const WORKERS: usize = 16;
/// Completions acknowledged before the power is cut.
const ACKED_BEFORE_CUT: usize = 300;
/// How long to wait for a WAL sync to cut at before cutting anyway (a store that never syncs).
const NO_SYNC_GRACE: Duration = Duration::from_secs(2);

#[test]
fn the_vfs_loses_unsynced_writes_and_keeps_synced_ones() {
    let _serial = powerloss::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shim.db");
    let conn = rusqlite::Connection::open(powerloss::uri(&db)).unwrap();
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    conn.execute("INSERT INTO t VALUES (2)", []).unwrap();

    // Before the power loss, every connection sees both rows (the writes are in the "page
    // cache"), a second connection on the VFS included.
    let reader = rusqlite::Connection::open(powerloss::uri(&db)).unwrap();
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((count(&conn), count(&reader)), (2, 2));
    drop(reader);

    let loss = powerloss::cut();
    assert!(loss.writes > 0, "the commit of row 2 was never synced");
    assert!(
        conn.execute("INSERT INTO t VALUES (3)", []).is_err(),
        "nothing runs after the power loss"
    );
    drop(conn);
    assert_eq!(
        powerloss::open_files(),
        0,
        "the connection closed its files"
    );

    powerloss::reboot(&db);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
    let rows: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [1], "row 1 was synced, row 2 was not");
}

#[test]
fn acknowledged_records_survive_power_loss() {
    survives_power_loss(|_| {});
}

/// Checkpoints every few commits: the database file is written, synced and resized, and the WAL
/// restarted, all through the VFS, and still no acknowledged record is lost.
#[test]
fn acknowledged_records_survive_power_loss_across_checkpoints() {
    survives_power_loss(|options| options.wal_autocheckpoint = 16);
}

#[derive(Default)]
struct Acked {
    /// Keys whose claim answered `New`.
    claimed: Vec<String>,
    /// Keys whose completion answered `Ok`.
    completed: Vec<String>,
}

fn survives_power_loss(tune: impl FnOnce(&mut SqliteOptions)) {
    let _serial = powerloss::exclusive();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("durability.db");
    let mut options = SqliteOptions::new(powerloss::uri(&db));
    tune(&mut options);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (acked, cut_at_sync) = rt.block_on(async {
        let store = SqliteStore::open(options).expect("opening the store on the power-loss VFS");
        let oncely = Oncely::new(Arc::new(store));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(oncely.clone(), w, acked.clone())))
            .collect();
        // The workers hold the last handles: the store closes when the last of them stops.
        drop(oncely);

        let enough = || acked.lock().unwrap().completed.len() >= ACKED_BEFORE_CUT;
        assert!(
            wait_until(enough, Duration::from_secs(120)).await,
            "{ACKED_BEFORE_CUT} completions were not acknowledged within 120 s"
        );
        powerloss::arm();
        let cut_at_sync = wait_until(powerloss::is_off, NO_SYNC_GRACE).await;
        if !cut_at_sync {
            powerloss::cut();
        }
        for worker in workers {
            tokio::time::timeout(Duration::from_secs(60), worker)
                .await
                .expect("a worker still runs 60 s after the power loss")
                .expect("a worker failed");
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        (acked, cut_at_sync)
    });
    let loss = powerloss::lost();
    assert_eq!(
        powerloss::open_files(),
        0,
        "the store closed its files: the reopened one must not share their in-process state"
    );

    powerloss::reboot(&db);
    let store = SqliteStore::open(SqliteOptions::new(&db)).expect("reopening after power loss");
    let oncely = Oncely::new(Arc::new(store));
    let missing = rt.block_on(async {
        let completed: std::collections::HashSet<&String> = acked.completed.iter().collect();
        let mut missing = Vec::new();
        for key in &acked.claimed {
            let outcome = oncely
                .claim(&Scope::default(), &Key::new(key.as_str()).unwrap(), None)
                .await
                .expect("claiming after the reboot");
            match outcome {
                ClaimOutcome::Duplicate(record) if record.outcome() == Some(key.as_bytes()) => {}
                // Claimed, its completion not acknowledged: still held, or completed after all.
                ClaimOutcome::InProgress { .. } if !completed.contains(key) => {}
                other => missing.push(format!(
                    "{key} ({} acknowledged) is now {other:?}",
                    if completed.contains(key) {
                        "completion"
                    } else {
                        "claim"
                    }
                )),
            }
        }
        missing
    });
    let how = if cut_at_sync {
        "at a WAL sync"
    } else {
        "after no WAL sync came for 2 s"
    };
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged claims lost in a power loss (cut {how}, {} unsynced writes, {} bytes, \
         dropped); first: {:#?}",
        missing.len(),
        acked.claimed.len(),
        loss.writes,
        loss.bytes,
        &missing[..missing.len().min(5)]
    );
    assert!(
        loss.writes > 0,
        "the power loss (cut {how}) dropped no write: it tested nothing"
    );
    eprintln!(
        "{} claims and {} completions acknowledged, all kept through a power loss cut {how} \
         that dropped {} unsynced writes ({} bytes); {:.2?}",
        acked.claimed.len(),
        acked.completed.len(),
        loss.writes,
        loss.bytes,
        started.elapsed()
    );
}

/// Claims and completes fresh keys until the store fails, which it may only do once the power
/// is off; records each answer that was `Ok`.
async fn worker(oncely: Oncely, w: usize, acked: Arc<Mutex<Acked>>) {
    let failed = |what: &str, key: &str, e: oncely_core::Error| {
        assert!(
            powerloss::is_off(),
            "{what} {key} failed with the power on: {e}"
        );
    };
    for i in 0.. {
        let key = format!("w{w}-{i}");
        let claim = match oncely
            .claim(&Scope::default(), &Key::new(key.as_str()).unwrap(), None)
            .await
        {
            Ok(ClaimOutcome::New(claim)) => claim,
            Ok(other) => panic!("{key} is a fresh key, yet the store answered {other:?}"),
            Err(e) => return failed("claiming", &key, e),
        };
        acked.lock().unwrap().claimed.push(key.clone());
        if let Err(e) = oncely.complete(&claim, key.as_bytes()).await {
            return failed("completing", &key, e);
        }
        acked.lock().unwrap().completed.push(key);
    }
}

async fn wait_until(mut done: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// A VFS that simulates power loss: it wraps SQLite's unix VFS and holds every write in memory
/// until the file is synced.
///
/// - `xWrite` and `xTruncate` append to the file's pending list (per path, so shared by every
///   handle on the file and kept when a handle closes, like a page cache); nothing reaches the
///   real file. `xRead` and `xFileSize` answer the real file with the pending list applied.
/// - `xSync` replays the pending list on the real file, in order, then syncs it for real (the
///   unix VFS also syncs the directory of a new journal or WAL at its first sync).
/// - [`cut`] is the power loss: every pending write and truncation is dropped, and from then on
///   every read, write, truncation, sync, open and delete through the VFS fails, so no later
///   write reaches a real file. Locks and shared memory are still passed through, so the
///   connections can close and release them. [`arm`] cuts instead as a WAL is next synced with
///   frames pending (writes past its 32-byte header): a commit or a checkpoint, not the
///   rewrite of the header alone when SQLite restarts the WAL.
/// - Created and deleted files are taken as durable at once: a created file holds nothing until
///   synced (an empty WAL or journal is as good as none to SQLite), and SQLite deletes only files
///   whose content is no longer needed.
/// - Not simulated: torn or reordered writes within a sync (the cut drops whole writes) and the
///   loss of a directory entry; this VFS checks the sync discipline, not the disk's atomicity.
///
/// The state is global: tests using it run one at a time ([`exclusive`]).
mod powerloss;
