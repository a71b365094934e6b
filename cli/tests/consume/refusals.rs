//! Refusals: one line, non-zero, before anything is consumed.

use crate::rabbitmq::Rabbit;
use oncely_conformance::servers::fresh_name;

use crate::process::{assert_one_clear_error, run_to_end, runtime, spawn_consume_on, wait_to_end};
use crate::{amqp_server, kafka_brokers, sqs_server};

#[test]
fn bad_handler_urls_and_unknown_brokers_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let amqp = format!("{}/q", amqp_server());
    for (args, needle) in [
        (
            vec![
                "--from",
                &amqp,
                "--key",
                "/id",
                "--deliver",
                "ftp://example.com/hook",
            ],
            "scheme `ftp` is not supported",
        ),
        (
            vec![
                "--from",
                &amqp,
                "--key",
                "/id",
                "--deliver",
                "localhost:8080",
            ],
            "use http://",
        ),
        (
            vec![
                "--from",
                "pulsar://127.0.0.1:6650/orders",
                "--key",
                "/id",
                "--deliver",
                "http://127.0.0.1:9/h",
            ],
            "no broker for `pulsar://127.0.0.1:6650/orders`",
        ),
        (
            vec![
                "--from",
                "kafka://127.0.0.1:9092/orders",
                "--key",
                "/id",
                "--deliver",
                "http://127.0.0.1:9/h",
            ],
            "no consumer group: add ?group=NAME",
        ),
        (
            vec![
                "--from",
                "amqp://h/q?dlq=x",
                "--dlq",
                "y",
                "--key",
                "/id",
                "--deliver",
                "http://127.0.0.1:9/h",
            ],
            "give it once",
        ),
    ] {
        let output = run_to_end(dir.path(), &args);
        assert_one_clear_error(&output, needle);
    }
    assert!(
        !dir.path().join("o.db").exists(),
        "a refused run opened the store"
    );
}

#[test]
fn unreachable_brokers_and_missing_queues_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("{}/{}", amqp_server(), fresh_name("oncely.cli.missing"));
    let missing_topic = format!(
        "kafka://{}/{}?group=g",
        kafka_brokers(),
        fresh_name("oncely.cli.missing")
    );
    let missing_sqs_queue = fresh_name("oncely-cli-missing");
    let missing_sqs = format!("{}/{missing_sqs_queue}", sqs_server());
    let endpoint = sqs_server().replacen("sqs+http://", "http://", 1);
    let missing_sqs_needle = format!("no queue {missing_sqs_queue} at {endpoint}: create it");
    for (from, needle) in [
        (
            "amqp://guest:guest@127.0.0.1:1/q",
            "cannot connect to RabbitMQ",
        ),
        ("nats://127.0.0.1:1/S/C", "NATS server unreachable"),
        (missing.as_str(), "does not exist"),
        (
            "kafka://127.0.0.1:1/t?group=g",
            "Kafka unreachable at 127.0.0.1:1",
        ),
        (missing_topic.as_str(), "no Kafka topic oncely.cli.missing_"),
        (
            "sqs+http://127.0.0.1:1/q",
            "SQS at http://127.0.0.1:1: looking up the queue q: dispatch failure: io error",
        ),
        (missing_sqs.as_str(), missing_sqs_needle.as_str()),
    ] {
        let args = [
            "--from",
            from,
            "--key",
            "/id",
            "--deliver",
            "http://127.0.0.1:9/h",
        ];
        let output = run_to_end(dir.path(), &args);
        assert_one_clear_error(&output, needle);
    }
}

#[test]
fn a_store_that_cannot_open_is_one_clear_line_after_the_broker_connects() {
    let rt = runtime();
    let rabbit = rt.block_on(Rabbit::new());
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}", amqp_server(), rabbit.queue);
    let args = [
        "--from",
        &from,
        "--key",
        "/id",
        "--deliver",
        "http://127.0.0.1:9/h",
    ];
    let output = wait_to_end(spawn_consume_on("nope:x", dir.path(), &args));
    assert_one_clear_error(&output, "nope:x");
}
