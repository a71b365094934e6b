//! The `oncely` binary, end to end: real processes over real SQLite files (and PostgreSQL, MySQL
//! and Redis where a test says so).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

mod bench;
mod config;
mod dedup;
mod forget;
#[path = "../support/http_get.rs"]
mod http_get;
mod processes;
mod records;
mod usage;

const BIN: &str = env!("CARGO_BIN_EXE_oncely");

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }

    fn last_stderr_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

fn oncely(dir: &Path, args: &[&str], stdin: &[u8]) -> Run {
    oncely_with_env(dir, args, &[], stdin)
}

/// [`oncely`] with `env` set, and none of this process's `ONCELY_*` variables (every flag
/// reads one).
fn oncely_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ONCELY_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    // A command that does not read stdin may close it early: ignore that error.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        code: output
            .status
            .code()
            .expect("exited normally, not by a signal"),
        stdout: output.stdout,
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("oncely.db").display())
}

fn example() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/events.jsonl");
    std::fs::read(path).unwrap()
}

fn dedup(dir: &Path, extra: &[&str], stdin: &[u8]) -> Run {
    let store = sqlite_url(dir);
    let mut args = vec!["--store", &store, "dedup", "--key", "/eventId"];
    args.extend_from_slice(extra);
    oncely(dir, &args, stdin)
}

fn assert_one_clear_error(run: &Run, needle: &str) {
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert_ne!(run.code, 101, "exit code of a panic: {}", run.stderr);
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "not one line: {:?}",
        run.stderr
    );
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(
        run.stderr.contains(needle),
        "{needle:?} not in {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("backtrace"));
}

/// Fresh schemas, databases and key prefixes on the servers under test, named after this test
/// binary; what runs that are over left behind is dropped once per run.
mod servers {
    pub use oncely_conformance::servers::{mysql, postgres, redis};

    const PREFIX: &str = "oncely_cli_test";

    /// The tests here are plain threads: each server call runs on a runtime of its own.
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// A PostgreSQL store URL in a fresh schema of its own.
    pub fn postgres_url() -> String {
        block_on(oncely_conformance::servers::postgres_url(PREFIX))
    }

    /// A MySQL store URL naming a fresh database of its own.
    pub fn mysql_url() -> String {
        block_on(oncely_conformance::servers::mysql_url(PREFIX))
    }

    /// A Redis store URL with a fresh key prefix of its own.
    pub fn redis_url() -> String {
        block_on(oncely_conformance::servers::redis_url(PREFIX))
    }
}
