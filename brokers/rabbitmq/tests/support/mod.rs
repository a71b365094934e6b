//! The broker behaviour suite and RabbitMQ's own trials against a server (`run`), shared by
//! `suite.rs` (the machine's server) and `tls.rs` (a node with a TLS listener).
//!
//! Each test gets a fresh durable queue and dead-letter queue named after it, this process, the
//! time and a counter ([`oncely_rabbitmq::fresh_destination`]). Both carry `x-expires`, so
//! RabbitMQ deletes them a few minutes after their last use: queues left by earlier runs (or a
//! crashed one) clean themselves up.

use std::future::Future;
use std::time::Duration;

use oncely_broker_suite::libtest_mimic::{Conclusion, Trial};
use oncely_broker_suite::{Broker, Channel};
use oncely_conformance::faults::{RabbitMqServer, Restartable};
use oncely_core::consumer::{DeadLetter, Delivery, ERROR_HEADER, Message, SOURCE_HEADER, Source};
use oncely_core::outbox::Publisher;
use oncely_core::{BoxError, async_trait};
use oncely_rabbitmq::lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use oncely_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use oncely_rabbitmq::lapin::{self, BasicProperties, Confirmation, Connection};
use oncely_rabbitmq::{
    AmqpPublisher, AmqpSource, Error, FreshOptions, fresh_destination, message, queue_url,
};

/// How long an unused test queue lives on the server.
const EXPIRES: Duration = Duration::from_secs(5 * 60);

/// How long `unsettled` waits for stopped consumers' channels to close.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

/// The broker suite and this broker's own trials, plus `extra`, against the server at `base`
/// (`amqp[s]://USER:PASSWORD@HOST:PORT/VHOST`), reported as `name`.
/// `restart_proof`: whether it also runs the broker restart proof, on a plain node of its own
/// (one suite runs it: what is proven does not depend on the listener).
pub fn run(name: &str, base: String, restart_proof: bool, extra: Vec<Trial>) -> Conclusion {
    let mut trials = own_trials(name, &base);
    trials.extend(extra);
    oncely_broker_suite::run(
        name,
        || async move {
            // Fail fast, with the reason, when the server is not there.
            if let Err(error) = oncely_rabbitmq::connect(&base).await {
                panic!(
                    "no RabbitMQ at {base}: {error} (start it with `rabbitmq-server -detached`)"
                );
            }
            Rabbit {
                base,
                restart_proof,
            }
        },
        |url| async move { Ok(AmqpSource::connect(&url).await?) },
        trials,
    )
}

/// What only this broker promises, beyond the suite.
fn own_trials(name: &str, base: &str) -> Vec<Trial> {
    type Body = fn(Rabbit) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
    let trials: [(&str, Body); 5] = [
        (
            "dead_letter_keeps_the_properties_but_not_the_expiration",
            |r| Box::pin(dead_letter_keeps_the_properties_but_not_the_expiration(r)),
        ),
        (
            "dropping_the_source_gives_its_unacked_deliveries_back_at_once",
            |r| Box::pin(dropping_the_source_gives_its_unacked_deliveries_back_at_once(r)),
        ),
        ("amqp_headers_and_message_id_reach_the_message", |r| {
            Box::pin(amqp_headers_and_message_id_reach_the_message(r))
        }),
        ("setup_errors_name_the_queue_and_hide_the_password", |r| {
            Box::pin(setup_errors_name_the_queue_and_hide_the_password(r))
        }),
        (
            "a_queue_deleted_under_the_consumer_stops_it_with_a_permanent_error",
            |r| Box::pin(a_queue_deleted_under_the_consumer_stops_it_with_a_permanent_error(r)),
        ),
    ];
    trials
        .into_iter()
        .map(|(trial, body)| {
            let base = base.to_owned();
            Trial::test(format!("{name}::{trial}"), move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(body(Rabbit {
                    base,
                    restart_proof: false,
                }));
                Ok(())
            })
            .with_kind("rabbitmq")
        })
        .collect()
}

async fn dropping_the_source_gives_its_unacked_deliveries_back_at_once(rabbit: Rabbit) {
    let queue = rabbit.channel("drop").await.unwrap();
    queue
        .publish(&Message::new(b"{}".to_vec(), "").with_header("Event-Id", "d-1"))
        .await
        .unwrap();
    let mut source = queue.consumer().await.unwrap();
    let held = source.next().await.unwrap().unwrap();
    drop(source);
    // The delivery outlives its source, unsettled: the channel closed, so it is back already.
    let mut again = queue.consumer().await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(2), again.next())
        .await
        .expect("the unacked delivery is back within 2 s")
        .unwrap()
        .unwrap();
    assert_eq!(back.message().header("Event-Id"), Some("d-1"));
    assert!(back.redelivered());
    assert!(held.ack().await.is_err(), "the old channel is closed");
    back.ack().await.unwrap();
}

