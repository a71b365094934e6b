//! W3C Trace Context (`traceparent`, `tracestate`): how a trace crosses oncely.
//!
//! A message or request that arrives with a `traceparent` keeps its trace: oncely's span for
//! it records the trace id, and what oncely sends on (the handler's request of
//! `oncely consume --deliver`) carries a `traceparent` of the same trace whose parent is
//! oncely's own step, with `tracestate` passed through unchanged, as the
//! [specification](https://www.w3.org/TR/trace-context/) asks of a participant. An outbox
//! message carries it as two of its headers ([`OutboxMessage::traced`](crate::outbox::OutboxMessage::traced)),
//! which the relay publishes as broker headers.
//!
//! ```
//! use oncely_core::trace::TraceParent;
//! let incoming: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
//! let ours = incoming.child();
//! assert_eq!(ours.trace_id(), incoming.trace_id());
//! assert_ne!(ours.parent_id(), incoming.parent_id());
//! assert!(ours.to_string().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//! # Ok::<(), oncely_core::trace::TraceParentError>(())
//! ```
//!
//! # Spans
//!
//! Each step oncely takes for a request or a message is a [`Hop`]: a span of its own in the
//! caller's trace (or in a new trace when none came). Its span records the W3C ids in three
//! fields, [`TRACE_ID_FIELD`], [`SPAN_ID_FIELD`] and [`PARENT_SPAN_ID_FIELD`], as hex; an
//! exporter that reads them (the `oncely-otlp` crate's layer) joins oncely's spans to the
//! caller's trace, and what oncely sends on names that span as its parent. The spans of the
//! lifecycle (`oncely.claim`, `oncely.complete`, ...) name the key as [`SpanKeys`] says: as it
//! is, or hashed where keys carry personal data.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::Key;

/// The `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header's name.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent`: version 00, a trace id, the caller's span id, the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a `traceparent` value was not used (it is then ignored, as the specification says: the
/// receiver starts a trace of its own).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a W3C traceparent ({0}): `version-traceid-parentid-flags` in lowercase hex expected")]
pub struct TraceParentError(&'static str);

impl TraceParent {
    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id of the caller, 16 lowercase hex digits.
    pub fn parent_id(&self) -> String {
        hex(&self.parent_id)
    }

    /// Whether the caller sampled the trace (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The same trace with a new span id: what oncely sends on, as the parent of the next hop.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: span_id(),
            ..*self
        }
    }

    /// A new trace, sampled, with a new span id: a hop that no trace came with.
    pub fn root() -> TraceParent {
        let mut trace_id = [0u8; 16];
        while trace_id == [0u8; 16] {
            trace_id = fastrand::u128(..).to_be_bytes();
        }
        TraceParent {
            trace_id,
            parent_id: span_id(),
            flags: 1,
        }
    }
}

/// A random span id, never all zero.
fn span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// The span field holding a hop's trace id (32 hex digits).
pub const TRACE_ID_FIELD: &str = "trace_id";
/// The span field holding a hop's own span id (16 hex digits).
pub const SPAN_ID_FIELD: &str = "span_id";
/// The span field holding the caller's span id (16 hex digits), absent for a new trace.
pub const PARENT_SPAN_ID_FIELD: &str = "parent_span_id";

/// One step of a trace that oncely takes: its span continues the caller's `traceparent`, or
/// starts a trace when none came (or it was malformed), and what oncely sends on names this
/// span as its parent.
///
/// ```
/// use oncely_core::trace::Hop;
/// let hop = Hop::after(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
/// let span = tracing::info_span!("my.step", trace_id = tracing::field::Empty,
///     span_id = tracing::field::Empty, parent_span_id = tracing::field::Empty);
/// hop.record(&span);
/// // The next hop's traceparent: the same trace, this hop as the parent.
/// let onward = hop.onward().unwrap();
/// assert_eq!(onward.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(onward.parent_id(), hop.own().parent_id());
/// // No traceparent came: the span starts a trace, and nothing is sent on.
/// assert!(Hop::after(None).onward().is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The caller's traceparent, if a well-formed one came.
    caller: Option<TraceParent>,
    /// This hop: the caller's trace, or a new one, with this hop's own span id.
    own: TraceParent,
}

impl Hop {
    /// The hop after a `traceparent` header's value (`None`: no header came).
    pub fn after(traceparent: Option<&str>) -> Hop {
        let caller = traceparent.and_then(|value| value.parse::<TraceParent>().ok());
        let own = caller
            .as_ref()
            .map_or_else(TraceParent::root, TraceParent::child);
        Hop { caller, own }
    }

