//! A Redis Cluster over TLS: the shared conformance suite and the cluster's own trials through
//! `rediss+cluster://` to a three-node cluster this binary starts with `tls-cluster yes`, with
//! certificates it makes with `openssl`, plus what only TLS shows: a root that did not sign the
//! nodes is refused in one line, a plain client cannot use the TLS ports, and without `cacert=`
//! the system's roots are the ones `SSL_CERT_FILE` names.
//!
//! Needs `redis-server` built with TLS (Debian's is), `redis-cli` and `openssl` on PATH.

mod support;

use std::sync::Arc;

use oncely_conformance::harness::{check, url_trial};
use oncely_conformance::libtest_mimic::Failed;
use oncely_conformance::{certs, servers};
use oncely_core::Store;
use oncely_redis::RedisStore;
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
        let factory_cluster = cluster.clone();
        let factory = move || {
            let url = factory_cluster.url(&servers::fresh_name("oncely_cluster_tls"));
            async move {
                Arc::new(
                    RedisStore::connect(&url)
                        .await
                        .unwrap_or_else(|e| panic!("{e}")),
                ) as Arc<dyn Store>
            }
        };
        let prefix = servers::fresh_name("oncely_cluster_tls");
        let mut extra = cluster::trials(&cluster, KIND);
        extra.extend([
            url_trial(
                KIND,
                "a_root_that_did_not_sign_the_nodes_is_refused_in_one_line",
                format!(
                    "{}&cacert={}",
                    cluster.url_without_cacert(&prefix),
                    other_ca.display()
                ),
                |url| async move {
                    let error = RedisStore::connect(&url)
                        .await
                        .err()
                        .ok_or("connected with a root that signed nothing")?
                        .to_string();
                    eprintln!("{error}");
                    check(!error.contains('\n'), &format!("one line: {error}"))?;
                    check(
                        error.contains("certificate") || error.contains("UnknownIssuer"),
                        &format!("says why: {error}"),
                    )
                },
            ),
            url_trial(
                KIND,
                "without_cacert_the_roots_are_those_ssl_cert_file_names",
                cluster.url_without_cacert(&prefix),
                |url| async move {
                    RedisStore::connect(&url)
                        .await
                        .map(drop)
                        .map_err(|e| Failed::from(format!("SSL_CERT_FILE's CA: {e}")))
                },
            ),
            url_trial(
                KIND,
                "a_plain_client_cannot_use_the_tls_ports",
                cluster.plain_url_to_tls_ports(&prefix),
                |url| async move {
                    check(
                        RedisStore::connect(&url).await.is_err(),
                        "plain redis+cluster:// to the TLS ports connected",
                    )
                },
            ),
        ]);
        oncely_conformance::run(KIND, factory, extra)
    };
    // The trials hold clones of the cluster; they are done, so this is the last one.
    drop(cluster);
    conclusion.exit()
}
