//! The fulfil example killed with SIGKILL at each step boundary in turn (before the first step,
//! then after each step's record), then run again: every service is called once per order.
//! The services are a counter in this test process, so the count is taken at the receiver.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Calls received, by (step, order).
type Calls = Arc<Mutex<HashMap<(String, String), usize>>>;

/// Answers every `POST /{step}` with `{step}-{n}` (the n-th call of that step for that order)
/// and counts it.
fn services() -> (u16, Calls) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls: Calls = Arc::default();
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let step = line.split(' ').nth(1).unwrap().trim_start_matches('/');
                let step = step.to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut order = vec![0; length];
                reader.read_exact(&mut order).unwrap();
                let order = String::from_utf8(order).unwrap();
                let n = {
                    let mut calls = counted.lock().unwrap();
                    let n = calls.entry((step.clone(), order)).or_insert(0);
                    *n += 1;
                    *n
                };
                let body = format!("{step}-{n}");
                let mut stream = reader.into_inner();
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            });
        }
    });
    (port, calls)
}

fn fulfil(dir: &std::path::Path, port: u16, order: &str) -> Command {
    let store = format!("sqlite:{}", dir.join("fulfil.db").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_fulfil"));
    command.args(["--order", order, "--store", &store, "--lease", "1s"]);
    command.args(["--services", &format!("http://127.0.0.1:{port}")]);
    command.stdin(Stdio::null());
    command
}

fn counts(calls: &Calls, order: &str) -> [usize; 3] {
    let calls = calls.lock().unwrap();
    ["charge", "reserve", "confirm"].map(|step| {
        calls
            .get(&(step.to_owned(), order.to_owned()))
            .copied()
            .unwrap_or(0)
    })
}

#[test]
fn an_order_killed_at_each_step_boundary_calls_each_service_once() {
    let dir = tempfile::tempdir().unwrap();
    let (port, calls) = services();
    for (stopped, before_kill) in [
        ("start", [0, 0, 0]),
        ("charge", [1, 0, 0]),
        ("reserve", [1, 1, 0]),
        ("confirm", [1, 1, 1]),
    ] {
        let order = format!("o-{stopped}");
        let mut child = fulfil(dir.path(), port, &order)
            .args(["--stop-after", stopped])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), format!("stopped after {stopped}"));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(
            counts(&calls, &order),
            before_kill,
            "killed after {stopped}"
        );

        let started = Instant::now();
        let Output {
            status,
            stdout,
            stderr,
        } = fulfil(dir.path(), port, &order).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr),
        );
        assert!(status.success(), "{stderr}");
        assert!(
            stderr.contains("held by another attempt"),
            "the retry waited out the killed attempt's lease: {stderr}"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(
            stdout.trim(),
            "fulfilled: charge-1, reserve-1, confirm-1",
            "killed after {stopped}"
        );
        assert_eq!(counts(&calls, &order), [1, 1, 1], "killed after {stopped}");

        let again = fulfil(dir.path(), port, &order).output().unwrap();
        assert!(
            String::from_utf8_lossy(&again.stdout).starts_with("already fulfilled: "),
            "{again:?}"
        );
        assert_eq!(counts(&calls, &order), [1, 1, 1]);
    }
}
