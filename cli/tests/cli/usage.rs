//! Where the store comes from, clear errors for bad stores, flags and files, and help.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{BIN, assert_one_clear_error, dedup, oncely};

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
        (&["dedup", "--key", "eventId["], "not a JMESPath expression"),
        (&["dedup", "--key", "/eventId,id"], "not a JSON pointer"),
        (
            &[
                "consume",
                "--from",
                "nats://127.0.0.1/S/C",
                "--key",
                "orderId",
                "--deliver",
                "http://127.0.0.1:9",
                "--fingerprint",
                "ignore:sentAt",
            ],
            "not a JSON pointer",
        ),
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

#[test]
fn secrets_in_the_environment_or_a_url_never_reach_help_or_errors() {
    const SECRET: &str = "Sup3r-s3cret";
    let dir = tempfile::tempdir().unwrap();
    let url = |scheme: &str| format!("{scheme}://app:{SECRET}@127.0.0.1:1/x");
    let env = [
        ("ONCELY_STORE", url("postgres")),
        ("ONCELY_OUTBOX", url("mysql")),
        ("ONCELY_RELAY_TO", url("amqp")),
    ];
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    for command in [
        "dedup", "consume", "inspect", "purge", "stats", "serve", "relay", "bench",
    ] {
        let help = run(&[command, "--help"]);
        assert!(help.contains("Usage: oncely"), "{help}");
        assert!(
            !help.contains(SECRET),
            "`{command} --help` shows a secret: {help}"
        );
    }
    // Connections that fail, with the secret in the environment or in a flag.
    for args in [
        &["stats"][..],
        &["--store", &url("redis"), "stats"],
        &["relay"],
        &["relay", "--to", &url("nats")],
    ] {
        let text = run(args);
        assert!(text.contains("error"), "{args:?}: {text}");
        assert!(!text.contains(SECRET), "{args:?} shows a secret: {text}");
    }
}

#[test]
fn completions_for_every_shell_and_a_man_page() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = oncely(dir.path(), &["completions", shell], b"");
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        let script = run.stdout();
        for word in ["serve", "consume", "relay", "--store", "--upstream"] {
            assert!(script.contains(word), "{shell}'s script completes {word}");
        }
    }
    // Bash runs its script: `oncely se<TAB>` offers serve, `oncely serve --store-s<TAB>` its
    // two flags.
    let script = dir.path().join("oncely.bash");
    std::fs::write(
        &script,
        oncely(dir.path(), &["completions", "bash"], b"").stdout,
    )
    .unwrap();
    let complete = |words: &str| {
        let line = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _oncely oncely \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             echo \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").args(["-c", &line]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(complete("oncely se"), "serve");
    assert_eq!(
        complete("oncely serve --store-s"),
        "--store-server-errors --store-status"
    );

    let man = oncely(dir.path(), &["man"], b"");
    assert_eq!(man.code, 0, "{}", man.stderr);
    let page = man.stdout();
    assert!(page.contains(".TH oncely 1"), "{page}");
    for command in ["serve", "consume", "relay", "completions"] {
        assert!(page.contains(command), "the page names {command}");
    }

    let unknown = oncely(dir.path(), &["completions", "tcsh"], b"");
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("possible values"),
        "{}",
        unknown.stderr
    );
}
