//! What the SQLite store acknowledged survives `kill -9` of the process that wrote it.
//!
//! The test binary runs itself as a child that claims and completes keys as fast as it can,
//! printing each key only after `complete` returned. The parent kills it with SIGKILL mid-stream,
//! reopens the file, and checks that every printed key is there, completed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
use oncely_sqlite::{SqliteOptions, SqliteStore};

const CHILD_ENV: &str = "ONCELY_KILL9_CHILD_DB";

#[test]
fn acknowledged_records_survive_kill_9() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        return child(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kill9.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_records_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("acked ") {
            acknowledged.push(key.to_owned());
        }
        if acknowledged.len() >= 3_000 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no checkpoint
    child.wait().unwrap();
    assert!(
        acknowledged.len() >= 3_000,
        "child acknowledged only {}",
        acknowledged.len()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(&db)).unwrap();
        let oncely = Oncely::new(Arc::new(store));
        for key in &acknowledged {
            let outcome = oncely
                .claim(&Scope::default(), &Key::new(key.as_str()).unwrap(), None)
                .await
                .unwrap();
            match outcome {
                ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(key.as_bytes())),
                other => panic!("{key} was acknowledged before kill -9 but is now {other:?}"),
            }
        }
    });
}

fn child(path: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(path)).unwrap();
        let oncely = Oncely::new(Arc::new(store));
        // Many concurrent writers, so the kill lands inside group-committed batches.
        let mut tasks = Vec::new();
        for t in 0..64 {
            let oncely = oncely.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = Key::new(format!("k-{t}-{i}")).unwrap();
                    if let ClaimOutcome::New(claim) =
                        oncely.claim(&Scope::default(), &key, None).await.unwrap()
                    {
                        oncely
                            .complete(&claim, key.as_str().as_bytes())
                            .await
                            .unwrap();
                        println!("acked {key}");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}
