//! `oncely relay` end to end: real processes from PostgreSQL, MySQL/MariaDB and SQLite outboxes
//! to NATS JetStream, RabbitMQ, Kafka (a Kafka-protocol broker at `ONCELY_KAFKA_BROKERS`,
//! default 127.0.0.1:9092) and SQS (an SQS-compatible server at `ONCELY_SQS_URL`, default
//! sqs+http://127.0.0.1:5999), stopped with SIGTERM or SIGINT. Each test's outbox is a fresh
//! schema or database from `oncely_conformance::servers`, its stream, queue or topic a fresh one
//! from the broker crate's `fresh_destination`.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oncely::backend::OutboxStore;
use oncely::kafka::MESSAGE_ID_HEADER;
use oncely::kafka::rdkafka::admin::{AdminClient, AdminOptions};
use oncely::kafka::rdkafka::client::DefaultClientContext;
use oncely::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely::kafka::rdkafka::message::Headers;
use oncely::kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use oncely::nats::async_nats::{self, jetstream};
use oncely::outbox::message_id;
use oncely::postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
use oncely::postgres::sqlx::{self, PgPool};
use oncely::trace::TraceParent;
use oncely_conformance::servers;

#[path = "support/http_get.rs"]
mod http_get;

use http_get::http_get;

const BIN: &str = env!("CARGO_BIN_EXE_oncely");
/// The schemas and databases of these tests.
const PREFIX: &str = "oncely_cli_relay";
/// The rows of an outbox not yet published, in every dialect.
const UNSENT: &str = "SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL";

fn amqp() -> String {
    std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn nats() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A fresh NATS stream: `(stream, the subject it captures)`.
async fn nats_stream(label: &str) -> (String, String) {
    let options = oncely::nats::FreshOptions::new("ONCELY_CLI_RELAY_", label);
    let fresh = oncely::nats::fresh_destination(&nats(), &options)
        .await
        .expect("NATS with JetStream at ONCELY_NATS_URL (start nats-server -js)");
    (fresh.stream, fresh.subject)
}

/// The number of messages in the NATS stream `stream`, which is then deleted.
async fn count_and_delete_stream(stream: &str) -> u64 {
    let context = jetstream::new(async_nats::connect(nats()).await.unwrap());
    let info = context
        .get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    context.delete_stream(stream).await.unwrap();
    info.state.messages
}

/// A fresh PostgreSQL outbox: its URL, its origin (the prefix of its message ids) and a pool.
async fn postgres_outbox() -> (String, String, PgPool) {
    let outbox_url = servers::postgres_url(PREFIX).await;
    let origin = PostgresOutboxStore::connect(&outbox_url)
        .await
        .unwrap()
        .origin()
        .await
        .unwrap();
    let pool = PgPool::connect(&outbox_url).await.unwrap();
    (outbox_url, origin, pool)
}

/// Enqueues `count` rows of five aggregates (`order-0` .. `order-4`) in one transaction, each
/// in a trace of its own ([`row_trace`]), and answers each aggregate's message ids in order.
async fn enqueue_orders(
    pool: &PgPool,
    origin: &str,
    count: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut tx = pool.begin().await.unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..count {
        let aggregate = format!("order-{}", n % 5);
        let message = OutboxMessage::new(&aggregate, format!("{n}").into_bytes())
            .traced(&row_trace(n), Some(ROW_TRACESTATE));
        let id = Outbox::new().enqueue(&mut tx, &message).await.unwrap();
        expected
            .entry(aggregate)
            .or_default()
            .push(message_id(origin, id));
    }
    tx.commit().await.unwrap();
    expected
}

/// The trace row `n` is written in: trace id and span id `n + 1`.
fn row_trace(n: usize) -> TraceParent {
    format!("00-{:032x}-{:016x}-01", n + 1, n + 1)
        .parse()
        .unwrap()
}

const ROW_TRACESTATE: &str = "oncely=relay";

/// A published message of row `n` carries the row's trace, with the relay's publish as its
/// parent, and the row's tracestate, as broker headers.
fn assert_carries_row_trace(n: usize, traceparent: Option<&str>, tracestate: Option<&str>) {
    let row = row_trace(n);
    let got: TraceParent = traceparent
        .unwrap_or_else(|| panic!("row {n} published without a traceparent"))
        .parse()
        .unwrap();
    assert_eq!(got.trace_id(), row.trace_id(), "row {n}: the row's trace");
    assert_ne!(
        got.parent_id(),
        row.parent_id(),
        "row {n}: the relay's span as the parent"
    );
    assert_eq!(tracestate, Some(ROW_TRACESTATE), "row {n}");
}

/// Runs `oncely relay --outbox <outbox_url> --to <to> <args>` until `unsent` reads no row left
/// (30 s at most), stops it with `signal` (`-TERM`, `-INT`) and checks its summary, the last
/// line of its stderr: `published` rows, none failed.
async fn relay_until_all_sent<F, Fut>(
    outbox_url: &str,
    to: &str,
    args: &[&str],
    signal: &str,
    published: usize,
    mut unsent: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = i64>,
{
    let child = Command::new(BIN)
        .args(["relay", "--outbox", outbox_url, "--to", to])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = unsent().await;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows unsent after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "relay: published {published}, failed 0, purged 0 in "
        )),
        "one summary line: {stderr}"
    );
}

