//! From RabbitMQ.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oncely::consumer::{ATTEMPTS_HEADER, ERROR_HEADER, KEY_HEADER, Message};
use oncely::rabbitmq::lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use oncely::rabbitmq::lapin::{self, BasicProperties, Confirmation, Connection};

use oncely::rabbitmq::{FreshOptions, fresh_destination};

use crate::handler::Handler;
use crate::process::{
    assert_each_key_posted_once, assert_summary_and_exit_0, runtime, spawn_consume, terminate,
    wait_for,
};
use crate::{FAILING, PATIENCE, amqp_server, order};

/// How long RabbitMQ keeps a test's queues after their last use.
const QUEUES_EXPIRE: Duration = Duration::from_secs(5 * 60);

/// A fresh queue and dead-letter queue, both expiring when unused.
pub struct Rabbit {
    connection: Connection,
    publisher: lapin::Channel,
    pub queue: String,
    pub dlq: String,
}

impl Rabbit {
    pub async fn new() -> Rabbit {
        let options = FreshOptions::new("oncely.cli.consume.", "orders").expires(QUEUES_EXPIRE);
        let fresh = fresh_destination(&amqp_server(), &options)
            .await
            .expect("RabbitMQ at ONCELY_AMQP_URL (start it with `rabbitmq-server -detached`)");
        let connection = Connection::connect(&amqp_server(), Default::default())
            .await
            .unwrap();
        let (queue, dlq) = (fresh.queue, fresh.dead_letter_queue);
        let publisher = connection.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Rabbit {
            connection,
            publisher,
            queue,
            dlq,
        }
    }

    pub async fn publish(&self, message_id: &str, payload: &[u8]) {
        self.publish_to(&self.queue, message_id, payload).await
    }

    /// Publishes to `queue` (this one's, or its dead-letter queue) through the default exchange.
    pub async fn publish_to(&self, queue: &str, message_id: &str, payload: &[u8]) {
        let properties = BasicProperties::default().with_message_id(message_id.into());
        let confirmation = self
            .publisher
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "{confirmation:?}"
        );
    }

    /// The dead letters, taken for good.
    pub async fn dead_letters(&self) -> Vec<Message> {
        self.take(&self.dlq).await
    }

    /// Every message of `queue`, taken for good.
    pub async fn take(&self, queue: &str) -> Vec<Message> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut letters = Vec::new();
        while let Some(got) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            letters.push(oncely::rabbitmq::message::from_amqp(
                &got.delivery.properties,
                &got.delivery.data,
                queue,
            ));
        }
        channel.close(200, "OK".into()).await.ok();
        letters
    }
}

#[test]
fn rabbitmq_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let rabbit = rt.block_on(Rabbit::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();

    // In order, one at a time (--concurrency 1): once `last` is POSTed, all before it are settled.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("a", order("a", 1)),
        ("b", order("b", 2)),
        (FAILING, order(FAILING, 3)),
        ("c", order("c", 4)),
        ("last", order("last", 5)),
    ]
    .into_iter()
    .collect();
    let sequence = ["a", "b", "a", FAILING, "c", "b", "last"];
    rt.block_on(async {
        for (i, key) in sequence.iter().enumerate() {
            rabbit.publish(&format!("m-{i}"), &bodies[key]).await;
        }
    });

    let from = format!("{}/{}", amqp_server(), rabbit.queue);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "/id",
            "--deliver",
            &handler.url,
            "--dlq",
            &rabbit.dlq,
            "--max-attempts",
            "3",
            "--timeout",
            "5s",
        ],
    );
    wait_for("every key's POST", || {
        handler.per_key().contains_key("last")
    });
    let letters = rt.block_on(async {
        let mut letters = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while letters.is_empty() && Instant::now() < deadline {
            letters = rabbit.dead_letters().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        letters
    });
    let output = terminate(child);
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 4, duplicates 2, redelivered 0, dead-lettered 1",
    );

    assert_each_key_posted_once(&handler, &bodies, 3);
    let first_a = handler
        .received()
        .into_iter()
        .find(|r| r.key() == "a")
        .unwrap();
    assert_eq!(first_a.header("content-type"), Some("application/json"));
    assert_eq!(first_a.header("oncely-message-id"), Some("m-0"));
    assert_eq!(first_a.header("oncely-source"), Some(rabbit.queue.as_str()));

    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.payload(), bodies[FAILING].as_slice());
    assert_eq!(letter.header(KEY_HEADER), Some(FAILING));
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
    assert_eq!(letter.message_id(), Some("m-3"));
}

/// `--deliver https://...`: the handler's certificate is verified against the roots
/// `SSL_CERT_FILE` names (here a CA the test made), and each key is POSTed once over TLS.
#[test]
fn an_https_handler_gets_each_key_once_over_verified_tls() {
    use crate::https_handler::HttpsUpstream;

    let rt = runtime();
    let rabbit = rt.block_on(Rabbit::new());
    let dir = tempfile::tempdir().unwrap();
    let ca = oncely_conformance::certs::make_ca(dir.path(), "ca");
    let (cert, key) =
        oncely_conformance::certs::make_server_certificate(dir.path(), "ca", "handler");
    let handler = HttpsUpstream::start(&cert, &key);
    rt.block_on(async {
        for (i, id) in ["a", "b", "a", "last"].iter().enumerate() {
            rabbit.publish(&format!("m-{i}"), &order(id, 1)).await;
        }
    });

    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    let from = format!("{}/{}", amqp_server(), rabbit.queue);
    let deliver = format!("{}/hook", handler.url());
    let child = std::process::Command::new(crate::BIN)
        .args([
            "--store", &store, "consume", "--from", &from, "--key", "/id",
        ])
        .args([
            "--deliver",
            &deliver,
            "--dlq",
            &rabbit.dlq,
            "--timeout",
            "5s",
        ])
        .current_dir(dir.path())
        .env_remove("ONCELY_STORE")
        .env("SSL_CERT_FILE", &ca)
        .env("SSL_CERT_DIR", "/nonexistent")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the last key's POST", || {
        handler.executions(&ca).contains("\"last\"")
    });
    let output = terminate(child);
    assert_summary_and_exit_0(
        &output,
        "consumed 4: done 3, duplicates 1, redelivered 0, dead-lettered 0",
    );
    assert_eq!(
        handler.executions(&ca),
        r#"{"a": 1, "b": 1, "last": 1}"#,
        "each key POSTed once"
    );
}
