//! The shared conformance suite and model test, against the Redis server on loopback. Each
//! store gets a key prefix of its own. `ONCELY_TEST_REDIS` overrides the server URL.

mod support;

use std::sync::Arc;

use oncely_redis::RedisStore;

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(support::check_server_and_forget_old_runs());
    oncely_conformance::main("redis", || async {
        let url = support::fresh_url();
        Arc::new(
            RedisStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        ) as _
    });
}
