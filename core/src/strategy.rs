//! Key strategies: where a message's key comes from.
//!
//! - **Message id**: the broker's or producer's id ([`Key::new`]). Best when producers set a
//!   stable id per logical event.
//! - **Composite business key**: fields of the payload named by JSON pointers or selected by a
//!   JMESPath expression ([`CompositeKey`]), e.g. `/orderId,/paymentId` or
//!   `powertools_json(body).orderId`. Best when producers may resend the same
//!   operation under a new message id.
//! - **Payload hash**: a digest of the canonical JSON ([`payload_hash_key`]). Best when nothing
//!   in the payload identifies it, at the price that two genuinely separate but identical
//!   payloads count as one.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::canonical::{Json, canonical, canonical_array};
use crate::select::{Absent, Selector};
use crate::{Fingerprint, Key, KeyError};

/// A key built from one or more fields of a JSON payload, named by JSON pointers (RFC 6901) or
/// selected by a JMESPath expression (see [`Selector`]).
///
/// The key text of the fields:
///
/// - one string field gives that string: `"evt-1"` is keyed `evt-1`. Unless the string reads as
///   the key of another value, that is, it is itself the key text of a number, `true`, `false`,
///   `null`, an array or an object (`"42"`, `"true"`, `"[1,2]"`) or of such a quoted string
///   (`"\"42\""`): then it is its JSON string literal, quotes included, so the string `"42"` is
///   keyed `"42"` and never meets the number `42`;
/// - one field of any other type gives its canonical JSON (sorted object keys, no whitespace):
///   the number `42` is keyed `42`, `{"b":1,"a":2}` is keyed `{"a":2,"b":1}`;
/// - several fields give the canonical JSON array of the values, strings quoted, so
///   `("a,b", "c")` and `("a", "b,c")` never collide, nor do `"42"` and `42`. A JMESPath
///   expression's result is one value, so its multi-select list (`[orderId, paymentId]`) gives
///   the same key as the pointers `/orderId,/paymentId`, and `eventId` the same as `/eventId`.
///
/// Every part must be there: a pointer that names nothing or `null` is an error, and so is an
/// expression whose result is `null`, an empty list, or a list holding a `null` (so messages
/// that lack the field never share one key).
///
/// Numbers are exact: an integer keeps all its digits, however long, and a number with a
/// fraction or exponent is written from its exact decimal value in serde_json's layout
/// (`2.50` and `2.5` are both `2.5`, `1e2` is `100.0`; see [`canonical_json`]); nothing is
/// rounded through `f64`. That needs the payload's text: [`extract_json`](Self::extract_json)
/// reads it. [`extract`](Self::extract) takes a parsed [`Value`], whose numbers serde_json has
/// already rounded when they do not fit a 64-bit integer or an `f64`, unless it was built with
/// its `arbitrary_precision` feature. A JMESPath expression refuses a numeric result from a
/// payload holding such a number ([`ExtractError::InexactNumber`]).
///
/// ```
/// use oncely_core::CompositeKey;
/// use serde_json::json;
///
/// let by_event: CompositeKey = "/eventId".parse()?;
/// assert_eq!(by_event.extract(&json!({"eventId": "e-1", "n": 2}))?.as_str(), "e-1");
/// let key = |payload: &[u8]| by_event.extract_json(payload).map(|key| key.as_str().to_owned());
/// assert_eq!(key(br#"{"eventId": 18446744073709551617}"#)?, "18446744073709551617");
/// assert_eq!(key(br#"{"eventId": 42}"#)?, "42");
/// assert_eq!(key(br#"{"eventId": "42"}"#)?, r#""42""#);
///
/// let by_business = CompositeKey::parse("/orderId, /payment/id")?;
/// let key = by_business.extract(&json!({"orderId": 7, "payment": {"id": "p-9"}}))?;
/// assert_eq!(key.as_str(), r#"[7,"p-9"]"#);
///
/// // JMESPath, with JSON inside a string field (an SNS notification delivered through SQS).
/// let sns_in_sqs = CompositeKey::parse("powertools_json(Message).[orderId, payment.id]")?;
/// let body = br#"{"Type": "Notification", "Message": "{\"orderId\": 7, \"payment\": {\"id\": \"p-9\"}}"}"#;
/// assert_eq!(sns_in_sqs.extract_json(body)?.as_str(), r#"[7,"p-9"]"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`canonical_json`]: crate::canonical_json
#[derive(Clone, PartialEq, Eq)]
pub struct CompositeKey {
    selector: Selector,
}

