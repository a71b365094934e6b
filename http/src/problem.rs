//! The layer's own answers: `application/problem+json` bodies (RFC 9457).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::Body;

/// The media type of every error the layer answers with.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What goes before a problem's slug in its `type` unless the layer is given another base
/// ([`IdempotencyLayer::problem_type_base`](crate::IdempotencyLayer::problem_type_base)).
pub const DEFAULT_PROBLEM_TYPE_BASE: &str = "urn:oncely:http:";

/// Why the layer answered instead of the inner service. Each is one RFC 9457 problem type,
/// the configured base (`urn:oncely:http:` by default) followed by [`Problem::slug`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    KeyMissing,
    KeyNotInBody {
        reason: String,
    },
    KeyEmpty,
    KeyTooLong {
        len: usize,
    },
    KeyNotVisibleAscii,
    KeyNotSfString {
        why: String,
    },
    KeyRepeated {
        count: usize,
    },
    BodyTooLarge {
        limit: usize,
    },
    BodyUnreadable {
        reason: String,
    },
    BodyNotFingerprinted {
        reason: String,
    },
    InFlight {
        retry_after: Duration,
    },
    Mismatch,
    StoreUnavailable,
    StoredUnreadable {
        reason: String,
    },
    /// No response within the configured time; the request runs on and its key stays held.
    StillRunning {
        waited: Duration,
    },
    /// The inner service panicked; its key was released.
    Panicked,
    /// The claim's lease was taken over while the request ran; its response was not stored.
    ClaimLost,
    /// The gateway's upstream could not be reached: the request was not sent.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    UpstreamNotSent {
        reason: String,
    },
    /// The gateway's upstream gave no response after the request was sent; its key is held
    /// for up to `held`.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    UpstreamFailed {
        reason: String,
        held: Duration,
    },
    /// The gateway's upstream gave no response within `timeout` to a request without a key.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    UpstreamTimedOut {
        timeout: Duration,
    },
}

impl Problem {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Problem::KeyMissing
            | Problem::KeyNotInBody { .. }
            | Problem::BodyNotFingerprinted { .. }
            | Problem::KeyEmpty
            | Problem::KeyTooLong { .. }
            | Problem::KeyNotVisibleAscii
            | Problem::KeyNotSfString { .. }
            | Problem::KeyRepeated { .. }
            | Problem::BodyUnreadable { .. } => StatusCode::BAD_REQUEST,
            Problem::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::InFlight { .. } => StatusCode::CONFLICT,
            Problem::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::StoredUnreadable { .. } | Problem::Panicked | Problem::ClaimLost => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Problem::StillRunning { .. } | Problem::UpstreamTimedOut { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Problem::UpstreamNotSent { .. } | Problem::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The last part of the problem type URI.
    pub(crate) fn slug(&self) -> &'static str {
        match self {
            Problem::KeyMissing | Problem::KeyNotInBody { .. } => "idempotency-key-missing",
            Problem::KeyEmpty
            | Problem::KeyTooLong { .. }
            | Problem::KeyNotVisibleAscii
            | Problem::KeyNotSfString { .. }
            | Problem::KeyRepeated { .. } => "idempotency-key-malformed",
            Problem::BodyTooLarge { .. } => "request-too-large",
            Problem::BodyUnreadable { .. } => "request-body-unreadable",
            Problem::BodyNotFingerprinted { .. } => "request-body-not-comparable",
            Problem::InFlight { .. } => "request-in-progress",
            Problem::Mismatch => "idempotency-key-reused",
            Problem::StoreUnavailable => "store-unavailable",
            Problem::StoredUnreadable { .. } => "stored-response-unreadable",
            Problem::StillRunning { .. } => "response-timeout",
            Problem::Panicked => "handler-panicked",
            Problem::ClaimLost => "claim-lost",
            Problem::UpstreamNotSent { .. } | Problem::UpstreamFailed { .. } => {
                "upstream-unavailable"
            }
            Problem::UpstreamTimedOut { .. } => "upstream-timeout",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Problem::KeyMissing | Problem::KeyNotInBody { .. } => "Idempotency-Key is required",
            Problem::KeyEmpty
            | Problem::KeyTooLong { .. }
            | Problem::KeyNotVisibleAscii
            | Problem::KeyNotSfString { .. }
            | Problem::KeyRepeated { .. } => "Idempotency-Key is malformed",
            Problem::BodyTooLarge { .. } => "Request body too large",
            Problem::BodyUnreadable { .. } => "Request body could not be read",
            Problem::BodyNotFingerprinted { .. } => "Request body could not be compared",
            Problem::InFlight { .. } => "A request with this Idempotency-Key is in progress",
            Problem::Mismatch => "Idempotency-Key reused with a different request",
            Problem::StoreUnavailable => "Idempotency store unavailable",
            Problem::StoredUnreadable { .. } => "Stored response could not be read",
            Problem::StillRunning { .. } => "The request is still running",
            Problem::Panicked => "The request failed",
            Problem::ClaimLost => "The request lost its Idempotency-Key",
            Problem::UpstreamNotSent { .. } | Problem::UpstreamFailed { .. } => {
                "Upstream unavailable"
            }
            Problem::UpstreamTimedOut { .. } => "Upstream timed out",
        }
    }

