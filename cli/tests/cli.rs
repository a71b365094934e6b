//! The `oncely` binary, end to end: real processes over real SQLite files.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use oncely::{ClaimOutcome, Key, Oncely, Scope};

const BIN: &str = env!("CARGO_BIN_EXE_oncely");

/// What `python3 scripts/gen-events.py` prints for examples/events.jsonl.
const EXAMPLE_SUMMARY: &str = "read 1104, passed 1000, duplicates 100, rejected 4";

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
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("ONCELY_STORE")
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

#[test]
fn example_gives_the_generators_counts_and_a_rerun_passes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = dedup(dir.path(), &[], &example());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.last_stderr_line(), EXAMPLE_SUMMARY);
    assert_eq!(first.stdout().lines().count(), 1000);

    let second = dedup(dir.path(), &[], &example());
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        second.last_stderr_line(),
        "read 1104, passed 0, duplicates 1100, rejected 4"
    );
    assert!(second.stdout.is_empty());
}

#[test]
fn output_is_exactly_the_first_occurrence_of_each_key_in_input_order() {
    let input = example();
    let mut seen = HashSet::new();
    let mut expected = Vec::new();
    for line in input.split_inclusive(|&b| b == b'\n') {
        let id = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("eventId")?.as_str().map(str::to_owned));
        if let Some(id) = id.filter(|id| !id.is_empty())
            && seen.insert(id)
        {
            expected.extend_from_slice(line);
        }
    }
    assert_eq!(seen.len(), 1000);
    let dir = tempfile::tempdir().unwrap();
    let run = dedup(dir.path(), &["--batch", "64"], &input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout == expected,
        "output differs from first occurrences"
    );
}

#[test]
fn rejected_lines_are_reported_by_number_and_written_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("{{\"eventId\":\"{}\"}}\n", "x".repeat(513));
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"eventId\":\"a\"}\n"); // 1 passed
    input.extend_from_slice(b"not json\n"); // 2
    input.extend_from_slice(b"\n"); // 3 blank
    input.extend_from_slice(b"{\"other\":1}\r\n"); // 4 missing key
    input.extend_from_slice(b"{\"eventId\":\"\"}\n"); // 5 empty key
    input.extend_from_slice(b"{\"eventId\":null}\n"); // 6 null key
    input.extend_from_slice(b"{\"eventId\":\"\xff\"}\n"); // 7 not UTF-8
    input.extend_from_slice(long.as_bytes()); // 8 key too long
    input.extend_from_slice(b"{\"eventId\":\"a\"}\n"); // 9 duplicate
    input.extend_from_slice(b"[1,"); // 10 not JSON, no final newline
    let rejects = dir.path().join("rejects.jsonl");
    let run = dedup(
        dir.path(),
        &["--rejects", rejects.to_str().unwrap()],
        &input,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), "{\"eventId\":\"a\"}\n");
    let reported: Vec<&str> = run.stderr.lines().collect();
    let expected_prefixes = [
        "line 2: not JSON",
        "line 3: blank line",
        "line 4: missing key field /eventId",
        "line 5: key is empty",
        "line 6: key field /eventId is null",
        "line 7: not UTF-8",
        "line 8: key is 513 bytes",
        "line 10: not JSON",
        "read 10, passed 1, duplicates 1, rejected 8",
    ];
    assert_eq!(reported.len(), expected_prefixes.len(), "{}", run.stderr);
    for (line, prefix) in reported.iter().zip(expected_prefixes) {
        assert!(
            line.starts_with(prefix),
            "{line:?} does not start with {prefix:?}"
        );
    }
    let mut want = Vec::new();
    want.extend_from_slice(b"not json\n\n{\"other\":1}\r\n{\"eventId\":\"\"}\n");
    want.extend_from_slice(b"{\"eventId\":null}\n{\"eventId\":\"\xff\"}\n");
    want.extend_from_slice(long.as_bytes());
    want.extend_from_slice(b"[1,\n");
    assert!(
        std::fs::read(&rejects).unwrap() == want,
        "rejects file differs"
    );
}

