//! The shared conformance suite and model test, run against the cache in front of the memory
//! store and in front of SQLite: with the cache, every store must still answer as itself.

use std::sync::Arc;
use std::time::Duration;

use oncely_cache::{CacheOptions, CachedStore};
use oncely_memory::MemoryStore;

fn main() {
    let options = CacheOptions::new(10_000, Duration::from_secs(60));
    let memory = oncely_conformance::run(
        "cache+memory",
        move || async move { Arc::new(CachedStore::new(Arc::new(MemoryStore::new()), options)) as _ },
        Vec::new(),
    );
    memory.exit_if_failed();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().to_owned();
    let files = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    oncely_conformance::main("cache+sqlite", move || {
        let n = files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = path.join(format!("store-{n}.db"));
        async move {
            let store = oncely_sqlite::SqliteStore::open(oncely_sqlite::SqliteOptions::new(file))
                .expect("a SQLite store");
            Arc::new(CachedStore::new(Arc::new(store), options)) as _
        }
    });
}
