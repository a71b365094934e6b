//! The shared conformance suite and model test through a real three-node Redis Cluster, which
//! this binary starts itself on free loopback ports and stops at the end, plus tests of what
//! only a cluster shows: a batch whose scopes live on different nodes.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: `redis-server` and `redis-tools`).

mod support;

use std::sync::Arc;

use support::cluster::{self, Cluster};

fn main() {
    let cluster = Arc::new(Cluster::start(None));
    let conclusion = {
        let urls = cluster.clone();
        let factory = support::factory(move |prefix| urls.url(prefix), "oncely_cluster");
        let extra = cluster::trials(&cluster, "redis-cluster");
        oncely_conformance::run("redis-cluster", factory, extra)
    };
    // The trials hold clones of the cluster; they are done, so this is the last one.
    drop(cluster);
    conclusion.exit()
}
