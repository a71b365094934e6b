//! Faults a test injects around the processes under test, with the real mechanisms: a store
//! server of the test's own that it stops, crashes and starts again while consumers use it.
//!
//! The machine's shared servers are never touched: other tests use them at the same time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{TestServer, free_port};

/// How a server goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its own orderly shutdown (PostgreSQL's "fast" mode: sessions are ended with an error,
    /// what is committed is written out).
    Graceful,
    /// SIGKILL of the server and everything it started: a crash, then crash recovery on the
    /// next start.
    Crash,
}

/// A PostgreSQL server of the test's own (`initdb` into a temporary directory), on a free
/// loopback port with trust authentication, that the test can stop and start again. Dropping
/// it kills it and removes its files.
///
/// PostgreSQL refuses to run as root: when the test runs as root, the server runs as the
/// `postgres` user (Debian's packages make it).
pub struct PostgresServer {
    base: PathBuf,
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    server: Option<TestServer>,
    starts: usize,
}

impl PostgresServer {
    /// Makes a new cluster and starts it; fails, saying what is missing, if PostgreSQL's
    /// server programs are not installed.
    pub fn start() -> PostgresServer {
        let bin = postgres_bin();
        let base = std::env::temp_dir().join(format!(
            "oncely-postgres-{}-{}",
            std::process::id(),
            crate::servers::fresh_name("pg")
        ));
        std::fs::create_dir_all(&base).expect("the server's directory");
        let user = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user())
        } else {
            None
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&base, Some(uid), Some(gid)).expect("chown the directory");
        }
        let mut server = PostgresServer {
            base,
            port: free_port(),
            bin,
            user,
            server: None,
            starts: 0,
        };
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(server.data()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let out = initdb.output().expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server.start_again();
        server
    }

    /// The URL of its `postgres` database, as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it is running.
    pub fn is_up(&self) -> bool {
        self.server.is_some()
    }

    /// Takes it down `how`; nothing if it is down already.
    pub fn stop(&mut self, how: Stop) {
        let Some(server) = self.server.take() else {
            return;
        };
        match how {
            // SIGINT is PostgreSQL's fast shutdown.
            Stop::Graceful => server.stop_with(libc::SIGINT, Duration::from_secs(60)),
            Stop::Crash => drop(server),
        }
    }

    /// Starts it on the same data and port; waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        self.starts += 1;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.base)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ]);
        let log = self.base.join(format!("postgres-{}.log", self.starts));
        self.server = Some(TestServer::start(
            "postgres (the test's own)",
            command,
            &log,
            self.port,
            Duration::from_secs(60),
        ));
        // The port opens before the server takes sessions ("the database system is starting
        // up" while it recovers): up means pg_isready says it accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the test's PostgreSQL did not accept connections within 60 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it `how`, leaves it down for `down`, and starts it again.
    pub fn restart(&mut self, how: Stop, down: Duration) {
        self.stop(how);
        std::thread::sleep(down);
        self.start_again();
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    /// `program` from PostgreSQL's server programs, as the server's user.
    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid).env("HOME", &self.base);
        }
        command.current_dir(&self.base);
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The newest PostgreSQL's server programs (Debian: `/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root).ok().and_then(|versions| {
        versions
            .filter_map(|v| v.ok())
            .filter_map(|v| {
                let version: u32 = v.file_name().to_str()?.parse().ok()?;
                Some((version, v.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").exists())
            .max()
            .map(|(_, bin)| bin)
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server programs under {} (Debian: apt-get install postgresql): \
             this test starts a server of its own",
            root.display()
        )
    })
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").expect("a C string");
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, and there is no `postgres` user to run PostgreSQL as"
    );
    // SAFETY: non-null, as checked.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}