/// A key specification that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySpecError {
    /// Nothing was given.
    #[error(
        "key specification is empty (expected JSON pointers like /eventId or /orderId,/paymentId, or a JMESPath expression like detail.orderId)"
    )]
    Empty,
    /// A part of a pointer list that is not a JSON pointer.
    #[error("`{0}` is not a JSON pointer (it must start with `/`, e.g. /eventId)")]
    NotAPointer(String),
    /// Not JSON pointers, and not a JMESPath expression either.
    #[error(
        "`{expression}` is not a JMESPath expression ({reason}); JSON pointers start with `/`, e.g. /eventId"
    )]
    Expression {
        /// The text given.
        expression: String,
        /// The JMESPath parser's message.
        reason: String,
    },
}

/// Why a payload gave no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The pointer names no field in the payload.
    #[error("missing key field {0}")]
    Missing(String),
    /// The field is `null`.
    #[error("key field {0} is null")]
    Null(String),
    /// The expression's result is `null`, an empty list or a list holding a `null`.
    #[error("key expression `{0}` selects nothing (null, or a list that is empty or holds a null)")]
    Nothing(String),
    /// The expression failed on this payload (a function given the wrong type, a string that
    /// `powertools_json` cannot read).
    #[error("key expression `{expression}` failed: {reason}")]
    Expression {
        /// The expression.
        expression: String,
        /// What failed.
        reason: String,
    },
    /// The expression's result holds a number and the payload has a number that JMESPath's
    /// 64-bit integers and `f64`s cannot hold exactly: the key could be another number's.
    #[error(
        "key expression `{0}` selects a number from a payload with a number past 64-bit integers or f64 precision; key it by JSON pointer, which keeps every digit"
    )]
    InexactNumber(String),
    /// The field gave an empty or over-long key.
    #[error(transparent)]
    Invalid(#[from] KeyError),
}

/// Why a JSON text gave no key ([`CompositeKey::extract_json`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonKeyError {
    /// The text is not one JSON value; serde_json's error.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The JSON lacks a usable key.
    #[error(transparent)]
    Extract(#[from] ExtractError),
}

impl CompositeKey {
    /// Parses comma-separated JSON pointers (`/eventId` or `/orderId,/paymentId`) or a JMESPath
    /// expression (`detail.orderId`, `[orderId, paymentId]`): see [`Selector`].
    pub fn parse(spec: &str) -> Result<Self, KeySpecError> {
        Selector::parse(spec).map(|selector| CompositeKey { selector })
    }

    /// What the key is made of.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// The key of `payload`, a parsed [`Value`]: numbers are as exact as the `Value` kept them
    /// (see the type's docs); [`extract_json`](Self::extract_json) reads them from the text.
    pub fn extract(&self, payload: &Value) -> Result<Key, ExtractError> {
        self.key_of(&Json::from(payload))
    }

    /// The key of a JSON payload as received, every number exact: the key of
    /// `18446744073709551616` is not that of `18446744073709551617`. Fails, as
    /// `serde_json::from_slice` does, on what is not one JSON text.
    pub fn extract_json(&self, payload: &[u8]) -> Result<Key, JsonKeyError> {
        let json = Json::parse(payload).map_err(JsonKeyError::NotJson)?;
        Ok(self.key_of(&json)?)
    }

    fn key_of(&self, json: &Json) -> Result<Key, ExtractError> {
        let values = self.selector.select(json, Absent::Refused)?;
        let values: Vec<&Json> = values.iter().map(|v| v.as_ref()).collect();
        Ok(Key::new(key_text(&values))?)
    }
}

/// The key text of the fields' values, in pointer order: see [`CompositeKey`].
fn key_text(values: &[&Json]) -> String {
    match values {
        [Json::String(s)] if !reads_as_a_key_of_another_value(s) => s.to_string(),
        [single] => canonical(single),
        many => canonical_array(many),
    }
}

