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

use std::fmt;
use std::str::FromStr;

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
        let mut parent_id = [0u8; 8];
        while parent_id == [0u8; 8] {
            parent_id = fastrand::u64(..).to_be_bytes();
        }
        TraceParent { parent_id, ..*self }
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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
