//! `oncely relay` end to end: real processes from PostgreSQL, MySQL/MariaDB and SQLite outboxes
//! to NATS JetStream, RabbitMQ, Kafka (a Kafka-protocol broker at `ONCELY_KAFKA_BROKERS`,
//! default 127.0.0.1:9092) and SQS (an SQS-compatible server at `ONCELY_SQS_URL`, default
//! sqs+http://127.0.0.1:5999), stopped with SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oncely::backend::OutboxStore;
use oncely::kafka::MESSAGE_ID_HEADER;
use oncely::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use oncely::kafka::rdkafka::client::DefaultClientContext;
use oncely::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely::kafka::rdkafka::message::Headers;
use oncely::kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use oncely::nats::async_nats::{self, jetstream};
use oncely::outbox::message_id;
use oncely::postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
use oncely::postgres::sqlx::{self, PgPool};

const BIN: &str = env!("CARGO_BIN_EXE_oncely");

fn postgres() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn nats() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[tokio::test]
async fn relay_publishes_the_committed_rows_and_stops_on_sigterm_with_a_summary() {
    let pid = std::process::id();
    let schema = format!("oncely_cli_relay_{pid}");
    let admin = PgPool::connect(&postgres()).await.unwrap();
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    let outbox_url = format!("{}?options=-csearch_path%3D{schema}", postgres());
    PostgresOutboxStore::connect(&outbox_url).await.unwrap();
    let pool = PgPool::connect(&outbox_url).await.unwrap();

    let context = jetstream::new(async_nats::connect(nats()).await.unwrap());
    let stream = format!("ONCELY_CLI_RELAY_{pid}");
    let subject = format!("oncely.cli.relay.{pid}");
    context
        .create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    for n in 0..20 {
        let message = OutboxMessage::new(format!("order-{}", n % 3), vec![b'x'; n]);
        Outbox::new().enqueue(&mut tx, &message).await.unwrap();
    }
    tx.commit().await.unwrap();

    let child = Command::new(BIN)
        .args(["relay", "--outbox", &outbox_url, "--to"])
        .arg(format!("{}/{subject}", nats()))
        .args(["--batch", "7", "--retention", "1h"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if unsent == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unsent} rows unsent after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("relay: published 20, failed 0, purged 0 in "),
        "one summary line: {stderr}"
    );

    let info = context
        .get_stream(&stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 20);
    context.delete_stream(&stream).await.unwrap();
    let ddl = format!("DROP SCHEMA \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
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

/// `(partition, offset, key, Oncely-Message-Id)` of every record of `topic` (blocking): its
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
        records.push((read.partition(), read.offset(), key, id));
    }
    records.sort();
    records
}

