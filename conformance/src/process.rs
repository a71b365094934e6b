//! Servers a test starts itself (a second MariaDB with TLS, a RabbitMQ node with a TLS listener,
//! a `nats-server` that requires authentication): on a free loopback port, their output in a log
//! file, stopped with everything they started when the test drops them or its process dies.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; a server started at once takes it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A server process a test started; dropping it kills the server and every process it started.
pub struct TestServer {
    child: Child,
    name: String,
    log: PathBuf,
}

impl TestServer {
    /// Starts `command` as `name`, its output in `log`, in a process group of its own (so
    /// that what it starts - a shell script's server, say - is stopped with it), and with the
    /// kernel killing it if this process dies first. Waits up to `within` for `port` on
    /// 127.0.0.1 to accept connections; fails with the server's log if it does not.
    pub fn start(
        name: &str,
        mut command: Command,
        log: &Path,
        port: u16,
        within: Duration,
    ) -> TestServer {
        let file = std::fs::File::create(log).expect("the server's log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the server's log file"))
            .stderr(file);
        // SAFETY: setpgid and prctl are async-signal-safe and touch nothing of the parent's.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let server = TestServer {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
        };
        server.wait_for_port(port, within);
        server
    }

    fn wait_for_port(&self, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not accept connections on 127.0.0.1:{port} within {within:?}; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The whole group: the process started, and what it started.
        let group = self.child.id() as libc::pid_t;
        // SAFETY: a plain syscall on a process group this server leads.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
