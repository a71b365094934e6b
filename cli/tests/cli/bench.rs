//! `oncely bench`: every contender reported, on each store, broker and the gateway.

use crate::{oncely, servers, sqlite_url};

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

/// `oncely --store URL bench` on a database server: every contender on the same workload
/// (Redis adds the Powertools pattern).
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
    if url.starts_with("redis") {
        // What Redis users do today, on the same workload.
        let powertools = row("powertools");
        assert_eq!(powertools[0], "2000", "{table}");
        assert_eq!(powertools[1], limit[1], "{table}");
    }
}

#[test]
fn bench_on_postgres_reports_every_contender() {
    bench_on_a_server(&servers::postgres());
}

#[test]
fn bench_on_mysql_reports_every_contender() {
    bench_on_a_server(&servers::mysql());
}

#[test]
fn bench_on_redis_reports_every_contender() {
    bench_on_a_server(&servers::redis());
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

/// `oncely bench --broker` through the binary, on the four brokers on loopback (Kafka: tansu,
/// SQS: moto):
/// the table, oncely's and naive's effects equal to their distinct keys, raw's to its messages,
/// and no store file where --store points.
#[test]
fn bench_broker_reports_every_contender_with_one_effect_per_key() {
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
        let raw: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with("raw "))
            .unwrap_or_else(|| panic!("no raw row in {out}"))
            .split_whitespace()
            .collect();
        assert_eq!(
            (raw[1], raw[3]),
            ("300", "300"),
            "an effect per message: {out}"
        );
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
    let (postgres, redis) = (servers::postgres(), servers::redis());
    for store in [
        None,
        Some("memory:"),
        Some(postgres.as_str()),
        Some(redis.as_str()),
    ] {
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
