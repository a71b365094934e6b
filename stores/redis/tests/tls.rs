//! Redis over TLS: the shared conformance suite through `rediss://` to a TLS `redis-server` this
//! binary starts on free loopback ports, with certificates it makes with `openssl` (a CA, and a
//! server certificate for 127.0.0.1 that the CA signed), plus what only TLS shows: a wrong root
//! is refused in one line, a plain client cannot use the TLS port, and without `cacert=` the
//! system's roots are the ones `SSL_CERT_FILE` names.
//!
//! Needs `redis-server` built with TLS (Debian's is) and `openssl` on PATH.

mod support;

use std::sync::Arc;

use oncely_conformance::harness::{check, url_trial};
use oncely_conformance::libtest_mimic::Failed;
use oncely_conformance::{certs, servers};
use oncely_redis::RedisStore;

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = support::ServerTls::make(dir.path(), "ca");
    let ca = server.ca.clone();
    let other_ca = certs::make_ca(dir.path(), "other-ca");
    // The system's roots are what SSL_CERT_FILE names: our CA alone (and no directory).
    let empty = dir.path().join("no-roots");
    std::fs::create_dir(&empty).unwrap();
    // SAFETY: no other thread exists yet; the server and the tests start below.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &ca);
        std::env::set_var("SSL_CERT_DIR", &empty);
    }

    let ports = support::free_ports(2);
    let (plain, tls) = (ports[0], ports[1]);
    let args = server.args(tls);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = support::Node::start(dir.path(), plain, &args);
    let base = format!("rediss://127.0.0.1:{tls}");
    let cacert = format!("cacert={}", ca.display());

    let suite_base = format!("{base}?{cacert}");
    let factory = move || {
        let url = format!("{suite_base}&prefix={}", servers::fresh_name("oncely_tls"));
        async move {
            Arc::new(
                RedisStore::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ) as _
        }
    };
    let extra = vec![
        url_trial(
            "redis-tls",
            "a_root_that_did_not_sign_the_server_is_refused_in_one_line",
            format!("{base}?cacert={}", other_ca.display()),
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
            "redis-tls",
            "without_cacert_the_roots_are_those_ssl_cert_file_names",
            format!("{base}?prefix={}", servers::fresh_name("oncely_tls")),
            |url| async move {
                RedisStore::connect(&url)
                    .await
                    .map(drop)
                    .map_err(|e| Failed::from(format!("SSL_CERT_FILE's CA: {e}")))
            },
        ),
        url_trial(
            "redis-tls",
            "a_plain_client_cannot_use_the_tls_port",
            format!("redis://127.0.0.1:{tls}"),
            |url| async move {
                check(
                    RedisStore::connect(&url).await.is_err(),
                    "plain redis:// to the TLS port connected",
                )
            },
        ),
    ];
    let conclusion = oncely_conformance::run("redis-tls", factory, extra);
    drop(node);
    conclusion.exit()
}
