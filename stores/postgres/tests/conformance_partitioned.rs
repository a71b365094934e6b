//! The shared conformance suite and model test, against the partitioned layout
//! (`oncely_partitions=hourly`, see `oncely_postgres::partitions`). Each test gets a schema of its
//! own, with hourly partitions prepared around the suite's clock and only a few ahead, so records
//! land in time partitions, in the DEFAULT partition, and move from one to the other.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oncely_core::{Clock, ManualClock};
use oncely_postgres::PostgresStore;

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(support::drop_schemas("oncely_confpart_"));
    let counter = Arc::new(AtomicUsize::new(0));
    oncely_conformance::main("postgres-partitioned", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let url = support::fresh_schema(&format!("oncely_confpart_{n}")).await;
            let store = PostgresStore::connect(&format!(
                "{url}&oncely_partitions=hourly&oncely_partitions_ahead=2"
            ))
            .await
            .expect("connect");
            // The suite's clock starts where ManualClock does, not at the system time.
            store
                .create_partitions(ManualClock::default().now())
                .await
                .expect("partitions");
            Arc::new(store) as _
        }
    });
}
