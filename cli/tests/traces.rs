//! One W3C trace across oncely, end to end, exported over OTLP to a receiver this test runs:
//! a client's request through `oncely serve` to its upstream, which writes an outbox row in the
//! request's trace; `oncely relay` publishes the row to NATS JetStream (`ONCELY_NATS_URL`,
//! default nats://127.0.0.1:4222); `oncely consume --deliver` posts it to a handler. Every
//! span of the three processes must be in the client's trace, each hop the parent of the next,
//! and the tracestate carried to the handler.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oncely::nats::async_nats::{self, jetstream};
use oncely::outbox::Outbox;
use oncely::sqlite::outbox::{OutboxMessage, SqliteOutbox, SqliteOutboxStore};
use oncely::sqlite::sqlx::SqlitePool;
use oncely::trace::TraceParent;
use oncely_conformance::recorder::{Recorded, Recorder};
use serde_json::Value;

#[path = "support/mod.rs"]
mod support;

use support::{BIN, Gateway, PATIENCE};

/// The client's trace: its span `00f067aa0ba902b7` is the gateway's caller.
const CLIENT_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACESTATE: &str = "vendor=opaque";

fn nats() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The environment that sends a process's spans to `receiver` at once (100 ms batches).
fn otlp_env(receiver: &Recorder) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url("")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

fn spawn(args: &[&str], dir: &Path, env: &[(&'static str, String)]) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("ONCELY_STORE")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then its exit: a stopped process sends the spans it still holds.
fn terminate(child: Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("OTLP export"), "{stderr}");
}

/// Every span the receiver got, each with its process's `service.name` as `"service"`.
fn exported(receiver: &Recorder) -> Vec<Value> {
    let mut spans = Vec::new();
    for request in receiver.requests() {
        assert_eq!(request.path, "/v1/traces");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        for resource in body["resourceSpans"].as_array().unwrap() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone())
                .unwrap();
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    let mut span = span.clone();
                    span["service"] = service.clone();
                    spans.push(span);
                }
            }
        }
    }
    spans
}

/// The one span named `name` from `service`.
fn span<'a>(spans: &'a [Value], service: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| s["service"] == service && s["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name} in {spans:#?}");
    found[0]
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
        .unwrap_or_else(|| panic!("no attribute {key} in {span:#}"))
}