#[tokio::test]
async fn relay_publishes_the_committed_rows_and_stops_on_sigterm_with_a_summary() {
    let (outbox_url, origin, pool) = postgres_outbox().await;
    let (stream, subject) = nats_stream("postgres").await;
    enqueue_orders(&pool, &origin, 20).await;

    let to = format!("{}/{subject}", nats());
    let pool = &pool;
    let unsent = || async move { sqlx::query_scalar(UNSENT).fetch_one(pool).await.unwrap() };
    let args = ["--batch", "7", "--retention", "1h"];
    relay_until_all_sent(&outbox_url, &to, &args, "-TERM", 20, unsent).await;

    assert_eq!(count_and_delete_stream(&stream).await, 20);
}

#[test]
fn relay_refuses_an_unknown_broker_and_a_missing_topic_or_queue_in_one_line() {
    let missing = format!(
        "kafka://{}/oncely.cli.relay.missing.{}",
        kafka_brokers(),
        std::process::id()
    );
    let missing_queue = format!("oncely-cli-relay-missing-{}", std::process::id());
    let sqs = sqs_server();
    let missing_sqs = format!("{sqs}/{missing_queue}");
    for (to, needle) in [
        ("pulsar://h/t", "no broker for `pulsar://h/t`".to_owned()),
        (
            missing_sqs.as_str(),
            format!(
                "no queue {missing_queue} at {}: create it",
                sqs.replace("sqs+http://", "http://")
            ),
        ),
        (
            missing.as_str(),
            format!(
                "no Kafka topic oncely.cli.relay.missing.{} at {}",
                std::process::id(),
                kafka_brokers()
            ),
        ),
    ] {
        let out = Command::new(BIN)
            .args([
                "relay",
                "--outbox",
                "postgres://nobody@127.0.0.1:1/x",
                "--to",
                to,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: connecting to the broker: {needle}")),
            "{stderr}"
        );
    }
}

fn sqs_server() -> String {
    std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".to_owned())
}

fn kafka_brokers() -> String {
    std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn kafka_config() -> ClientConfig {
    oncely::kafka::client_config(&kafka_brokers())
}

/// `(partition, offset, key, Oncely-Message-Id)` of every record of `topic` (blocking), each
/// checked to carry its row's trace ([`assert_carries_row_trace`], the payload is the row's
/// number): its
/// partitions read from the beginning until nothing more comes for half a second. Not up to the
/// high watermark: tansu (0.6) answers the base offset of a partition's last produce batch plus
/// one, short of the records after the first of a last batch of several.
fn read_kafka_topic(topic: &str) -> Vec<(i32, i64, String, String)> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        tpl.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let mut last_read = Instant::now();
    while last_read.elapsed() < Duration::from_millis(500) {
        let Some(read) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let read = read.unwrap();
        last_read = Instant::now();
        let key = String::from_utf8_lossy(read.key().unwrap_or_default()).into_owned();
        let id = read
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == MESSAGE_ID_HEADER))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let header = |name: &str| {
            read.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let n: usize = String::from_utf8_lossy(read.payload().unwrap_or_default())
            .parse()
            .unwrap();
        let (traceparent, tracestate) = (header("traceparent"), header("tracestate"));
        assert_carries_row_trace(n, traceparent.as_deref(), tracestate.as_deref());
        records.push((read.partition(), read.offset(), key, id));
    }
    records.sort();
    records
}

