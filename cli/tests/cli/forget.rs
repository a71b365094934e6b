//! `oncely forget` on every store the CLI opens: a completed record goes, one in progress only
//! with --force, keys from a file or stdin, and a bad key line forgets nothing.

use std::path::Path;
use std::time::Duration;

use crate::records::hold;
use crate::{oncely, servers, sqlite_url};

fn forget_on(dir: &Path, store: &str) {
    let cmd = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--store", store];
        all.extend_from_slice(args);
        oncely(dir, &all, stdin)
    };
    let dedup = |input: &[u8]| {
        let run = cmd(&["dedup", "--key", "/eventId"], input);
        assert_eq!(run.code, 0, "{store}: {}", run.stderr);
        run.stdout()
    };
    let events = b"{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n{\"eventId\":\"c\"}\n";
    assert_eq!(dedup(events).lines().count(), 3);
    hold(store, "held", Duration::from_secs(600));

    let first = cmd(&["forget", "a", "held", "nothing"], b"");
    assert_eq!(
        first.code, 1,
        "{store}: a record was kept: {}",
        first.stderr
    );
    let lines: Vec<String> = first.stdout().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "forgot default/a (completed)", "{store}");
    assert!(
        lines[1].starts_with("kept default/held: in progress, lease until 2")
            && lines[1].ends_with("(--force removes it)"),
        "{store}: {}",
        lines[1]
    );
    assert_eq!(
        lines[2], "absent default/nothing (no live record)",
        "{store}"
    );
    assert_eq!(
        first.stderr.trim_end(),
        "forgot 1, held 1, absent 1",
        "{store}"
    );

    // A key too long for any store on line 2: nothing is forgotten, b included.
    let long = "x".repeat(oncely::MAX_KEY_BYTES + 1);
    let bad = cmd(
        &["forget", "--from", "-"],
        format!("b\n{long}\n").as_bytes(),
    );
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("- line 2: nothing was forgotten"),
        "{store}: {}",
        bad.stderr
    );

    let forced = cmd(
        &["forget", "--force", "--json", "--from", "-"],
        b"held\n\nb\n",
    );
    assert_eq!(forced.code, 0, "{store}: {}", forced.stderr);
    let answers: Vec<serde_json::Value> = forced
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 2, "{store}: {answers:?}");
    assert_eq!(
        (&answers[0]["key"], &answers[0]["outcome"]),
        (&"held".into(), &"in_progress".into()),
        "{store}"
    );
    assert_eq!(
        (&answers[1]["key"], &answers[1]["outcome"]),
        (&"b".into(), &"completed".into()),
        "{store}"
    );

    // What was forgotten runs again; c, never forgotten, is still a duplicate.
    let again = dedup(
        b"{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n{\"eventId\":\"c\"}\n{\"eventId\":\"held\"}\n",
    );
    assert_eq!(
        again, "{\"eventId\":\"a\"}\n{\"eventId\":\"b\"}\n{\"eventId\":\"held\"}\n",
        "{store}"
    );
}

#[test]
fn forget_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    forget_on(dir.path(), &sqlite_url(dir.path()));
}

#[test]
fn forget_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    forget_on(dir.path(), &servers::postgres_url());
}

#[test]
fn forget_on_mysql() {
    let dir = tempfile::tempdir().unwrap();
    forget_on(dir.path(), &servers::mysql_url());
}

#[test]
fn forget_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    forget_on(dir.path(), &servers::redis_url());
}

#[test]
fn forget_without_keys_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_url(dir.path());
    let run = oncely(dir.path(), &["--store", &store, "forget"], b"");
    crate::assert_one_clear_error(&run, "no keys given");
}
