//! A Redis that restarts under the store: a claim while it is down is an outage
//! ([`oncely_core::Error::Unavailable`]), never a failure of the claim, and the store works again
//! once the server is back, without being reconnected, with the records it had acknowledged
//! (the server's own append-only file, `appendfsync always`). Against a server of the test's
//! own ([`RedisServer`]), which it shuts down and crashes.

use std::sync::Arc;

use oncely_conformance::faults::{self, RedisServer};
use oncely_core::Store;
use oncely_redis::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reports_a_restart_as_unavailable_and_works_again_after_it() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("the test's Redis");
    faults::a_restart_is_an_outage_and_the_store_works_again_after_it(server, |url| async move {
        Arc::new(RedisStore::connect(&url).await.unwrap()) as Arc<dyn Store>
    })
    .await;
}
