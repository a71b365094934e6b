//! The shared conformance suite and model test, against the PostgreSQL server on loopback.
//! Each test gets a schema of its own. `ONCELY_TEST_POSTGRES` overrides the server URL.

use std::sync::Arc;

use oncely_conformance::servers;
use oncely_postgres::PostgresStore;

fn main() {
    oncely_conformance::main("postgres", || async {
        let url = servers::postgres_url("oncely_conf").await;
        Arc::new(PostgresStore::connect(&url).await.expect("connect")) as _
    });
}
