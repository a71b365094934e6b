//! Settings from `--config FILE`, `ONCELY_*` variables and flags: a flag wins over a variable,
//! which wins over the file; a file that cannot be used is one clear error.

use std::path::Path;

/// Runs oncely in `dir` with `env`, `input` on stdin: its exit code, stdout and stderr.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> (i32, String, String) {
    let run = crate::oncely_with_env(dir, args, env, input.as_bytes());
    (run.code, run.stdout(), run.stderr)
}

/// The scope the key `a` was recorded in, by asking each candidate.
fn recorded_scope(dir: &Path, store: &str) -> String {
    for scope in ["from-file", "from-env", "from-flag", "default"] {
        let (code, ..) = run(
            dir,
            &["--store", store, "inspect", "--scope", scope, "a"],
            &[],
            "",
        );
        if code == 0 {
            return scope.to_owned();
        }
    }
    panic!("`a` is recorded in no scope");
}

/// Flags, variables, and the scope they should end in.
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn a_flag_wins_over_its_variable_which_wins_over_the_file() {
    let cases: [Case; 3] = [
        (&[], &[], "from-file"),
        (&[], &[("ONCELY_SCOPE", "from-env")], "from-env"),
        (
            &["--scope", "from-flag"],
            &[("ONCELY_SCOPE", "from-env")],
            "from-flag",
        ),
    ];
    for (flags, env, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite:{}", dir.path().join("settings.db").display());
        // The store at the top level, the key and scope for dedup alone.
        std::fs::write(
            dir.path().join("oncely.toml"),
            format!("store = \"{store}\"\n\n[dedup]\nkey = \"/id\"\nscope = \"from-file\"\n"),
        )
        .unwrap();
        let mut args = vec!["--config", "oncely.toml", "dedup"];
        args.extend_from_slice(flags);
        let (code, out, err) = run(dir.path(), &args, env, "{\"id\":\"a\"}\n");
        assert_eq!((code, out.as_str()), (0, "{\"id\":\"a\"}\n"), "{err}");
        assert_eq!(
            recorded_scope(dir.path(), &store),
            expected,
            "{flags:?} {env:?}"
        );
    }
}

#[test]
fn the_config_file_can_come_from_its_variable_and_settings_use_underscores_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("settings.db").display());
    std::fs::write(
        dir.path().join("settings.toml"),
        format!(
            "store = \"{store}\"\nkey = \"/id\"\n[dedup]\nbatch = 1\nrejects = \"bad.jsonl\"\n"
        ),
    )
    .unwrap();
    let env = [("ONCELY_CONFIG", "settings.toml")];
    let (code, _, err) = run(dir.path(), &["dedup"], &env, "{\"id\":\"a\"}\nnot json\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bad.jsonl")).unwrap(),
        "not json\n"
    );
    assert_eq!(recorded_scope(dir.path(), &store), "default");
}

#[test]
fn a_config_file_that_cannot_be_used_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "typo.toml",
            "scoep = \"x\"\n",
            "sets `scoep`, which no oncely command has a flag for",
        ),
        (
            "table.toml",
            "[dedupe]\nkey = \"/id\"\n",
            "has a table [dedupe], but oncely has no such command",
        ),
        (
            "wrong.toml",
            "[purge]\nkey = \"/id\"\n",
            "sets `key` under [purge], which `oncely purge` has no flag for",
        ),
        ("broken.toml", "store = \n", "is not valid TOML"),
        (
            "date.toml",
            "ttl = 1979-05-27\n",
            "sets `ttl` to a datetime: give a string",
        ),
    ];
    for (file, text, needle) in cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let (code, _, err) = run(dir.path(), &["--config", file, "stats"], &[], "");
        assert_eq!(code, 2, "{file}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{file}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{file}: {err}");
    }
    let (code, _, err) = run(dir.path(), &["--config", "missing.toml", "stats"], &[], "");
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read the config file missing.toml"),
        "{err}"
    );
}

#[test]
fn flags_name_their_variables_in_help() {
    let dir = tempfile::tempdir().unwrap();
    for (command, variables) in [
        (
            "serve",
            &[
                "ONCELY_METRICS_ADDR",
                "ONCELY_UPSTREAM",
                "ONCELY_PURGE_EVERY",
            ][..],
        ),
        (
            "consume",
            &["ONCELY_FROM", "ONCELY_DELIVER", "ONCELY_CONCURRENCY"],
        ),
        ("dedup", &["ONCELY_KEY", "ONCELY_BATCH", "ONCELY_TTL"]),
        ("forget", &["ONCELY_SCOPE", "ONCELY_FORCE", "ONCELY_FROM"]),
    ] {
        let (code, out, err) = run(dir.path(), &[command, "--help"], &[], "");
        assert_eq!(code, 0, "{command}: {err}");
        for variable in variables {
            assert!(
                out.contains(&format!("[env: {variable}")),
                "{command}: no {variable}:\n{out}"
            );
        }
    }
}
