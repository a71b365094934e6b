//! A handler that is down, silent, late, or not up yet: what is posted, retried and
//! dead-lettered.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely::consumer::{ATTEMPTS_HEADER, ERROR_HEADER};

use crate::handler::{Handler, answer_after, receiving_handler};
use crate::process::{
    KillOnPanic, assert_summary_and_exit_0, runtime, spawn_consume, summary_counts, terminate,
    wait_for,
};
use crate::rabbitmq::Rabbit;
use crate::{BIN, PATIENCE, amqp_server, order};

/// A handler that is down fails its attempts (the key released after each); one that takes
/// the request and never answers holds its key, so with one attempt it is dead-lettered at once
/// (the others would find the key held: see `a_handler_that_answers_too_late_...` below).
#[test]
fn a_handler_that_is_down_or_silent_fails_its_attempts_and_the_error_says_which() {
    let rt = runtime();
    let down = Handler::down();
    let silent = Handler::silent();
    let cases = [
        (
            down.as_str(),
            "1s",
            "2",
            format!("handler at {down} unreachable: tcp connect error: "),
        ),
        (
            silent.as_str(),
            "300ms",
            "1",
            format!(
                "handler at {silent} did not answer within 300ms (--timeout); outcome unknown, \
                 so the key stays held until its lease ends"
            ),
        ),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|(url, timeout, attempts, _)| deliver_one(&rt, "k", url, attempts, timeout))
        .collect();
    for ((rabbit, _dir, child), (_, _, attempts, error)) in runs.into_iter().zip(&cases) {
        let letters = rt.block_on(async {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let letters = rabbit.dead_letters().await;
                if !letters.is_empty() || Instant::now() > deadline {
                    return letters;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let output = terminate(child);
        assert_summary_and_exit_0(
            &output,
            "consumed 1: done 0, duplicates 0, redelivered 0, dead-lettered 1",
        );
        assert_eq!(letters.len(), 1);
        let got = letters[0].header(ERROR_HEADER).unwrap_or_default();
        assert!(
            got.starts_with(error.as_str()),
            "{got:?} is not {error:?}..."
        );
        assert_eq!(letters[0].header(ATTEMPTS_HEADER), Some(*attempts));
    }
}

/// Publishes one order keyed `key` to a fresh queue, then starts `oncely consume` delivering it
/// to `url` with `--max-attempts attempts` and `--timeout timeout`.
fn deliver_one(
    rt: &tokio::runtime::Runtime,
    key: &str,
    url: &str,
    attempts: &str,
    timeout: &str,
) -> (Rabbit, tempfile::TempDir, Child) {
    deliver_one_with(
        rt,
        key,
        url,
        &["--max-attempts", attempts, "--timeout", timeout],
    )
}

/// Publishes one order keyed `key` to a fresh queue, then starts `oncely consume` delivering it
/// to `url` with `more` flags.
fn deliver_one_with(
    rt: &tokio::runtime::Runtime,
    key: &str,
    url: &str,
    more: &[&str],
) -> (Rabbit, tempfile::TempDir, Child) {
    let rabbit = rt.block_on(async {
        let rabbit = Rabbit::new().await;
        rabbit.publish("m-0", &order(key, 1)).await;
        rabbit
    });
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}?dlq={}", amqp_server(), rabbit.queue, rabbit.dlq);
    let mut args = vec!["--from", &from, "--key", "/id", "--deliver", url];
    args.extend_from_slice(more);
    let child = spawn_consume(dir.path(), &args);
    (rabbit, dir, child)
}

/// A POST that reached the handler and got no answer in time (the handler answers after
/// `--timeout`), or lost its connection (the handler hangs up without answering), may have
/// had its effect: the key stays held until its lease (--timeout + 30s) ends. In the seconds
/// after it, the message keeps coming back and is given back each time (the key in progress),
/// neither POSTed again nor dead-lettered, though `--max-attempts` is 2.
#[test]
fn a_handler_that_answers_too_late_or_hangs_up_is_posted_once_while_its_key_is_held() {
    let rt = runtime();
    let late = TcpListener::bind("127.0.0.1:0").unwrap();
    let hangs_up = TcpListener::bind("127.0.0.1:0").unwrap();
    let urls = [&late, &hangs_up].map(|l| format!("http://{}/hook", l.local_addr().unwrap()));
    let handlers = [
        receiving_handler(late, answer_after(Duration::from_millis(1500))),
        receiving_handler(hangs_up, drop),
    ];
    let mut runs = Vec::new();
    for url in &urls {
        let (rabbit, dir, child) = deliver_one(&rt, "slow", url, "2", "300ms");
        runs.push((rabbit, dir, KillOnPanic::new(&child), child));
    }
    for received in &handlers {
        wait_for("the first POST", || !received.lock().unwrap().is_empty());
    }
    // The late answer comes 1.5 s after the POST; the lease ends 30.3 s after it at the soonest
    // (20.2 s had it been renewed at the last moment).
    std::thread::sleep(Duration::from_secs(5));

    // Every process stopped before any check, so a failing one leaves none running.
    let ended: Vec<_> = runs
        .into_iter()
        .map(|(rabbit, _dir, guard, child)| {
            let letters = rt.block_on(rabbit.dead_letters());
            let output = terminate(child);
            guard.disarm();
            (letters, output)
        })
        .collect();
    for ((letters, output), received) in ended.into_iter().zip(&handlers) {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let received = received.lock().unwrap().clone();
        assert_eq!(received.len(), 1, "POSTed again within the lease: {stderr}");
        assert_eq!(received[0].1.key(), "slow");
        assert!(letters.is_empty(), "dead-lettered: {letters:?}\n{stderr}");
        let counts = summary_counts(&output);
        assert_eq!(counts["done"], 0, "{stderr}");
        assert_eq!(counts["dead-lettered"], 0, "{stderr}");
        // Each return found the key in progress and went back to the broker.
        assert!(counts["redelivered"] >= 2, "{stderr}");
    }
}

/// A handler that refuses connections (it is not up yet) is sent nothing: the key is released
/// and the retry POSTs it as soon as the handler is up, well within the key's lease.
#[test]
fn a_handler_that_refuses_connections_at_first_gets_the_message_once_it_is_up() {
    let rt = runtime();
    let rabbit = rt.block_on(async {
        let rabbit = Rabbit::new().await;
        rabbit.publish("m-0", &order("early", 1)).await;
        rabbit
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{port}/hook");
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}?dlq={}", amqp_server(), rabbit.queue, rabbit.dlq);
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    let mut child = Command::new(BIN)
        .args(["--store", &store, "consume"])
        .args(["--from", &from, "--key", "/id", "--deliver", &url])
        .args(["--max-attempts", "10", "--timeout", "1s"])
        .current_dir(dir.path())
        .env_remove("ONCELY_STORE")
        // The runner's log of each failed attempt.
        .env("RUST_LOG", "oncely_consumer=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnPanic::new(&child);
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line.unwrap_or_default());
                log.push('\n');
            }
        })
    };
    wait_for("a refused attempt", || {
        log.lock()
            .unwrap()
            .contains("unreachable: tcp connect error")
    });
    let received = receiving_handler(
        TcpListener::bind(port).unwrap(),
        answer_after(Duration::ZERO),
    );
    // The key's lease is 31 s: a key held by the refused attempt would not be POSTed in this.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM lets the delivery in flight finish: it is acked once the handler's answer is in.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    guard.disarm();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        !received.lock().unwrap().is_empty(),
        "not POSTed 10 s after the handler came up (the key held?):\n{log}"
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        log.lines().last(),
        Some("consumed 1: done 1, duplicates 0, redelivered 0, dead-lettered 0"),
        "{log}"
    );
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1, "{log}");
    assert_eq!(received[0].1.key(), "early");
    assert!(rt.block_on(rabbit.dead_letters()).is_empty(), "{log}");
}

/// With `--forward-key STEP`, the handler gets the key derived for STEP from the scope and the
/// message's key as its Idempotency-Key, not the key itself.
#[test]
fn forward_key_sends_the_handler_the_derived_key() {
    let rt = runtime();
    let handler = Handler::start();
    let more = ["--scope", "billing", "--forward-key", "charge"];
    let (_rabbit, _dir, child) = deliver_one_with(&rt, "fwd", &handler.url, &more);
    let guard = KillOnPanic::new(&child);
    wait_for("the handler's request", || !handler.received().is_empty());
    guard.disarm();
    terminate(child);
    let scope = oncely::Scope::new("billing").unwrap();
    let derived = oncely::Key::new("fwd").unwrap().derive(&scope, "charge");
    assert_eq!(handler.received()[0].key(), derived.as_str());
}
