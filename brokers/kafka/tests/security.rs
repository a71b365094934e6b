//! TLS and SASL reach the broker and let a user in. tansu 0.6 (the Kafka-protocol broker here)
//! speaks SASL (`--authentication`, SCRAM, checked against the users in its storage) but not TLS
//! (its TLS options are accepted and unused): the TLS here is a terminator the test runs in front
//! of it ([`TlsProxy`], rustls, demanding a client certificate), as a managed service's load
//! balancer is, with tansu advertising the terminator's port.
//!
//! Shown: SCRAM-SHA-512 over TLS with a client certificate, and SCRAM-SHA-256 without TLS, each
//! publishing and consuming through oncely's publisher and source; a wrong password, a missing
//! client certificate, an unknown user, a certificate that does not verify and a CA file that is
//! not there refused, each in one line that never shows the password.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oncely_conformance::certs;
use oncely_conformance::process::{TestServer, free_port};
use oncely_conformance::tls_proxy::TlsProxy;
use oncely_consumer::Consumer;
use oncely_core::consumer::{Message, OncelyHandler};
use oncely_core::outbox::Publisher;
use oncely_core::{Key, Oncely, Scope};
use oncely_kafka::{Cluster, Error, FreshOptions, KafkaPublisher, KafkaSource, fresh_destination};

/// A tansu broker on a free port with `extra` arguments, in memory.
fn tansu(dir: &Path, extra: &[&str]) -> (TestServer, u16) {
    let port = free_port();
    let server = tansu_at(dir, port, port, "memory://tansu/", extra);
    (server, port)
}

/// A tansu broker listening on `port`, advertising `advertised`, on `storage`, its files and
/// log in `dir`.
fn tansu_at(dir: &Path, port: u16, advertised: u16, storage: &str, extra: &[&str]) -> TestServer {
    let listener = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new("tansu");
    command
        .current_dir(dir)
        .args(["broker", "--listener-url", &listener])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
        ])
        .args(["--storage-engine", storage, "--silent"])
        .args(extra);
    TestServer::start(
        "tansu",
        command,
        &dir.join(format!("tansu-{port}.log")),
        port,
        Duration::from_secs(30),
    )
}

/// SCRAM users `(name, password, mechanism)`, as `tansu user create` names the mechanisms.
const USERS: [(&str, &str, &str); 2] = [
    ("alice", "Alice-Pa55", "scram512"),
    ("bob", "Bob-Pa55", "scram256"),
];

/// A tansu that requires SASL, with [`USERS`]: they live in an SQLite file in `dir`, so they are
/// made while the broker lets anyone in, and it then restarts requiring authentication.
fn tansu_with_users(dir: &Path, port: u16, advertised: u16) -> TestServer {
    let storage = "sqlite://tansu.db";
    let open = tansu_at(dir, port, advertised, storage, &[]);
    for (name, password, mechanism) in USERS {
        let made = Command::new("tansu")
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .args(["--mechanism", mechanism, name, password])
            .output()
            .expect("tansu on PATH");
        assert!(
            made.status.success(),
            "tansu user create {name}: {}{}",
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        );
    }
    drop(open);
    tansu_at(dir, port, advertised, storage, &["--authentication"])
}