#[tokio::test]
async fn relay_takes_a_postgres_outbox_to_a_kafka_topic_keyed_by_aggregate() {
    let (outbox_url, origin, pool) = postgres_outbox().await;
    // Topics are not created by producing to them: three partitions.
    let options = oncely::kafka::FreshOptions::new("oncely.cli.relay.", "kafka").partitions(3);
    let topic = oncely::kafka::fresh_destination(&kafka_brokers(), &options)
        .await
        .expect("Kafka at ONCELY_KAFKA_BROKERS (start tansu)")
        .topic;
    let expected = enqueue_orders(&pool, &origin, 20).await;

    let to = format!("kafka://{}/{topic}", kafka_brokers());
    let pool = &pool;
    let unsent = || async move { sqlx::query_scalar(UNSENT).fetch_one(pool).await.unwrap() };
    relay_until_all_sent(&outbox_url, &to, &["--batch", "7"], "-TERM", 20, unsent).await;

    let reader = topic.clone();
    let records = tokio::task::spawn_blocking(move || read_kafka_topic(&reader))
        .await
        .unwrap();
    assert_eq!(records.len(), 20, "{records:?}");
    // Keyed by aggregate: each aggregate's rows in one partition, in id order there.
    let mut arrived: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for (partition, _, key, id) in &records {
        let first = *partition_of.entry(key.clone()).or_insert(*partition);
        assert_eq!(first, *partition, "{key} in two partitions: {records:?}");
        arrived.entry(key.clone()).or_default().push(id.clone());
    }
    assert_eq!(arrived, expected, "keys = aggregates, ids in order");

    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin.delete_topics(&[&topic], &options).await.ok();
}