#[test]
fn strict_exits_1_only_when_something_was_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let rejected = dedup(dir.path(), &["--strict"], b"{\"eventId\":\"a\"}\nbad\n");
    assert_eq!(rejected.code, 1, "{}", rejected.stderr);
    assert_eq!(rejected.stdout(), "{\"eventId\":\"a\"}\n");
    let clean = dedup(dir.path(), &["--strict"], b"{\"eventId\":\"b\"}\n");
    assert_eq!(clean.code, 0, "{}", clean.stderr);
    let lenient = dedup(dir.path(), &[], b"bad\n");
    assert_eq!(lenient.code, 0, "{}", lenient.stderr);
}

#[test]
fn scopes_are_kept_apart_and_composite_keys_combine_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let input = b"{\"order\":1,\"step\":\"paid\"}\n{\"order\":1,\"step\":\"shipped\"}\n{\"step\":\"paid\",\"order\":1}\n";
    let run = |scope: &str| {
        let args = [
            "--store",
            &store,
            "dedup",
            "--key",
            "/order,/step",
            "--scope",
            scope,
        ];
        oncely(dir.path(), &args, input)
    };
    let a = run("a");
    assert_eq!(
        a.stdout(),
        "{\"order\":1,\"step\":\"paid\"}\n{\"order\":1,\"step\":\"shipped\"}\n"
    );
    assert_eq!(a.stdout(), run("b").stdout());
    assert!(run("a").stdout.is_empty());
    let inspect = oncely(
        dir.path(),
        &["--store", &store, "inspect", "--scope", "b", "[1,\"paid\"]"],
        b"",
    );
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
}

/// A number is keyed by its exact value, never rounded through f64, and the string "42" is not
/// the number 42: every distinct event passes, only true duplicates are dropped.
#[test]
fn dedup_keys_big_numbers_exactly_and_strings_apart_from_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let distinct = [
        r#"{"eventId":18446744073709551616,"n":1}"#,
        r#"{"eventId":18446744073709551617,"n":2}"#,
        r#"{"eventId":100000000000000000000001,"n":3}"#,
        r#"{"eventId":100000000000000000000002,"n":4}"#,
        r#"{"eventId":"42","n":5}"#,
        r#"{"eventId":42,"n":6}"#,
        r#"{"eventId":"evt-1","n":7}"#,
    ];
    let duplicates = [
        r#"{"eventId":18446744073709551616,"n":8}"#,
        r#"{"n":9, "eventId": 18446744073709551617}"#,
        r#"{"eventId":100000000000000000000001,"n":10}"#,
        r#"{"eventId":100000000000000000000002,"n":11}"#,
        r#"{"eventId":"42","n":12}"#,
        r#"{"eventId": 42, "n":13}"#,
        r#"{"eventId":"evt-1","n":14}"#,
    ];
    let input: String = distinct
        .iter()
        .chain(&duplicates)
        .map(|line| format!("{line}\n"))
        .collect();
    let first = dedup(dir.path(), &[], input.as_bytes());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout().lines().collect::<Vec<_>>(), distinct);
    assert_eq!(
        first.last_stderr_line(),
        "read 14, passed 7, duplicates 7, rejected 0"
    );
    let again = dedup(dir.path(), &[], input.as_bytes());
    assert!(again.stdout.is_empty(), "{}", again.stdout());
    assert_eq!(
        again.last_stderr_line(),
        "read 14, passed 0, duplicates 14, rejected 0"
    );
    // The stored keys: every digit, and the string quoted so it is not the number's key.
    for (key, found) in [
        ("18446744073709551616", true),
        ("18446744073709551617", true),
        ("100000000000000000000001", true),
        ("100000000000000000000002", true),
        ("42", true),
        ("\"42\"", true),
        ("evt-1", true),
        ("1.8446744073709552e+19", false),
    ] {
        let inspect = oncely(dir.path(), &["--store", &store, "inspect", key], b"");
        assert_eq!(inspect.code == 0, found, "{key}: {}", inspect.stderr);
    }

    // Composite business keys from JSON pointers: the same, field by field.
    let distinct = [
        r#"{"orderId":100000000000000000000001,"paymentId":18446744073709551616}"#,
        r#"{"orderId":100000000000000000000001,"paymentId":18446744073709551617}"#,
        r#"{"orderId":100000000000000000000002,"paymentId":18446744073709551616}"#,
        r#"{"orderId":"42","paymentId":1}"#,
        r#"{"orderId":42,"paymentId":1}"#,
    ];
    let duplicates = [
        r#"{"paymentId":18446744073709551617,"orderId":100000000000000000000001}"#,
        r#"{"orderId":42,"paymentId":1}"#,
        r#"{"orderId":"42","paymentId":1}"#,
    ];
    let input: String = distinct
        .iter()
        .chain(&duplicates)
        .map(|line| format!("{line}\n"))
        .collect();
    let args = [
        "--store",
        &store,
        "dedup",
        "--key",
        "/orderId,/paymentId",
        "--scope",
        "payments",
    ];
    let run = oncely(dir.path(), &args, input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout().lines().collect::<Vec<_>>(), distinct);
    assert_eq!(
        run.last_stderr_line(),
        "read 8, passed 5, duplicates 3, rejected 0"
    );
}

