//! TLS to MySQL/MariaDB: the shared conformance suite over `ssl-mode=VERIFY_IDENTITY`, against a
//! second `mariadbd` this binary starts (the machine's own has TLS off) on a free loopback port
//! with a data directory of its own, a CA and a server certificate it makes with `openssl`, and
//! `require_secure_transport` on: every connection that server accepts is encrypted. Then what
//! only TLS shows: a plain connection is refused, the default (`PREFERRED`) takes TLS, a root
//! that did not sign the server is refused in one line, and `VERIFY_IDENTITY` refuses a
//! certificate made for another name where `VERIFY_CA` accepts it.
//!
//! The URL parameters are sqlx's (`ssl-mode`, `ssl-ca`); the driver trusts the system's roots as
//! well as `ssl-ca`, so this binary points `SSL_CERT_FILE` and `SSL_CERT_DIR` at an empty file and
//! directory: `ssl-ca` alone decides what verifies. Needs `mariadbd`, `mariadb-install-db` and
//! `openssl` on PATH.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use oncely_conformance::harness::{check, url_trial};
use oncely_conformance::libtest_mimic::Failed;
use oncely_conformance::process::{TestServer, free_port};
use oncely_conformance::{certs, servers};
use oncely_mysql::MySqlStore;
use sqlx::Connection;

/// A `mariadbd` with TLS required, its data in `dir`; it lives as long as the value.
fn start_mariadb(dir: &Path, port: u16) -> TestServer {
    let data = dir.join("data");
    // Its own tmpdir: a starting mariadbd removes every `#sql*` file in its tmpdir, other
    // servers' temporary tables too.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let install = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--auth-root-authentication-method=normal"])
        .args(["--skip-test-db", "--user=root"])
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .output()
        .expect("mariadb-install-db on PATH");
    assert!(
        install.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let file = |name: &str| dir.join(name).display().to_string();
    let mut server = Command::new("mariadbd");
    server
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg(format!("--socket={}", file("mariadb.sock")))
        .arg(format!("--port={port}"))
        .args(["--bind-address=127.0.0.1", "--user=root"])
        .args([
            "--innodb-buffer-pool-size=64M",
            "--require-secure-transport=ON",
        ])
        .arg(format!("--ssl-ca={}", file("ca.pem")))
        .arg(format!("--ssl-cert={}", file("server.pem")))
        .arg(format!("--ssl-key={}", file("server.key")));
    TestServer::start(
        "mariadbd (TLS)",
        server,
        &dir.join("mariadbd.log"),
        port,
        Duration::from_secs(60),
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = certs::make_ca(dir.path(), "ca");
    let other_ca = certs::make_ca(dir.path(), "other-ca");
    // For the address the tests connect to, never for the name `localhost`.
    certs::make_certificate_for(dir.path(), "ca", "server", "IP:127.0.0.1");
    let empty = dir.path().join("no-roots");
    std::fs::create_dir(&empty).unwrap();
    let no_roots = empty.join("none.pem");
    std::fs::write(&no_roots, "").unwrap();
    // SAFETY: no other thread exists yet; the server and the tests start below.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &no_roots);
        std::env::set_var("SSL_CERT_DIR", &empty);
    }
    let port = free_port();
    let server = start_mariadb(dir.path(), port);

    let base = format!("mysql://root@127.0.0.1:{port}");
    let verified = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca.display());
    let suite_base = base.clone();
    let factory = move || {
        let (base, params) = (suite_base.clone(), verified.clone());
        async move {
            let database = fresh_database(&base).await;
            let url = format!("{base}/{database}?{params}");
            Arc::new(
                MySqlStore::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ) as _
        }
    };
    let extra = vec![
        url_trial(
            "mysql-tls",
            "the_server_refuses_a_plain_connection",
            format!("{base}/mysql?ssl-mode=DISABLED"),
            // MariaDB answers "Access denied" (1045), the same user connecting over TLS is
            // let in (the suite).
            |url| async move {
                refused(&url, "a plain connection to a server requiring TLS")
                    .await
                    .map(drop)
            },
        ),
        url_trial(
            "mysql-tls",
            "the_default_ssl_mode_takes_tls",
            format!("{base}/mysql"),
            |url| async move {
                MySqlStore::connect(&url)
                    .await
                    .map(drop)
                    .map_err(|e| Failed::from(format!("PREFERRED, the default: {e}")))
            },
        ),
        url_trial(
            "mysql-tls",
            "verify_ca_refuses_a_root_that_did_not_sign_the_server_in_one_line",
            format!(
                "{base}/mysql?ssl-mode=VERIFY_CA&ssl-ca={}",
                other_ca.display()
            ),
            |url| async move {
                let error = refused(&url, "a root that signed nothing of the server's").await?;
                check(error.contains("certificate"), &format!("says why: {error}"))
            },
        ),
        url_trial(
            "mysql-tls",
            "verify_identity_refuses_another_name_which_verify_ca_accepts",
            format!(
                "mysql://root@localhost:{port}/mysql?ssl-ca={}",
                ca.display()
            ),
            |url| async move {
                // `localhost` reaches the server (on 127.0.0.1), whose certificate names only
                // 127.0.0.1.
                MySqlStore::connect(&format!("{url}&ssl-mode=VERIFY_CA"))
                    .await
                    .map(drop)
                    .map_err(|e| Failed::from(format!("VERIFY_CA ignores the name: {e}")))?;
                let error =
                    refused(&format!("{url}&ssl-mode=VERIFY_IDENTITY"), "another name").await?;
                check(
                    error.contains("certificate") && error.contains("localhost"),
                    &format!("names the host and the reason: {error}"),
                )
            },
        ),
    ];
    let conclusion = oncely_conformance::run("mysql-tls", factory, extra);
    drop(server);
    conclusion.exit()
}

/// A fresh database on the TLS server (created over a verified-less TLS connection).
async fn fresh_database(base: &str) -> String {
    let database = servers::fresh_name("oncely_tls");
    let mut admin = sqlx::MySqlConnection::connect(&format!("{base}/mysql?ssl-mode=REQUIRED"))
        .await
        .expect("the TLS server, ssl-mode=REQUIRED");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    database
}

/// The error connecting to `url` gives, which must be one line; `what` says why it must fail.
async fn refused(url: &str, what: &str) -> Result<String, Failed> {
    let error = MySqlStore::connect(url)
        .await
        .err()
        .ok_or_else(|| Failed::from(format!("connected: {what}")))?
        .to_string();
    eprintln!("{what}: {error}");
    check(!error.contains('\n'), &format!("one line: {error}"))?;
    Ok(error)
}