/// `request`'s traceparent, parsed.
fn traceparent_of(request: &Recorded) -> TraceParent {
    request
        .header("traceparent")
        .expect("a traceparent")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_gateway_outbox_relay_and_consumer_to_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Recorder::start(200);
    let upstream = Recorder::start(201);
    let handler = Recorder::start(200);
    let env = otlp_env(&receiver);

    // The client's request, through the gateway, to the upstream.
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = format!("sqlite:{}", dir.path().join("gateway.db").display());
    let gateway = Gateway::start_with_env(&store, dir.path(), &upstream.url(""), &[], &env_refs);
    let status = tokio::task::spawn_blocking({
        let addr = gateway.addr;
        move || post_through(addr, "order-1", r#"{"order":"order-1"}"#)
    })
    .await
    .unwrap();
    assert!(status.contains(" 201 "), "{status}");
    let to_upstream = &upstream.wait_for(1, "the upstream", PATIENCE)[0];
    let upstream_parent = traceparent_of(to_upstream);
    assert_eq!(to_upstream.header("tracestate"), Some(TRACESTATE));

    // The upstream's work: an outbox row in the trace it was called in.
    let outbox_path = dir.path().join("app.db");
    let outbox_url = format!("sqlite:{}", outbox_path.display());
    SqliteOutboxStore::connect(&outbox_url).await.unwrap();
    let pool = SqlitePool::connect(&outbox_url).await.unwrap();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let message = OutboxMessage::new("order-1", to_upstream.body.clone())
        .traced(&upstream_parent, to_upstream.header("tracestate"));
    SqliteOutbox::enqueue(&Outbox::new(), &mut tx, &message)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The relay to NATS, and the consumer from it to the handler.
    let fresh = oncely::nats::fresh_destination(
        &nats(),
        &oncely::nats::FreshOptions::new("ONCELY_CLI_TRACES_", "e2e"),
    )
    .await
    .expect("NATS with JetStream at ONCELY_NATS_URL (start nats-server -js)");
    let to = format!("{}/{}", nats(), fresh.subject);
    let relay = spawn(
        &["relay", "--outbox", &outbox_url, "--to", &to],
        dir.path(),
        &env,
    );
    let consumer_store = format!("sqlite:{}", dir.path().join("consumer.db").display());
    let from = format!("{}/{}/traced", nats(), fresh.stream);
    let consumer = spawn(
        &[
            "--store",
            &consumer_store,
            "--span-keys",
            "hashed",
            "consume",
            "--from",
            &from,
            "--key",
            "/order",
            "--deliver",
            &handler.url("/handle"),
        ],
        dir.path(),
        &env,
    );
    let to_handler = &handler.wait_for(1, "the handler", PATIENCE)[0];
    let handler_parent = traceparent_of(to_handler);
    assert_eq!(to_handler.header("tracestate"), Some(TRACESTATE));

    terminate(consumer);
    terminate(relay);
    let mut gateway = gateway;
    let pid = i32::try_from(gateway.child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(gateway.child.wait().unwrap().success());
    let context = jetstream::new(async_nats::connect(nats()).await.unwrap());
    context.delete_stream(&fresh.stream).await.unwrap();

    // Each hop's span is in the client's trace, its parent the hop before.
    let spans = exported(&receiver);
    for span in &spans {
        assert_eq!(span["traceId"], TRACE_ID, "{span:#}");
    }
    let request = span(&spans, "oncely-serve", "oncely.request");
    assert_eq!(request["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(request["kind"], 2, "server");
    assert_eq!(attribute(request, "key"), "order-1");
    assert_eq!(
        upstream_parent.parent_id(),
        request["spanId"],
        "the upstream's parent"
    );

    let publish = span(&spans, "oncely-relay", "oncely.publish");
    assert_eq!(
        publish["parentSpanId"], request["spanId"],
        "the row's trace"
    );
    assert_eq!(publish["kind"], 4, "producer");

    let delivery = span(&spans, "oncely-consume", "oncely.delivery");
    assert_eq!(
        delivery["parentSpanId"], publish["spanId"],
        "the message's trace"
    );
    assert_eq!(delivery["kind"], 5, "consumer");
    assert_eq!(
        handler_parent.parent_id(),
        delivery["spanId"],
        "the handler's parent"
    );
    assert_eq!(handler_parent.trace_id(), TRACE_ID);

    // The lifecycle's spans sit under the hop that made them, keys as each process names them.
    for (service, parent, key) in [
        ("oncely-serve", request, "order-1"),
        // --span-keys hashed: the first 16 hex digits of SHA-256("order-1").
        ("oncely-consume", delivery, "sha256:0bafe22156d2698c"),
    ] {
        for name in ["oncely.claim", "oncely.complete"] {
            let lifecycle = span(&spans, service, name);
            assert_eq!(
                lifecycle["parentSpanId"], parent["spanId"],
                "{service} {name}"
            );
            assert_eq!(attribute(lifecycle, "key"), key, "{service} {name}");
        }
        assert_eq!(attribute(parent, "key"), key, "{service}");
    }
    assert_eq!(
        attribute(span(&spans, "oncely-serve", "oncely.claim"), "outcome"),
        "new"
    );
}

/// A POST to the gateway at `addr` with the client's trace; its status line.
fn post_through(addr: std::net::SocketAddr, key: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /orders HTTP/1.1\r\nHost: shop\r\nIdempotency-Key: {key}\r\n\
         traceparent: {CLIENT_TRACEPARENT}\r\ntracestate: {TRACESTATE}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}
