//! `oncely redrive`: move dead letters back to where they came from, each at most once.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use oncely::consumer::KeySource;
use oncely::redrive::{History, Redrive};
use oncely::trace::SpanKeys;
use oncely::{BrokerKind, Oncely, Scope, Selector, broker, duration, relay};

/// Arguments of `oncely redrive`.
#[derive(Args, Debug)]
pub struct RedriveArgs {
    /// The dead letters, as `oncely consume --from` takes a source: a NATS stream and a durable
    /// consumer of it (nats://HOST/ORDERS_DLQ/redrive), a RabbitMQ queue
    /// (amqp://HOST/%2f/orders.dlq), a Kafka topic and a group
    /// (kafka://HOST/orders.dlq?group=redrive) or an SQS queue (sqs://HOST/orders-dlq). The
    /// redrive dead-letters nothing itself (dlq=none is added).
    #[arg(long, value_name = "URL")]
    from: String,

    /// Where they go back to, as `oncely relay --to` takes it: nats://HOST/SUBJECT,
    /// amqp://HOST/%2f/QUEUE, kafka://HOST/TOPIC, sqs://HOST/QUEUE.
    #[arg(long, value_name = "URL")]
    to: String,

    /// Move only the dead letters this JMESPath expression (or JSON pointer list) holds for,
    /// over {"headers": {NAME: VALUE}, "payload": JSON or null}, header names in lower case:
    /// `contains(headers."oncely-error", '503')`, `payload.type == 'payment'`. The rest stay.
    #[arg(long, value_name = "EXPR", value_parser = parse_filter)]
    filter: Option<Selector>,

    /// Tell dead letters apart by this key rather than their Oncely-Dead-Letter-Id header (or,
    /// without one, the broker's id of them: a stream sequence, a Kafka offset, an SQS
    /// MessageId); for RabbitMQ dead letters oncely did not make. Same forms as `consume
    /// --key`.
    #[arg(long, value_name = "SPEC", value_parser = parse_key_source)]
    key: Option<KeySource>,

    /// Send the failure's headers back too, as Oncely-Previous-Error, -Attempts, -Source, -Key
    /// and -Dead-Letter-Id, rather than dropping them.
    #[arg(long)]
    keep_history: bool,

    /// Publish, ack and claim nothing: count what a run would do.
    #[arg(long)]
    dry_run: bool,

    /// End once the dead letters have had nothing for this long (a Kafka group takes a few
    /// seconds to join: give it 15s there).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse)]
    idle: Duration,

    /// Namespace of the redriven dead letters' records in the store.
    #[arg(long, value_name = "NAME", default_value = "oncely-redrive",
          value_parser = crate::parse_scope)]
    scope: Scope,

    /// How long a claim holds a dead letter while it is published: a run killed meanwhile
    /// leaves it held this long, then it is uncertain.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    lease: Duration,

    /// How long a redriven dead letter's record is kept (so that a dead letter whose ack was
    /// lost is not moved twice).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = duration::parse)]
    retention: Duration,
}

/// A run holds what it leaves until its end, and a RabbitMQ channel delivers no more than its
/// prefetch unacked: raised to AMQP's most, unless the URL sets it, so that letters a filter
/// passes over do not stop the run short of the rest.
fn with_room_to_hold(from: String) -> String {
    let (_, query) = from.split_once('?').unwrap_or((&from, ""));
    if BrokerKind::from_url(&from) != Ok(BrokerKind::RabbitMq)
        || query.split('&').any(|pair| pair.starts_with("prefetch="))
    {
        return from;
    }
    format!("{from}&prefetch={}", u16::MAX)
}

fn parse_filter(spec: &str) -> Result<Selector, String> {
    Selector::parse(spec).map_err(|e| e.to_string())
}

fn parse_key_source(spec: &str) -> Result<KeySource, String> {
    spec.parse().map_err(|e| format!("{e}"))
}

/// Runs one redrive, then prints `redrive: read N, redriven N, ...` on stderr. Exits 0 when
/// every dead letter read was moved (or had been), 1 when some were left (filtered out ones
/// aside) or the run stopped on a failure.
pub async fn run(store: &str, span_keys: SpanKeys, args: RedriveArgs) -> Result<ExitCode> {
    let from = crate::consume::with_dlq(&args.from, Some("none"))
        .context("--from names the dead letters: it takes no dlq=")?;
    let from = with_room_to_hold(from);
    let publisher = relay::connect_publisher(&args.to)
        .await
        .context("connecting to --to")?;
    let source = broker::connect(&from)
        .await
        .context("opening the dead letters (--from)")?;
    let oncely = Oncely::new(oncely::connect(store).await?)
        .with_lease(args.lease)
        .with_retention(args.retention)
        .with_span_keys(span_keys);
    let mut redrive = Redrive::new(oncely, args.scope, publisher)
        .history(match args.keep_history {
            true => History::Keep,
            false => History::Drop,
        })
        .dry_run(args.dry_run)
        .idle(args.idle);
    if let Some(filter) = args.filter {
        redrive = redrive.filter(filter);
    }
    if let Some(key) = args.key {
        redrive = redrive.key(key);
    }
    match redrive.run(source).await {
        Ok(report) => {
            eprintln!("redrive: {report}");
            let left = report.uncertain + report.in_progress + report.failed;
            Ok(if left == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(stopped) => {
            eprintln!("redrive: {}", stopped.report);
            Err(anyhow::Error::new(stopped.reason).context("redrive stopped"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rabbitmq_redrive_holds_as_many_as_amqp_lets_it() {
        assert_eq!(
            with_room_to_hold("amqp://h/%2f/q.dlq?dlq=none".into()),
            "amqp://h/%2f/q.dlq?dlq=none&prefetch=65535"
        );
        let set = "amqp://h/%2f/q.dlq?dlq=none&prefetch=10";
        assert_eq!(with_room_to_hold(set.into()), set);
        let nats = "nats://h/S_DLQ/redrive?dlq=none";
        assert_eq!(with_room_to_hold(nats.into()), nats);
    }
}
