//! `oncely bench --broker` end to end on a small workload, against the NATS JetStream at
//! `ONCELY_NATS_URL` (`nats://127.0.0.1:4222`), the RabbitMQ at `ONCELY_AMQP_URL`
//! (`amqp://guest:guest@127.0.0.1:5672`) and the Kafka-protocol broker at
//! `ONCELY_KAFKA_BROKERS` (`127.0.0.1:9092`) and the SQS-compatible server (moto) at
//! `ONCELY_SQS_URL` (`sqs+http://127.0.0.1:5999`), with a fresh SQLite store. No timing is asserted:
//! only that every message is settled and the effect ran once per distinct key (raw: once per
//! message, as it has no store).

use oncely_bench::broker::{self, BrokerConfig};
use oncely_bench::{NoProgress, StoreKind};

fn config(broker: String, name: &str) -> BrokerConfig {
    BrokerConfig {
        broker,
        store: StoreKind::Sqlite,
        store_url: "sqlite:unused.db".into(),
        dir: std::env::temp_dir().join(format!("oncely-bench-test-{}-{name}", std::process::id())),
        events: 300,
        duplicate_ratio: 0.1,
        concurrency: 16,
        naive_events: 100,
        seed: 7,
        page_size: oncely_bench::DEFAULT_PAGE_SIZE,
        // Short: a re-publish that meets its original in flight waits out the lease.
        lease: std::time::Duration::from_secs(2),
    }
}

fn run_and_check(config: BrokerConfig) {
    let results = broker::run(&config, &NoProgress).unwrap();
    let _ = std::fs::remove_dir_all(&config.dir);
    assert_eq!(results.len(), 3);
    let (oncely, naive, raw) = (&results[0], &results[1], &results[2]);
    assert_eq!(
        (oncely.name.as_str(), naive.name.as_str(), raw.name.as_str()),
        ("oncely", "naive", "raw")
    );
    assert_eq!(oncely.messages, 300);
    assert_eq!(naive.messages, 100);
    assert_eq!(raw.messages, 300);
    for r in &results {
        assert!(r.distinct < r.messages, "the workload repeats keys: {r:?}");
        let effects = if r.name == "raw" {
            r.messages
        } else {
            r.distinct
        };
        assert_eq!(r.effects, effects as u64, "{r:?}");
        assert_eq!(r.unsettled, 0, "{r:?}");
        assert_eq!(r.dead_lettered, 0, "{r:?}");
    }
    let table = broker::format_table(&results);
    eprintln!("{table}");
    assert!(table.contains("oncely is"), "{table}");
}

#[test]
fn nats_every_message_settled_and_one_effect_per_key() {
    let url = std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    run_and_check(config(url, "nats"));
}

#[test]
fn rabbitmq_every_message_settled_and_one_effect_per_key() {
    let url = std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into());
    run_and_check(config(url, "amqp"));
}

#[test]
fn kafka_every_message_settled_and_one_effect_per_key() {
    let brokers = std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    run_and_check(config(format!("kafka://{brokers}"), "kafka"));
}

#[test]
fn sqs_every_message_settled_and_one_effect_per_key() {
    let url =
        std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".into());
    run_and_check(config(url, "sqs"));
}
