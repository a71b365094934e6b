//! The checkout example across a crash: the payments example in a process of its own, checkout
//! aborted right after its charge, then run again. The payments API is called twice and
//! charges once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Kills the payments process when the test ends, however it ends.
struct Payments(Child);

impl Drop for Payments {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on 127.0.0.1:`port`: the body, once something answers there.
fn get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            return response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "the payments example never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn checkout(dir: &std::path::Path, port: u16, crash: bool) -> Output {
    let store = format!("sqlite:{}", dir.join("checkout.db").display());
    let payments = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkout"));
    command.args(["--order", "o-1", "--store", &store, "--payments", &payments]);
    command.args(["--lease", "1s"]);
    if crash {
        command.arg("--crash-after-charge");
    }
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_checkout_that_crashed_after_its_charge_is_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = format!("sqlite:{}", dir.path().join("payments.db").display());
    let _payments = Payments(
        Command::new(env!("CARGO_BIN_EXE_payments"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store", &store])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(get(port, "/charges"), "[]");

    let crashed = checkout(dir.path(), port, true);
    assert!(!crashed.status.success(), "it aborts after the charge");
    let charges: serde_json::Value = serde_json::from_str(&get(port, "/charges")).unwrap();
    assert_eq!(
        charges.as_array().unwrap().len(),
        1,
        "charged before the crash"
    );

    let retried = checkout(dir.path(), port, false);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&retried.stdout),
        String::from_utf8_lossy(&retried.stderr),
    );
    assert!(retried.status.success(), "{stderr}");
    assert!(
        stderr.contains("the payments API replayed the charge it made before"),
        "the retry called the payments API again: {stderr}"
    );
    let id = charges[0]["id"].as_str().unwrap();
    assert!(
        stdout.contains(id),
        "the retry reports the first charge: {stdout}"
    );
    let charges: serde_json::Value = serde_json::from_str(&get(port, "/charges")).unwrap();
    assert_eq!(
        charges.as_array().unwrap().len(),
        1,
        "charged once: {charges}"
    );

    // And once more: the order is done, nothing is called.
    let again = checkout(dir.path(), port, false);
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("already charged: "));
}
