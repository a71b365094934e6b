//! The shared conformance suite and model test, against the MySQL/MariaDB server on loopback.
//! Each test gets a database of its own. `ONCELY_TEST_MYSQL` overrides the server URL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oncely_mysql::MySqlStore;

fn main() {
    // Databases of earlier runs of this test binary go first.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(support::drop_databases("oncely_conf_"));
    let counter = Arc::new(AtomicUsize::new(0));
    oncely_conformance::main("mysql", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let url = support::fresh_database(&format!("oncely_conf_{n}")).await;
            Arc::new(MySqlStore::connect(&url).await.expect("connect")) as _
        }
    });
}
