//! Setting a source up against the NATS server at `ONCELY_NATS_URL` (`nats://127.0.0.1:4222`
//! by default, with JetStream): what the URL creates, and each refusal saying what to do.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, Context};
use oncely_core::consumer::{DeadLetter, Delivery, Source};
use oncely_nats::{Error, FreshOptions, NatsSource, fresh_destination};

/// A dead letter for `delivery`, failed once.
fn letter(delivery: &impl Delivery) -> DeadLetter {
    DeadLetter {
        error: "boom".into(),
        attempts: 1,
        key: None,
        source: delivery.message().source().into(),
        id: DeadLetter::new_id(),
    }
}

fn server() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A fresh stream capturing `<name>.in` ([`oncely_nats::fresh_destination`]); streams of earlier
/// runs whose process is gone are deleted by the first.
struct Fresh {
    context: Context,
    name: String,
}

impl Fresh {
    async fn new(test: &str) -> Fresh {
        let fresh = fresh_destination(&server(), &FreshOptions::new("ONCELY_TEST_", test))
            .await
            .expect("a fresh stream (is nats-server running with -js?)");
        let client = async_nats::connect(server().as_str()).await.expect("nats");
        Fresh {
            context: jetstream::new(client),
            name: fresh.stream,
        }
    }

    /// A fresh stream capturing `subjects(name)` instead.
    async fn capturing(test: &str, subjects: impl Fn(&str) -> Vec<String>) -> Fresh {
        let fresh = Self::new(test).await;
        fresh
            .context
            .update_stream(jetstream::stream::Config {
                name: fresh.name.clone(),
                subjects: subjects(&fresh.name),
                ..Default::default()
            })
            .await
            .expect("update stream");
        fresh
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/{}/{rest}", server(), self.name)
    }