    /// The caller's traceparent, if a well-formed one came.
    pub fn caller(&self) -> Option<TraceParent> {
        self.caller
    }

    /// This hop's own context: its trace id, and its span id as the parent id.
    pub fn own(&self) -> TraceParent {
        self.own
    }

    /// The `traceparent` to send on: this hop as the parent, in the caller's trace. `None`
    /// when no trace came: a trace oncely started is not pushed onto the next hop's headers
    /// (they may be limited, as SQS's ten message attributes are).
    pub fn onward(&self) -> Option<TraceParent> {
        self.caller.map(|_| self.own)
    }

    /// Records the ids in `span`'s [`TRACE_ID_FIELD`], [`SPAN_ID_FIELD`] and
    /// [`PARENT_SPAN_ID_FIELD`] (fields it must declare, `Empty` until now). Formatted only if
    /// the span is enabled.
    pub fn record(&self, span: &tracing::Span) {
        span.record(
            TRACE_ID_FIELD,
            tracing::field::display(Hex(&self.own.trace_id)),
        );
        span.record(
            SPAN_ID_FIELD,
            tracing::field::display(Hex(&self.own.parent_id)),
        );
        if let Some(caller) = &self.caller {
            span.record(
                PARENT_SPAN_ID_FIELD,
                tracing::field::display(Hex(&caller.parent_id)),
            );
        }
    }
}

/// How the lifecycle's spans name a key: [`Plain`](SpanKeys::Plain) (the default) or
/// [`Hashed`](SpanKeys::Hashed), for keys that carry personal data (an e-mail address, an
/// account number) that must not reach a tracing backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanKeys {
    /// The key as it is.
    #[default]
    Plain,
    /// `sha256:` and the first 16 hex digits of the key's SHA-256: the same key always gives
    /// the same value, so one key's spans can still be found
    /// (`printf %s "$KEY" | sha256sum | cut -c1-16`).
    Hashed,
}

impl SpanKeys {
    /// `key` as a span shows it; computed only when formatted (a disabled span never does).
    ///
    /// ```
    /// use oncely_core::{Key, trace::SpanKeys};
    /// let key = Key::new("alice@example.com").unwrap();
    /// assert_eq!(SpanKeys::Plain.show(&key).to_string(), "alice@example.com");
    /// assert_eq!(SpanKeys::Hashed.show(&key).to_string(), "sha256:ff8d9819fc0e12bf");
    /// ```
    pub fn show(self, key: &Key) -> ShownKey<'_> {
        ShownKey { key, how: self }
    }
}

/// A key as [`SpanKeys::show`] shows it.
#[derive(Clone, Copy, Debug)]
pub struct ShownKey<'a> {
    key: &'a Key,
    how: SpanKeys,
}

impl fmt::Display for ShownKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.how {
            SpanKeys::Plain => f.write_str(self.key.as_str()),
            SpanKeys::Hashed => {
                let digest = Sha256::digest(self.key.as_str().as_bytes());
                write!(f, "sha256:{}", Hex(&digest[..8]))
            }
        }
    }
}

/// Bytes as lowercase hex, formatted when displayed.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, parent, flags, ..] = parts[..] else {
            return Err(TraceParentError("not four fields"));
        };
        // Version 00 has exactly four fields; a later version may add more after them.
        if version == "ff" || unhex::<1>(version).is_none() {
            return Err(TraceParentError("bad version"));
        }
        if version == "00" && parts.len() != 4 {
            return Err(TraceParentError("version 00 has four fields"));
        }
        let trace_id = unhex::<16>(trace).ok_or(TraceParentError("bad trace id"))?;
        let parent_id = unhex::<8>(parent).ok_or(TraceParentError("bad parent id"))?;
        let [flags] = unhex::<1>(flags).ok_or(TraceParentError("bad flags"))?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return Err(TraceParentError("an all-zero id"));
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    Hex(bytes).to_string()
}

/// `N` bytes from exactly `2 * N` lowercase hex digits.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specifications_example_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed: TraceParent = value.parse().unwrap();
        assert_eq!(parsed.to_string(), value);
        assert!(parsed.sampled());
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id(), "00f067aa0ba902b7");
    }

    #[test]
    fn what_the_specification_forbids_is_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
        // A later version's extra fields are allowed.
        assert!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
                .parse::<TraceParent>()
                .is_ok()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_flags_with_a_new_parent() {
        let parent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            .parse()
            .unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert!(!child.sampled());
        assert_eq!(child.to_string().parse::<TraceParent>().unwrap(), child);
    }
}