#[test]
fn store_comes_from_oncely_store_and_memory_forgets_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut child = Command::new(BIN)
            .args(["dedup", "--key", "/eventId"])
            .current_dir(dir.path())
            .env("ONCELY_STORE", "memory:")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"eventId\":\"a\"}\n{\"eventId\":\"a\"}\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stderr).unwrap()
    };
    assert_eq!(
        run().trim_end(),
        "read 2, passed 1, duplicates 1, rejected 0"
    );
    assert_eq!(
        run().trim_end(),
        "read 2, passed 1, duplicates 1, rejected 0"
    );
    assert!(!dir.path().join("oncely.db").exists(), "default store used");
}

#[test]
fn a_bad_store_url_is_one_clear_line_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        &["dedup", "--key", "/eventId"][..],
        &["inspect", "k"],
        &["purge"],
        &["stats"],
    ] {
        let mut args = vec!["--store", "nope:x"];
        args.extend_from_slice(command);
        let run = oncely(dir.path(), &args, b"{\"eventId\":\"a\"}\n");
        assert_one_clear_error(&run, "nope:x");
        assert!(run.stderr.contains("supported"), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn a_directory_or_a_text_file_as_the_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_db = dir.path().join("notes.txt");
    std::fs::write(
        &not_a_db,
        "these are not the records you are looking for\n".repeat(100),
    )
    .unwrap();
    let missing_dir = dir.path().join("no/such/dir/oncely.db");
    for (path, needle) in [
        (dir.path(), "unable to open"),
        (not_a_db.as_path(), "not a database"),
        (missing_dir.as_path(), "unable to open"),
    ] {
        let store = format!("sqlite:{}", path.display());
        let run = oncely(
            dir.path(),
            &["--store", &store, "dedup", "--key", "/eventId"],
            b"{\"eventId\":\"a\"}\n",
        );
        assert_one_clear_error(&run, needle);
        assert!(run.stdout.is_empty(), "a line passed without a store");
    }
}

#[test]
fn bad_flags_and_unwritable_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dedup(
        dir.path(),
        &["--rejects", "/nonexistent-dir/rejects.jsonl"],
        b"",
    );
    assert_one_clear_error(&run, "cannot create rejects file");

    for (args, needle) in [
        (
            &["dedup", "--key", "/eventId", "--ttl", "7w"][..],
            "unknown unit",
        ),
        (&["dedup", "--key", "/eventId", "--lease", "30"], "no unit"),
        (&["dedup", "--key", "eventId"], "not a JSON pointer"),
        (&["dedup", "--key", "/eventId", "--batch", "0"], "--batch"),
        (&["purge", "--older-than", "soon"], "not a duration"),
        (&["inspect", ""], "key is empty"),
        (&["dedup"], "--key"),
    ] {
        let run = oncely(dir.path(), args, b"");
        assert_eq!(
            run.code, 2,
            "clap's usage error for {args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{needle:?} not in {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"));
    }
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for (command, needle) in [
        (&[][..], "dedup"),
        (&["dedup"], "--rejects"),
        (&["consume"], "Idempotency-Key"),
        (&["inspect"], "--scope"),
        (&["purge"], "--older-than"),
        (&["stats"], "--json"),
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = oncely(dir.path(), &args, b"");
        assert_eq!(run.code, 0, "{}", run.stderr);
        let help = run.stdout();
        assert!(
            help.contains("Usage: oncely") && help.contains(needle),
            "{help}"
        );
        assert!(
            help.contains("--store"),
            "the global --store is shown: {help}"
        );
    }
}

