//! The records in a store: inspect, purge and stats, and a key another run holds.

use std::path::Path;
use std::thread;
use std::time::Duration;

use oncely::{ClaimOutcome, Key, Oncely, Scope};

use crate::{dedup, oncely, sqlite_url};

/// Claims `key` in `store` from this process and leaves it in progress, as a crashed run would.
pub(crate) fn hold(store: &str, key: &str, lease: Duration) {
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
