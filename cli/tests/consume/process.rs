//! `oncely consume` as a process: started, stopped, and what it printed.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::handler::Handler;
use crate::{BIN, FAILING, PATIENCE};

pub fn spawn_consume(dir: &Path, args: &[&str]) -> Child {
    let store = format!("sqlite:{}", dir.join("o.db").display());
    spawn_consume_on(&store, dir, args)
}

pub fn spawn_consume_on(store: &str, dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["--store", store, "consume"])
        .args(args)
        .current_dir(dir)
        .env_remove("ONCELY_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then everything the process printed.
pub fn terminate(child: Child) -> Output {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    child.wait_with_output().unwrap()
}

/// The process's output when it ends by itself (a setup error).
pub fn run_to_end(dir: &Path, args: &[&str]) -> Output {
    wait_to_end(spawn_consume(dir, args))
}

pub fn wait_to_end(child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE;
    let pid = child.id();
    let output = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !output.is_finished() {
        assert!(
            Instant::now() < deadline,
            "oncely consume (pid {pid}) kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    output.join().unwrap()
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn assert_summary_and_exit_0(output: &Output, summary: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().last(), Some(summary), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

pub fn assert_one_clear_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101),
        "{code:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

/// Every good key POSTed exactly once with its body; the failing one `attempts` times.
pub fn assert_each_key_posted_once(
    handler: &Handler,
    bodies: &HashMap<&str, Vec<u8>>,
    attempts: usize,
) {
    let received = handler.received();
    let per_key = handler.per_key();
    for (key, body) in bodies {
        let expected = if *key == FAILING { attempts } else { 1 };
        assert_eq!(
            per_key.get(*key),
            Some(&expected),
            "POSTs of {key}: {per_key:?}"
        );
        for request in received.iter().filter(|r| r.key() == *key) {
            assert_eq!(request.method, "POST");
            assert_eq!(request.path, "/hook");
            assert_eq!(&request.body, body, "body of {key}");
        }
    }
    assert_eq!(per_key.len(), bodies.len(), "unexpected keys: {per_key:?}");
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The counts of a summary line, `consumed N: done N, duplicates N, redelivered N,
/// dead-lettered N`, by name.
pub fn summary_counts(output: &Output) -> HashMap<String, u64> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let counts = last
        .split([':', ','])
        .filter_map(|part| part.trim().rsplit_once(' '))
        .filter_map(|(name, n)| Some((name.to_owned(), n.parse().ok()?)))
        .collect::<HashMap<_, _>>();
    assert_eq!(counts.len(), 5, "not a summary: {last:?}\n{stderr}");
    counts
}

/// SIGKILLs a child that a failing check would leave running; disarmed once it was waited for.
pub struct KillOnPanic(Option<i32>);

impl KillOnPanic {
    pub fn new(child: &Child) -> Self {
        KillOnPanic(Some(i32::try_from(child.id()).unwrap()))
    }

    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if let (Some(pid), true) = (self.0, std::thread::panicking()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