/// Claims `key` in `store` from this process and leaves it in progress, as a crashed run would.
fn hold(store: &str, key: &str, lease: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let oncely = Oncely::new(oncely::connect(store).await.unwrap()).with_lease(lease);
        let outcome = oncely
            .claim(&Scope::default(), &Key::new(key).unwrap(), None)
            .await
            .unwrap();
        assert!(matches!(outcome, ClaimOutcome::New(_)));
    });
}

#[test]
fn inspect_purge_and_stats_on_a_populated_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let cmd = |args: &[&str]| {
        let mut all = vec!["--store", &store];
        all.extend_from_slice(args);
        oncely(dir.path(), &all, b"")
    };
    let kept = dedup(
        dir.path(),
        &["--scope", "kept"],
        b"{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n{\"eventId\":\"c\"}\n",
    );
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    let brief = dedup(
        dir.path(),
        &["--scope", "brief", "--ttl", "1ms"],
        b"{\"eventId\":\"x\"}\n{\"eventId\":\"y\"}\n",
    );
    assert_eq!(brief.code, 0, "{}", brief.stderr);
    hold(&store, "held", Duration::from_secs(600));
    thread::sleep(Duration::from_millis(20)); // past the 1 ms retention

    let stats = cmd(&["stats", "--json"]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["records"], 6, "{stats}");
    assert_eq!(stats["completed"], 3, "{stats}");
    assert_eq!(stats["expired"], 2, "{stats}");
    assert_eq!(stats["in_progress"], 1, "{stats}");
    assert!(stats["bytes"].as_u64().unwrap() > 0, "{stats}");
    let text = cmd(&["stats"]).stdout();
    assert!(text.contains("expired (awaiting purge)  2"), "{text}");

    let completed = cmd(&["inspect", "--scope", "kept", "b"]).stdout();
    for line in [
        "scope        kept",
        "key          b",
        "state        completed",
    ] {
        assert!(completed.contains(line), "{line:?} not in {completed}");
    }
    assert!(completed.contains("fingerprint  -"), "{completed}");
    let created = completed
        .lines()
        .find(|l| l.starts_with("created"))
        .unwrap();
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");

    let expired = cmd(&["inspect", "--scope", "brief", "x"]).stdout();
    assert!(expired.contains("state        expired"), "{expired}");
    let held = cmd(&["inspect", "held"]).stdout();
    assert!(
        held.contains("state        in progress, lease until 2"),
        "{held}"
    );
    let json = cmd(&["inspect", "--json", "--scope", "kept", "a"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["state"], "completed");
    assert_eq!(json["key"], "a");
    assert_eq!(json["attempt"], 1);

    let missing = cmd(&["inspect", "nothing-here"]);
    assert_eq!(missing.code, 1);
    assert_eq!(
        missing.stderr.trim_end(),
        "no record for default/nothing-here"
    );

    assert_eq!(
        cmd(&["purge", "--older-than", "1h"]).stdout(),
        "purged 0 records\n"
    );
    assert_eq!(
        cmd(&["purge", "--batch", "1"]).stdout(),
        "purged 2 records\n"
    );
    let after: serde_json::Value =
        serde_json::from_slice(&cmd(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(
        (after["records"].as_u64(), after["expired"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(cmd(&["inspect", "--scope", "brief", "x"]).code, 1);
}

#[test]
fn a_key_held_by_another_run_is_waited_for_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    hold(&sqlite_url(dir.path()), "k2", Duration::from_millis(500));
    let input =
        b"{\"eventId\":\"k1\"}\n{\"eventId\":\"k2\"}\n{\"eventId\":\"k3\"}\n{\"eventId\":\"k2\"}\n";
    let run = dedup(dir.path(), &[], input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout(),
        "{\"eventId\":\"k1\"}\n{\"eventId\":\"k2\"}\n{\"eventId\":\"k3\"}\n"
    );
    assert!(
        run.stderr
            .contains("key k2 (line 2) is held by another run"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.last_stderr_line(),
        "read 4, passed 3, duplicates 1, rejected 0"
    );
}

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
    two_processes_pass_each_key_once(&postgres_url("two_processes"));
}

#[test]
fn two_processes_on_one_mysql_store_pass_each_key_once_between_them() {
    two_processes_pass_each_key_once(&mysql_url("two_processes"));
}

#[test]
fn two_processes_on_one_redis_store_pass_each_key_once_between_them() {
    // A prefix of its own, in the form the Redis store's test harness cleans up after 2 h.
    let prefix = format!(
        "oncelytest-{}-{}-cli",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        std::process::id(),
    );
    two_processes_pass_each_key_once(&format!("redis://127.0.0.1:6379/?prefix={prefix}"));
}

/// A MySQL store URL on a fresh database of its own, on the server on loopback.
fn mysql_url(name: &str) -> String {
    let server = "mysql://root@127.0.0.1:3306";
    let database = format!("oncely_cli_{name}");
    let sql = format!("DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database};");
    let client = Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", "-e", &sql])
        .output()
        .expect("the mariadb client runs");
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    format!("{server}/{database}")
}

/// A PostgreSQL store URL in a fresh schema of its own (`ONCELY_TEST_POSTGRES` names the server).
fn postgres_url(name: &str) -> String {
    let server = std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("oncely_cli_{name}");
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};");
    let psql = Command::new("psql")
        .args([server.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
        .output()
        .expect("psql (PostgreSQL's client) runs");
    assert!(
        psql.status.success(),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    format!("{server}?options=-csearch_path%3D{schema}")
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

#[test]
fn bench_reports_every_contender_and_never_touches_the_store_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("bench-files");
    let bench_dir = bench_dir.to_str().unwrap();
    let sqlite = oncely(
        dir.path(),
        &[
            "bench",
            "--events",
            "3000",
            "--naive-events",
            "100",
            "--concurrency",
            "64",
            "--dir",
            bench_dir,
        ],
        b"",
    );
    assert_eq!(sqlite.code, 0, "{}", sqlite.stderr);
    let table = sqlite.stdout();
    for contender in ["oncely", "naive", "batched limit", "oncely batch"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(contender))
            .unwrap_or_else(|| panic!("no {contender} row in\n{table}"));
        let events: u64 = row[contender.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            events,
            if contender == "naive" { 100 } else { 3000 },
            "{row}"
        );
    }
    // The same workload: oncely and the limit both find the same number of new keys.
    let new_of = |name: &str| -> String {
        let row = table.lines().find(|l| l.starts_with(name)).unwrap();
        row[name.len()..]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(new_of("oncely"), new_of("batched limit"), "{table}");
    assert_eq!(new_of("oncely batch"), new_of("batched limit"), "{table}");
    assert!(
        !dir.path().join("oncely.db").exists(),
        "bench opened the default store"
    );

    let memory = oncely(
        dir.path(),
        &[
            "--store",
            "memory:",
            "bench",
            "--events",
            "5000",
            "--naive-events",
            "100",
        ],
        b"",
    );
    assert_eq!(memory.code, 0, "{}", memory.stderr);
    assert!(
        memory.stdout().contains("memory (one core"),
        "{}",
        memory.stdout()
    );
    assert!(
        !memory.stdout().contains("batched limit"),
        "{}",
        memory.stdout()
    );
    assert!(
        memory
            .stdout()
            .lines()
            .any(|l| l.starts_with("oncely batch")),
        "{}",
        memory.stdout()
    );

    let other = oncely(
        dir.path(),
        &["--store", "redis+cluster://127.0.0.1:1", "bench"],
        b"",
    );
    assert_ne!(other.code, 0);
    assert!(
        other.stderr.starts_with("error: oncely bench measures"),
        "{}",
        other.stderr
    );
}

/// `oncely --store URL bench` on a database server: the four contenders on the same workload.
fn bench_on_a_server(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let run = oncely(
        dir.path(),
        &[
            "--store",
            url,
            "bench",
            "--events",
            "2000",
            "--naive-events",
            "200",
        ],
        b"",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let table = run.stdout();
    let row = |contender: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(contender))
            .unwrap_or_else(|| panic!("no {contender} row in\n{table}"))[contender.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (oncely_row, naive, limit) = (row("oncely"), row("naive"), row("batched limit"));
    let batch = row("oncely batch");
    assert_eq!(oncely_row[0], "2000", "{table}");
    assert_eq!(naive[0], "200", "{table}");
    assert_eq!(limit[0], "2000", "{table}");
    assert_eq!(batch[0], "2000", "{table}");
    // The same workload: oncely, the limit and the batch API find the same number of new keys.
    assert_eq!(oncely_row[1], limit[1], "{table}");
    assert_eq!(batch[1], limit[1], "{table}");
}

fn postgres_server() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn mysql_server() -> String {
    std::env::var("ONCELY_TEST_MYSQL")
        .map(|server| format!("{server}/test"))
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

#[test]
fn bench_on_postgres_reports_every_contender() {
    bench_on_a_server(&postgres_server());
}

#[test]
fn bench_on_mysql_reports_every_contender() {
    bench_on_a_server(&mysql_server());
}

#[test]
fn bench_on_redis_reports_every_contender() {
    bench_on_a_server("redis://127.0.0.1:6379");
}

#[test]
fn bench_purge_measures_claims_beside_a_purge_and_refuses_a_store_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let run = oncely(
        dir.path(),
        &[
            "--store",
            &store,
            "bench",
            "--purge",
            "3000",
            "--purge-batch",
            "500",
        ],
        b"",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.stdout();
    for line in [
        "claims alone",
        "claims + purge",
        "purged 3000 expired records",
    ] {
        assert!(report.contains(line), "no `{line}` in\n{report}");
    }
    // The store now holds the live claims of the run: a second run must not purge into them.
    let again = oncely(
        dir.path(),
        &["--store", &store, "bench", "--purge", "10"],
        b"",
    );
    assert_eq!(again.code, 1, "{}", again.stdout());
    assert!(again.stderr.contains("must be empty"), "{}", again.stderr);
}

#[test]
fn purge_leaves_the_store_alone_while_another_instance_purges() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let brief = dedup(dir.path(), &["--ttl", "1ms"], b"{\"eventId\":\"x\"}\n");
    assert_eq!(brief.code, 0, "{}", brief.stderr);
    thread::sleep(Duration::from_millis(20)); // past the 1 ms retention
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let holder = runtime.block_on(async { Oncely::new(oncely::connect(&store).await.unwrap()) });
    let lock = runtime
        .block_on(holder.claim(
            &Scope::new(oncely::backend::PURGE_SCOPE).unwrap(),
            &Key::new(oncely::backend::PURGE_KEY).unwrap(),
            None,
        ))
        .unwrap()
        .into_new()
        .unwrap();
    let purge = |dir: &Path| oncely(dir, &["--store", &store, "purge"], b"");
    let busy = purge(dir.path());
    assert_eq!(
        (busy.code, busy.stdout()),
        (0, "purged 0 records\n".to_owned())
    );
    assert!(
        busy.stderr.contains("another instance is purging"),
        "{}",
        busy.stderr
    );
    runtime.block_on(holder.release(&lock)).unwrap();
    assert_eq!(purge(dir.path()).stdout(), "purged 1 records\n");
}

/// `oncely bench --broker` through the binary, on the four brokers on loopback (Kafka: tansu,
/// SQS: moto):
/// the table, every contender's effects equal to its distinct keys, and no store file where
/// --store points.
#[test]
fn bench_broker_reports_both_contenders_with_one_effect_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("bench-files");
    for broker in [
        "nats://127.0.0.1:4222",
        "amqp://guest:guest@127.0.0.1:5672",
        "kafka://127.0.0.1:9092",
        "sqs+http://127.0.0.1:5999",
    ] {
        let run = oncely(
            dir.path(),
            &[
                "bench",
                "--broker",
                broker,
                "--events",
                "300",
                "--naive-events",
                "100",
                "--concurrency",
                "16",
                "--lease",
                "2s",
                "--dir",
                bench_dir.to_str().unwrap(),
            ],
            b"",
        );
        assert_eq!(run.code, 0, "{broker}: {}", run.stderr);
        let out = run.stdout();
        assert!(out.contains("oncely is"), "{out}");
        for (name, messages) in [("oncely", 300), ("naive", 100)] {
            let row: Vec<&str> = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} row in {out}"))
                .split_whitespace()
                .collect();
            assert_eq!(row[1], messages.to_string(), "{out}");
            assert_eq!(row[2], row[3], "effects equal distinct keys: {out}");
        }
    }
    assert!(
        !dir.path().join("oncely.db").exists(),
        "bench opened the default store"
    );

    let refused = oncely(
        dir.path(),
        &[
            "--store",
            "memory:",
            "bench",
            "--broker",
            "nats://127.0.0.1:4222",
        ],
        b"",
    );
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .starts_with("error: oncely bench --broker measures"),
        "{}",
        refused.stderr
    );
}

/// `oncely bench --gateway` through the binary, on a few requests: the four contenders, every
/// request answered, executed upstream once (replays: never) and replayed only in the replay
/// row; the store --store names is never opened.
#[test]
fn bench_gateway_reports_every_contender_and_its_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("bench-files");
    let (postgres, redis) = (postgres_server(), "redis://127.0.0.1:6379");
    for store in [None, Some("memory:"), Some(postgres.as_str()), Some(redis)] {
        let mut args = Vec::new();
        if let Some(store) = store {
            args.extend(["--store", store]);
        }
        args.extend([
            "bench",
            "--gateway",
            "--requests",
            "60",
            "--concurrency",
            "3",
            "--dir",
            bench_dir.to_str().unwrap(),
        ]);
        let run = oncely(dir.path(), &args, b"");
        assert_eq!(run.code, 0, "{store:?}: {}", run.stderr);
        let out = run.stdout();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "a title, a header and four rows: {out}");
        assert!(
            lines[0].starts_with("60 POSTs per contender from 3 "),
            "{out}"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "contender",
                "requests",
                "executed",
                "replayed",
                "requests/s",
                "p50",
                "p99",
                "+p50",
                "+p99"
            ],
            "{out}"
        );
        for (row, (name, executed, replayed)) in lines[2..].iter().zip([
            ("direct", "60", "0"),
            ("pass-through", "60", "0"),
            ("first execution", "60", "0"),
            ("replay", "0", "60"),
        ]) {
            let cells: Vec<&str> = row
                .strip_prefix(name)
                .unwrap_or_else(|| panic!("{name} row expected: {out}"))
                .split_whitespace()
                .collect();
            assert_eq!(cells.len(), 8, "{row}");
            assert_eq!(cells[..3], ["60", executed, replayed], "{out}");
            assert!(cells[3].parse::<f64>().unwrap() > 0.0, "{row}");
            // The overheads: none for direct, a signed difference for the others.
            for overhead in &cells[6..] {
                if name == "direct" {
                    assert_eq!(*overhead, "-", "{row}");
                } else {
                    assert!(
                        overhead.len() > 1 && overhead.starts_with(['+', '-']),
                        "{row}"
                    );
                }
            }
        }
    }
    assert!(
        !dir.path().join("oncely.db").exists(),
        "bench opened the default store"
    );
}
