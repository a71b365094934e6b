//! [`OtlpLayer`]: each span, when it closes, as an OTLP span.

use std::fmt;
use std::time::SystemTime;

use oncely_core::trace::{PARENT_SPAN_ID_FIELD, SPAN_ID_FIELD, TRACE_ID_FIELD, TraceParent};
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{OtlpConfig, OtlpError};
use crate::export::{Exporter, Queue};

/// A [`tracing_subscriber::Layer`] that exports every span it sees, when it closes, as an
/// OTLP span (with the events logged inside it), through its [`Exporter`].
///
/// Ids: a span with the W3C fields of a hop ([`oncely_core::trace::Hop`]) takes them; another
/// span takes its parent span's trace with a new span id; a span with neither starts a trace.
/// The fields `otel.kind` (`server`, `client`, `producer`, `consumer`, `internal`), `otel.name`
/// and `otel.status_code` (`ok`, `error`) are read as tracing-opentelemetry reads them, and a
/// span with an `error` field, or an event at `ERROR` inside it, has the status error.
///
/// Give it a filter ([`Layer::with_filter`]) for the spans worth sending: oncely's are at
/// `info`.
pub struct OtlpLayer {
    queue: Queue,
}

impl OtlpLayer {
    /// The layer, and the exporter that sends what it queues (keep it; [`Exporter::shutdown`]
    /// sends what is left when the process ends).
    pub fn new(config: OtlpConfig) -> Result<(OtlpLayer, Exporter), OtlpError> {
        let (queue, exporter) = Exporter::start(config)?;
        Ok((OtlpLayer { queue }, exporter))
    }
}

/// What the layer keeps of a span until it closes.
struct SpanData {
    /// W3C ids in lowercase hex, as OTLP's JSON writes them.
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    name: String,
    kind: u8,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
    events: Vec<Value>,
    error: Option<String>,
}

const KIND_INTERNAL: u8 = 1;

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let inherited = span.parent().and_then(|parent| {
            let extensions = parent.extensions();
            let data = extensions.get::<SpanData>()?;
            Some((data.trace_id.clone(), data.span_id.clone()))
        });
        // New ids as oncely's own hops draw them: a fresh trace, whose span id is this span's.
        let fresh = TraceParent::root();
        let (trace_id, parent) = match inherited {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (fresh.trace_id(), None),
        };
        let mut data = SpanData {
            trace_id,
            span_id: fresh.parent_id(),
            parent,
            name: attrs.metadata().name().to_owned(),
            kind: KIND_INTERNAL,
            start: SystemTime::now(),
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        };
        attrs.record(&mut FieldsInto(&mut data));
        span.extensions_mut().insert(data);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(data) = span.extensions_mut().get_mut::<SpanData>()
        {
            values.record(&mut FieldsInto(data));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(data) = extensions.get_mut::<SpanData>() else {
            return;
        };
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        if level == tracing::Level::ERROR && data.error.is_none() {
            data.error = Some(fields.message.clone());
        }
        let mut attributes = fields.attributes;
        attributes.push(attribute("level", Value::from(level.as_str())));
        data.events.push(json!({
            "timeUnixNano": nanos(SystemTime::now()),
            "name": fields.message,
            "attributes": attributes,
        }));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        let mut encoded = json!({
            "traceId": data.trace_id,
            "spanId": data.span_id,
            "name": data.name,
            "kind": data.kind,
            "startTimeUnixNano": nanos(data.start),
            "endTimeUnixNano": nanos(SystemTime::now()),
            "attributes": data.attributes.into_iter()
                .map(|(key, value)| attribute(key, value)).collect::<Vec<_>>(),
            "events": data.events,
            "status": match &data.error {
                // STATUS_CODE_ERROR, with its message; else unset.
                Some(message) => json!({"code": 2, "message": message}),
                None => json!({}),
            },
        });
        if let Some(parent) = data.parent {
            encoded["parentSpanId"] = Value::from(parent);
        }
        self.queue.push(encoded);
    }
}

/// Records a span's fields into its [`SpanData`]: ids, `otel.*`, the rest as attributes.
struct FieldsInto<'a>(&'a mut SpanData);

impl FieldsInto<'_> {
    fn text(&mut self, field: &Field, value: String) {
        let data = &mut *self.0;
        match field.name() {
            name if name == TRACE_ID_FIELD => {
                if is_id(&value, 32) {
                    data.trace_id = value;
                    // A hop's caller, if any, is recorded next: not the enclosing span.
                    data.parent = None;
                }
            }
            name if name == SPAN_ID_FIELD => {
                if is_id(&value, 16) {
                    data.span_id = value;
                }
            }
            name if name == PARENT_SPAN_ID_FIELD => {
                data.parent = is_id(&value, 16).then_some(value);
            }
            "otel.kind" => data.kind = kind(&value),
            "otel.name" => data.name = value,
            "otel.status_code" if value.eq_ignore_ascii_case("error") => {
                data.error.get_or_insert_with(String::new);
            }
            "otel.status_code" => {}
            "error" => {
                data.error = Some(value.clone());
                self.attribute(field, Value::from(value));
            }
            _ => self.attribute(field, Value::from(value)),
        }
    }

    fn attribute(&mut self, field: &Field, value: Value) {
        let attributes = &mut self.0.attributes;
        match attributes.iter_mut().find(|(key, _)| *key == field.name()) {
            Some(slot) => slot.1 = value,
            None => attributes.push((field.name(), value)),
        }
    }
}

impl Visit for FieldsInto<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attribute(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.attribute(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attribute(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attribute(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, value.to_string());
    }
}

/// An event's message and its other fields as attributes.
#[derive(Default)]
struct EventFields {
    message: String,
    attributes: Vec<Value>,
}

impl Visit for EventFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let value = Value::from(format!("{value:?}"));
            self.attributes.push(attribute(field.name(), value));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.attributes
                .push(attribute(field.name(), Value::from(value)));
        }
    }
}

/// An OTLP `KeyValue` in JSON: strings, integers (as strings, OTLP's int64), doubles, booleans.
fn attribute(key: &str, value: Value) -> Value {
    let value = match value {
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_f64() => json!({ "doubleValue": n }),
        Value::Number(n) => json!({ "intValue": n.to_string() }),
        Value::String(s) => json!({ "stringValue": s }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// The OTLP `SpanKind` for tracing-opentelemetry's `otel.kind` values.
fn kind(value: &str) -> u8 {
    match value.to_ascii_lowercase().as_str() {
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => KIND_INTERNAL,
    }
}

/// Nanoseconds since the Unix epoch, as OTLP's JSON writes 64-bit integers: a string.
fn nanos(at: SystemTime) -> String {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// Whether `text` is a W3C id of `digits` lowercase hex digits, not all zero (as
/// [`oncely_core::trace::Hop`] records them).
fn is_id(text: &str, digits: usize) -> bool {
    text.len() == digits
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}
