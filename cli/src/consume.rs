//! `oncely consume`: an idempotent consumer for any language, as a process.
//!
//! The broker runner (`oncely::Consumer`) takes deliveries from `--from`; each message's key is
//! claimed in the store through `OncelyHandler`, and only a new key is POSTed to `--deliver`.
//! A 2xx answer completes the claim (its body, capped, is the stored outcome) and the message
//! is acked; anything else is a failed attempt, retried with backoff, then dead-lettered. A
//! failure after which the handler may still have run (no answer within `--timeout`, the
//! connection lost once the request was sent) keeps the key held until its lease ends, so the
//! retries find it in progress and no second POST goes out before then. A duplicate is acked
//! without a request. SIGINT or SIGTERM stops taking messages, lets the deliveries in flight
//! finish, and prints the summary.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use oncely::broker::{self, AnySource};
use oncely::consumer::{
    Handled, Handler, HandlerError, KeySource, Message, OncelyHandler, RetryPolicy,
};
use oncely::trace::SpanKeys;
use oncely::{
    BrokerKind, Consumer, ConsumerReport, Key, Oncely, PayloadFingerprint, Scope, async_trait,
    duration,
};

use oncely_http::gateway::ops::{OpsServer, store_ready};

use crate::deliver::{self, Deliverer};
use crate::stop::Stop;

/// Arguments of `oncely consume`.
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// The broker and what to consume:
    /// nats://[USER:PASS@]HOST[:PORT]/STREAM/CONSUMER[?OPTIONS] (a durable JetStream pull
    /// consumer, created if missing), amqp://[USER:PASS@]HOST[:PORT][/VHOST]/QUEUE[?OPTIONS]
    /// (an existing RabbitMQ queue; VHOST %2f is the default vhost),
    /// kafka://HOST[:PORT][,HOST...]/TOPIC?group=NAME[&OPTIONS] (an existing topic, read by a
    /// consumer group, in order per key; &order=partition for per partition) or
    /// sqs://HOST[:PORT]/QUEUE[?OPTIONS] (an existing SQS queue over HTTPS;
    /// sqs+http://HOST:PORT/QUEUE for an emulator).
    #[arg(long, value_name = "URL")]
    from: String,

    /// Where each message's key comes from: /field or /a,/b (JSON payload fields),
    /// header:NAME (a message header), message-id (the broker's message id), payload-hash
    /// (SHA-256 of the payload), or a JMESPath expression over the JSON payload
    /// (detail.orderId; powertools_json(Message).orderId for JSON inside a string field). A
    /// message without a key is dead-lettered at once.
    #[arg(long, value_name = "SPEC", value_parser = parse_key_source)]
    key: KeySource,

    /// What of the payload must match when a key comes again: json (its canonical JSON: key
    /// order and spacing do not count), bytes, fields:SELECTOR (only those fields, by JSON
    /// pointers or JMESPath), ignore:/POINTER,... (all but those fields, e.g. a timestamp that
    /// changes between resends), or none. A key that comes with a different payload is
    /// dead-lettered as a conflict, not taken for a duplicate.
    #[arg(long, value_name = "SPEC", default_value = "json", value_parser = parse_fingerprint)]
    fingerprint: FingerprintArg,

    /// The handler: each new message is POSTed to this http:// or https:// URL (https verified
    /// against the system's roots; SSL_CERT_FILE replaces them).
    #[arg(long, value_name = "URL")]
    deliver: String,

    /// Send the --deliver handler, as its Idempotency-Key, the key derived for STEP from the
    /// scope and the message's key (a UUID, the same on every delivery of that key) instead of
    /// the key itself: for a handler that deduplicates by Idempotency-Key among other callers'
    /// keys (another consumer's scope, an HTTP client's).
    #[arg(long, value_name = "STEP")]
    forward_key: Option<String>,

    /// Namespace of the keys in the store [default: the queue (RabbitMQ, SQS), STREAM/CONSUMER
    /// (NATS) or TOPIC/GROUP (Kafka)]. Give two consumers of one flow the same scope to
    /// deduplicate between them.
    #[arg(long, value_name = "NAME", value_parser = crate::parse_scope)]
    scope: Option<Scope>,

    /// Where messages that failed every attempt go, with their error in the Oncely-Error
    /// header: a RabbitMQ queue (declared if missing), a NATS subject, a Kafka topic (created
    /// if missing) or an SQS queue (which must exist) [default: QUEUE.dlq; STREAM.dlq kept in
    /// the stream STREAM_DLQ; TOPIC.dlq; QUEUE-dlq, NAME-dlq.fifo for NAME.fifo]. Same as
    /// dlq=NAME in the --from URL.
    #[arg(long, value_name = "NAME")]
    dlq: Option<String>,

    /// Messages handled at once. Order per key holds only at 1, except on Kafka, which keeps
    /// each key's messages in order at any concurrency.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,

    /// Attempts per message before it is dead-lettered; waits between attempts double from
    /// 100ms up to 10s.
    #[arg(long, value_name = "N", default_value_t = RetryPolicy::default().max_attempts,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    max_attempts: u32,

    /// How long a done key is remembered: a redelivery within it is a duplicate (500ms, 90s,
    /// 15m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = duration::parse)]
    ttl: Duration,

    /// How long one POST may take, answer included, before the attempt counts as failed. A
    /// handler that got the request but did not answer in time may still be running: its key
    /// stays held, and the message is POSTed again only once the key's lease (--timeout + 30s)
    /// ends.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    timeout: Duration,

    #[command(flatten)]
    purge: crate::purging::PurgeArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics (deliveries by how they were settled),
    /// with /healthz and /readyz (503 while the store cannot be reached).
    #[arg(long, env = "ONCELY_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// How much longer than `--timeout` a claim's lease is. The lease is renewed every third while
