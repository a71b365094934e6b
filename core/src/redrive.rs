//! Dead letters back to where they came from: which dead letter is which, what a filter sees
//! of one, and the message that goes back. The runner is `oncely_consumer::redrive`, the
//! command `oncely redrive`.
//!
//! ```
//! use oncely_core::consumer::{DEAD_LETTER_ID_HEADER, ERROR_HEADER, Message};
//! use oncely_core::redrive::{History, REDRIVES_HEADER, dead_letter_key, redriven};
//!
//! let letter = Message::new(br#"{"orderId":"o-1"}"#.to_vec(), "orders.dlq")
//!     .with_message_id("m-1")
//!     .with_header("Event-Type", "placed")
//!     .with_header(ERROR_HEADER, "upstream timeout")
//!     .with_header(DEAD_LETTER_ID_HEADER, "4f1c");
//! let key = dead_letter_key(&letter)?;
//! assert_eq!(key.as_str(), "4f1c");
//!
//! let back = redriven(&letter, &key, History::Drop);
//! assert_eq!(back.payload(), letter.payload());
//! assert_eq!(back.message_id(), Some("m-1"), "consumers still know it by its id");
//! assert_eq!(back.header("event-type"), Some("placed"));
//! assert_eq!(back.header(ERROR_HEADER), None);
//! assert_eq!(back.header(REDRIVES_HEADER), Some("1"));
//! assert_ne!(back.dedup_id(), Some("m-1"), "no duplicate window drops it as the original");
//! # Ok::<(), oncely_core::redrive::LetterError>(())
//! ```

use crate::canonical::Json;
use crate::consumer::{
    ATTEMPTS_HEADER, DEAD_LETTER_ID_HEADER, ERROR_HEADER, KEY_HEADER, MESSAGE_ID_HEADER, Message,
    SOURCE_HEADER,
};
use crate::{ExtractError, Key, KeyError};

/// Header counting how many times a message was moved back from its dead letters.
pub const REDRIVES_HEADER: &str = "Oncely-Redrives";

/// What a dead letter's headers become with [`History::Keep`]: `Oncely-Error` goes back as
/// `Oncely-Previous-Error`, and so on.
pub const PREVIOUS_PREFIX: &str = "Oncely-Previous-";

/// The headers a runner adds when it dead-letters a message.
const DEAD_LETTER_HEADERS: [&str; 5] = [
    ERROR_HEADER,
    ATTEMPTS_HEADER,
    SOURCE_HEADER,
    KEY_HEADER,
    DEAD_LETTER_ID_HEADER,
];

/// Headers that carry a message id: the publisher sets them again from the message's ids.
const ID_HEADERS: [&str; 2] = ["Nats-Msg-Id", MESSAGE_ID_HEADER];

/// What becomes of a dead letter's error headers (`Oncely-Error`, `Oncely-Attempts`, ...) when
/// it goes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum History {
    /// Dropped: the message goes back as it first came (default).
    #[default]
    Drop,
    /// Kept, renamed with [`PREVIOUS_PREFIX`] (the last dead-lettering's only), so a consumer
    /// can see why it failed before.
    Keep,
}

/// Why a dead letter cannot be redriven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LetterError {
    /// Neither an `Oncely-Dead-Letter-Id` nor an id of the broker's tells this dead letter
    /// apart.
    #[error(
        "the dead letter has no {DEAD_LETTER_ID_HEADER} header (it was not dead-lettered by oncely) and its broker gives it no id of its own (RabbitMQ): name its key (--key message-id, --key header:NAME, ...)"
    )]
    NoId,
    /// The id is no valid key (empty, too long).
    #[error("the dead letter's id: {0}")]
    Invalid(#[from] KeyError),
    /// The filter failed on it.
    #[error("the filter failed: {0}")]
    Filter(#[from] ExtractError),
}

/// The key a redrive claims for `letter`, unique to this dead letter: its
/// `Oncely-Dead-Letter-Id` header (new each time oncely dead-letters a message), else the
/// broker's own id of the stored copy ([`Message::broker_id`]: a stream sequence, a Kafka
/// offset, an SQS `MessageId`).
pub fn dead_letter_key(letter: &Message) -> Result<Key, LetterError> {
    let id = letter
        .header(DEAD_LETTER_ID_HEADER)
        .or(letter.broker_id())
        .ok_or(LetterError::NoId)?;
    Ok(Key::new(id)?)
}

/// What a filter sees of `letter`: `{"headers": {NAME: VALUE, ...}, "payload": ...}`, header
/// names in lower case (the first value of each), the payload as JSON if it is JSON, else
/// `null`.
///
/// ```
/// use oncely_core::Selector;
/// use oncely_core::consumer::Message;
/// use oncely_core::redrive::filter_input;
///
/// let letter = Message::new(br#"{"type":"payment"}"#.to_vec(), "q")
///     .with_header("Oncely-Error", "HTTP 503");
/// let only_503 = Selector::parse("contains(headers.\"oncely-error\", '503') && payload.type == 'payment'")?;
/// assert!(only_503.holds_for(&filter_input(&letter))?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn filter_input(letter: &Message) -> Vec<u8> {
    let mut headers = serde_json::Map::new();
    for (name, value) in letter.headers() {
        headers
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| value.clone().into());
    }
    let mut input = br#"{"headers":"#.to_vec();
    input.extend(serde_json::to_vec(&headers).unwrap_or_else(|_| b"{}".to_vec()));
    input.extend(br#","payload":"#);
    // The payload's own text, numbers and all, where it is JSON.
    match Json::parse(letter.payload()) {
        Ok(_) => input.extend(letter.payload()),
        Err(_) => input.extend(b"null"),
    }
    input.push(b'}');
    input
}

