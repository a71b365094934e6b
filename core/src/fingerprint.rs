//! Payload fingerprints: the same key with a different payload is a conflict, not a duplicate.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::canonical::{Json, canonical, canonical_array, canonical_json, canonical_json_text};
use crate::select::{Absent, Selector};
use crate::{ExtractError, KeySpecError};

/// A SHA-256 digest of the payload a key arrived with.
///
/// Two claims of one key with different fingerprints are a [`Conflict`](crate::ClaimOutcome::Conflict):
/// a client reused a key for another request, or two operations collided on one key. Either way
/// the second must not be executed, and must not be told "already done".
///
/// ```
/// use oncely_core::Fingerprint;
/// use serde_json::json;
///
/// // Key order and whitespace do not change a JSON fingerprint.
/// let a = Fingerprint::of_json(&json!({"amount": 10, "currency": "EUR"}));
/// let b = Fingerprint::of_json(&serde_json::from_str(r#"{ "currency":"EUR",  "amount":10 }"#)?);
/// assert_eq!(a, b);
/// assert_ne!(a, Fingerprint::of_bytes(b"something else"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Digest of raw bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Fingerprint(Sha256::digest(bytes).into())
    }

    /// Digest of several parts, each length-prefixed so `("ab", "c")` and `("a", "bc")` differ.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }

    /// Digest of the canonical form of a JSON value (sorted keys, no insignificant whitespace).
    /// A `Value` may have rounded numbers beyond 64-bit integers and `f64`:
    /// [`of_json_text`](Self::of_json_text) keeps them exact.
    pub fn of_json(value: &serde_json::Value) -> Self {
        Self::of_bytes(canonical_json(value).as_bytes())
    }

    /// Digest of the canonical form of a JSON text as received, every number exact
    /// ([`canonical_json_text`](crate::canonical_json_text)): the same as
    /// [`of_json`](Self::of_json) of the parsed value wherever that value kept its numbers exact.
    /// Fails, as `serde_json::from_slice` does, on what is not one JSON text.
    pub fn of_json_text(text: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Self::of_bytes(canonical_json_text(text)?.as_bytes()))
    }

    /// Wraps a digest read back from a store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// Wraps a digest read back from a store, if it has the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Fingerprint)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as shown by `oncely inspect`.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// Which differences between two payloads of one key make them a conflict: how a message's or a
/// request body's fingerprint is taken.
///
/// Retries re-serialise: a client library may write the keys of the same object in another
/// order, or add a `sentAt` timestamp or a trace id to each attempt. None of that is a
/// different operation, so none of it should be a [`Conflict`](crate::ClaimOutcome::Conflict).
///
/// ```
/// use oncely_core::PayloadFingerprint;
///
/// let first = br#"{"to": "ann", "amount": 10, "sentAt": "12:00:00"}"#;
/// let retry = br#"{"amount":10,"to":"ann","sentAt":"12:00:05"}"#;
///
/// // The default: canonical JSON, so key order and whitespace do not count...
/// let json = PayloadFingerprint::default();
/// assert_eq!(json.of(first)?, json.of(br#"{"amount":10,"sentAt":"12:00:00","to":"ann"}"#)?);
/// // ...but every field does.
/// assert_ne!(json.of(first)?, json.of(retry)?);
///
/// // Every field but the timestamp, or only the fields that make the operation.
/// let ignoring: PayloadFingerprint = "ignore:/sentAt".parse()?;
/// assert_eq!(ignoring.of(first)?, ignoring.of(retry)?);
/// let fields: PayloadFingerprint = "fields:[to, amount]".parse()?;
/// assert_eq!(fields.of(first)?, fields.of(retry)?);
/// assert_ne!(fields.of(first)?, fields.of(br#"{"to": "ann", "amount": 11}"#)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadFingerprint {
    /// Every byte counts: a re-serialised copy of the same JSON conflicts. `bytes`.
    Bytes,
    /// The payload's canonical JSON ([`canonical_json_text`](crate::canonical_json_text)): key
    /// order, whitespace and the spelling of numbers do not count. A payload that is not JSON
    /// is fingerprinted by its bytes. `json`; the default.
    #[default]
    Json,
    /// Only the selected values count (JSON pointers or a JMESPath expression, as a key's:
    /// see [`Selector`]); an absent field counts as `null`. `fields:/to,/amount` or
    /// `fields:powertools_json(body).[to, amount]`.
    Fields(Selector),
    /// Every field but those the JSON pointers name counts. `ignore:/sentAt,/traceId`.
    Ignoring(Vec<String>),
}