/// the POST runs, so it is not what bounds the POST; it bounds how long a key stays held once
/// nobody renews it: after a POST whose outcome is unknown (no answer within `--timeout`, the
/// connection lost after sending), for two thirds of the lease to all of it, so a handler
/// that is only slow has this margin to finish before a redelivery POSTs again; and after
/// this process died mid-POST.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// clap value parser for `--key`: the runner's key sources, with every form in the error.
fn parse_key_source(spec: &str) -> Result<KeySource, String> {
    spec.parse()
        .map_err(|e| format!("{e}; the key can also be header:NAME, message-id or payload-hash"))
}

/// `--fingerprint`: a [`PayloadFingerprint`], or none.
#[derive(Clone, Debug)]
struct FingerprintArg(Option<PayloadFingerprint>);

fn parse_fingerprint(spec: &str) -> Result<FingerprintArg, String> {
    match spec.trim() {
        "none" => Ok(FingerprintArg(None)),
        spec => spec
            .parse()
            .map(|spec| FingerprintArg(Some(spec)))
            .map_err(|e| format!("{e}, or none")),
    }
}

/// Runs `oncely consume` until SIGINT or SIGTERM; `store` is the global `--store` URL.
pub async fn run(store: &str, span_keys: SpanKeys, args: ConsumeArgs) -> Result<ExitCode> {
    if args.timeout.is_zero() {
        bail!("--timeout must be longer than 0s");
    }
    let url = deliver::parse_url(&args.deliver)?;
    let from = with_dlq(&args.from, args.dlq.as_deref())?;
    // Signals first: a signal during the setup must not kill the process half-way.
    let mut stop = Stop::install()?;

    let source = broker::connect(&from).await?;
    let oncely = Oncely::new(oncely::connect(store).await?)
        .with_retention(args.ttl)
        .with_lease(args.timeout.saturating_add(LEASE_MARGIN))
        .with_span_keys(span_keys);
    let _purging = args.purge.start(&oncely);
    let ready = oncely.clone();
    let scope = match args.scope {
        Some(scope) => scope,
        None => default_scope(&source)?,
    };
    eprintln!(
        "consuming {} into {} (scope {scope}); stop with Ctrl-C or SIGTERM",
        oncely::backend::url::redact_password(&args.from),
        oncely::backend::url::redact_password(&url.to_string()),
    );

    let deliverer = Deliverer::new(url, args.timeout)?;
    let forwarded = args.forward_key.map(|step| (scope.clone(), step));
    let work = move |key: Key, message: Message| {
        let deliverer = deliverer.clone();
        let sent = match &forwarded {
            Some((scope, step)) => key.derive(scope, step),
            None => key,
        };
        async move {
            let request = deliverer.request(&sent, &message)?;
            deliverer.send(request).await
        }
    };
    let handler = OncelyHandler::new(oncely, scope, work);
    let handler = KeysAsHeaders(match args.fingerprint.0 {
        Some(fingerprint) => handler.fingerprint(fingerprint),
        None => handler.without_fingerprint(),
    });
    let retry = RetryPolicy::default().with_max_attempts(args.max_attempts);
    let consumer = Consumer::new(handler, args.key)
        .span_keys(span_keys)
        .concurrency(args.concurrency as usize)
        .retry(retry);

    if let Some(addr) = args.metrics_addr {
        let listener = crate::ops::listen(addr).await?;
        let metrics = crate::ops::recorder();
        let ops = OpsServer::new(move || metrics.render()).ready_when(move || {
            let oncely = ready.clone();
            async move { store_ready(&oncely).await }
        });
        tokio::spawn(ops.serve(listener));
    }

    let stopped = Arc::new(AtomicBool::new(false));
    let shutdown = {
        let stopped = stopped.clone();
        async move {
            stop.first().await;
            stopped.store(true, Ordering::SeqCst);
            eprintln!(
                "stopping: finishing the deliveries in flight (a second signal stops at once)"
            );
            tokio::spawn(async move {
                stop.second().await;
                // Claims in flight are left to their lease; their messages come back.
                eprintln!("error: stopped at once; unfinished messages will be redelivered");
                std::process::exit(130);
            });
        }
    };
    let ran = consumer.run(source, shutdown).await;
    eprintln!("{}", summary(&consumer.report()));
    match ran {
        Err(error) => Err(error).context("consuming stopped"),
        Ok(_) if !stopped.load(Ordering::SeqCst) => {
            bail!("the broker ended the subscription (was the stream, consumer or queue deleted?)")
        }
        Ok(_) => Ok(ExitCode::SUCCESS),
    }
}

