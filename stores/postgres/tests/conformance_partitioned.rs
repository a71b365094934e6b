//! The shared conformance suite and model test, against the partitioned layout
//! (`oncely_partitions=hourly`, see `oncely_postgres::partitions`). Each test gets a schema of its
//! own, with hourly partitions prepared around the suite's clock and only a few ahead, so records
//! land in time partitions, in the DEFAULT partition, and move from one to the other.

use std::sync::Arc;

use oncely_conformance::servers;
use oncely_core::{Clock, ManualClock};
use oncely_postgres::PostgresStore;

fn main() {
    oncely_conformance::main("postgres-partitioned", || async {
        let url = servers::postgres_url("oncely_confpart").await;
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
    });
}