#[tokio::test]
async fn relay_takes_a_postgres_outbox_to_a_kafka_topic_keyed_by_aggregate() {
    let pid = std::process::id();
    let schema = format!("oncely_cli_relay_kafka_{pid}");
    let admin = PgPool::connect(&postgres()).await.unwrap();
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    let outbox_url = format!("{}?options=-csearch_path%3D{schema}", postgres());
    let origin = PostgresOutboxStore::connect(&outbox_url)
        .await
        .unwrap()
        .origin()
        .await
        .unwrap();
    let pool = PgPool::connect(&outbox_url).await.unwrap();

    // Topics are not created by producing to them: three partitions, the time in the name.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let topic = format!("oncely.cli.relay.{pid}.{millis}");
    let kafka: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = kafka
        .create_topics(
            [&NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("Kafka at ONCELY_KAFKA_BROKERS (start tansu)");
    for result in created {
        result.unwrap();
    }

    let mut tx = pool.begin().await.unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..20 {
        let aggregate = format!("order-{}", n % 5);
        let message = OutboxMessage::new(&aggregate, vec![b'k'; n]);
        let id = Outbox::new().enqueue(&mut tx, &message).await.unwrap();
        expected
            .entry(aggregate)
            .or_default()
            .push(message_id(&origin, id));
    }
    tx.commit().await.unwrap();

    relay_until_all_sent(
        &pool,
        &outbox_url,
        &format!("kafka://{}/{topic}", kafka_brokers()),
    )
    .await;

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

    kafka.delete_topics(&[&topic], &options).await.ok();
    let ddl = format!("DROP SCHEMA \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_takes_a_postgres_outbox_to_an_sqs_fifo_queue_grouped_by_aggregate() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName as System, QueueAttributeName};

    let pid = std::process::id();
    let schema = format!("oncely_cli_relay_sqs_{pid}");
    let admin = PgPool::connect(&postgres()).await.unwrap();
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    let outbox_url = format!("{}?options=-csearch_path%3D{schema}", postgres());
    let origin = PostgresOutboxStore::connect(&outbox_url)
        .await
        .unwrap()
        .origin()
        .await
        .unwrap();
    let pool = PgPool::connect(&outbox_url).await.unwrap();

    // Queues are not created by sending to them: a FIFO queue, the time in its name.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let queue = format!("oncely-cli-relay-{pid}-{millis}.fifo");
    let options = oncely::sqs::SqsOptions::parse_queue_optional(&sqs_server()).unwrap();
    let client = oncely::sqs::client(&options).unwrap();
    let queue_url = client
        .create_queue()
        .queue_name(&queue)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .send()
        .await
        .unwrap_or_else(|e| panic!("SQS at {}: {e:?} (start moto_server)", sqs_server()))
        .queue_url
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..20 {
        let aggregate = format!("order-{}", n % 5);
        let message = OutboxMessage::new(&aggregate, format!("{n}").into_bytes());
        let id = Outbox::new().enqueue(&mut tx, &message).await.unwrap();
        expected
            .entry(aggregate)
            .or_default()
            .push(message_id(&origin, id));
    }
    tx.commit().await.unwrap();

    relay_until_all_sent(&pool, &outbox_url, &format!("{}/{queue}", sqs_server())).await;

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

    client
        .delete_queue()
        .queue_url(&queue_url)
        .send()
        .await
        .ok();
    let ddl = format!("DROP SCHEMA \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_takes_a_mysql_outbox_to_a_rabbitmq_queue() {
    use oncely::mysql::outbox::{MySqlOutbox, MySqlOutboxStore};
    use oncely::mysql::sqlx::{self as my, MySqlPool};
    use oncely::rabbitmq::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use oncely::rabbitmq::lapin::types::FieldTable;
    use oncely::rabbitmq::lapin::{Connection, ConnectionProperties};

    let pid = std::process::id();
    let mysql = std::env::var("ONCELY_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    let database = format!("oncely_cli_relay_{pid}");
    let admin = MySqlPool::connect(&format!("{mysql}/test")).await.unwrap();
    for ddl in [
        format!("DROP DATABASE IF EXISTS `{database}`"),
        format!("CREATE DATABASE `{database}`"),
    ] {
        my::raw_sql(my::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    let outbox_url = format!("{mysql}/{database}");
    MySqlOutboxStore::connect(&outbox_url).await.unwrap();
    let pool = MySqlPool::connect(&outbox_url).await.unwrap();

    let amqp = std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let queue = format!("oncely.cli.relay.{pid}");
    let connection = Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        let message = OutboxMessage::new(format!("order-{}", n % 2), vec![b'y'; n]);
        MySqlOutbox::enqueue(&Outbox::new(), &mut tx, &message)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let child = Command::new(BIN)
        .args(["relay", "--outbox", &outbox_url, "--to"])
        .arg(format!("{amqp}/{queue}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsent: i64 =
            my::query_scalar("SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if unsent == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unsent} rows unsent after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        stderr.starts_with("relay: published 5, failed 0, purged 0 in "),
        "{stderr}"
    );
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 5);
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    my::raw_sql(my::AssertSqlSafe(format!("DROP DATABASE `{database}`")))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_takes_a_sqlite_outbox_to_nats() {
    use oncely::sqlite::outbox::{SqliteOutbox, SqliteOutboxStore};
    use oncely::sqlite::sqlx::SqlitePool;
    use oncely::sqlite::sqlx::sqlite::SqliteConnectOptions;

    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let outbox_url = format!("sqlite:{}", path.display());
    SqliteOutboxStore::connect(&outbox_url).await.unwrap();
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePool::connect_with(options).await.unwrap();

    let context = jetstream::new(async_nats::connect(nats()).await.unwrap());
    let stream = format!("ONCELY_CLI_RELAY_SQLITE_{pid}");
    let subject = format!("oncely.cli.relay.sqlite.{pid}");
    context
        .create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    for n in 0..12 {
        let message = OutboxMessage::new(format!("order-{}", n % 4), vec![b'z'; n]);
        SqliteOutbox::enqueue(&Outbox::new(), &mut tx, &message)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let child = Command::new(BIN)
        .args(["relay", "--outbox", &outbox_url, "--to"])
        .arg(format!("{}/{subject}", nats()))
        .args(["--batch", "5"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        if unsent == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unsent} rows unsent after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        stderr.starts_with("relay: published 12, failed 0, purged 0 in "),
        "{stderr}"
    );
    let info = context
        .get_stream(&stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 12);
    context.delete_stream(&stream).await.unwrap();
}

/// Runs `oncely relay --to <to>` over the outbox until no row of it is unsent (30 s at most),
/// stops it with SIGTERM and checks its summary: 20 published, none failed.
async fn relay_until_all_sent(pool: &PgPool, outbox_url: &str, to: &str) {
    let child = Command::new(BIN)
        .args(["relay", "--outbox", outbox_url, "--to"])
        .arg(to)
        .args(["--batch", "7"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL")
                .fetch_one(pool)
                .await
                .unwrap();
        if unsent == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unsent} rows unsent after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        stderr.starts_with("relay: published 20, failed 0, purged 0 in "),
        "one summary line: {stderr}"
    );
}
