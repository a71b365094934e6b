//! Kafka records and the runner's [`Message`]s: a fetched record as a message, a message's
//! headers as Kafka headers.

use oncely_core::consumer::{Message, Position};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The header carrying a message's stable id: the outbox relay sets it, and a consumed
/// message's [`message_id`](Message::message_id) is read from it.
pub const MESSAGE_ID_HEADER: &str = oncely_core::consumer::MESSAGE_ID_HEADER;

/// A fetched Kafka message as the runner sees it.
pub(crate) fn message_of(fetched: &impl rdkafka::Message, group: &str) -> Message {
    let payload = fetched.payload().map(<[u8]>::to_vec).unwrap_or_default();
    let mut message = Message::new(payload, fetched.topic())
        .with_position(Position {
            group: group.to_owned(),
            topic: fetched.topic().to_owned(),
            partition: fetched.partition(),
            offset: fetched.offset(),
        })
        .with_broker_id(format!(
            "{}:{}:{}",
            fetched.topic(),
            fetched.partition(),
            fetched.offset()
        ));
    if let Some(key) = fetched.key() {
        message = message.with_ordering_key(String::from_utf8_lossy(key));
    }
    if let Some(headers) = fetched.headers() {
        for header in headers.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            if header.key.eq_ignore_ascii_case(MESSAGE_ID_HEADER) {
                message = message.with_message_id(value.clone());
            }
            message = message.with_header(header.key, value);
        }
    }
    message
}

/// `message`'s headers, then `extra`, as Kafka headers.
pub(crate) fn kafka_headers<'a>(
    message: &'a Message,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> OwnedHeaders {
    let all = message
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(extra);
    let mut headers = OwnedHeaders::new();
    for (key, value) in all {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}