/// `--from` with `dlq=NAME` added to its query when `--dlq` is given.
pub(crate) fn with_dlq(from: &str, dlq: Option<&str>) -> Result<String> {
    let Some(dlq) = dlq else {
        return Ok(from.to_owned());
    };
    let (base, query) = from.split_once('?').unwrap_or((from, ""));
    if query.split('&').any(|pair| pair.starts_with("dlq=")) {
        bail!(
            "both --dlq and dlq= in the --from URL name the dead-letter destination: give it once"
        );
    }
    if dlq.is_empty() {
        bail!("--dlq is empty: name a queue (RabbitMQ, SQS), a subject (NATS) or a topic (Kafka)");
    }
    // RabbitMQ's URL percent-decodes the name; a NATS subject, Kafka topic or SQS queue name
    // has nothing to encode.
    let dlq = if BrokerKind::from_url(from) == Ok(BrokerKind::RabbitMq) {
        encode(dlq)
    } else {
        dlq.to_owned()
    };
    Ok(if query.is_empty() {
        format!("{base}?dlq={dlq}")
    } else {
        format!("{base}?{query}&dlq={dlq}")
    })
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The scope when `--scope` is not given: what is consumed, so two flows never share keys.
fn default_scope(source: &AnySource) -> Result<Scope> {
    let name = match source {
        AnySource::Nats(source) => format!("{}/{}", source.stream(), source.consumer_name()),
        AnySource::Amqp(source) => source.queue().to_owned(),
        AnySource::Kafka(source) => {
            let options = source.options();
            format!("{}/{}", options.topic, options.group)
        }
        AnySource::Sqs(source) => source.options().queue.clone(),
        #[allow(unreachable_patterns)]
        _ => bail!("this broker has no default scope: give --scope"),
    };
    Scope::new(name).context("the default scope (give --scope)")
}

/// The summary line on stderr.
fn summary(report: &ConsumerReport) -> String {
    let ConsumerReport {
        done,
        duplicates,
        stale,
        redelivered,
        dead_lettered,
        unsettled,
    } = *report;
    let consumed = done + duplicates + stale + redelivered + dead_lettered + unsettled;
    let mut line = format!(
        "consumed {consumed}: done {done}, duplicates {duplicates}, redelivered {redelivered}, \
         dead-lettered {dead_lettered}"
    );
    if stale > 0 {
        line.push_str(&format!(", stale {stale}"));
    }
    if unsettled > 0 {
        line.push_str(&format!(", unsettled {unsettled}"));
    }
    line
}

/// Dead-letters at once a message whose key cannot travel as an HTTP header (no attempt can
/// ever succeed); hands the rest to the claiming handler.
struct KeysAsHeaders<H>(H);

#[async_trait]
impl<H: Handler> Handler for KeysAsHeaders<H> {
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        if key
            .as_str()
            .bytes()
            .any(|b| b.is_ascii_control() && b != b'\t')
        {
            return Err(HandlerError::rejected(format!(
                "key `{}` cannot be sent as an HTTP header (it has control characters)",
                key.as_str().escape_default()
            )));
        }
        self.0.handle(key, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_goes_into_the_query_once() {
        assert_eq!(with_dlq("amqp://h/q", None).unwrap(), "amqp://h/q");
        assert_eq!(
            with_dlq("amqp://h/q", Some("q failed")).unwrap(),
            "amqp://h/q?dlq=q%20failed"
        );
        assert_eq!(
            with_dlq("amqp://h/q?prefetch=4", Some("q.dlq")).unwrap(),
            "amqp://h/q?prefetch=4&dlq=q.dlq"
        );
        assert_eq!(
            with_dlq("nats://h/S/C?", Some("s.failed")).unwrap(),
            "nats://h/S/C?dlq=s.failed"
        );
        let twice = with_dlq("nats://h/S/C?dlq=a", Some("b")).unwrap_err();
        assert!(twice.to_string().contains("give it once"), "{twice}");
    }

    #[test]
    fn the_summary_names_every_count() {
        let report = ConsumerReport {
            done: 3,
            duplicates: 2,
            stale: 0,
            redelivered: 1,
            dead_lettered: 1,
            unsettled: 0,
        };
        assert_eq!(
            summary(&report),
            "consumed 7: done 3, duplicates 2, redelivered 1, dead-lettered 1"
        );
    }

    #[test]
    fn key_specs_list_every_form_when_wrong() {
        assert_eq!(
            parse_key_source("header:Event-Id"),
            Ok(KeySource::Header("Event-Id".into()))
        );
        let error = parse_key_source("event id").unwrap_err();
        assert!(
            error.contains("header:NAME") && error.contains("JMESPath"),
            "{error}"
        );
        assert_eq!(
            parse_key_source("eventId").map(|k| k.to_string()),
            Ok("eventId".to_owned()),
            "a JMESPath expression"
        );
    }
}
