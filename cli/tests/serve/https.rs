//! An `https://` upstream: a Python HTTPS server in another process with a certificate made by
//! the test, whose CA the gateway trusts through `SSL_CERT_FILE`, as a user adds a private root.

use std::path::Path;

use hyper::StatusCode;

use crate::client::{client, send};
use crate::support::Gateway;
use crate::support::https::HttpsUpstream;

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
