//! How an AMQP message becomes a [`Message`] and back.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use oncely_core::consumer::Message;

/// AMQP's `delivery_mode` for a message written to disk.
pub(crate) const PERSISTENT: u8 = 2;

/// The [`Message`] of an AMQP message consumed from `queue`: its payload, its `message_id`
/// property, and its headers whose values are strings, numbers or booleans, rendered as text
/// (`true`, `42`, `1.5`). Byte-array headers that are UTF-8 count as strings; tables, arrays
/// and other values are left out.
///
/// ```
/// use lapin::BasicProperties;
/// use lapin::types::{AMQPValue, FieldTable};
///
/// let mut headers = FieldTable::default();
/// headers.insert("Event-Id".into(), AMQPValue::LongString("e-1".into()));
/// headers.insert("Attempt".into(), AMQPValue::LongInt(3));
/// headers.insert("Nested".into(), AMQPValue::FieldTable(FieldTable::default()));
/// let properties = BasicProperties::default().with_headers(headers).with_message_id("m-1".into());
///
/// let message = oncely_rabbitmq::message::from_amqp(&properties, b"{}", "orders");
/// assert_eq!(message.header("event-id"), Some("e-1"));
/// assert_eq!(message.header("Attempt"), Some("3"));
/// assert_eq!(message.header("Nested"), None);
/// assert_eq!(message.message_id(), Some("m-1"));
/// assert_eq!(message.source(), "orders");
/// ```
pub fn from_amqp(properties: &BasicProperties, payload: &[u8], queue: &str) -> Message {
    let mut message = Message::new(payload.to_vec(), queue);
    if let Some(id) = properties.message_id() {
        message = message.with_message_id(id.as_str());
    }
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            if let Some(text) = text_of(value) {
                message = message.with_header(name.as_str(), text);
            }
        }
    }
    message
}

/// Properties for publishing `message`: persistent, its message id and its headers as AMQP
/// long strings. A header name or message id longer than AMQP's 255 bytes is an error.
///
/// ```
/// use oncely_core::consumer::Message;
///
/// let message = Message::new(b"{}".to_vec(), "").with_header("Event-Id", "e-1").with_message_id("m-1");
/// let properties = oncely_rabbitmq::message::to_amqp(&message)?;
/// assert_eq!(properties.message_id().as_ref().map(|id| id.as_str()), Some("m-1"));
/// let back = oncely_rabbitmq::message::from_amqp(&properties, message.payload(), "orders");
/// assert_eq!(back.header("Event-Id"), Some("e-1"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_amqp(message: &Message) -> Result<BasicProperties, lapin::types::ShortStringError> {
    let mut headers = FieldTable::default();
    for (name, value) in message.headers() {
        headers.insert(ShortString::try_new(name.as_str())?, long_string(value));
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(id) = message.message_id() {
        properties = properties.with_message_id(ShortString::try_new(id)?);
    }
    Ok(properties)
}

pub(crate) fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

fn text_of(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok()?,
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8(b.as_slice().to_vec()).ok()?,
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::Void => return None,
    })
}