#[tokio::test]
async fn relay_takes_a_postgres_outbox_to_an_sqs_fifo_queue_grouped_by_aggregate() {
    use aws_sdk_sqs::types::MessageSystemAttributeName as System;

    let (outbox_url, origin, pool) = postgres_outbox().await;
    // Queues are not created by sending to them: a FIFO queue.
    let options = oncely::sqs::FreshOptions::new("oncely-cli-relay-", "sqs").fifo();
    let fresh = oncely::sqs::fresh_destination(&sqs_server(), &options)
        .await
        .unwrap_or_else(|e| panic!("SQS at {}: {e} (start moto_server)", sqs_server()));
    let client =
        oncely::sqs::client(&oncely::sqs::SqsOptions::parse_queue_optional(&sqs_server()).unwrap())
            .await
            .unwrap();
    let queue_url = fresh.queue_url.clone();
    let expected = enqueue_orders(&pool, &origin, 20).await;

    let to = format!("{}/{}", sqs_server(), fresh.queue);
    let pool = &pool;
    let unsent = || async move { sqlx::query_scalar(UNSENT).fetch_one(pool).await.unwrap() };
    relay_until_all_sent(&outbox_url, &to, &["--batch", "7"], "-TERM", 20, unsent).await;

    // Read back ten at a time, each receive deleted before the next (a message group stays
    // locked while one of its messages is in flight): each group in order.
    let mut arrived: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut read = 0;
    loop {
        let received = client
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .message_system_attribute_names(System::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if received.is_empty() {
            break;
        }
        for got in received {
            read += 1;
            let system = got.attributes.clone().unwrap_or_default();
            let id = got
                .message_attributes
                .as_ref()
                .and_then(|a| a.get(oncely::sqs::MESSAGE_ID_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .expect("the row's id attribute")
                .to_owned();
            assert_eq!(
                system.get(&System::MessageDeduplicationId),
                Some(&id),
                "the dedup id is the row's id"
            );
            let group = system[&System::MessageGroupId].clone();
            arrived.entry(group).or_default().push(id);
            let attribute = |name: &str| {
                got.message_attributes
                    .as_ref()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
            };
            let n: usize = got.body.as_deref().unwrap().parse().unwrap();
            assert_carries_row_trace(n, attribute("traceparent"), attribute("tracestate"));
            client
                .delete_message()
                .queue_url(&queue_url)
                .receipt_handle(got.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(read, 20);
    assert_eq!(arrived, expected, "groups = aggregates, ids in order");

    for queue_url in [&fresh.queue_url, &fresh.dead_letter_queue_url] {
        client.delete_queue().queue_url(queue_url).send().await.ok();
    }
}

#[tokio::test]
async fn relay_takes_a_mysql_outbox_to_a_rabbitmq_queue() {
    use oncely::mysql::outbox::{MySqlOutbox, MySqlOutboxStore};
    use oncely::mysql::sqlx::{self as my, MySqlPool};
    use oncely::rabbitmq::lapin::options::{
        BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use oncely::rabbitmq::lapin::types::FieldTable;
    use oncely::rabbitmq::lapin::{Connection, ConnectionProperties};

    let outbox_url = servers::mysql_url(PREFIX).await;
    MySqlOutboxStore::connect(&outbox_url).await.unwrap();
    let pool = MySqlPool::connect(&outbox_url).await.unwrap();

    let amqp = amqp();
    let options = oncely::rabbitmq::FreshOptions::new("oncely.cli.relay.", "mysql");
    let queue = oncely::rabbitmq::fresh_destination(&amqp, &options)
        .await
        .expect("RabbitMQ at ONCELY_AMQP_URL")
        .queue;

    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        let message = OutboxMessage::new(format!("order-{}", n % 2), vec![b'y'; n])
            .traced(&row_trace(n), Some(ROW_TRACESTATE));
        MySqlOutbox::enqueue(&Outbox::new(), &mut tx, &message)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let to = format!("{amqp}/{queue}");
    let pool = &pool;
    let unsent = || async move { my::query_scalar(UNSENT).fetch_one(pool).await.unwrap() };
    relay_until_all_sent(&outbox_url, &to, &[], "-INT", 5, unsent).await;

    let connection = Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 5);
    for _ in 0..5 {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        let message = oncely::rabbitmq::message::from_amqp(
            &got.delivery.properties,
            &got.delivery.data,
            &queue,
        );
        // The payload is `n` times `y`.
        let n = message.payload().len();
        let (traceparent, tracestate) =
            (message.header("traceparent"), message.header("tracestate"));
        assert_carries_row_trace(n, traceparent, tracestate);
    }
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_takes_a_sqlite_outbox_to_nats() {
    use oncely::sqlite::outbox::{SqliteOutbox, SqliteOutboxStore};
    use oncely::sqlite::sqlx::SqlitePool;
    use oncely::sqlite::sqlx::sqlite::SqliteConnectOptions;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let outbox_url = format!("sqlite:{}", path.display());
    SqliteOutboxStore::connect(&outbox_url).await.unwrap();
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let (stream, subject) = nats_stream("sqlite").await;

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    for n in 0..12 {
        let message = OutboxMessage::new(format!("order-{}", n % 4), vec![b'z'; n]);
        SqliteOutbox::enqueue(&Outbox::new(), &mut tx, &message)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let to = format!("{}/{subject}", nats());
    let pool = &pool;
    let unsent = || async move { sqlx::query_scalar(UNSENT).fetch_one(pool).await.unwrap() };
    relay_until_all_sent(&outbox_url, &to, &["--batch", "5"], "-TERM", 12, unsent).await;

    assert_eq!(count_and_delete_stream(&stream).await, 12);
}

/// A relay's `--metrics-addr`, scraped while it runs: its counts reach what was enqueued
/// and its backlog empties; `/readyz` answers 200.
#[tokio::test]
async fn relay_metrics_count_what_was_published_and_the_backlog_empties() {
    use oncely::sqlite::outbox::{SqliteOutbox, SqliteOutboxStore};
    use oncely::sqlite::sqlx::SqlitePool;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let outbox_url = format!("sqlite:{}", path.display());
    SqliteOutboxStore::connect(&outbox_url).await.unwrap();
    let pool = SqlitePool::connect(&outbox_url).await.unwrap();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    for n in 0..12 {
        let message = OutboxMessage::new(format!("order-{}", n % 4), vec![b'm'; n]);
        SqliteOutbox::enqueue(&Outbox::new(), &mut tx, &message)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let (stream, subject) = nats_stream("metrics").await;

    let port = oncely_conformance::process::free_port();
    let child = Command::new(BIN)
        .args(["relay", "--outbox", &outbox_url, "--to"])
        .arg(format!("{}/{subject}", nats()))
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends: a relay left running would hold the test's output open.
    let relay = KillOnDrop(child);
    let expect = [
        "oncely_relay_rows_total{result=\"published\"} 12",
        "oncely_relay_rows_total{result=\"failed\"} 0",
        "oncely_relay_backlog_rows 0",
        "oncely_relay_oldest_unsent_seconds 0",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .unwrap()
            .unwrap_or_default();
        if expect.iter().all(|l| text.lines().any(|t| t == *l)) {
            break;
        }
        assert!(Instant::now() < deadline, "{expect:?} not in\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
        .await
        .unwrap()
        .unwrap();
    assert!(ready.contains(" 200 "), "{ready}");
    drop(relay);
    assert_eq!(count_and_delete_stream(&stream).await, 12);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `oncely relay --park-after 2` parks a row RabbitMQ keeps refusing (routed to no queue);
/// `oncely outbox list` shows it with its error, `retry` puts it back in line (the relay parks
/// it again), `drop --all` deletes it; the relay's summary counts it.
#[tokio::test]
async fn a_refused_row_is_parked_listed_retried_and_dropped_from_the_command_line() {
    let (outbox_url, _origin, pool) = postgres_outbox().await;
    let mut tx = pool.begin().await.unwrap();
    let message = OutboxMessage::new("order-1", b"{}".to_vec());
    let id = Outbox::new().enqueue(&mut tx, &message).await.unwrap();
    tx.commit().await.unwrap();
    let outbox = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("outbox")
            .args(args)
            .args(["--outbox", &outbox_url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let parked = |outbox: &dyn Fn(&[&str]) -> String| {
        let listed: serde_json::Value = serde_json::from_str(&outbox(&["list", "--json"])).unwrap();
        listed.as_array().unwrap().clone()
    };
    let relay_until_parked = || {
        let child = Command::new(BIN)
            .args(["relay", "--outbox", &outbox_url])
            .args(["--to", &format!("{}/oncely.cli.no-such-queue", amqp())])
            .args(["--park-after", "2"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while parked(&outbox).is_empty() {
            assert!(Instant::now() < deadline, "not parked after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        assert!(
            last.starts_with("relay: published 0, failed 2, parked 1, purged 0 in "),
            "{stderr}"
        );
    };

    relay_until_parked();
    let rows = parked(&outbox);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], id);
    assert_eq!(rows[0]["aggregate"], "order-1");
    assert_eq!(rows[0]["attempts"], 2);
    assert!(
        rows[0]["error"].as_str().unwrap().contains("NO_ROUTE"),
        "{rows:?}"
    );
    let text = outbox(&["list"]);
    assert!(
        text.starts_with(&format!(
            "{id}\taggregate order-1\tto (default)\t2 refusals\t"
        )),
        "{text}"
    );

    assert_eq!(outbox(&["retry", &id.to_string()]), "retried 1\n");
    assert!(parked(&outbox).is_empty());
    relay_until_parked();
    assert_eq!(outbox(&["drop", "--all"]), "dropped 1\n");
    assert!(parked(&outbox).is_empty());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM oncely_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}
