//! `oncely bench`: the benchmark (README, Benchmarks), oncely (single calls, and its batch API)
//! against the naive pattern and the store's own batched limit, on fresh stores of the kind `--store` names
//! (never on the store itself: on PostgreSQL and MySQL, fresh schemas or databases on the server
//! it names, dropped after).
//!
//! `--broker nats://HOST[:PORT]`, `--broker amqp://[USER:PASS@]HOST[:PORT]`,
//! `--broker kafka://HOST[:PORT]` or `--broker sqs[+http]://HOST[:PORT]` measures instead
//! messages per second through consume + claim + effect + ack on that broker: oncely's consumer
//! runner against the naive one-message-at-a-time consumer ([`oncely_bench::broker`]).
//!
//! `--gateway` measures what `oncely serve`'s gateway (`oncely_http::gateway`) adds to a request
//! against calling the upstream directly ([`oncely_bench::gateway`]).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use oncely::BrokerKind;
use oncely_bench::{BenchConfig, Progress, StoreKind, format_table, store_kind};

/// Arguments of `oncely bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Events through oncely, through the batched limit and through oncely's batch API
    /// [default: 1000000; with --broker: 20000 messages, on SQS 1000].
    #[arg(long, value_name = "N")]
    events: Option<usize>,

    /// Share of events that redeliver an earlier event.
    #[arg(long, value_name = "RATIO", default_value_t = 0.1)]
    duplicates: f64,

    /// Concurrent claimants driving oncely; the SQLite store commits what they queue together
    /// [default: 1024; with --broker: 64 deliveries in flight; with --gateway: 16 connections].
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,

    /// Events through the naive pattern (one synced transaction each, so it is sampled)
    /// [default: 5000; with an SQS --broker: 500].
    #[arg(long, value_name = "N")]
    naive_events: Option<usize>,

    /// Distinct keys stored in every contender's store before measuring.
    #[arg(long, value_name = "N", default_value_t = 0)]
    preload: usize,

    /// SQLite page size of the fresh files, the same for every contender.
    #[arg(long, value_name = "BYTES", default_value_t = oncely_bench::DEFAULT_PAGE_SIZE)]
    page_size: u32,

    /// Where the fresh SQLite files go.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Seed of the generated workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Instead: fill the (empty) --store with N expired records and measure claim latency while
    /// they are purged, against claims alone. Runs on the --store given.
    #[arg(long, value_name = "N")]
    purge: Option<usize>,

    /// With --purge: concurrent claimants.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "purge")]
    claimers: usize,

    /// With --purge: records per purge batch.
    #[arg(long, value_name = "N", default_value_t = 10_000, requires = "purge")]
    purge_batch: usize,

    /// Instead: messages/s through consume + claim + effect + ack on a broker, oncely's
    /// consumer against the naive per-message consumer. nats://HOST[:PORT] (JetStream),
    /// amqp://[USER:PASS@]HOST[:PORT][/VHOST] (RabbitMQ), kafka://HOST[:PORT] (Kafka) or
    /// sqs://HOST[:PORT] (SQS; sqs+http:// for an emulator such as moto).
    ///
    /// --events messages (default 20000; SQS: 1000, naive 500), --duplicates of them re-publishes
    /// of an earlier key, payload {"eventId":"<uuid>"}, published and confirmed into a fresh
    /// stream, queue or topic (Kafka: 8 partitions, the event key as the Kafka key; SQS: a standard
    /// queue and its -dlq, filled by SendMessageBatch) per contender (deleted after) before the
    /// clock starts. oncely: oncely::Consumer with an OncelyHandler (key /eventId) on a fresh store
    /// of the kind --store names (sqlite:, postgres://, mysql://), the effect an in-process
    /// counter, --concurrency deliveries in flight (default 64; NATS batch=N, RabbitMQ prefetch=2N;
    /// Kafka: one per key at a time; SQS: receives of up to 10 ahead, deletes batched by
    /// 10). naive: one message at a time, SELECT EXISTS then INSERT in its own transaction on the
    /// same kind of store, the effect, then the ack (Kafka: a synchronous offset commit), on the
    /// first --naive-events messages. raw: the same consumer and concurrency as oncely with a
    /// handler that answers done at once, no store and no dedup (the broker's limit here).
    /// Reports messages/s and p50/p99 from delivery to confirmed ack; fails unless every message
    /// is acked and settled at the broker (Kafka: committed to the end of every partition), none
    /// dead-lettered, and the effects equal the distinct keys (raw: the messages).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "purge",
        verbatim_doc_comment
    )]
    broker: Option<String>,

    /// Instead: what `oncely serve` adds to a request, against calling the upstream directly.
    ///
    /// An upstream in this process answers each POST with 200 and a 200-byte JSON charge; the
    /// gateway runs in this process too, with oncely serve's own code and defaults, on a fresh
    /// store of the kind --store names for each contender (removed after). --concurrency
    /// keep-alive connections (default 16), opened before the clock starts, send --requests
    /// POSTs per contender: direct to the upstream; through the gateway without an
    /// Idempotency-Key (pass-through); with a fresh key each (first execution); with keys
    /// already answered (replay, after an untimed first pass). Reports requests/s, p50/p99 and
    /// each one's p50/p99 minus direct's; fails unless every answer is the upstream's 200, each
    /// request but the replays executed upstream once, and every replay (only they) replayed.
    #[arg(
        long,
        conflicts_with_all = ["purge", "broker"],
        verbatim_doc_comment
    )]
    gateway: bool,

    /// With --gateway: requests per contender.
    #[arg(long, value_name = "N", default_value_t = oncely_bench::gateway::DEFAULT_REQUESTS, requires = "gateway")]
    requests: usize,

    /// With --broker: oncely's lease. A re-publish that arrives while its original is in
    /// flight is given back and comes again when the lease runs out.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = oncely::duration::parse, requires = "broker")]
    lease: std::time::Duration,
}

