//! RabbitMQ over TLS: the whole broker suite and RabbitMQ's own trials through `amqps://`, against
//! a RabbitMQ node this binary starts with a TLS listener alone (no plain one) on a free loopback
//! port that demands a client certificate, with a CA, a server and a client certificate it makes
//! with `openssl`.
//!
//! The system's roots are what `SSL_CERT_FILE` names: here a CA that did not sign the server. So
//! the suite passes only if `cacertfile=` (RabbitMQ's URI parameter) adds the server's root and
//! `certfile=`/`keyfile=` give the client's certificate; a URL without either must be refused.
//! Needs RabbitMQ's `rabbitmq-server` and `openssl`.

mod support;

use std::path::Path;

use oncely_broker_suite::libtest_mimic::Failed;
use oncely_conformance::certs;
use oncely_conformance::faults::RabbitMqServer;
use oncely_conformance::harness::{check, url_trial};
use oncely_rabbitmq::{AmqpSource, queue_url};

/// A RabbitMQ node listening with TLS alone, its certificates in `dir`, that accepts only
/// clients with a certificate `ca.pem` signed.
fn start_node(dir: &Path) -> RabbitMqServer {
    let file = |name: &str| dir.join(name).display().to_string();
    RabbitMqServer::start_with(|port| {
        format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            file("ca.pem"),
            file("server.pem"),
            file("server.key"),
        )
    })
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = certs::make_ca(dir.path(), "ca");
    let other_ca = certs::make_ca(dir.path(), "other-ca");
    certs::make_server_certificate(dir.path(), "ca", "server");
    let (client_cert, client_key) =
        certs::make_certificate_for(dir.path(), "ca", "client", "DNS:oncely-client");
    let (foreign_cert, foreign_key) = certs::make_certificate_for(
        dir.path(),
        "other-ca",
        "foreign-client",
        "DNS:oncely-client",
    );
    let empty = dir.path().join("no-roots");
    std::fs::create_dir(&empty).unwrap();
    // SAFETY: no other thread exists yet; the node and the tests start below.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &other_ca);
        std::env::set_var("SSL_CERT_DIR", &empty);
    }
    let node = start_node(dir.path());
    let port = node.port();

    let server = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let identity =
        |cert: &Path, key: &Path| format!("certfile={}&keyfile={}", cert.display(), key.display());
    let client = identity(&client_cert, &client_key);
    let cacertfile = format!("cacertfile={}", ca.display());
    let base = format!("{server}?{cacertfile}&{client}");
    let extra = vec![
        url_trial(
            "rabbitmq-tls",
            "without_cacertfile_the_system_roots_alone_decide_and_refuse_in_one_line",
            queue_url(&format!("{server}?{client}"), "orders"),
            refused_for_a_certificate,
        ),
        url_trial(
            "rabbitmq-tls",
            "a_plain_client_cannot_use_the_tls_port",
            queue_url(
                &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
                "orders",
            ),
            |url| async move { refused(&url).await.map(drop) },
        ),
        url_trial(
            "rabbitmq-tls",
            "without_a_client_certificate_the_server_refuses_in_one_line",
            queue_url(&format!("{server}?{cacertfile}"), "orders"),
            refused_by_the_server,
        ),
        url_trial(
            "rabbitmq-tls",
            "a_client_certificate_from_another_ca_is_refused_in_one_line",
            queue_url(
                &format!(
                    "{server}?{cacertfile}&{}",
                    identity(&foreign_cert, &foreign_key)
                ),
                "orders",
            ),
            refused_by_the_server,
        ),
        url_trial(
            "rabbitmq-tls",
            "an_unreadable_keyfile_is_named",
            queue_url(
                &format!(
                    "{server}?{cacertfile}&certfile={}&keyfile=/no/such/client.key",
                    client_cert.display()
                ),
                "orders",
            ),
            |url| async move {
                let error = refused(&url).await?;
                check(
                    error.contains("/no/such/client.key"),
                    &format!("names the file: {error}"),
                )
            },
        ),
        url_trial(
            "rabbitmq-tls",
            "an_unreadable_cacertfile_is_named",
            queue_url(&format!("{server}?cacertfile=/no/such/ca.pem"), "orders"),
            |url| async move {
                let error = refused(&url).await?;
                check(
                    error.contains("/no/such/ca.pem"),
                    &format!("names the file: {error}"),
                )
            },
        ),
    ];
    let conclusion = support::run("rabbitmq-tls", base, false, extra);
    drop(node);
    conclusion.exit()
}

/// Connecting to `url` is refused for a certificate, in one line that says what to check.
async fn refused_for_a_certificate(url: String) -> Result<(), Failed> {
    let error = refused(&url).await?;
    check(
        error.contains("certificate") && error.contains("TLS"),
        &format!("says why, and what to check: {error}"),
    )
}

/// Connecting to `url` is refused by the server for the client's certificate, in one line.
async fn refused_by_the_server(url: String) -> Result<(), Failed> {
    let error = refused(&url).await?;
    // TLS 1.3 checks the client's certificate after the client's side of the handshake is
    // done: the server's alert (CertificateRequired, UnknownCA) may come after its reset.
    check(
        error.contains("TLS") || error.contains("reset"),
        &format!("says what to check: {error}"),
    )
}

/// The error connecting to `url` gives, which must be one line without the password.
async fn refused(url: &str) -> Result<String, Failed> {
    let error = match AmqpSource::connect(url).await {
        Ok(_) => return Err("connected".into()),
        Err(e) => e.to_string(),
    };
    eprintln!("{url}: {error}");
    check(!error.contains('\n'), &format!("one line: {error}"))?;
    check(
        !error.contains("guest:guest"),
        &format!("no password: {error}"),
    )?;
    Ok(error)
}
