//! `oncely redrive`: dead letters from a NATS dead-letter stream back to the stream they came
//! from, counted first (--dry-run), then some (--filter), then the rest, each once.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use oncely::consumer::{ATTEMPTS_HEADER, DEAD_LETTER_ID_HEADER, ERROR_HEADER, MESSAGE_ID_HEADER};
use oncely::nats::async_nats::{self, HeaderMap, jetstream};
use oncely::nats::{FreshOptions, fresh_destination};
use oncely::redrive::REDRIVES_HEADER;

use crate::process::runtime;
use crate::rabbitmq::Rabbit;
use crate::{BIN, amqp_server, nats_server};

fn redrive(dir: &Path, args: &[&str]) -> Output {
    let store = format!("sqlite:{}", dir.join("o.db").display());
    Command::new(BIN)
        .args(["--store", &store, "redrive", "--idle", "1s"])
        .args(args)
        .env_remove("ONCELY_STORE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The summary line, after checking the exit status.
fn summary(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    last.strip_prefix("redrive: ")
        .unwrap_or_else(|| panic!("no summary: {stderr}"))
        .to_owned()
}

async fn stored(
    context: &jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut stream = context.get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            messages.push(message);
        }
    }
    messages
}

#[test]
fn nats_dead_letters_are_counted_then_filtered_then_all_moved_back_once() {
    let rt = runtime();
    let server = nats_server();
    let fresh = rt
        .block_on(fresh_destination(
            &server,
            &FreshOptions::new("ONCELY_CLI_", "redrive"),
        ))
        .expect("NATS with JetStream at ONCELY_NATS_URL");
    let context =
        rt.block_on(async { jetstream::new(async_nats::connect(&server).await.unwrap()) });
    rt.block_on(context.create_stream(jetstream::stream::Config {
        name: fresh.dead_letter_stream.clone(),
        subjects: vec![fresh.dead_letter_subject.clone()],
        ..Default::default()
    }))
    .unwrap();
    // Three dead letters as `oncely consume` leaves them: two failed on a 503, one on a 400.
    for (n, error) in [(1, "HTTP 503"), (2, "HTTP 400"), (3, "HTTP 503")] {
        let mut headers = HeaderMap::new();
        headers.insert("Event-Id", format!("e-{n}").as_str());
        headers.insert(MESSAGE_ID_HEADER, format!("m-{n}").as_str());
        headers.insert(ERROR_HEADER, error);
        headers.insert(ATTEMPTS_HEADER, "5");
        headers.insert(DEAD_LETTER_ID_HEADER, format!("dl-{n}").as_str());
        let payload = format!(r#"{{"order":{n}}}"#).into_bytes().into();
        rt.block_on(async {
            context
                .publish_with_headers(fresh.dead_letter_subject.clone(), headers, payload)
                .await
                .unwrap()
                .await
                .unwrap()
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{server}/{}/redrive", fresh.dead_letter_stream);
    let to = format!("{server}/{}", fresh.subject);
    let from_to = ["--from", from.as_str(), "--to", to.as_str()];

    let dry = redrive(dir.path(), &[&from_to[..], &["--dry-run"]].concat());
    assert_eq!(
        summary(&dry, 0),
        "read 3, would redrive 3, already redriven (would ack) 0, filtered out 0, uncertain 0, in progress 0, failed 0"
    );
    assert!(rt.block_on(stored(&context, &fresh.stream)).is_empty());

    let filter = "contains(headers.\"oncely-error\", '503')";
    let some = redrive(
        dir.path(),
        &[&from_to[..], &["--filter", filter, "--keep-history"]].concat(),
    );
    assert_eq!(
        summary(&some, 0),
        "read 3, redriven 2, already redriven 0, filtered out 1, uncertain 0, in progress 0, failed 0"
    );
    let back = rt.block_on(stored(&context, &fresh.stream));
    assert_eq!(back.len(), 2);
    for message in &back {
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let n = header("Event-Id").unwrap()[2..].to_owned();
        assert!(n == "1" || n == "3", "{n}");
        assert_eq!(
            message.payload.as_ref(),
            format!(r#"{{"order":{n}}}"#).as_bytes()
        );
        assert_eq!(
            header(MESSAGE_ID_HEADER),
            Some(format!("m-{n}")),
            "its id kept"
        );
        assert_eq!(header("Nats-Msg-Id"), Some(format!("redrive:dl-{n}")));
        assert_eq!(header(ERROR_HEADER), None);
        assert_eq!(header("Oncely-Previous-Error").as_deref(), Some("HTTP 503"));
        assert_eq!(header(REDRIVES_HEADER).as_deref(), Some("1"));
    }

    // The rest; those moved before are not read again (acked), nor moved twice.
    let rest = redrive(dir.path(), &from_to);
    assert_eq!(
        summary(&rest, 0),
        "read 1, redriven 1, already redriven 0, filtered out 0, uncertain 0, in progress 0, failed 0"
    );
    let back = rt.block_on(stored(&context, &fresh.stream));
    assert_eq!(back.len(), 3);
    let last = back.last().unwrap().headers.clone();
    assert_eq!(last.get("Event-Id").unwrap().as_str(), "e-2");
    assert!(
        last.get("Oncely-Previous-Error").is_none(),
        "history dropped"
    );
    let none = redrive(dir.path(), &from_to);
    assert!(summary(&none, 0).starts_with("read 0, redriven 0,"));

    // A filter that does not parse is a usage error, before anything is read.
    let bad = redrive(
        dir.path(),
        &[&from_to[..], &["--filter", "headers.["]].concat(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--filter"));

    rt.block_on(async {
        for name in [&fresh.stream, &fresh.dead_letter_stream] {
            context.delete_stream(name).await.ok();
        }
    });
}

/// Dead letters a RabbitMQ dead-letter exchange left (no `Oncely-Dead-Letter-Id`, and a queue
/// keeps no id of its own): left, with the reason, until the redrive is told their key.
#[test]
fn rabbitmq_dead_letters_oncely_did_not_make_go_back_by_the_key_named() {
    let rt = runtime();
    let rabbit = rt.block_on(Rabbit::new());
    rt.block_on(async {
        for n in 1..=2 {
            let payload = format!(r#"{{"order":{n}}}"#);
            rabbit
                .publish_to(&rabbit.dlq, &format!("x-{n}"), payload.as_bytes())
                .await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let from = format!("{}/{}", amqp_server(), rabbit.dlq);
    let to = format!("{}/{}", amqp_server(), rabbit.queue);
    let from_to = ["--from", from.as_str(), "--to", to.as_str()];

    let unknown = redrive(dir.path(), &from_to);
    assert_eq!(
        summary(&unknown, 1),
        "read 2, redriven 0, already redriven 0, filtered out 0, uncertain 0, in progress 0, failed 2"
    );
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("--key message-id"), "{stderr}");

    let by_id = redrive(
        dir.path(),
        &[&from_to[..], &["--key", "message-id"]].concat(),
    );
    assert_eq!(
        summary(&by_id, 0),
        "read 2, redriven 2, already redriven 0, filtered out 0, uncertain 0, in progress 0, failed 0"
    );
    let mut back = rt.block_on(rabbit.take(&rabbit.queue));
    back.sort_by(|a, b| a.message_id().cmp(&b.message_id()));
    let ids: Vec<_> = back.iter().map(|m| m.message_id()).collect();
    assert_eq!(ids, [Some("x-1"), Some("x-2")]);
    assert!(back.iter().all(|m| m.header(REDRIVES_HEADER) == Some("1")));
    assert!(
        rt.block_on(rabbit.dead_letters()).is_empty(),
        "acked once moved"
    );
}
