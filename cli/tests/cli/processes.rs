//! Processes killed or side by side on one store: no line lost, each key passed once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{BIN, servers, sqlite_url};

/// Complete output lines of `dedup` over `input`, fed slowly; with `kill_after`, the child is
/// killed with SIGKILL the moment that many lines are out (likely while it records them).
fn dedup_stream(store: &str, input: Vec<String>, kill_after: Option<usize>) -> Vec<String> {
    let mut child = Command::new(BIN)
        .args(["--store", store, "dedup", "--key", "/eventId"])
        .args(["--batch", "10", "--lease", "1s"])
        .env_remove("ONCELY_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let child = Arc::new(Mutex::new(child));
    let reader = thread::spawn({
        let child = Arc::clone(&child);
        move || {
            let (mut out, mut line) = (Vec::new(), Vec::new());
            while stdout.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                // A line cut short by the kill was not fully passed: count only whole lines.
                if line.ends_with(b"\n") {
                    out.push(String::from_utf8(line.clone()).unwrap());
                }
                line.clear();
                if kill_after == Some(out.len()) {
                    child.lock().unwrap().kill().unwrap();
                }
            }
            out
        }
    });
    let writer = thread::spawn(move || {
        for chunk in input.chunks(3) {
            if stdin.write_all(chunk.concat().as_bytes()).is_err() {
                return; // killed
            }
            let _ = stdin.flush();
            thread::sleep(Duration::from_millis(2));
        }
    });
    let out = reader.join().unwrap();
    writer.join().unwrap();
    let status = child.lock().unwrap().wait().unwrap();
    assert_eq!(status.success(), kill_after.is_none(), "{status}");
    out
}

#[test]
fn kill_9_loses_no_line_and_a_rerun_re_emits_at_most_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    // 400 lines, 300 keys: every fourth line redelivers a recent key.
    let input: Vec<String> = (0..400)
        .map(|i| {
            let key = if i % 4 == 3 { i - 2 } else { i };
            format!("{{\"eventId\":\"k{key:04}\",\"n\":{i}}}\n")
        })
        .collect();
    let key_of = |line: &String| line[12..17].to_owned();
    let unique: HashSet<String> = input.iter().map(key_of).collect();

    let first = dedup_stream(&store, input.clone(), Some(40));
    let rerun = dedup_stream(&store, input.clone(), None);

    let first_keys: HashSet<String> = first.iter().map(key_of).collect();
    let rerun_keys: HashSet<String> = rerun.iter().map(key_of).collect();
    assert_eq!(first_keys.len(), first.len(), "a run passed a key twice");
    assert_eq!(rerun_keys.len(), rerun.len(), "a run passed a key twice");
    assert!(
        first.len() >= 40 && first.len() < unique.len(),
        "killed mid-stream"
    );
    let passed = &first_keys | &rerun_keys;
    let lost: Vec<_> = unique.difference(&passed).collect();
    assert!(lost.is_empty(), "lines lost: {lost:?}");
    let again = first_keys.intersection(&rerun_keys).count();
    assert!(
        again <= 10,
        "{again} keys passed by both runs, more than one batch"
    );
    assert!(
        dedup_stream(&store, input, None).is_empty(),
        "all recorded now"
    );
}

#[test]
fn two_processes_on_one_sqlite_store_pass_each_key_once_between_them() {
    let dir = tempfile::tempdir().unwrap();
    two_processes_pass_each_key_once(&sqlite_url(dir.path()));
}

#[test]
fn two_processes_on_one_postgres_store_pass_each_key_once_between_them() {
    two_processes_pass_each_key_once(&servers::postgres_url());
}

#[test]
fn two_processes_on_one_mysql_store_pass_each_key_once_between_them() {
    two_processes_pass_each_key_once(&servers::mysql_url());
}

#[test]
fn two_processes_on_one_redis_store_pass_each_key_once_between_them() {
    two_processes_pass_each_key_once(&servers::redis_url());
}

fn two_processes_pass_each_key_once(store: &str) {
    let store = store.to_owned();
    let line = |k: usize| format!("{{\"eventId\":\"k{k:05}\"}}\n");
    // Overlapping halves, the second walked backwards, so both runs race for the middle keys.
    let first: String = (0..3000).map(line).collect();
    let second: String = (1500..4500).rev().map(line).collect();
    let spawn = |input: String| {
        let mut child = Command::new(BIN)
            .args([
                "--store", &store, "dedup", "--key", "/eventId", "--batch", "50",
            ])
            .env_remove("ONCELY_STORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
        (child, feeder)
    };
    let (a, feed_a) = spawn(first);
    let (b, feed_b) = spawn(second);
    // Drain both at once: a run blocked on a full stdout pipe would sit on its claims.
    let b = thread::spawn(move || b.wait_with_output().unwrap());
    let (a, b) = (a.wait_with_output().unwrap(), b.join().unwrap());
    feed_a.join().unwrap();
    feed_b.join().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let keys = |out: &[u8]| -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (from_a, from_b) = (keys(&a.stdout), keys(&b.stdout));
    let set_a: HashSet<_> = from_a.iter().cloned().collect();
    let set_b: HashSet<_> = from_b.iter().cloned().collect();
    assert_eq!(
        set_a.len(),
        from_a.len(),
        "the first run passed a key twice"
    );
    assert_eq!(
        set_b.len(),
        from_b.len(),
        "the second run passed a key twice"
    );
    let both: Vec<_> = set_a.intersection(&set_b).collect();
    assert!(
        both.is_empty(),
        "{} keys passed by both runs, e.g. {:?}\nfirst run: {}\nsecond run: {}",
        both.len(),
        both.first(),
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(
        set_a.len() + set_b.len(),
        4500,
        "every key passed by one of the runs"
    );
}