/// The message a redrive publishes for `letter`, claimed as `key`: its payload, ordering key
/// and message id; its headers but the dead letter's own (dropped, or renamed as `history`
/// says) and those carrying its id; [`REDRIVES_HEADER`] one more; and a dedup id of this
/// redrive's (`redrive:KEY`), so a broker's duplicate window (JetStream's, an SQS FIFO
/// queue's) drops a second publish of this dead letter but not the message as a repeat of its
/// original.
pub fn redriven(letter: &Message, key: &Key, history: History) -> Message {
    let mut message = Message::new(letter.payload().to_vec(), letter.source())
        .with_dedup_id(format!("redrive:{key}"));
    if let Some(id) = letter.message_id() {
        message = message.with_message_id(id);
    }
    if let Some(ordering) = letter.ordering_key() {
        message = message.with_ordering_key(ordering);
    }
    let is = |name: &str, set: &[&str]| set.iter().any(|n| n.eq_ignore_ascii_case(name));
    let previous = |name: &str| {
        name.get(..PREVIOUS_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREVIOUS_PREFIX))
    };
    let mut redrives = 0u32;
    for (name, value) in letter.headers() {
        if name.eq_ignore_ascii_case(REDRIVES_HEADER) {
            redrives = value.trim().parse().unwrap_or(0);
        } else if is(name, &DEAD_LETTER_HEADERS) || previous(name) {
            // Dropped, or kept below as the last failure's history.
        } else if !is(name, &ID_HEADERS) {
            message = message.with_header(name.clone(), value.clone());
        }
    }
    if history == History::Keep {
        for header in DEAD_LETTER_HEADERS {
            if let Some(value) = letter.header(header) {
                let bare = header.strip_prefix("Oncely-").unwrap_or(header);
                message = message.with_header(format!("{PREVIOUS_PREFIX}{bare}"), value);
            }
        }
    }
    message.with_header(REDRIVES_HEADER, (redrives.saturating_add(1)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Selector;

    fn letter() -> Message {
        Message::new(br#"{"n": 12345678901234567890123}"#.to_vec(), "orders.dlq")
            .with_message_id("m-7")
            .with_ordering_key("order-7")
            .with_header("Nats-Msg-Id", "m-7")
            .with_header("traceparent", "00-abc")
            .with_header(ERROR_HEADER, "boom")
            .with_header(ATTEMPTS_HEADER, "5")
            .with_header(KEY_HEADER, "order-7")
            .with_header(SOURCE_HEADER, "orders")
            .with_header(DEAD_LETTER_ID_HEADER, "dl-1")
            .with_header(REDRIVES_HEADER, "2")
    }

    #[test]
    fn a_dead_letter_is_known_by_its_own_id_then_by_the_brokers() {
        assert_eq!(dead_letter_key(&letter()).unwrap().as_str(), "dl-1");
        let sqs = Message::new(Vec::new(), "q").with_broker_id("5fea7756-0ea4");
        assert_eq!(dead_letter_key(&sqs).unwrap().as_str(), "5fea7756-0ea4");
        let rabbit = Message::new(Vec::new(), "q").with_message_id("m-1");
        assert!(matches!(dead_letter_key(&rabbit), Err(LetterError::NoId)));
    }

    #[test]
    fn what_goes_back_drops_or_keeps_the_failure() {
        let key = dead_letter_key(&letter()).unwrap();
        let dropped = redriven(&letter(), &key, History::Drop);
        assert_eq!(
            dropped.headers(),
            [
                ("traceparent".to_owned(), "00-abc".to_owned()),
                (REDRIVES_HEADER.to_owned(), "3".to_owned()),
            ]
        );
        assert_eq!(dropped.message_id(), Some("m-7"));
        assert_eq!(dropped.dedup_id(), Some("redrive:dl-1"));
        assert_eq!(dropped.ordering_key(), Some("order-7"));

        let kept = redriven(&letter(), &key, History::Keep);
        assert_eq!(kept.header("Oncely-Previous-Error"), Some("boom"));
        assert_eq!(kept.header("Oncely-Previous-Attempts"), Some("5"));
        assert_eq!(kept.header("Oncely-Previous-Dead-Letter-Id"), Some("dl-1"));
        assert_eq!(kept.header(ERROR_HEADER), None);
        // Redriven, failed again, redriven again: one history, the last.
        let again = redriven(&kept.with_header(ERROR_HEADER, "bang"), &key, History::Keep);
        let errors: Vec<_> = again
            .headers()
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase().contains("error"))
            .collect();
        assert_eq!(
            errors,
            [&("Oncely-Previous-Error".to_owned(), "bang".to_owned())]
        );
        assert_eq!(again.header(REDRIVES_HEADER), Some("4"));
    }

    #[test]
    fn a_filter_sees_headers_and_the_payload_as_written() {
        let input = filter_input(&letter());
        let holds = |spec: &str| Selector::parse(spec).unwrap().holds_for(&input).unwrap();
        assert!(holds("headers.\"oncely-error\" == 'boom'"));
        assert!(holds("headers.\"oncely-attempts\" == '5'"));
        assert!(!holds("headers.\"oncely-error\" == 'bang'"));
        assert!(holds("/payload/n"));
        assert!(!holds("/payload/missing"));
        assert!(
            String::from_utf8(input)
                .unwrap()
                .contains("12345678901234567890123")
        );
        let raw = Message::new(b"\x00 not json".to_vec(), "q");
        let input = filter_input(&raw);
        assert!(
            Selector::parse("payload == null")
                .unwrap()
                .holds_for(&input)
                .unwrap()
        );
    }
}
