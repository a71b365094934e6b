//! TLS and SASL settings reach the broker. tansu 0.6 (the Kafka-protocol broker here) speaks SASL
//! (`--authentication`, SCRAM) but not TLS (its TLS options are accepted and unused), and with
//! its in-memory storage no user can be created before authentication is required. So what is
//! shown here is the path to a real server and its refusals, not a login: a SCRAM login to a
//! tansu that requires authentication is refused by the broker (so the client did speak SASL),
//! in one line that never shows the password and gives the broker's answer; a TLS handshake
//! with a server whose certificate does not verify fails, saying so; a CA file that is not
//! there is named.

use std::process::Command;
use std::time::Duration;

use oncely_conformance::process::{TestServer, free_port};
use oncely_kafka::{Error, KafkaPublisher, KafkaSource};

/// A tansu broker on a free port with `extra` arguments, in memory.
fn tansu(dir: &std::path::Path, extra: &[&str]) -> (TestServer, u16) {
    let port = free_port();
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new("tansu");
    command
        .args(["broker", "--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://tansu/", "--silent"])
        .args(extra);
    let server = TestServer::start(
        "tansu",
        command,
        &dir.join("tansu.log"),
        port,
        Duration::from_secs(30),
    );
    (server, port)
}

/// Connecting a source to `url` fails; its message, which must be one line without `secret`.
async fn refused(url: &str, secret: &str) -> String {
    let error = match KafkaSource::connect(url).await {
        Ok(_) => panic!("connected to {url}"),
        Err(error) => error,
    };
    let text = error.to_string();
    eprintln!("{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(!text.contains(secret), "the secret is not shown: {text}");
    assert!(
        !format!("{error:?}").contains(secret),
        "nor in Debug: {error:?}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_login_reaches_the_broker_and_its_refusal_never_shows_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = tansu(dir.path(), &["--authentication"]);
    let url = format!(
        "kafka://alice:Pa55-word@127.0.0.1:{port}/orders?group=g\
         &security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-256"
    );
    let text = refused(&url, "Pa55-word").await;
    assert!(
        text.to_ascii_lowercase().contains("auth"),
        "the broker refused the login: {text}"
    );
    // The publisher takes the same connection settings.
    let publisher = format!(
        "kafka://alice:Pa55-word@127.0.0.1:{port}/orders\
         ?security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-512"
    );
    let error = KafkaPublisher::connect(&publisher).await.unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("Pa55-word"), "{text}");
    assert!(text.to_ascii_lowercase().contains("auth"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_whose_certificate_does_not_verify_is_refused_saying_why() {
    // No Kafka broker here speaks TLS: `openssl s_server`, with a certificate of the test's own
    // CA (which the client does not trust), is as far as a handshake gets.
    let dir = tempfile::tempdir().unwrap();
    oncely_conformance::certs::make_ca(dir.path(), "ca");
    let (cert, key) = oncely_conformance::certs::make_server_certificate(dir.path(), "ca", "s");
    let port = free_port();
    let mut command = Command::new("openssl");
    command
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let _server = TestServer::start(
        "openssl s_server",
        command,
        &dir.path().join("s_server.log"),
        port,
        Duration::from_secs(10),
    );
    let url = format!("kafka://127.0.0.1:{port}/orders?group=g&security.protocol=SSL");
    let text = refused(&url, "\u{0}").await;
    assert!(
        text.contains("certificate verify failed"),
        "the handshake ran and the certificate did not verify: {text}"
    );
    assert!(text.contains("TLS"), "the hint is about TLS: {text}");
}

#[tokio::test]
async fn a_ca_file_that_is_not_there_is_named() {
    let url = "kafka://127.0.0.1:1/orders?group=g&security.protocol=SSL\
               &ssl.ca.location=/no/such/ca.pem";
    match KafkaSource::connect(url).await {
        Err(error @ Error::InvalidUrl { .. }) => {
            let text = error.to_string();
            assert!(text.contains("/no/such/ca.pem"), "{text}");
        }
        other => panic!("expected an invalid URL naming the file, got {other:?}"),
    }
}