/// A fingerprint specification that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintSpecError {
    /// None of the forms.
    #[error(
        "`{0}` is not a fingerprint (expected bytes, json, fields:SELECTOR or ignore:/POINTER,...)"
    )]
    Unknown(String),
    /// The selector of `fields:` or the pointers of `ignore:`.
    #[error(transparent)]
    Selector(#[from] KeySpecError),
}

/// Why a payload has no fingerprint under a [`PayloadFingerprint`] of its fields.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// Fields were asked for and the payload is not JSON; serde_json's error.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The selecting expression failed on the payload.
    #[error(transparent)]
    Select(#[from] ExtractError),
}

impl PayloadFingerprint {
    /// Parses `bytes`, `json`, `fields:SELECTOR` or `ignore:/POINTER,...`.
    pub fn parse(spec: &str) -> Result<Self, FingerprintSpecError> {
        let spec = spec.trim();
        if let Some(selector) = spec.strip_prefix("fields:") {
            return Ok(PayloadFingerprint::Fields(Selector::parse(selector)?));
        }
        if let Some(pointers) = spec.strip_prefix("ignore:") {
            let selector = Selector::parse(pointers)?;
            let pointers = selector
                .pointers()
                .ok_or_else(|| KeySpecError::NotAPointer(pointers.trim().to_owned()))?;
            return Ok(PayloadFingerprint::Ignoring(pointers.to_vec()));
        }
        match spec {
            "bytes" => Ok(PayloadFingerprint::Bytes),
            "json" => Ok(PayloadFingerprint::Json),
            _ => Err(FingerprintSpecError::Unknown(spec.to_owned())),
        }
    }

    /// The fingerprint of `payload`.
    pub fn of(&self, payload: &[u8]) -> Result<Fingerprint, FingerprintError> {
        let json = match self {
            PayloadFingerprint::Bytes => return Ok(Fingerprint::of_bytes(payload)),
            PayloadFingerprint::Json => {
                return Ok(Fingerprint::of_json_text(payload)
                    .unwrap_or_else(|_| Fingerprint::of_bytes(payload)));
            }
            PayloadFingerprint::Fields(_) | PayloadFingerprint::Ignoring(_) => {
                Json::parse(payload).map_err(FingerprintError::NotJson)?
            }
        };
        let text = match self {
            PayloadFingerprint::Fields(selector) => {
                let values = selector.select(&json, Absent::Null)?;
                match values.as_slice() {
                    [single] => canonical(single),
                    many => canonical_array(&many.iter().map(|v| v.as_ref()).collect::<Vec<_>>()),
                }
            }
            PayloadFingerprint::Ignoring(pointers) => {
                let mut json = json;
                for pointer in pointers {
                    json.remove(pointer);
                }
                canonical(&json)
            }
            PayloadFingerprint::Bytes | PayloadFingerprint::Json => unreachable!("answered above"),
        };
        Ok(Fingerprint::of_bytes(text.as_bytes()))
    }
}

impl std::str::FromStr for PayloadFingerprint {
    type Err = FingerprintSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PayloadFingerprint::parse(s)
    }
}

