//! The shared conformance suite and model test through a real three-node Redis Cluster, which
//! this binary starts itself on free loopback ports and stops at the end, plus tests of what
//! only a cluster shows: a batch whose scopes live on different nodes.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: `redis-server` and `redis-tools`).

mod support;

use std::sync::Arc;

use oncely_conformance::servers;
use oncely_core::Store;
use oncely_redis::RedisStore;
use support::cluster::{self, Cluster};

fn main() {
    let cluster = Arc::new(Cluster::start(None));
    let conclusion = {
        let factory_cluster = cluster.clone();
        let factory = move || {
            let url = factory_cluster.url(&servers::fresh_name("oncely_cluster"));
            async move {
                Arc::new(
                    RedisStore::connect(&url)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                ) as Arc<dyn Store>
            }
        };
        let extra = cluster::trials(&cluster, "redis-cluster");
        oncely_conformance::run("redis-cluster", factory, extra)
    };
    // The trials hold clones of the cluster; they are done, so this is the last one.
    drop(cluster);
    conclusion.exit()
}
