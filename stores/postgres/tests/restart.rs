//! A PostgreSQL that restarts under the store: what its sessions get is an outage
//! ([`oncely_core::Error::Unavailable`], [`oncely_postgres::is_unavailable`]), never a failure of
//! the claim, and the store works again once the server is back, without being reconnected.
//! Against a server of the test's own ([`PostgresServer`]), which it shuts down and crashes.

use oncely_conformance::faults::{PostgresServer, Stop};
use oncely_core::{ClaimOutcome, Error, Key, Oncely, Scope};
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
    let mut server = blocking(PostgresServer::start).await;
    let store = std::sync::Arc::new(PostgresStore::connect(&server.url()).await.unwrap());
    let oncely = Oncely::new(store);
    let scope = Scope::new("orders").unwrap();
    let key = |n: u32| Key::new(format!("o-{n}")).unwrap();
    assert!(matches!(
        oncely.claim(&scope, &key(1), None).await.unwrap(),
        ClaimOutcome::New(_)
    ));

    for how in [Stop::Graceful, Stop::Crash] {
        server = blocking(move || {
            server.stop(how);
            server
        })
        .await;
        match oncely.claim(&scope, &key(2), None).await {
            Err(error @ Error::Unavailable { .. }) => eprintln!("{how:?}: {error}"),
            other => panic!("{how:?}: a claim while the server is down: {other:?}"),
        }
        server = blocking(move || {
            server.start_again();
            server
        })
        .await;
        // The pool's connections died with the server; new ones are made.
        match oncely.claim(&scope, &key(1), None).await {
            Ok(ClaimOutcome::InProgress { .. }) => {}
            other => panic!("{how:?}: the record of before the restart: {other:?}"),
        }
    }
    drop(server);
}