async fn amqp_headers_and_message_id_reach_the_message(rabbit: Rabbit) {
    let queue = rabbit.channel("headers").await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("Event-Id".into(), AMQPValue::LongString("h-1".into()));
    headers.insert("Attempt".into(), AMQPValue::LongLongInt(7));
    headers.insert("Urgent".into(), AMQPValue::Boolean(true));
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_message_id("m-42".into());
    queue
        .publisher
        .basic_publish(
            "".into(),
            queue.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"payload",
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut source = queue.consumer().await.unwrap();
    let delivery = source.next().await.unwrap().unwrap();
    let message = delivery.message();
    assert_eq!(message.payload(), b"payload");
    assert_eq!(message.message_id(), Some("m-42"));
    assert_eq!(message.header("event-id"), Some("h-1"));
    assert_eq!(message.header("Attempt"), Some("7"));
    assert_eq!(message.header("Urgent"), Some("true"));
    assert_eq!(message.source(), queue.queue);
    delivery.ack().await.unwrap();
}

async fn dead_letter_keeps_the_properties_but_not_the_expiration(rabbit: Rabbit) {
    let queue = rabbit.channel("dead-letter-properties").await.unwrap();
    let properties = message::to_amqp(&Message::new(Vec::new(), "").with_message_id("m-9"))
        .unwrap()
        .with_content_type("application/json".into())
        .with_expiration("60000".into());
    queue
        .publisher
        .basic_publish(
            "".into(),
            queue.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut source = queue.consumer().await.unwrap();
    let delivery = source.next().await.unwrap().unwrap();
    let letter = DeadLetter {
        error: "bad".into(),
        attempts: 1,
        key: None,
        source: queue.queue.clone(),
        id: DeadLetter::new_id(),
    };
    delivery.dead_letter(&letter).await.unwrap();
    delivery.ack().await.unwrap();

    let channel = queue.connection.create_channel().await.unwrap();
    let got = channel
        .basic_get(queue.dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter");
    let p = &got.delivery.properties;
    assert_eq!(p.message_id().as_ref().map(|v| v.as_str()), Some("m-9"));
    assert_eq!(
        p.content_type().as_ref().map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.expiration(), None, "a dead letter does not expire");
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    let message = message::from_amqp(p, &got.delivery.data, &queue.dlq);
    assert_eq!(message.header(ERROR_HEADER), Some("bad"));
    assert_eq!(message.header(SOURCE_HEADER), Some(queue.queue.as_str()));
}

async fn setup_errors_name_the_queue_and_hide_the_password(rabbit: Rabbit) {
    let missing = queue_url(&rabbit.base, "oncely.suite.no-such-queue");
    match AmqpSource::connect(&missing).await {
        Err(Error::QueueNotFound { queue }) => assert_eq!(queue, "oncely.suite.no-such-queue"),
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
    let wrong = queue_url(&rabbit.base, "orders").replace("guest:guest", "guest:not-the-password");
    match AmqpSource::connect(&wrong).await {
        Err(error @ Error::Connect { .. }) => {
            let text = error.to_string();
            assert!(!text.contains("not-the-password"), "{text}");
            assert!(text.contains("guest:***@127.0.0.1"), "{text}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

/// Losing the connection is retried for as long as it takes, but a queue that is gone is not
/// coming back by waiting: the server cancels the consumer, the source connects again, finds
/// no queue, and the run ends with that, after settling what it had.
async fn a_queue_deleted_under_the_consumer_stops_it_with_a_permanent_error(rabbit: Rabbit) {
    let queue = rabbit.channel("deleted").await.unwrap();
    queue
        .publish(&Message::new(b"{}".to_vec(), "").with_message_id("before"))
        .await
        .unwrap();
    let source = queue.consumer().await.unwrap();
    let error = oncely_broker_suite::run_until_its_destination_is_deleted(source, async {
        let channel = queue.connection.create_channel().await.unwrap();
        channel
            .queue_delete(queue.queue.as_str().into(), Default::default())
            .await
            .unwrap();
    })
    .await;
    let text = error.to_string();
    assert!(
        text.contains(&format!("queue `{}` does not exist", queue.queue)),
        "{text}"
    );
}

/// The server; each test connects anew, in its own runtime.
struct Rabbit {
    base: String,
    /// Whether this suite runs the broker restart proof (on a node of its own).
    restart_proof: bool,
}

/// One test's queue `queue` and its dead-letter queue `<queue>.dlq`.
struct Queue {
    base: String,
    queue: String,
    dlq: String,
    connection: Connection,
    publisher: lapin::Channel,
}

impl Queue {
    /// A new connection for one of the proof's checks: the channel's own died if the server
    /// restarted since (the restart proof).
    async fn checking_connection(&self) -> Result<Connection, BoxError> {
        Ok(oncely_rabbitmq::connect(&self.base).await?)
    }
}

#[async_trait]
impl Broker for Rabbit {
    type Channel = Queue;

    fn runs_restart_proof(&self) -> bool {
        self.restart_proof
    }

    async fn own_server(&self) -> Option<(Self, Box<dyn Restartable>)> {
        let server = tokio::task::spawn_blocking(RabbitMqServer::start)
            .await
            .expect("the test's RabbitMQ node");
        let rabbit = Rabbit {
            base: server.url(),
            restart_proof: false,
        };
        Some((rabbit, Box::new(server)))
    }

    async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, BoxError> {
        Ok(Box::new(AmqpPublisher::connect(url).await?))
    }

    async fn channel(&self, test: &str) -> Result<Queue, BoxError> {
        let options = FreshOptions::new("oncely.suite.", test).expires(EXPIRES);
        let fresh = fresh_destination(&self.base, &options).await?;
        let connection = oncely_rabbitmq::connect(&self.base).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Queue {
            base: self.base.clone(),
            queue: fresh.queue,
            dlq: fresh.dead_letter_queue,
            connection,
            publisher,
        })
    }
}

#[async_trait]
impl Channel for Queue {
    type Source = AmqpSource;

    fn counts_unsettled_while_consuming(&self) -> bool {
        false
    }

    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmation = self
            .publisher
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                options,
                message.payload(),
                message::to_amqp(message)?,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            other => Err(format!("publish to {} not confirmed: {other:?}", self.queue).into()),
        }
    }

    /// Another source on the queue, on its own connection, from the URL the CLI would take.
    async fn consumer(&self) -> Result<AmqpSource, BoxError> {
        Ok(AmqpSource::connect(&self.source_url()).await?)
    }

    fn source_url(&self) -> String {
        queue_url(&self.base, &self.queue)
    }

    fn dead_letter_source_url(&self) -> String {
        let url = queue_url(&self.base, &self.dlq);
        // The TLS server's base carries its certificates in the query.
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}dlq=none")
    }

    fn publisher_url(&self) -> String {
        queue_url(&self.base, &self.queue)
    }

    /// Takes every dead letter with `basic.get`, unacked, then closes the channel: the server
    /// puts them all back, in order, so a later call sees them again.
    async fn dead_letters(&self) -> Result<Vec<Message>, BoxError> {
        let connection = self.checking_connection().await?;
        let channel = connection.create_channel().await?;
        let mut letters = Vec::new();
        while let Some(got) = channel
            .basic_get(self.dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            letters.push(message::from_amqp(
                &got.delivery.properties,
                &got.delivery.data,
                &self.dlq,
            ));
        }
        channel.close(200, "OK".into()).await?;
        Ok(letters)
    }

    /// `queue.declare` (passive) counts only the ready messages, not those delivered and
    /// unacked. With no consumer on the queue nothing is delivered, so the ready count is
    /// everything unsettled: this waits for stopped consumers' channels to close (which puts
    /// their unacked messages back), and fails if consumers remain.
    async fn unsettled(&self) -> Result<u64, BoxError> {
        let connection = self.checking_connection().await?;
        let channel = connection.create_channel().await?;
        let deadline = tokio::time::Instant::now() + CLOSE_PATIENCE;
        let declared = loop {
            let declared = channel
                .queue_declare(
                    self.queue.as_str().into(),
                    QueueDeclareOptions::default().passive(),
                    FieldTable::default(),
                )
                .await?;
            if declared.consumer_count() == 0 {
                break declared;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} consumers still on {}: their unacked messages cannot be counted",
                    declared.consumer_count(),
                    self.queue
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        channel.close(200, "OK".into()).await?;
        Ok(u64::from(declared.message_count()))
    }
}