impl fmt::Display for PayloadFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadFingerprint::Bytes => f.write_str("bytes"),
            PayloadFingerprint::Json => f.write_str("json"),
            PayloadFingerprint::Fields(selector) => write!(f, "fields:{selector}"),
            PayloadFingerprint::Ignoring(pointers) => write!(f, "ignore:{}", pointers.join(",")),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(spec: &str, payload: &str) -> Fingerprint {
        let spec: PayloadFingerprint = spec.parse().unwrap();
        spec.of(payload.as_bytes()).unwrap()
    }

    #[test]
    fn a_re_serialised_copy_is_the_same_payload_by_default_and_not_by_bytes() {
        let a = r#"{"to":"ann","amount":10.50,"lines":[{"sku":"s-1","n":2}]}"#;
        let b = r#"{ "lines": [ {"n": 2, "sku": "s-1"} ], "amount": 10.5, "to": "ann" }"#;
        assert_eq!(of("json", a), of("json", b));
        assert_eq!(
            PayloadFingerprint::default().of(a.as_bytes()).unwrap(),
            of("json", b)
        );
        assert_ne!(of("bytes", a), of("bytes", b));
        assert_ne!(of("json", a), of("json", &a.replace("ann", "bob")));
        // Not JSON: its bytes.
        assert_eq!(
            of("json", "plain text"),
            Fingerprint::of_bytes(b"plain text")
        );
    }

    #[test]
    fn ignored_fields_do_not_count_and_every_other_does() {
        let spec = "ignore:/sentAt,/meta/traceId,/lines/0/at";
        let a =
            r#"{"id":1,"sentAt":"t1","meta":{"traceId":"x","src":"web"},"lines":[{"at":1,"n":2}]}"#;
        let b =
            r#"{"lines":[{"n":2,"at":9}],"meta":{"src":"web","traceId":"y"},"id":1,"sentAt":"t2"}"#;
        assert_eq!(of(spec, a), of(spec, b));
        for changed in [
            a.replace(r#""id":1"#, r#""id":2"#),
            a.replace(r#""src":"web""#, r#""src":"app""#),
            a.replace(r#""n":2"#, r#""n":3"#),
        ] {
            assert_ne!(of(spec, a), of(spec, &changed), "{changed}");
        }
        // A repeated name is removed whole, not only its last value.
        assert_eq!(
            of("ignore:/t", r#"{"a":1,"t":1,"t":2}"#),
            of("json", r#"{"a":1}"#)
        );
        // A pointer that names nothing leaves the payload as it is.
        assert_eq!(of("ignore:/nope/x", a), of("json", a));
    }

    #[test]
    fn selected_fields_count_alone_by_pointer_or_expression() {
        let a = r#"{"to":"ann","amount":10,"sentAt":"t1"}"#;
        let b = r#"{"sentAt":"t2","amount":10,"to":"ann","extra":true}"#;
        for spec in ["fields:/to,/amount", "fields:[to, amount]"] {
            assert_eq!(of(spec, a), of(spec, b), "{spec}");
            assert_ne!(of(spec, a), of(spec, &a.replace("10", "11")), "{spec}");
        }
        // An absent field is null, not an error; and not the same as a present one.
        assert_ne!(
            of("fields:/to,/amount", r#"{"to":"ann"}"#),
            of("fields:/to,/amount", a)
        );
        // JSON inside a string field.
        let sns = r#"{"MessageId":"m-1","Message":"{\"amount\":10,\"to\":\"ann\"}"}"#;
        let resent = r#"{"MessageId":"m-2","Message":"{\"to\":\"ann\",\"amount\":10}"}"#;
        let spec = "fields:powertools_json(Message)";
        assert_eq!(of(spec, sns), of(spec, resent));
    }

    #[test]
    fn fingerprint_specs_parse_and_fail_typed() {
        for spec in [
            "bytes",
            "json",
            "fields:/a,/b",
            "fields:detail.a",
            "ignore:/t,/u",
        ] {
            let parsed: PayloadFingerprint = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), spec);
        }
        assert!(matches!(
            "sha".parse::<PayloadFingerprint>(),
            Err(FingerprintSpecError::Unknown(_))
        ));
        assert!(matches!(
            "ignore:sentAt".parse::<PayloadFingerprint>(),
            Err(FingerprintSpecError::Selector(KeySpecError::NotAPointer(_)))
        ));
        let fields: PayloadFingerprint = "fields:/a".parse().unwrap();
        assert!(matches!(
            fields.of(b"not json"),
            Err(FingerprintError::NotJson(_))
        ));
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            Fingerprint::of_parts([b"ab".as_slice(), b"c"]),
            Fingerprint::of_parts([b"a".as_slice(), b"bc"])
        );
    }

    #[test]
    fn json_text_keeps_big_numbers_apart_and_agrees_with_a_value_elsewhere() {
        let of = |text: &str| Fingerprint::of_json_text(text.as_bytes()).unwrap();
        assert_ne!(
            of(r#"{"n":18446744073709551616}"#),
            of(r#"{"n":18446744073709551617}"#)
        );
        assert_ne!(
            of(r#"{"n":100000000000000000000001}"#),
            of(r#"{"n":100000000000000000000002}"#)
        );
        assert_ne!(of(r#"{"n":"42"}"#), of(r#"{"n":42}"#));
        let text = r#"{ "b": [1, 2.50, -3e-2], "a": "x" }"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(of(text), Fingerprint::of_json(&value));
        assert!(Fingerprint::of_json_text(b"{").is_err());
    }

    #[test]
    fn hex_round_trips_known_digest() {
        // SHA-256 of the empty string.
        assert_eq!(
            Fingerprint::of_bytes(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