/// Whether the string `s`, keyed as itself, would be the key of the value its text parses to:
/// `"42"` (the number), `"true"`, `"[1,2]"`, or `"\"42\""` (the string `"42"`, keyed quoted).
/// Such a string is keyed by its JSON literal instead, so no two values share a key. Any other
/// text (`evt-1`, `2.50`, `007`, ` 42`, `[1, 2]`) is no value's key, so it stays as it is.
fn reads_as_a_key_of_another_value(s: &str) -> bool {
    // Every value's key text starts with one of these; most ids do not, and are not parsed.
    if !s.starts_with(['-', 't', 'f', 'n', '[', '{', '"'])
        && !s.starts_with(|c: char| c.is_ascii_digit())
    {
        return false;
    }
    match Json::parse(s.as_bytes()) {
        Ok(value) => key_text(&[&value]) == s,
        Err(_) => false,
    }
}

impl FromStr for CompositeKey {
    type Err = KeySpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompositeKey::parse(s)
    }
}

impl fmt::Debug for CompositeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompositeKey({})", self.selector)
    }
}

impl fmt::Display for CompositeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.selector.fmt(f)
    }
}

/// A key that is the SHA-256 (hex) of the payload's canonical JSON: key order and whitespace
/// do not change it. For a payload as received, `Fingerprint::of_json_text` keeps every number
/// exact (a [`Value`] may have rounded some: see [`CompositeKey`]).
///
/// ```
/// use oncely_core::payload_hash_key;
/// let a: serde_json::Value = serde_json::from_str(r#"{"to":"ann","body":"hi"}"#)?;
/// let b: serde_json::Value = serde_json::from_str(r#"{ "body": "hi", "to": "ann" }"#)?;
/// assert_eq!(payload_hash_key(&a), payload_hash_key(&b));
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn payload_hash_key(payload: &Value) -> Key {
    Key::new(Fingerprint::of_json(payload).to_hex()).expect("a 64-char hex digest is a valid key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn composite_parts_cannot_collide_through_separators() {
        let spec = CompositeKey::parse("/a,/b").unwrap();
        let one = spec.extract(&json!({"a": "x,y", "b": "z"})).unwrap();
        let two = spec.extract(&json!({"a": "x", "b": "y,z"})).unwrap();
        assert_ne!(one, two);
    }

    #[test]
    fn missing_null_and_empty_fields_are_typed_errors() {
        let spec = CompositeKey::parse("/id").unwrap();
        assert_eq!(
            spec.extract(&json!({})),
            Err(ExtractError::Missing("/id".into()))
        );
        assert_eq!(
            spec.extract(&json!({"id": null})),
            Err(ExtractError::Null("/id".into()))
        );
        assert!(matches!(
            spec.extract(&json!({"id": ""})),
            Err(ExtractError::Invalid(KeyError::Empty { .. }))
        ));
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert_eq!(CompositeKey::parse(" , "), Err(KeySpecError::Empty));
        assert_eq!(
            CompositeKey::parse("/orderId,eventId"),
            Err(KeySpecError::NotAPointer("eventId".into()))
        );
    }

    #[test]
    fn numeric_ids_become_their_json_text() {
        let spec = CompositeKey::parse("/id").unwrap();
        assert_eq!(spec.extract(&json!({"id": 42})).unwrap().as_str(), "42");
        assert_eq!(spec.extract_json(br#"{"id": 42}"#).unwrap().as_str(), "42");
    }

    fn key_json(spec: &str, payload: &str) -> String {
        let spec = CompositeKey::parse(spec).unwrap();
        spec.extract_json(payload.as_bytes())
            .unwrap()
            .as_str()
            .to_owned()
    }

    #[test]
    fn big_numbers_are_keyed_by_every_digit() {
        for n in [
            "18446744073709551616",
            "18446744073709551617",
            "100000000000000000000001",
            "100000000000000000000002",
            "-9223372036854775809",
            "9007199254740993",
        ] {
            assert_eq!(key_json("/id", &format!(r#"{{"id":{n}}}"#)), n);
            assert_eq!(
                key_json("/a,/b", &format!(r#"{{"a":{n},"b":"p-1"}}"#)),
                format!(r#"[{n},"p-1"]"#)
            );
        }
        assert_eq!(
            key_json("/id", r#"{"id":0.10000000000000000001}"#),
            "0.10000000000000000001"
        );
        // Spellings of one decimal value are one key, as they were through f64.
        assert_eq!(key_json("/id", r#"{"id":2.50}"#), "2.5");
        assert_eq!(key_json("/id", r#"{"id":1E+2}"#), "100.0");
    }

    #[test]
    fn strings_keep_their_text_unless_it_reads_as_another_values_key() {
        for (string, key) in [
            ("evt-1", "evt-1"),
            ("o-7", "o-7"),
            ("null-event", "null-event"),
            ("2.50", "2.50"),
            ("007", "007"),
            (" 42", " 42"),
            ("[1, 2]", "[1, 2]"),
            ("1e2", "1e2"),
            ("\"evt-1\"", "\"evt-1\""),
            ("42", "\"42\""),
            ("-1", "\"-1\""),
            ("2.5", "\"2.5\""),
            ("18446744073709551617", "\"18446744073709551617\""),
            ("true", "\"true\""),
            ("null", "\"null\""),
            ("[1,2]", "\"[1,2]\""),
            ("{\"a\":1}", "\"{\\\"a\\\":1}\""),
            ("\"42\"", "\"\\\"42\\\"\""),
        ] {
            let payload = json!({ "id": string });
            let spec = CompositeKey::parse("/id").unwrap();
            assert_eq!(spec.extract(&payload).unwrap().as_str(), key, "{string}");
            assert_eq!(key_json("/id", &payload.to_string()), key, "{string}");
        }
    }

    /// No two different values share a key: the string "42" is not the number 42, and a string
    /// that looks like a key is not the value it looks like.
    #[test]
    fn different_values_never_share_a_key() {
        let values = [
            r#"42"#,
            r#""42""#,
            r#""\"42\"""#,
            r#""\"\\\"42\\\"\"""#,
            r#"-1"#,
            r#""-1""#,
            r#"2.5"#,
            r#""2.5""#,
            r#""2.50""#,
            r#"1.0"#,
            r#"1"#,
            r#""1.0""#,
            r#"18446744073709551616"#,
            r#"18446744073709551617"#,
            r#""18446744073709551616""#,
            r#"100000000000000000000001"#,
            r#"100000000000000000000002"#,
            r#"true"#,
            r#""true""#,
            r#"false"#,
            r#""false""#,
            r#""null""#,
            r#"[1,2]"#,
            r#""[1,2]""#,
            r#""[1, 2]""#,
            r#"[1,"2"]"#,
            r#"{"a":1}"#,
            r#""{\"a\":1}""#,
            r#""evt-1""#,
            r#""\"evt-1\"""#,
        ];
        let mut seen = std::collections::HashMap::new();
        for value in values {
            let key = key_json("/id", &format!(r#"{{"id":{value}}}"#));
            if let Some(other) = seen.insert(key.clone(), value) {
                panic!("{other} and {value} share the key {key}");
            }
        }
    }

    #[test]
    fn a_value_and_its_text_give_the_same_key_where_the_value_is_exact() {
        for payload in [
            r#"{"id":"evt-1"}"#,
            r#"{"id":"42"}"#,
            r#"{"id":42}"#,
            r#"{"id":-3.25e-9}"#,
            r#"{"id":{"b":[1,"x"],"a":true}}"#,
            r#"{"a":7,"b":{"c":"p-9"}}"#,
        ] {
            let value: Value = serde_json::from_str(payload).unwrap();
            for spec in ["/id", "/a,/b/c"] {
                let spec = CompositeKey::parse(spec).unwrap();
                assert_eq!(
                    spec.extract(&value).ok(),
                    spec.extract_json(payload.as_bytes()).ok()
                );
            }
        }
    }

    #[test]
    fn json_text_errors_are_typed() {
        let spec = CompositeKey::parse("/id").unwrap();
        assert!(matches!(
            spec.extract_json(b"{\"id\":"),
            Err(JsonKeyError::NotJson(_))
        ));
        assert!(matches!(
            spec.extract_json(b"{\"id\":null}"),
            Err(JsonKeyError::Extract(ExtractError::Null(_)))
        ));
        assert!(matches!(
            spec.extract_json(b"{}"),
            Err(JsonKeyError::Extract(ExtractError::Missing(_)))
        ));
    }
}
