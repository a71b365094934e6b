//! `oncely dedup`: what passes, what is rejected, scopes and keys.

use std::collections::HashSet;

use crate::{dedup, example, oncely, sqlite_url};

/// What `python3 scripts/gen-events.py` prints for examples/events.jsonl.
const EXAMPLE_SUMMARY: &str = "read 1104, passed 1000, duplicates 100, rejected 4";

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

/// On a terminal (a pty of `script`'s), a slow input shows its progress on stderr, cleared
/// before the summary; elsewhere (every other test's pipe) stderr holds the summary alone.
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::sqlite_url(dir.path());
    let out = dir.path().join("out.jsonl");
    let pipeline = format!(
        "(echo '{{\"eventId\":\"a\"}}'; sleep 1; echo '{{\"eventId\":\"b\"}}') | {} --store {store} dedup --key /eventId > {}",
        crate::BIN,
        out.display()
    );
    let run = std::process::Command::new("script")
        .args(["-qec", &pipeline, "/dev/null"])
        .env_remove("ONCELY_STORE")
        .output()
        .expect("script (util-linux) runs the command on a pty");
    let terminal = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{terminal}");
    assert!(terminal.contains("lines read: 1 ("), "{terminal}");
    assert!(
        terminal
            .trim_end()
            .ends_with("read 2, passed 2, duplicates 0, rejected 0"),
        "{terminal}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n"
    );

    let piped = crate::oncely(
        dir.path(),
        &["--store", &store, "dedup", "--key", "/eventId"],
        b"{\"eventId\":\"c\"}\n",
    );
    assert_eq!(piped.stderr, "read 1, passed 1, duplicates 0, rejected 0\n");
}

/// `dedup --metrics-addr`: scraped while it reads, the claims equal the keys written so far.
#[test]
fn dedup_serves_its_metrics_while_it_runs() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let port = oncely_conformance::process::free_port();
    let store = crate::sqlite_url(dir.path());
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(crate::BIN)
        .args([
            "--store", &store, "dedup", "--key", "/eventId", "--batch", "1",
        ])
        .args(["--metrics-addr", &addr])
        .env_remove("ONCELY_STORE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(b"{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n{\"eventId\":\"a\"}\n")
        .unwrap();
    input.flush().unwrap();
    let wanted = [
        "oncely_claims_total{scope=\"default\",outcome=\"new\"} 2",
        "oncely_claims_total{scope=\"default\",outcome=\"duplicate\"} 1",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut scrape = String::new();
    while !wanted.iter().all(|w| scrape.lines().any(|l| l == *w)) {
        assert!(std::time::Instant::now() < deadline, "{scrape}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        scrape = crate::http_get::http_get(port, "/metrics").unwrap_or_default();
    }
    let ready = crate::http_get::http_get(port, "/readyz").unwrap();
    assert!(ready.contains(" 200 "), "{ready}");
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("read 3, passed 2, duplicates 1, rejected 0")
    );
}

/// JMESPath keys, as AWS Lambda Powertools users write them: here SNS notifications delivered
/// through SQS, whose order id is inside the `Message` string. Resends with another
/// `MessageId` and another key order in `Message` are duplicates; a line the expression finds
/// nothing in, or whose `Message` is not JSON, is rejected with the reason.
#[test]
fn dedup_keys_by_a_jmespath_expression_into_json_inside_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::sqlite_url(dir.path());
    let sns = |id: &str, message: &str| {
        serde_json::json!({"Type": "Notification", "MessageId": id, "Message": message}).to_string()
    };
    let first = sns("m-1", r#"{"orderId":"o-1","amount":10}"#);
    let second = sns("m-2", r#"{"orderId":"o-2","amount":10}"#);
    let input = [
        first.clone(),
        second.clone(),
        sns("m-3", r#"{"amount":10, "orderId":"o-1"}"#), // a resend of o-1
        sns("m-4", r#"{"amount":10}"#),                  // no order id
        sns("m-5", "not json"),                          // Message is not JSON
        sns("m-6", r#"{"orderId":"o-2"}"#),              // o-2 again
    ]
    .map(|line| format!("{line}\n"))
    .concat();
    let args = [
        "--store",
        &store,
        "dedup",
        "--key",
        "powertools_json(Message).orderId",
    ];
    let run = oncely(dir.path(), &args, input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), format!("{first}\n{second}\n"));
    let reported: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(reported.len(), 3, "{}", run.stderr);
    assert!(
        reported[0].starts_with(
            "line 4: key expression `powertools_json(Message).orderId` selects nothing"
        ),
        "{}",
        reported[0]
    );
    assert!(
        reported[1].starts_with("line 5: key expression")
            && reported[1].contains("powertools_json: not JSON"),
        "{}",
        reported[1]
    );
    assert_eq!(reported[2], "read 6, passed 2, duplicates 2, rejected 2");
}
