//! A PostgreSQL that restarts under the store: what its sessions get is an outage
//! ([`oncely_core::Error::Unavailable`], [`oncely_postgres::is_unavailable`]), never a failure of
//! the claim, and the store works again once the server is back, without being reconnected.
//! Against a server of the test's own ([`PostgresServer`]), which it shuts down and crashes.

use std::sync::Arc;

use oncely_conformance::faults::{self, PostgresServer, Restartable, Stop};
use oncely_core::Store;
use oncely_postgres::PostgresStore;
use sqlx::Connection;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_server_shutting_down_are_told_it_is_unavailable() {
    let mut server = blocking(PostgresServer::start).await;
    let url = server.url();
    let mut session = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    server = blocking(move || {
        server.stop(Stop::Graceful);
        server
    })
    .await;
    let error = sqlx::query("SELECT 1")
        .execute(&mut session)
        .await
        .expect_err("a query after the shutdown");
    eprintln!("after a shutdown: {error:?}");
    assert!(
        oncely_postgres::is_unavailable(&error),
        "an outage, not a failure: {error:?}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reports_a_restart_as_unavailable_and_works_again_after_it() {
    let server = blocking(PostgresServer::start).await;
    faults::a_restart_is_an_outage_and_the_store_works_again_after_it(server, |url| async move {
        Arc::new(PostgresStore::connect(&url).await.unwrap()) as Arc<dyn Store>
    })
    .await;
}
