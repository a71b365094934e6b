//! The shared conformance suite and model test, run against the SQLite store, each test on a
//! fresh database file.

use std::sync::Arc;

use oncely_sqlite::{SqliteOptions, SqliteStore};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_owned();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    oncely_conformance::main("sqlite", move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = root.join(format!("conformance-{n}.db"));
        async move { Arc::new(SqliteStore::open(SqliteOptions::new(path)).expect("open store")) as _ }
    });
}
