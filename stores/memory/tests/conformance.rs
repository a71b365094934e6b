//! The shared conformance suite and model test, run against the memory store.

use std::sync::Arc;

use oncely_memory::MemoryStore;

fn main() {
    oncely_conformance::main("memory", || async { Arc::new(MemoryStore::new()) as _ });
}
