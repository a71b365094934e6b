//! The shared conformance suite and model test, against the PostgreSQL server on loopback.
//! Each test gets a schema of its own. `ONCELY_TEST_POSTGRES` overrides the server URL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oncely_postgres::PostgresStore;

fn main() {
    // Schemas of earlier runs of this test binary go first.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(support::drop_schemas("oncely_conf_"));
    let counter = Arc::new(AtomicUsize::new(0));
    oncely_conformance::main("postgres", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let url = support::fresh_schema(&format!("oncely_conf_{n}")).await;
            Arc::new(PostgresStore::connect(&url).await.expect("connect")) as _
        }
    });
}
