//! TLS to PostgreSQL, against the server on loopback, which runs with `ssl = on` (Debian's
//! snakeoil certificate, made for the host's name, never for an IP address). The URL takes
//! libpq's parameters: `sslmode` (disable, prefer, require, verify-ca, verify-full; prefer by
//! default) and `sslrootcert`. Whether a store's connections are encrypted is read from the
//! server (`pg_stat_ssl`), by the `application_name` each test gives its store.
//!
//! The driver trusts the system's roots as well as `sslrootcert`, and Debian trusts its own
//! snakeoil certificate system-wide (`/etc/ssl/certs`). So that `sslrootcert` alone decides what
//! verifies here, this binary points `SSL_CERT_FILE` and `SSL_CERT_DIR` (which the driver's root
//! loader honours, as OpenSSL does) at an empty file and directory before anything connects.

use std::future::Future;

use oncely_conformance::servers;
use oncely_postgres::PostgresStore;
use oncely_postgres::sqlx::{self, PgPool};

/// The URL of a fresh schema with `params` added.
async fn url_with(params: &str) -> String {
    let url = servers::postgres_url("oncely_tls").await;
    format!("{url}&{params}")
}

/// Whether every connection of the application `name` to the server is encrypted, and how many
/// there are.
async fn encrypted(name: &str) -> (bool, i64) {
    let admin = PgPool::connect(&servers::postgres()).await.unwrap();
    let row: (Option<bool>, i64) = sqlx::query_as(
        "SELECT bool_and(s.ssl), count(*) FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
    )
    .bind(name)
    .fetch_one(&admin)
    .await
    .unwrap();
    (row.0.unwrap_or(false), row.1)
}

/// The server's certificate file, as the server reports it.
async fn server_certificate() -> String {
    let admin = PgPool::connect(&servers::postgres()).await.unwrap();
    sqlx::query_scalar("SELECT current_setting('ssl_cert_file')")
        .fetch_one(&admin)
        .await
        .unwrap()
}

fn application(test: &str) -> String {
    format!("oncely_tls_{}_{test}", std::process::id())
}

async fn require_encrypts_every_connection_and_disable_none() {
    let (tls, plain) = (application("require"), application("disable"));
    let with_tls = url_with(&format!("sslmode=require&application_name={tls}")).await;
    let store = PostgresStore::connect(&with_tls)
        .await
        .expect("sslmode=require");
    let without = url_with(&format!("sslmode=disable&application_name={plain}")).await;
    let plain_store = PostgresStore::connect(&without)
        .await
        .expect("sslmode=disable");
    let (all_encrypted, connections) = encrypted(&tls).await;
    assert!(connections > 0, "the store has connections open");
    assert!(all_encrypted, "sslmode=require: every connection over TLS");
    let (any_encrypted, connections) = encrypted(&plain).await;
    assert!(connections > 0);
    assert!(!any_encrypted, "sslmode=disable: no connection over TLS");
    drop((store, plain_store));
}

async fn the_default_prefers_tls_when_the_server_offers_it() {
    let name = application("prefer");
    let url = url_with(&format!("application_name={name}")).await;
    let _store = PostgresStore::connect(&url).await.expect("default sslmode");
    assert!(encrypted(&name).await.0, "prefer (the default) takes TLS");
}

async fn verify_ca_accepts_the_servers_own_root_and_refuses_another() {
    let name = application("verify_ca");
    let root = server_certificate().await;
    let url = url_with(&format!(
        "sslmode=verify-ca&sslrootcert={root}&application_name={name}"
    ))
    .await;
    let _store = PostgresStore::connect(&url).await.expect("verify-ca");
    assert!(encrypted(&name).await.0);

    // A CA of our own, which signed nothing the server has.
    let dir = tempfile::tempdir().unwrap();
    let cert = oncely_conformance::certs::make_ca(dir.path(), "ca");
    let url = url_with(&format!("sslmode=verify-ca&sslrootcert={}", cert.display())).await;
    let error = PostgresStore::connect(&url)
        .await
        .expect_err("a certificate our root did not sign")
        .to_string();
    eprintln!("verify-ca, another root: {error}");
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(error.contains("certificate"), "says why: {error}");
}

async fn verify_full_refuses_a_certificate_for_another_name() {
    // The server is reached as 127.0.0.1; its certificate names a host, never an IP address.
    let root = server_certificate().await;
    let url = url_with(&format!("sslmode=verify-full&sslrootcert={root}")).await;
    assert!(url.contains("@127.0.0.1"), "{url}");
    let error = PostgresStore::connect(&url)
        .await
        .expect_err("a name mismatch")
        .to_string();
    eprintln!("verify-full, another name: {error}");
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(
        error.contains("certificate") && error.contains("127.0.0.1"),
        "names the host and the reason: {error}"
    );
}

fn main() {
    let empty = tempfile::tempdir().unwrap();
    let no_roots = empty.path().join("none.pem");
    std::fs::write(&no_roots, "").unwrap();
    // SAFETY: no other thread exists yet; the tests start below.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &no_roots);
        std::env::set_var("SSL_CERT_DIR", empty.path());
    }
    let args = libtest_mimic::Arguments::from_args();
    let tests = vec![
        trial(
            "require_encrypts_every_connection_and_disable_none",
            require_encrypts_every_connection_and_disable_none,
        ),
        trial(
            "the_default_prefers_tls_when_the_server_offers_it",
            the_default_prefers_tls_when_the_server_offers_it,
        ),
        trial(
            "verify_ca_accepts_the_servers_own_root_and_refuses_another",
            verify_ca_accepts_the_servers_own_root_and_refuses_another,
        ),
        trial(
            "verify_full_refuses_a_certificate_for_another_name",
            verify_full_refuses_a_certificate_for_another_name,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(test());
        Ok(())
    })
}
