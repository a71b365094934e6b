//! The shared conformance suite once more, every connection over TLS (`sslmode=require`), against
//! the PostgreSQL server on loopback (`ssl = on`). Each test gets a schema of its own.

use std::sync::Arc;

use oncely_conformance::servers;
use oncely_postgres::PostgresStore;

fn main() {
    oncely_conformance::main("postgres-tls", || async {
        let url = servers::postgres_url("oncely_conf_tls").await;
        let url = format!("{url}&sslmode=require");
        Arc::new(
            PostgresStore::connect(&url)
                .await
                .expect("connect over TLS"),
        ) as _
    });
}
