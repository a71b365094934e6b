//! The shared conformance suite and model test, against the Redis server on loopback. Each
//! store gets a key prefix of its own. `ONCELY_TEST_REDIS` overrides the server URL.

use std::sync::Arc;

use oncely_conformance::servers;
use oncely_redis::RedisStore;

fn main() {
    oncely_conformance::main("redis", || async {
        let url = servers::redis_url("oncely_conf").await;
        Arc::new(
            RedisStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        ) as _
    });
}
