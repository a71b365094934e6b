//! Servers a test starts itself (a second MariaDB with TLS, a RabbitMQ node with a TLS listener,
//! a `nats-server` that requires authentication): on a free loopback port, their output in a log
//! file, stopped with everything they started when the test drops them or its process dies.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; a server started at once takes it), below
/// the kernel's ephemeral range where it can.
///
/// A server the test restarts keeps its port while it is down, and its clients keep connecting
/// to it: a port in the ephemeral range can meanwhile become the local end of an outgoing
/// connection - a client's own connection to the very port it dials (TCP's self-connect) - and
/// the server, started again, cannot bind it. No port is handed out twice by one process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1_000 {
        for _ in 0..1_000 {
            let port = fastrand::u16(LOWEST..ephemeral_low);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    given.insert(port);
    port
}

/// Spawns `command` so that the kernel kills it (SIGKILL) if this process dies first: a test
/// that panics or is killed leaves no server or consumer process behind.
///
/// The kernel sends that signal when the *thread* that spawned the child ends, not the process:
/// so every such child is spawned by one thread that lives as long as the process (a child
/// spawned from a blocking-pool thread would otherwise be killed when that thread idles out).
pub fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("oncely-test-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the spawner thread");
        std::sync::Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("the spawner thread lives as long as the process");
    answer
        .recv()
        .expect("the spawner thread lives as long as the process")
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
        // SAFETY: setpgid is async-signal-safe and touches nothing of the parent's.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let shown = format!("{command:?}");
        let child =
            spawn_tied(command).unwrap_or_else(|e| panic!("cannot start {name} ({shown}): {e}"));
        let mut server = TestServer {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
        };
        server.wait_for_port(port, within);
        server
    }

    fn wait_for_port(&mut self, port: u16, within: Duration) {
        let name = self.name.clone();
        let log = self.log.clone();
        self.wait_until(
            &format!("accept connections on 127.0.0.1:{port}"),
            within,
            |child| {
                // One that exited (a port it could not bind, say) fails now, with its log.
                if let Some(status) = child.try_wait().ok().flatten() {
                    panic!(
                        "{name} exited ({status}) before it listened on 127.0.0.1:{port}; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
    }

    /// Polls `done` (given the server's process) until it holds; fails after `within`, saying
    /// the server did not `what`, with its log.
    pub fn wait_until(
        &mut self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&mut Child) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(&mut self.child) {
            assert!(
                Instant::now() < deadline,
                "{} did not {what} within {within:?}; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the server alone (not to what it started) and waits up to `within`
    /// for it to exit: a server's own way of stopping (SIGINT, SIGTERM). Fails with the log if
    /// it is still running; what it started is killed with it when the server is dropped.
    pub fn stop_with(mut self, signal: libc::c_int, within: Duration) {
        // SAFETY: a plain syscall on the process this server started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
        self.wait_until(&format!("stop on signal {signal}"), within, |child| {
            child.try_wait().ok().flatten().is_some()
        });
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed while it ran: what the server said last may be why.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "the last lines of {}'s log ({}):\n{tail}",
                self.name,
                self.log.display()
            );
        }
        // The whole group: the process started, and what it started.
        let group = self.child.id() as libc::pid_t;
        // SAFETY: a plain syscall on a process group this server leads.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