/// Runs the benchmark for the store kind of `store_url` and prints the table.
pub fn run(
    store_url: &str,
    args: BenchArgs,
    out: &mut impl Write,
) -> Result<std::process::ExitCode> {
    if let Some(records) = args.purge {
        let config = oncely_bench::purge::PurgeConfig {
            records,
            claimers: args.claimers.max(1),
            phase: crate::bench_purge::DEFAULT_PHASE,
            batch: args.purge_batch.max(1),
            seed: args.seed,
        };
        return crate::bench_purge::run(store_url, config, &Bar::new(), out);
    }
    if !(0.0..1.0).contains(&args.duplicates) {
        bail!(
            "--duplicates must be at least 0 and below 1, not {}",
            args.duplicates
        );
    }
    if args.gateway {
        let Some(store) = store_kind(store_url) else {
            bail!(
                "oncely bench --gateway measures memory:, sqlite:, postgres://, mysql:// and \
                 redis:// stores; `{}` is none of them",
                oncely::backend::url::redact_password(store_url)
            );
        };
        let config = oncely_bench::gateway::GatewayConfig {
            store,
            store_url: store_url.to_owned(),
            dir: args
                .dir
                .unwrap_or_else(|| std::env::temp_dir().join("oncely-bench")),
            requests: args.requests.max(1),
            concurrency: args
                .concurrency
                .unwrap_or(oncely_bench::gateway::DEFAULT_CONCURRENCY)
                .max(1),
            seed: args.seed,
        };
        return run_gateway(config, out);
    }
    if let Some(broker) = args.broker.clone() {
        return run_broker(store_url, broker, args, out);
    }
    let Some(store) = store_kind(store_url) else {
        bail!(
            "oncely bench measures memory:, sqlite:, postgres://, mysql:// and redis:// stores \
             (a Redis Cluster is not benchmarked); `{store_url}` is none of them"
        );
    };
    let config = BenchConfig {
        store,
        url: store_url.to_owned(),
        dir: args
            .dir
            .unwrap_or_else(|| std::env::temp_dir().join("oncely-bench")),
        events: args.events.unwrap_or(1_000_000),
        duplicate_ratio: args.duplicates,
        concurrency: args.concurrency.unwrap_or(1024),
        naive_events: args.naive_events.unwrap_or(5_000),
        preload: args.preload,
        seed: args.seed,
        page_size: args.page_size,
    };
    let progress = Bar::new();
    let results = oncely_bench::run(&config, &progress).context("benchmark")?;
    writeln!(
        out,
        "{} events, {:.0} % duplicates, 36-char UUID keys, store {}{}",
        config.events,
        config.duplicate_ratio * 100.0,
        match store {
            StoreKind::Memory => format!(
                "memory (one core; oncely batch {} callers x {} events per claim_many)",
                oncely_bench::BATCH_CALLERS,
                oncely_bench::baseline::LIMIT_BATCH,
            ),
            StoreKind::Sqlite => format!(
                "sqlite (WAL, synchronous=FULL, page_size={}, oncely concurrency {}, \
                 oncely batch {} callers x {} events per claim_many)",
                config.page_size,
                config.concurrency,
                oncely_bench::BATCH_CALLERS,
                oncely_bench::baseline::LIMIT_BATCH,
            ),
            StoreKind::Redis => format!(
                "redis (fresh key prefixes on {}; oncely concurrency {}, naive {} connections \
                 one SET NX at a time, powertools {} connections one SET NX PX then SET PX \
                 (or GET) at a time, limit {} connections x {} SET NX pipelined, \
                 oncely batch {} callers x {} events per claim_many)",
                oncely::backend::url::redact_password(store_url),
                config.concurrency,
                oncely_bench::baseline::NAIVE_CONNECTIONS,
                oncely_bench::baseline::NAIVE_CONNECTIONS,
                oncely_bench::baseline::LIMIT_CONNECTIONS,
                oncely_bench::baseline::LIMIT_BATCH,
                oncely_bench::BATCH_CALLERS,
                oncely_bench::baseline::LIMIT_BATCH,
            ),
            StoreKind::Postgres | StoreKind::Mysql => format!(
                "{} (fresh schemas on {}; oncely concurrency {}, naive {} connections, \
                 limit {} connections x {} keys per transaction, \
                 oncely batch {} callers x {} events per claim_many)",
                if store == StoreKind::Postgres {
                    "postgres"
                } else {
                    "mysql"
                },
                oncely::backend::url::redact_password(store_url),
                config.concurrency,
                oncely_bench::baseline::NAIVE_CONNECTIONS,
                oncely_bench::baseline::LIMIT_CONNECTIONS,
                oncely_bench::baseline::LIMIT_BATCH,
                oncely_bench::BATCH_CALLERS,
                oncely_bench::baseline::LIMIT_BATCH,
            ),
        },
        if config.preload > 0 {
            format!(", {} keys preloaded", config.preload)
        } else {
            String::new()
        },
    )?;
    write!(out, "{}", format_table(&results))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `oncely bench --gateway`: the gateway benchmark on fresh stores of the kind
/// `config.store_url` names, and its table.
fn run_gateway(
    config: oncely_bench::gateway::GatewayConfig,
    out: &mut impl Write,
) -> Result<std::process::ExitCode> {
    let results = oncely_bench::gateway::run(&config, &Bar::new()).context("gateway benchmark")?;
    let url = oncely::backend::url::redact_password(&config.store_url);
    let stores = match config.store {
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Sqlite => format!("sqlite (new files in {})", config.dir.display()),
        StoreKind::Postgres => format!("postgres (fresh schemas on {url})"),
        StoreKind::Mysql => format!("mysql (fresh databases on {url})"),
        StoreKind::Redis => format!("redis (fresh key prefixes on {url})"),
    };
    writeln!(
        out,
        "{} POSTs per contender from {} keep-alive connections, {}-byte JSON answers from an \
         upstream in this process; gateway: oncely serve's defaults, store {stores}, one per \
         contender",
        config.requests,
        config.concurrency,
        oncely_bench::gateway::RESPONSE_BYTES,
    )?;
    write!(out, "{}", oncely_bench::gateway::format_table(&results))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `oncely bench --broker URL`: oncely's consumer against the naive one and the raw one, on
/// fresh streams or queues of that broker and fresh stores of the kind `store_url` names.
fn run_broker(
    store_url: &str,
    broker: String,
    args: BenchArgs,
    out: &mut impl Write,
) -> Result<std::process::ExitCode> {
    let store = match store_kind(store_url) {
        Some(kind @ (StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql)) => kind,
        _ => bail!(
            "oncely bench --broker measures sqlite:, postgres:// and mysql:// stores; \
             `{}` is none of them",
            oncely::backend::url::redact_password(store_url)
        ),
    };
    let broker_kind = BrokerKind::from_url(&broker).ok();
    let sqs = broker_kind == Some(BrokerKind::Sqs);
    let config = oncely_bench::broker::BrokerConfig {
        events: args
            .events
            .unwrap_or_else(|| oncely_bench::broker::default_events(&broker)),
        naive_events: args.naive_events.unwrap_or(if sqs {
            oncely_bench::broker::DEFAULT_SQS_NAIVE_EVENTS
        } else {
            5_000
        }),
        broker,
        store,
        store_url: store_url.to_owned(),
        dir: args
            .dir
            .unwrap_or_else(|| std::env::temp_dir().join("oncely-bench")),
        duplicate_ratio: args.duplicates,
        concurrency: args
            .concurrency
            .unwrap_or(oncely_bench::broker::DEFAULT_CONCURRENCY)
            .max(1),
        seed: args.seed,
        page_size: args.page_size,
        lease: args.lease,
    };
    let results = oncely_bench::broker::run(&config, &Bar::new()).context("broker benchmark")?;
    writeln!(
        out,
        "{} messages, {:.0} % re-publishes of an earlier key, payload {{\"eventId\":\"<36-char \
         UUID>\"}}, broker {}, store {}; oncely: {} deliveries in flight{}, lease {:?}, effect \
         an in-process counter; naive: one message at a time, check-then-insert per message",
        config.events,
        config.duplicate_ratio * 100.0,
        oncely::backend::url::redact_password(&config.broker),
        match store {
            StoreKind::Sqlite => format!(
                "sqlite (fresh files, WAL, synchronous=FULL, page_size={})",
                config.page_size
            ),
            _ => format!(
                "{} (fresh namespaces on {})",
                if store == StoreKind::Postgres {
                    "postgres"
                } else {
                    "mysql"
                },
                oncely::backend::url::redact_password(store_url)
            ),
        },
        config.concurrency,
        if broker_kind == Some(BrokerKind::Kafka) {
            format!(
                " (Kafka: one per key at a time, {} partitions)",
                oncely_bench::broker::KAFKA_PARTITIONS
            )
        } else {
            String::new()
        },
        config.lease,
    )?;
    write!(out, "{}", oncely_bench::broker::format_table(&results))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A progress bar on a terminal's stderr; nothing otherwise.
struct Bar(Mutex<Option<ProgressBar>>, bool);

impl Bar {
    fn new() -> Self {
        Bar(Mutex::new(None), std::io::stderr().is_terminal())
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        if !self.1 {
            return;
        }
        let bar = ProgressBar::new(total).with_message(phase.to_owned());
        bar.set_style(
            ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        *self.0.lock().unwrap() = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &*self.0.lock().unwrap() {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.0.lock().unwrap().take() {
            bar.finish_and_clear();
        }
    }
}
