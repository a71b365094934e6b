//! A Redis Cluster over TLS: the shared conformance suite and the cluster's own trials through
//! `rediss+cluster://` to a three-node cluster this binary starts with `tls-cluster yes`, with
//! certificates it makes with `openssl`, plus what only TLS shows: a root that did not sign the
//! nodes is refused in one line, a plain client cannot use the TLS ports, and without `cacert=`
//! the system's roots are the ones `SSL_CERT_FILE` names.
//!
//! Needs `redis-server` built with TLS (Debian's is), `redis-cli` and `openssl` on PATH.

mod support;

use std::sync::Arc;

use oncely_conformance::{certs, servers};
use support::cluster::{self, Cluster};

const KIND: &str = "redis-cluster-tls";

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = support::ServerTls::make(dir.path(), "ca");
    let other_ca = certs::make_ca(dir.path(), "other-ca");
    // The system's roots are what SSL_CERT_FILE names: the cluster's CA alone (and no directory).
    let empty = dir.path().join("no-roots");
    std::fs::create_dir(&empty).unwrap();
    // SAFETY: no other thread exists yet; the cluster and the tests start below.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &server.ca);
        std::env::set_var("SSL_CERT_DIR", &empty);
    }
    let cluster = Arc::new(Cluster::start(Some(&server)));
    let conclusion = {
        let urls = cluster.clone();
        let factory = support::factory(move |prefix| urls.url(prefix), "oncely_cluster_tls");
        let prefix = servers::fresh_name("oncely_cluster_tls");
        let mut extra = cluster::trials(&cluster, KIND);
        extra.extend(support::tls_trials(
            KIND,
            &cluster.url_without_cacert(&prefix),
            &other_ca,
            cluster.plain_url_to_tls_ports(&prefix),
        ));
        oncely_conformance::run(KIND, factory, extra)
    };
    // The trials hold clones of the cluster; they are done, so this is the last one.
    drop(cluster);
    conclusion.exit()
}
