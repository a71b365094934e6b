//! A MariaDB that restarts under the store: what its sessions get is an outage
//! ([`oncely_core::Error::Unavailable`], [`oncely_mysql::is_unavailable`]), never a failure of
//! the claim, and the store works again once the server is back, without being reconnected.
//! Against a server of the test's own ([`MariaDbServer`]), which it shuts down and crashes.

use std::sync::Arc;

use oncely_conformance::faults::{self, MariaDbServer, Restartable, Stop};
use oncely_core::Store;
use oncely_mysql::MySqlStore;
use sqlx::Connection;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_server_going_down_are_told_it_is_unavailable() {
    let mut server = blocking(MariaDbServer::start).await;
    for how in [Stop::Graceful, Stop::Crash] {
        let mut session = sqlx::MySqlConnection::connect(&server.url()).await.unwrap();
        sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
        server = blocking(move || {
            server.stop(how);
            server
        })
        .await;
        let error = sqlx::query("SELECT 1")
            .execute(&mut session)
            .await
            .expect_err("a query after the server went down");
        eprintln!("after {how:?}: {error:?}");
        assert!(
            oncely_mysql::is_unavailable(&error),
            "an outage, not a failure: {error:?}"
        );
        server = blocking(move || {
            server.start_again();
            server
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reports_a_restart_as_unavailable_and_works_again_after_it() {
    let server = blocking(MariaDbServer::start).await;
    faults::a_restart_is_an_outage_and_the_store_works_again_after_it(server, |url| async move {
        Arc::new(MySqlStore::connect(&url).await.unwrap()) as Arc<dyn Store>
    })
    .await;
}