    async fn publish(&self, headers: HeaderMap, payload: &'static [u8]) {
        self.context
            .publish_with_headers(format!("{}.in", self.name), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_url_creates_a_durable_explicit_ack_consumer_and_a_dead_letter_stream() {
    let fresh = Fresh::new("creates").await;
    let source = NatsSource::connect(&fresh.url("billing?ack_wait=45s&max_ack_pending=16"))
        .await
        .unwrap();
    assert_eq!(source.stream(), fresh.name);
    assert_eq!(source.consumer_name(), "billing");
    assert_eq!(source.dead_letter_subject(), format!("{}.dlq", fresh.name));

    let stream = fresh.context.get_stream(&fresh.name).await.unwrap();
    let info = stream.consumer_info("billing").await.unwrap();
    assert_eq!(info.config.durable_name.as_deref(), Some("billing"));
    assert_eq!(info.config.ack_policy, AckPolicy::Explicit);
    assert_eq!(info.config.ack_wait, Duration::from_secs(45));
    assert_eq!(info.config.max_ack_pending, 16);
    let keeper = fresh
        .context
        .stream_by_subject(format!("{}.dlq", fresh.name))
        .await
        .unwrap();
    assert_eq!(keeper, format!("{}_DLQ", fresh.name));

    // Connecting again finds both, with or without the options.
    NatsSource::connect(&fresh.url("billing")).await.unwrap();
    NatsSource::connect(&fresh.url("billing?ack_wait=45s&create=false&create_dlq=false"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_delivery_shows_payload_every_header_message_id_and_subject() {
    let fresh = Fresh::new("delivery").await;
    let mut source = NatsSource::connect(&fresh.url("c")).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "m-1");
    headers.insert("Event-Id", "e-1");
    headers.append("Tag", "a");
    headers.append("Tag", "b");
    fresh.publish(headers, b"{\"n\":1}").await;

    let delivery = source.next().await.unwrap().unwrap();
    let message = delivery.message();
    assert_eq!(message.payload(), b"{\"n\":1}");
    assert_eq!(message.message_id(), Some("m-1"));
    assert_eq!(message.header("event-id"), Some("e-1"));
    assert_eq!(
        message.headers().iter().filter(|(n, _)| n == "Tag").count(),
        2
    );
    assert_eq!(message.source(), format!("{}.in", fresh.name));
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn next_is_cancel_safe_in_select() {
    let fresh = Fresh::new("cancel").await;
    let mut source = NatsSource::connect(&fresh.url("c")).await.unwrap();
    for _ in 0..5 {
        tokio::select! {
            _ = source.next() => panic!("nothing was published"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    fresh.publish(HeaderMap::new(), b"one").await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("the message after cancelled polls")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.message().payload(), b"one");
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn a_missing_stream_is_named_with_what_to_do() {
    let url = format!("{}/ONCELY_NO_SUCH_STREAM/c", server());
    let error = NatsSource::connect(&url).await.unwrap_err();
    assert!(matches!(error, Error::NoStream { .. }), "{error:?}");
    assert!(
        error.to_string().starts_with(
            "no JetStream stream ONCELY_NO_SUCH_STREAM at nats://127.0.0.1:4222: create it or check the name"
        ) || std::env::var("ONCELY_NATS_URL").is_ok(),
        "{error}"
    );
}

#[tokio::test]
async fn create_false_refuses_a_missing_consumer() {
    let fresh = Fresh::new("nocreate").await;
    let error = NatsSource::connect(&fresh.url("absent?create=false"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NoConsumer { .. }), "{error:?}");
    assert!(error.to_string().contains("create=false"), "{error}");
}

#[tokio::test]
async fn an_existing_consumer_must_ack_explicitly_and_match_what_the_url_asks() {
    let fresh = Fresh::new("mismatch").await;
    NatsSource::connect(&fresh.url("c")).await.unwrap();
    let error = NatsSource::connect(&fresh.url("c?ack_wait=5s"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnusableConsumer { .. }), "{error:?}");
    assert!(error.to_string().contains("ack wait is 30s"), "{error}");

    let stream = fresh.context.get_stream(&fresh.name).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some("acks_all".into()),
            ack_policy: AckPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let error = NatsSource::connect(&fresh.url("acks_all"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("explicit ack policy"), "{error}");
}

#[tokio::test]
async fn a_dead_letter_subject_the_consumed_stream_captures_is_refused() {
    let fresh = Fresh::capturing("loop", |name| vec![format!("{name}.>")]).await;
    let error = NatsSource::connect(&fresh.url("c")).await.unwrap_err();
    assert!(matches!(error, Error::DeadLetters { .. }), "{error:?}");
    assert!(error.to_string().contains("delivered again"), "{error}");
    let other = format!("{}_elsewhere.dlq", fresh.name);
    let url = fresh.url(&format!("c?dlq={other}"));
    NatsSource::connect(&url).await.unwrap();
}

#[tokio::test]
async fn create_dlq_false_refuses_when_no_stream_keeps_the_dead_letters() {
    let fresh = Fresh::new("nodlq").await;
    let error = NatsSource::connect(&fresh.url("c?create_dlq=false"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::DeadLetters { .. }), "{error:?}");
    assert!(error.to_string().contains("would be lost"), "{error}");
}

#[tokio::test]
async fn a_dead_letter_no_stream_captures_fails_and_the_original_stays() {
    let fresh = Fresh::new("lostdlq").await;
    let stream = fresh.context.get_stream(&fresh.name).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let nowhere = format!("{}.nowhere", fresh.name.to_lowercase());
    let mut source = NatsSource::from_consumer(fresh.context.clone(), consumer, nowhere)
        .await
        .unwrap();
    fresh.publish(HeaderMap::new(), b"poison").await;
    let delivery = source.next().await.unwrap().unwrap();
    let error = delivery.dead_letter(&letter(&delivery)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no JetStream stream captures it"),
        "{error}"
    );
    delivery.redeliver(Duration::ZERO).await.unwrap();
    let again = source.next().await.unwrap().unwrap();
    assert_eq!(again.message().payload(), b"poison");
    again.ack().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_reported_with_its_address_and_no_password() {
    let error = NatsSource::connect("nats://u:secret@127.0.0.1:1/S/C")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("nats://u:***@127.0.0.1:1"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// A message published again with the same `Nats-Msg-Id` once the stream's duplicate window
/// passed is a new message; dead-lettered again, its second dead letter is kept too: the
/// dead-letter stream's own window (2 minutes) must not take it for the first.
#[tokio::test]
async fn a_message_dead_lettered_twice_leaves_two_dead_letters() {
    let fresh = Fresh::new("twice").await;
    fresh
        .context
        .update_stream(jetstream::stream::Config {
            name: fresh.name.clone(),
            subjects: vec![format!("{}.in", fresh.name)],
            duplicate_window: Duration::from_millis(500),
            ..Default::default()
        })
        .await
        .expect("a short duplicate window");
    let mut source = NatsSource::connect(&fresh.url("c")).await.unwrap();
    let dead_letter_once = async |source: &mut NatsSource| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "m-1");
        fresh.publish(headers, b"poison").await;
        let delivery = source.next().await.unwrap().unwrap();
        assert_eq!(delivery.message().message_id(), Some("m-1"));
        delivery.dead_letter(&letter(&delivery)).await.unwrap();
        delivery.ack().await.unwrap();
    };
    dead_letter_once(&mut source).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    dead_letter_once(&mut source).await;
    let letters = fresh
        .context
        .get_stream(format!("{}_DLQ", fresh.name))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(letters, 2);
    for name in [fresh.name.clone(), format!("{}_DLQ", fresh.name)] {
        fresh.context.delete_stream(&name).await.ok();
    }
}
