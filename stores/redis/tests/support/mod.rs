//! What the Redis test binaries share beyond the server under test and a fresh key prefix per
//! store (`oncely_conformance::servers`): URL parameters, and `redis-server`s of their own.

#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;
use std::time::Duration;

pub mod cluster;

/// `url` with `param` added to its query.
pub fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// A TLS server's certificate and key, and the CA that signed them (made by
/// `oncely_conformance::certs`).
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl ServerTls {
    /// Makes a CA named `ca` in `dir` and a certificate it signed for 127.0.0.1 and localhost.
    pub fn make(dir: &std::path::Path, ca: &str) -> ServerTls {
        let ca_path = oncely_conformance::certs::make_ca(dir, ca);
        let (cert, key) = oncely_conformance::certs::make_server_certificate(dir, ca, "server");
        ServerTls {
            cert,
            key,
            ca: ca_path,
        }
    }

    /// `redis-server` arguments for a TLS listener on `tls_port` that asks clients for no
    /// certificate.
    pub fn args(&self, tls_port: u16) -> Vec<String> {
        let path = |p: &PathBuf| p.to_str().expect("UTF-8 temporary path").to_owned();
        vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&self.cert),
            "--tls-key-file".to_owned(),
            path(&self.key),
            "--tls-ca-cert-file".to_owned(),
            path(&self.ca),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]
    }
}

/// A `redis-server` run by a test; dropping it stops the server.
pub struct Node {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: std::path::PathBuf,
}

impl Node {
    /// Starts `redis-server` on `port` with `extra` arguments, its files in `dir`, and waits
    /// until it answers PING. No persistence: a restarted node starts empty.
    pub fn start(dir: &std::path::Path, port: u16, extra: &[&str]) -> Node {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        let log = dir.join(format!("redis-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        // If this process dies without running Drop (killed, aborted), the kernel stops the
        // server too, so no run leaves servers behind.
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| missing("redis-server", "redis-server", e));
        let node = Node { child, port, log };
        node.wait_for("to answer PING", |conn| {
            redis::cmd("PING").query::<String>(conn).is_ok()
        });
        node
    }

    /// Polls the node with `ready` for up to 30 s; fails with the node's log if never ready.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&mut redis::Connection) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("node URL");
        loop {
            if let Ok(mut conn) = client.get_connection()
                && ready(&mut conn)
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on 127.0.0.1:{} did not come up {what} within 30 s; its log:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails a test that needs a Redis program the machine lacks, naming the package.
pub fn missing(program: &str, package: &str, e: std::io::Error) -> ! {
    panic!(
        "cannot run `{program}` ({e}): these tests start their own Redis servers and need \
         `redis-server` and `redis-cli` on PATH (Debian: apt-get install {package})"
    )
}

/// Loopback ports free for a server and for its cluster bus (port + 10000).
pub fn free_ports(n: usize) -> Vec<u16> {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = fastrand::u16(20_000..55_000);
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

/// The suite's factory: a store on `url(fresh key prefix)` for each call.
pub fn factory(
    url: impl Fn(&str) -> String + Send + Sync + 'static,
    prefix: &'static str,
) -> impl oncely_conformance::StoreFactory {
    move || {
        let url = url(&oncely_conformance::servers::fresh_name(prefix));
        async move {
            std::sync::Arc::new(
                oncely_redis::RedisStore::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ) as std::sync::Arc<dyn oncely_core::Store>
        }
    }
}

/// The TLS trials every `rediss` server passes, named under `kind`: `url` with `cacert=` set
/// to `foreign_root` (a CA that signed nothing) is refused in one line saying why; `url` alone
/// (the system's roots, which the test points at the server's CA) connects; `plain` (the TLS
/// port, without TLS) is refused.
pub fn tls_trials(
    kind: &str,
    url: &str,
    foreign_root: &std::path::Path,
    plain: String,
) -> Vec<oncely_conformance::libtest_mimic::Trial> {
    use oncely_conformance::harness::{check, url_trial};
    use oncely_redis::RedisStore;
    vec![
        url_trial(
            kind,
            "a_root_that_did_not_sign_the_server_is_refused_in_one_line",
            with_param(url, &format!("cacert={}", foreign_root.display())),
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
            kind,
            "without_cacert_the_roots_are_those_ssl_cert_file_names",
            url.to_owned(),
            |url| async move {
                RedisStore::connect(&url).await.map(drop).map_err(|e| {
                    oncely_conformance::libtest_mimic::Failed::from(format!(
                        "SSL_CERT_FILE's CA: {e}"
                    ))
                })
            },
        ),
        url_trial(
            kind,
            "a_plain_client_cannot_use_the_tls_port",
            plain,
            |url| async move {
                check(
                    RedisStore::connect(&url).await.is_err(),
                    "plain redis to the TLS port connected",
                )
            },
        ),
    ]
}
