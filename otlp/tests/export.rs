//! The layer and exporter against an OTLP/HTTP receiver on loopback that records what it gets.

use std::time::Duration;

use oncely_conformance::recorder::Recorder;
use oncely_core::trace::Hop;
use oncely_otlp::{OtlpConfig, OtlpLayer};
use serde_json::Value;
use tracing::field::Empty;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

fn config(port: u16) -> OtlpConfig {
    let vars = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
    ];
    OtlpConfig::from_vars("otlp-test", |name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
    .unwrap()
}

fn spans(receiver: &Recorder) -> Vec<Value> {
    receiver
        .requests()
        .iter()
        .flat_map(|request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    let attributes = span["attributes"].as_array().unwrap();
    &attributes
        .iter()
        .find(|a| a["key"] == key)
        .unwrap_or_else(|| panic!("no attribute {key} in {span:#}"))["value"]
}

#[test]
fn a_hop_joins_the_callers_trace_and_its_children_follow_it() {
    let receiver = Recorder::start(200);
    let (layer, exporter) = OtlpLayer::new(config(receiver.port())).unwrap();
    let filter = Targets::new().with_target("export", LevelFilter::INFO);
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let hop = Hop::after(Some(caller));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            "test.hop",
            otel.kind = "consumer",
            source = "orders",
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty
        );
        hop.record(&span);
        span.in_scope(|| {
            let child = tracing::info_span!("test.child", attempt = 2u64, error = Empty);
            child.in_scope(|| tracing::error!(code = 7, "the handler failed"));
            child.record("error", "handler failed");
            // Not exported: below the filter's level.
            tracing::debug_span!("test.debug").in_scope(|| {});
        });
        tracing::info_span!("test.root").in_scope(|| {});
    });
    // Everything queued goes out at shutdown, long before the 60 s schedule.
    exporter.shutdown();

    let requests = receiver.requests();
    assert!(!requests.is_empty(), "nothing was exported");
    for request in &requests {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.header("content-type"), Some("application/json"));
        let key = request.header("x-api-key");
        assert_eq!(key, Some("secret"), "OTEL_EXPORTER_OTLP_HEADERS sent");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let resource = &body["resourceSpans"][0]["resource"]["attributes"][0];
        assert_eq!(resource["key"], "service.name");
        assert_eq!(resource["value"]["stringValue"], "otlp-test");
    }
    let spans = spans(&receiver);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let hop_span = named(&spans, "test.hop");
    assert_eq!(hop_span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hop_span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(hop_span["spanId"], hop.own().parent_id());
    assert_eq!(hop_span["kind"], 5, "otel.kind = consumer");
    assert_eq!(attribute(hop_span, "source")["stringValue"], "orders");

    let child = named(&spans, "test.child");
    assert_eq!(child["traceId"], hop_span["traceId"]);
    assert_eq!(child["parentSpanId"], hop_span["spanId"]);
    assert_eq!(child["kind"], 1);
    assert_eq!(attribute(child, "attempt")["intValue"], "2");
    assert_eq!(child["status"]["code"], 2);
    assert_eq!(child["status"]["message"], "handler failed");
    assert_eq!(child["events"][0]["name"], "the handler failed");
    let start: u128 = child["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = child["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start);

    let root = named(&spans, "test.root");
    assert_ne!(root["traceId"], hop_span["traceId"], "a trace of its own");
    assert!(root.get("parentSpanId").is_none());
}

#[test]
fn a_receiver_that_is_down_costs_a_warning_not_the_work() {
    // A port nothing listens on: the export fails, and the spans are dropped quietly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (layer, exporter) = OtlpLayer::new(config(port)).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..10 {
            tracing::info_span!("test.lost").in_scope(|| {});
        }
    });
    let started = std::time::Instant::now();
    exporter.shutdown();
    assert!(started.elapsed() < Duration::from_secs(12));
}
