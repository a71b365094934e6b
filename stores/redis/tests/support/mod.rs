//! What the Redis test binaries share: the server under test and a fresh key prefix per store.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Test prefixes start with this, then the run's start (Unix seconds), pid and a counter.
pub const TEST_PREFIX: &str = "oncelytest";

/// The server under test: `ONCELY_TEST_REDIS`, or the one on loopback.
pub fn server() -> String {
    std::env::var("ONCELY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `url` with `param` added to its query.
pub fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A prefix no other store of any run has used: its keys are this store's alone.
pub fn fresh_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{TEST_PREFIX}-{}-{}-{}",
        unix_secs(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A URL of the server under test with a fresh prefix.
pub fn fresh_url() -> String {
    with_param(&server(), &format!("prefix={}", fresh_prefix()))
}

/// Fails loudly, with the reason, when the server under test cannot be reached; then removes
/// the keys of test runs that started over two hours ago (runs still going are left alone).
pub async fn check_server_and_forget_old_runs() {
    let url = server();
    if let Err(e) = oncely_redis::RedisStore::connect(&url).await {
        panic!(
            "the Redis tests need a server at {url} (set ONCELY_TEST_REDIS to use another): {e}"
        );
    }
    let client = redis::Client::open(url.as_str()).expect("server URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let cutoff = unix_secs().saturating_sub(2 * 3600);
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{TEST_PREFIX}-*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        let old: Vec<&String> = keys
            .iter()
            .filter(|k| {
                k[TEST_PREFIX.len() + 1..]
                    .split('-')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|started| started < cutoff)
            })
            .collect();
        if !old.is_empty() {
            redis::cmd("UNLINK")
                .arg(&old)
                .query_async::<()>(&mut conn)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            break;
        }
        cursor = next;
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
