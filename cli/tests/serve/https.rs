//! TLS on both sides of the gateway. An `https://` upstream: a Python HTTPS server in another
//! process with a certificate made by the test, whose CA the gateway trusts through
//! `SSL_CERT_FILE`, as a user adds a private root. The gateway listening with TLS
//! (`--tls-cert`, `--tls-key`): Python's requests trusting the test's CA.

use std::path::Path;

use hyper::StatusCode;

use crate::client::{client, one_execution_per_key, retrying_python_client, send};
use crate::support::Gateway;
use crate::support::https::HttpsUpstream;
use crate::upstream::upstream;

/// An HTTPS upstream whose certificate the CA `ca.pem` in `dir` signed, and a gateway in front
/// of it that trusts the roots in `trusted` alone.
fn upstream_and_gateway(dir: &Path, trusted: &Path) -> (HttpsUpstream, Gateway) {
    let (cert, key) = oncely_conformance::certs::make_server_certificate(dir, "ca", "up");
    let upstream = HttpsUpstream::start(&cert, &key);
    let gateway = Gateway::start_with_env(
        &format!("sqlite:{}", dir.join("o.db").display()),
        dir,
        &upstream.url(),
        &[],
        &[
            ("SSL_CERT_FILE", trusted.to_str().unwrap()),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    );
    (upstream, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_executed_once_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = oncely_conformance::certs::make_ca(dir.path(), "ca");
    let (upstream, gateway) = upstream_and_gateway(dir.path(), &ca);
    let client = client();
    let first = send(&client, "POST", &gateway.url("/charges"), Some("k-1"), "{}").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert!(!first.replayed());
    let again = send(&client, "POST", &gateway.url("/charges"), Some("k-1"), "{}").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed(), "the retry is the stored answer");
    assert_eq!(again.body, first.body, "byte for byte");
    assert_eq!(first.text(), r#"{"key": "k-1", "n": 1}"#);
    assert_eq!(upstream.executions(&ca), r#"{"k-1": 1}"#, "executed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_whose_certificate_does_not_verify_is_502_and_never_reached() {
    let dir = tempfile::tempdir().unwrap();
    let ca = oncely_conformance::certs::make_ca(dir.path(), "ca");
    let other = oncely_conformance::certs::make_ca(dir.path(), "other");
    let (upstream, gateway) = upstream_and_gateway(dir.path(), &other);
    let client = client();
    let answer = send(&client, "POST", &gateway.url("/charges"), Some("k-2"), "{}").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    assert!(
        answer.text().contains("certificate") || answer.text().contains("UnknownIssuer"),
        "says why: {}",
        answer.text()
    );
    // The handshake failed, so nothing was sent: the upstream executed nothing.
    assert_eq!(upstream.executions(&ca), "{}");
}

/// `oncely serve --tls-cert --tls-key` with a certificate for 127.0.0.1 that the CA `ca.pem`
/// in `dir` signed, in front of `upstream`.
fn gateway_with_tls(dir: &Path, upstream: &str) -> Gateway {
    let (cert, key) = oncely_conformance::certs::make_server_certificate(dir, "ca", "gateway");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    Gateway::start(dir, upstream, &["--tls-cert", cert, "--tls-key", key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_with_tls_a_retrying_python_client_gets_one_execution_per_key() {
    const KEYS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let ca = oncely_conformance::certs::make_ca(dir.path(), "ca");
    let (upstream, executions, _task) = upstream().await;
    let gateway = gateway_with_tls(dir.path(), &upstream);
    assert_eq!(gateway.scheme, "https", "it says it listens with TLS");
    let url = gateway.url("/slow/charges");
    let ca = ca.to_str().unwrap();
    let answers = retrying_python_client(url, KEYS, 12, &[("REQUESTS_CA_BUNDLE", ca)]).await;
    one_execution_per_key(&answers, &executions, KEYS);
    let body = answers[0]["body"].as_str().unwrap();
    assert!(body.contains("xfp=https "), "the upstream is told: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_with_tls_plain_http_and_clients_that_do_not_trust_it_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    oncely_conformance::certs::make_ca(dir.path(), "ca");
    let (upstream, executions, _task) = upstream().await;
    let gateway = gateway_with_tls(dir.path(), &upstream);
    let url = gateway.url("/charges");
    // Python's requests with its own roots (certifi's): our CA is not among them.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", "import sys, requests; requests.post(sys.argv[1], headers={'Idempotency-Key': 'k'})"])
            .arg(url)
            .env_remove("REQUESTS_CA_BUNDLE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("CERTIFICATE_VERIFY_FAILED"), "{stderr}");
    // Plain HTTP to the TLS port: no HTTP answer comes back.
    let mut stream = std::net::TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(
            b"POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(executions.all().is_empty(), "nothing reached the upstream");
}

#[test]
fn tls_files_that_cannot_be_used_are_named_and_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap();
    oncely_conformance::certs::make_ca(dir.path(), "ca");
    let (cert, _) = oncely_conformance::certs::make_server_certificate(dir.path(), "ca", "a");
    let (_, other_key) = oncely_conformance::certs::make_server_certificate(dir.path(), "ca", "b");
    let serve = |args: &[&str]| {
        let output = std::process::Command::new(crate::support::BIN)
            .args([
                "--store",
                "memory:",
                "serve",
                "--upstream",
                "http://127.0.0.1:9",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .env_remove("ONCELY_STORE")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let cert = cert.to_str().unwrap();
    let (code, stderr) = serve(&["--tls-cert", cert]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, stderr) = serve(&["--tls-cert", "/no/such.pem", "--tls-key", "/no/such.key"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/no/such.pem"), "{stderr}");
    let (code, stderr) = serve(&["--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("does not go with the certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}
