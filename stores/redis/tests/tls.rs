//! Redis over TLS: the shared conformance suite through `rediss://` to a TLS `redis-server` this
//! binary starts on free loopback ports, with certificates it makes with `openssl` (a CA, and a
//! server certificate for 127.0.0.1 that the CA signed), plus what only TLS shows: a wrong root
//! is refused in one line, a plain client cannot use the TLS port, and without `cacert=` the
//! system's roots are the ones `SSL_CERT_FILE` names.
//!
//! Needs `redis-server` built with TLS (Debian's is) and `openssl` on PATH.

mod support;

use oncely_conformance::{certs, servers};

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
    let suite_base = format!("{base}?cacert={}", ca.display());
    let factory = support::factory(
        move |prefix| format!("{suite_base}&prefix={prefix}"),
        "oncely_tls",
    );
    let extra = support::tls_trials(
        "redis-tls",
        &format!("{base}?prefix={}", servers::fresh_name("oncely_tls")),
        &other_ca,
        format!("redis://127.0.0.1:{tls}"),
    );
    let conclusion = oncely_conformance::run("redis-tls", factory, extra);
    drop(node);
    conclusion.exit()
}