/// Makes a fresh topic, publishes three orders to it and consumes them through oncely, all over
/// the connection `security` (a URL query) gives `kafka://{userinfo}@127.0.0.1:{port}`; fails
/// unless each order's effect ran once.
async fn publish_and_consume(userinfo: &str, port: u16, security: &str) {
    let cluster_url = format!("kafka://{userinfo}@127.0.0.1:{port}?{security}");
    let cluster = Cluster::from_url(&cluster_url).unwrap();
    let fresh = fresh_destination(cluster, &FreshOptions::new("oncely-security-", "orders"))
        .await
        .unwrap_or_else(|e| panic!("create a topic over {security}: {e}"));
    let topic = &fresh.topic;
    let publisher = KafkaPublisher::connect(&format!(
        "kafka://{userinfo}@127.0.0.1:{port}/{topic}?{security}"
    ))
    .await
    .unwrap_or_else(|e| panic!("publisher over {security}: {e}"));
    let orders = ["o-1", "o-2", "o-3"];
    for order in orders {
        let message = Message::new(
            format!(r#"{{"orderId":"{order}"}}"#).into_bytes(),
            topic.as_str(),
        );
        publisher
            .publish(None, &message)
            .await
            .unwrap_or_else(|e| panic!("publish over {security}: {e}"));
    }

    let source = KafkaSource::connect(&format!(
        "kafka://{userinfo}@127.0.0.1:{port}/{topic}?group={topic}&{security}\
         &session_timeout=6s"
    ))
    .await
    .unwrap_or_else(|e| panic!("source over {security}: {e}"));
    let effects = Arc::new(AtomicU64::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (effects, all_in) = (effects.clone(), all_in.clone());
        OncelyHandler::new(
            Oncely::new(Arc::new(oncely_memory::MemoryStore::default())),
            Scope::new("orders").unwrap(),
            move |_key: Key, _message: Message| {
                let (effects, all_in) = (effects.clone(), all_in.clone());
                async move {
                    if effects.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                        all_in.notify_one();
                    }
                    Ok::<_, std::io::Error>(Vec::new())
                }
            },
        )
    };
    let consumer = Consumer::new(handler, "/orderId".parse().unwrap());
    let stop = async move {
        let _ = tokio::time::timeout(Duration::from_secs(60), all_in.notified()).await;
    };
    let report = consumer
        .run(source, stop)
        .await
        .unwrap_or_else(|e| panic!("consume over {security}: {e}"));
    assert_eq!(
        (effects.load(Ordering::SeqCst), report.done),
        (3, 3),
        "each order consumed and its effect run once over {security}: {report:?}"
    );
}

/// The CA, the broker's certificate and a client's, made in `dir`.
struct Certificates {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn certificates(dir: &Path) -> Certificates {
    Certificates {
        ca: certs::make_ca(dir, "ca"),
        server: certs::make_server_certificate(dir, "ca", "broker"),
        client: certs::make_certificate_for(dir, "ca", "client", "DNS:oncely-client"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_with_a_client_certificate_publishes_and_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let tansu_port = free_port();
    let proxy = TlsProxy::start(
        tansu_port,
        &certs.server.0,
        &certs.server.1,
        Some(&certs.ca),
    )
    .await;
    let _broker = tansu_with_users(dir.path(), tansu_port, proxy.port);
    let ca = format!("ssl.ca.location={}", certs.ca.display());
    let client = format!(
        "ssl.certificate.location={}&ssl.key.location={}",
        certs.client.0.display(),
        certs.client.1.display()
    );
    let tls = format!("security.protocol=SASL_SSL&{ca}&{client}");

    publish_and_consume(
        "alice:Alice-Pa55",
        proxy.port,
        &format!("{tls}&sasl.mechanism=SCRAM-SHA-512"),
    )
    .await;

    // The same user with a wrong password: the broker refuses the SCRAM proof.
    let text = refused(
        &format!(
            "kafka://alice:Wrong-Pa55@127.0.0.1:{}/orders?group=g&{tls}&sasl.mechanism=SCRAM-SHA-512",
            proxy.port
        ),
        "Wrong-Pa55",
    )
    .await;
    assert!(
        text.to_ascii_lowercase().contains("auth"),
        "the broker refused the login: {text}"
    );
    // Without a client certificate the terminator refuses the handshake.
    let text = refused(
        &format!(
            "kafka://alice:Alice-Pa55@127.0.0.1:{}/orders?group=g&security.protocol=SASL_SSL\
             &{ca}&sasl.mechanism=SCRAM-SHA-512",
            proxy.port
        ),
        "Alice-Pa55",
    )
    .await;
    // TLS 1.3 checks the client's certificate after the client's side of the handshake: the
    // terminator's alert may come after its reset.
    let lower = text.to_ascii_lowercase();
    assert!(
        text.contains("TLS") || lower.contains("reset") || lower.contains("disconnect"),
        "refused at the handshake: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_without_tls_publishes_and_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = tansu_with_users(dir.path(), port, port);
    publish_and_consume(
        "bob:Bob-Pa55",
        port,
        "security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-256",
    )
    .await;
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