    fn detail(&self) -> String {
        match self {
            Problem::KeyMissing => {
                "this endpoint requires an Idempotency-Key header: send a unique value (a UUID) \
                 per operation, and the same value when retrying it"
                    .into()
            }
            Problem::KeyNotInBody { reason } => format!(
                "this endpoint requires an Idempotency-Key header or the key in the request \
                 body, and the body has none: {reason}"
            ),
            Problem::KeyEmpty => "the Idempotency-Key header is empty".into(),
            Problem::KeyTooLong { len } => format!(
                "the Idempotency-Key is {len} characters long; at most {} are accepted",
                crate::MAX_KEY_LEN
            ),
            Problem::KeyNotVisibleAscii => {
                "the Idempotency-Key must be visible ASCII (characters 0x21-0x7E: no spaces, \
                 control characters or non-ASCII bytes)"
                    .into()
            }
            Problem::KeyNotSfString { why } => format!(
                "the Idempotency-Key starts with a quote, so it must be an RFC 8941 string \
                 (\"...\", escaping only \\\" and \\\\), and {why}"
            ),
            Problem::KeyRepeated { count } => {
                format!("the Idempotency-Key header was sent {count} times; send it exactly once")
            }
            Problem::BodyTooLarge { limit } => format!(
                "the request body is larger than {limit} bytes, the most this endpoint buffers \
                 to check an Idempotency-Key"
            ),
            Problem::BodyUnreadable { reason } => {
                format!("the request body could not be read: {reason}")
            }
            Problem::BodyNotFingerprinted { reason } => format!(
                "the request body could not be compared with other requests of its \
                 Idempotency-Key, as this endpoint compares them: {reason}"
            ),
            Problem::InFlight { retry_after } => format!(
                "the first request with this Idempotency-Key is still being processed; retry \
                 after {} seconds to get its response",
                retry_after_secs(*retry_after)
            ),
            Problem::Mismatch => {
                "this Idempotency-Key was already used with a different request (another \
                 method, path, body or header): use a new key for a new operation"
                    .into()
            }
            Problem::StoreUnavailable => {
                "the idempotency store could not be reached, so the request was not executed; \
                 retry with the same Idempotency-Key"
                    .into()
            }
            Problem::StoredUnreadable { reason } => format!(
                "the response stored for this Idempotency-Key could not be decoded ({reason}); \
                 it was not replayed"
            ),
            Problem::StillRunning { waited } => format!(
                "no response within {} ms; the request is still running and will not be \
                 executed again: retry with the same Idempotency-Key to get its response once \
                 it is done (409 until then)",
                waited.as_millis()
            ),
            Problem::Panicked => {
                "the handler panicked; nothing was stored, so a retry with the same \
                 Idempotency-Key executes the request again"
                    .into()
            }
            Problem::ClaimLost => {
                "the request ran longer than its Idempotency-Key's lease could be held (the \
                 store could not renew it) and another request took the key over; this \
                 response was not stored"
                    .into()
            }
            Problem::UpstreamNotSent { reason } => format!(
                "the upstream could not be reached ({reason}); the request was not sent, so a \
                 retry with the same Idempotency-Key executes it"
            ),
            Problem::UpstreamFailed { reason, held } => format!(
                "the upstream gave no response ({reason}) after the request was sent, so it may \
                 have executed it; the Idempotency-Key is held for up to {} (a retry gets 409 \
                 until then, then executes the request)",
                humane(*held)
            ),
            Problem::UpstreamTimedOut { timeout } => format!(
                "the upstream gave no response within {}; the request had no Idempotency-Key, \
                 so a retry may execute it again",
                humane(*timeout)
            ),
        }
    }

    /// The response: status, `application/problem+json`, and `Retry-After` where it applies.
    /// `type_base` goes before the slug in `type` ([`DEFAULT_PROBLEM_TYPE_BASE`] unless set).
    pub(crate) fn into_response<B: http_body::Body>(self, type_base: &str) -> Response<Body<B>> {
        let status = self.status();
        let json = serde_json::json!({
            "type": format!("{type_base}{}", self.slug()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        let mut response = Response::new(Body::buffered(Bytes::from(json.to_string()), None));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            Problem::InFlight { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            Problem::StillRunning { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            Problem::StoreUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            _ => {}
        }
        response
    }
}

/// `Retry-After` is whole seconds: round up, and never say 0 (that invites a busy loop).
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// `30s`, or `1500ms` when it is not whole seconds.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
fn humane(d: Duration) -> String {
    match d.as_millis() {
        millis if millis.is_multiple_of(1000) => format!("{}s", millis / 1000),
        millis => format!("{millis}ms"),
    }
}
