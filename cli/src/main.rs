//! `oncely`: exactly-once effect over at-least-once delivery, from the command line.
//!
//! This file is the clap wiring, the error policy (every failure is one `error: ...` line on
//! stderr and a non-zero exit) and the log: `tracing` events and spans on stderr, filtered by
//! `RUST_LOG` (oncely's warnings and errors by default; `RUST_LOG=oncely=debug` adds the
//! `oncely.claim` / `oncely.complete` / `oncely.release` spans). The commands live in their own
//! modules.

mod bench;
mod bench_purge;
mod config;
mod consume;
mod dedup;
mod deliver;
mod forget;
mod input;
mod inspect;
mod ops;
mod outbox;
mod output;
mod progress;
mod purge;
mod purging;
mod redrive;
mod relay;
mod rfc3339;
mod serve;
mod size;
mod stats;
mod stop;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use oncely::{Key, KeyError, Oncely, Scope};

/// Exactly-once effect over at-least-once delivery.
///
/// oncely records each operation's key in a store, so a redelivered message or a retried
/// request is recognised instead of being handled twice.
#[derive(Parser, Debug)]
#[command(name = "oncely", version)]
struct Cli {
    /// Store URL: sqlite:PATH (embedded, durable), postgres://..., mysql://... (MariaDB too),
    /// redis://... (redis+cluster://... for a Cluster), dynamodb://HOST/TABLE or memory: (this
    /// process only).
    #[arg(
        long,
        global = true,
        env = "ONCELY_STORE",
        // It may hold a password: --help names the variable, never its value.
        hide_env_values = true,
        value_name = "URL",
        default_value = oncely::DEFAULT_STORE_URL
    )]
    store: String,

    /// A TOML file of settings: any flag by its long name, at the top level or under
    /// [serve], [consume]...; a flag given, then its ONCELY_* variable, win over the file.
    #[arg(long, global = true, env = "ONCELY_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// How spans (the log with RUST_LOG, traces over OTLP) name keys: as they are, or hashed
    /// (`sha256:` and 16 hex digits of the key's SHA-256) where keys carry personal data.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "plain",
        value_name = "HOW"
    )]
    span_keys: SpanKeysArg,

    #[command(subcommand)]
    command: Command,
}

/// `--span-keys`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SpanKeysArg {
    Plain,
    Hashed,
}

impl From<SpanKeysArg> for oncely::trace::SpanKeys {
    fn from(arg: SpanKeysArg) -> Self {
        match arg {
            SpanKeysArg::Plain => oncely::trace::SpanKeys::Plain,
            SpanKeysArg::Hashed => oncely::trace::SpanKeys::Hashed,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pass each JSON line of stdin whose key is new to stdout; drop duplicates, across runs too.
    ///
    /// A key is recorded only after its line is written and flushed: if dedup is killed, no line
    /// is lost, and a rerun passes at most the last batch again, once its lease has run out.
    /// Lines that are not JSON or have no usable key are reported as `line N: reason` on stderr,
    /// never dropped silently. Ends with `read N, passed N, duplicates N, rejected N` on stderr.
    Dedup(dedup::DedupArgs),
    /// POST each message from NATS, RabbitMQ, Kafka or SQS to an HTTP handler, once per key
    ///
    /// An idempotent consumer for a handler in any language. For each message: take its key
    /// (--key) and claim it in the store; a key already done is a duplicate, acked without a
    /// request. A new key is POSTed to --deliver with the payload as the body and the headers
    ///
    ///   Idempotency-Key: <key>
    ///   Content-Type: application/json (when the payload is JSON; else application/octet-stream)
    ///   Oncely-Message-Id: <the broker's message id> (when it has one)
    ///   Oncely-Source: <the subject or queue it came from>
    ///
    /// A 2xx answer means done: the key is recorded (with up to 64 KiB of the answer's body)
    /// and the message acked. Another status, or no connection, is a failed attempt: the key
    /// is released and the message retried with backoff; after --max-attempts it goes to the
    /// dead-letter destination (--dlq) with the error in its Oncely-Error header, e.g.
    /// `handler answered 500 Internal Server Error: <first 200 bytes of the body>`, and is
    /// acked. Nothing is acked unprocessed.
    ///
    /// No answer within --timeout once connected to the handler, or the connection lost after
    /// sending, is an unknown outcome: the handler may have run, or still be running, so its
    /// key stays held until its claim's lease (--timeout + 30s, renewed while the POST runs)
    /// runs out. Until then the retries find the key in progress and give the message back to
    /// the broker, using up no attempts; after it, the message is POSTed again.
    ///
    /// So a handler sees a key again only after it answered other than 2xx, after an unknown
    /// outcome once the lease ran out, or if this process died (or the store failed) between
    /// sending the request and recording the key, once the lease ran out. The
    /// Idempotency-Key header is there for it to notice.
    ///
    /// SIGINT or SIGTERM stops taking messages and lets those in flight finish; then
    /// `consumed N: done N, duplicates N, redelivered N, dead-lettered N` goes to stderr and
    /// the exit status is 0.
    ///
    /// Examples:
    ///
    ///   oncely consume --from nats://127.0.0.1:4222/ORDERS/billing --key header:Event-Id \
    ///       --deliver http://127.0.0.1:8080/orders
    ///
    ///   oncely --store sqlite:/var/lib/oncely/emails.db consume \
    ///       --from amqp://guest:guest@127.0.0.1:5672/%2f/emails --key /emailId \
    ///       --deliver http://127.0.0.1:8080/send --concurrency 8 --max-attempts 10
    ///
    ///   oncely consume --from 'kafka://127.0.0.1:9092/orders?group=billing' --key message-id \
    ///       --deliver http://127.0.0.1:8080/orders --concurrency 4
    ///
    ///   oncely consume --from 'sqs://sqs.eu-west-1.amazonaws.com/orders.fifo?region=eu-west-1' \
    ///       --key message-id --deliver http://127.0.0.1:8080/orders
    #[command(verbatim_doc_comment)]
    Consume(consume::ConsumeArgs),
    /// Put the Idempotency-Key header in front of any HTTP service: a reverse proxy to --upstream
    ///
    /// Every request is forwarded to --upstream (method, path and query, headers minus
    /// hop-by-hop ones, body) and its response streamed back; the upstream gets its own name as
    /// Host, and X-Forwarded-For, X-Forwarded-Host and X-Forwarded-Proto. A request of
    /// --methods (POST and PATCH by default) with an Idempotency-Key header is executed
    /// upstream once per key:
    ///
    ///   a new key               forwarded; the response stored (up to --max-response, 1 MiB)
    ///                           and sent
    ///   a key already answered  the stored response, byte for byte, Idempotent-Replayed: true
    ///   the same key, another method, path or body                        422
    ///   the same key while its first request is still in flight           409, Retry-After: 1
    ///                           (or, with --in-flight-wait, its response once it is ready)
    ///   no key                  passed through (400 with --require-key)
    ///   a malformed key (empty, over 255 characters, not visible ASCII)   400
    ///   a body over --max-body (1 MiB)                                    413
    ///   the store cannot be reached                                       503, nothing forwarded
    ///                           (with --fail-open: forwarded unprotected, as if it had no key)
    ///   the upstream refused the connection (nothing was sent)           502, the key released
    ///   the upstream failed after the request was sent                    502, the key held
    ///   no response head from the upstream within --timeout               504, the key held
    ///
    /// Once a keyed request was sent upstream its client no longer matters: if it hangs up,
    /// or gets 504 at --timeout, the gateway still waits for the answer (for the rest of the
    /// key's 30s lease, renewed until --timeout) and stores it; retries get 409, then that
    /// answer. A retry executes the request again only after the lease ran out with no answer
    /// (no answer within --timeout + 20-30s, an upstream that failed after the request was
    /// sent, or a gateway killed mid-request).
    ///
    /// A 5xx from the upstream is sent but not stored: the key is released so a retry executes
    /// (--store-server-errors stores and replays it); so are 408, 409, 425 and 429, while
    /// other 4xx are stored (--store-status lists the statuses to store instead, --error-ttl
    /// keeps errors for less time). Set-Cookie, and each --deny-header, is never stored. Errors are application/problem+json (RFC 9457).
    ///
    /// Prints the bound address on stderr at start. SIGINT or SIGTERM stops accepting
    /// connections and lets requests in flight finish (up to 30s, or --timeout if longer;
    /// a second signal exits at once); then the summary goes to stderr and the exit status
    /// is 0:
    ///
    ///   requests N: executed N, replayed N, in flight (409) N, key reused (422) N,
    ///   rejected N, store unavailable (503) N, upstream failed (502/504) N,
    ///   passed through N, abandoned N
    ///
    /// Rejected counts the layer's 400 and 413 (and a 500 for a stored response it cannot
    /// decode); abandoned, the requests whose client went away first. --metrics-addr serves
    /// the same counts, with latency histograms, as Prometheus text.
    ///
    /// Example:
    ///
    ///   oncely --store sqlite:gateway.db serve --upstream http://127.0.0.1:3000 \
    ///       --listen 0.0.0.0:8080 --require-key --principal-header Authorization
    ///
    /// The flags from --fail-open on can also be set in the environment (ONCELY_FAIL_OPEN=true,
    /// ONCELY_DENY_HEADERS=X-Request-Id,X-Trace, ONCELY_MAX_BODY=64KiB, ...); a flag wins.
    #[command(verbatim_doc_comment)]
    Serve(Box<serve::ServeArgs>),
    /// Show the stored record of one key, expired or not.
    Inspect(inspect::InspectArgs),
    /// Remove records, so that the next delivery of their keys runs the work again
    ///
    /// A completed record goes at once. One still in progress is kept, unless --force: its
    /// holder may still be doing the work, so the next delivery would run it a second time.
    /// One line per key says what became of it (forgot, kept, absent), then
    /// `forgot N, held N, absent N` on stderr; the exit status is 1 if a record was kept.
    ///
    /// Examples:
    ///
    ///   oncely forget --scope payments order-7 order-9
    ///
    ///   oncely --store postgres://127.0.0.1/app forget --scope emails --from bad-keys.txt
    ///
    ///   grep -o 'order-[0-9]*' incident.log | oncely forget --from - --force
    #[command(verbatim_doc_comment)]
    Forget(forget::ForgetArgs),
    /// Remove expired records.
    Purge(purge::PurgeArgs),
    /// Count the records in the store.
    Stats(stats::StatsArgs),
    /// Publish the transactional outbox to a broker, in order per aggregate, until SIGINT/SIGTERM.
    ///
    /// Reads the rows your transactions enqueued in oncely_outbox, publishes each with a stable
    /// message id (NATS: Nats-Msg-Id; RabbitMQ: message_id; Kafka and SQS: an
    /// Oncely-Message-Id header or attribute), waits for the broker's confirm, then marks it
    /// sent. At least once: a relay killed in between publishes the row again
    /// with the same id. Several relays may run on one outbox: each aggregate is held by one at
    /// a time. Ignores --store. Ends with `relay: published N, failed N, purged N in Ts`.
    Relay(relay::RelayArgs),
    /// Move dead letters back to where they came from, each at most once, then stop.
    ///
    /// Reads the dead letters (--from) until there are none for --idle, and publishes each back
    /// (--to) with its payload, headers and message id (the failure's headers dropped, or kept
    /// with --keep-history). Each is claimed in the store (--store) before its publish and
    /// recorded after the broker confirms it, then acked: a redrive killed and run again
    /// publishes none twice. One it finds claimed by an earlier run that stopped before
    /// recording (it may have gone) is uncertain: left, never published again, until you
    /// `oncely forget --scope oncely-redrive KEY` it. Ends with `redrive: read N, redriven N,
    /// already redriven N, filtered out N, uncertain N, in progress N, failed N`; exit status
    /// 1 if any were left but those filtered out.
    ///
    ///   oncely redrive --from nats://127.0.0.1/ORDERS_DLQ/redrive --to nats://127.0.0.1/orders.in
    ///
    ///   oncely --store postgres://127.0.0.1/app redrive --from amqp://127.0.0.1/%2f/orders.dlq \
    ///       --to amqp://127.0.0.1/%2f/orders --filter "contains(headers.\"oncely-error\", '503')"
    #[command(verbatim_doc_comment)]
    Redrive(redrive::RedriveArgs),
    /// List, retry or drop the outbox rows a relay parked because the broker kept refusing them.
    ///
    /// A relay parks a row after the broker refused it --park-after times (a message too
    /// large, a destination that does not exist; an outage is no refusal). `oncely outbox list`
    /// shows each with its error; `retry ID...` puts rows back in line, `drop ID...` deletes
    /// them (`--all` for every parked row). Ignores --store.
    Outbox(outbox::OutboxArgs),
    /// Measure claim+complete against the naive pattern and the store's batched limit.
    ///
    /// Contenders: oncely (single claim then complete per event, from --concurrency tasks),
    /// naive (SELECT EXISTS then INSERT per event; Redis: SET NX), batched limit (the store's
    /// plain batched insert, 1,000 keys per transaction on 4 connections; not on memory:) and
    /// oncely batch (claim_many of 1,000 events then complete_many of the new ones, 4 callers).
    /// Runs on fresh stores of the kind --store names (memory:, sqlite:, postgres://, mysql://,
    /// redis://), never on the store itself. Prints events/s, p50/p99 latency and bytes per
    /// stored key for each contender.
    ///
    /// With --broker nats://HOST or amqp://HOST: messages/s through consume + claim + effect +
    /// ack on that broker instead, oncely's consumer (--concurrency in flight) against the
    /// naive one-message-at-a-time consumer (check-then-insert per message), each on a fresh
    /// stream or queue pre-filled with the same messages.
    ///
    /// With --gateway: what oncely serve adds to a request (pass-through, first execution,
    /// replay) against calling an upstream directly, both in this process, on fresh stores of
    /// the kind --store names.
    Bench(bench::BenchArgs),
    /// Print the shell completion script for SHELL.
    ///
    ///   bash:       oncely completions bash > /etc/bash_completion.d/oncely
    ///   zsh:        oncely completions zsh > "${fpath[1]}/_oncely"
    ///   fish:       oncely completions fish > ~/.config/fish/completions/oncely.fish
    ///   PowerShell: oncely completions powershell >> $PROFILE
    #[command(verbatim_doc_comment)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `oncely man > oncely.1; man ./oncely.1`.
    Man,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (cli, command) = parse();
    let service = format!("oncely-{command}");
    // Dropped last, after the command: sends the spans still queued.
    let _exporter = match init_log(&service) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The store's own errors name the URL and what is wrong with it, so no extra context here.
    let span_keys = cli.span_keys.into();
    let open = || async {
        anyhow::Ok(Oncely::new(oncely::connect(&cli.store).await?).with_span_keys(span_keys))
    };
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Dedup(args) => {
            dedup::run(open().await?, args, std::io::stdin(), &mut stdout).await
        }
        // Connects the broker before the store: its errors come first and create no file.
        Command::Consume(args) => consume::run(&cli.store, span_keys, args).await,
        Command::Serve(args) => serve::run(&cli.store, span_keys, *args).await,
        Command::Forget(args) => {
            forget::run(&open().await?, args, std::io::stdin().lock(), &mut stdout).await
        }
        Command::Inspect(args) => inspect::run(&open().await?, args, &mut stdout).await,
        Command::Purge(args) => purge::run(&open().await?, args, &mut stdout).await,
        Command::Stats(args) => stats::run(&open().await?, args, &mut stdout).await,
        Command::Redrive(args) => redrive::run(&cli.store, span_keys, args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Outbox(args) => outbox::run(args, &mut stdout).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "oncely", &mut stdout);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        // Fresh stores and runtimes of its own: the benchmark never opens --store itself.
        Command::Bench(args) => {
            let store = cli.store.clone();
            drop(stdout);
            tokio::task::spawn_blocking(move || {
                bench::run(&store, args, &mut std::io::stdout().lock())
            })
            .await?
        }
    }
}

/// The command line, with every flag's `ONCELY_*` variable and `--config`'s file (see `config`).
/// A config file that cannot be used is one `error: ...` line and exit 2, as a bad flag is.
fn parse() -> (Cli, String) {
    use clap::FromArgMatches;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = config::with_env(Cli::command());
    if let Some(path) = config::path(&args) {
        command = config::with_file(command, &path, &args).unwrap_or_else(|message| {
            eprintln!("error: {message}");
            std::process::exit(2)
        });
    }
    let matches = command.get_matches_from(args);
    let name = matches.subcommand_name().unwrap_or_default().to_owned();
    (
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
        name,
    )
}

/// `tracing` to stderr, filtered by `RUST_LOG`; without it, oncely's own warnings and errors
/// only (a driver's log, e.g. lapin's on a missing queue, would repeat the one error line). Each
/// span enabled is logged as it closes. Directives that do not parse are ignored rather than
/// stopping the command.
///
/// With an OTLP endpoint in the environment (`OTEL_EXPORTER_OTLP_ENDPOINT`, see
/// `oncely_otlp`), oncely's spans at info and above are exported too, whatever `RUST_LOG` says,
/// as the service `service`; the exporter answered sends what is left when dropped.
fn init_log(service: &str) -> Result<Option<oncely_otlp::Exporter>, oncely_otlp::OtlpError> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::prelude::*;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::builder().parse_lossy(directives)
        }
        // `oncely` covers every oncely_* crate.
        _ => EnvFilter::new("oncely=warn"),
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // A span is logged when it closes, with its fields and how long it took.
        .with_span_events(FmtSpan::CLOSE)
        .with_filter(filter);
    let (otlp, exporter) = match oncely_otlp::OtlpConfig::from_env(service)? {
        Some(config) => {
            let (layer, exporter) = oncely_otlp::OtlpLayer::new(config)?;
            let spans = Targets::new()
                .with_target("oncely", LevelFilter::INFO)
                // Its own warnings would be events in no span: nothing to export.
                .with_target("oncely_otlp", LevelFilter::OFF);
            (Some(layer.with_filter(spans)), Some(exporter))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(log).with(otlp).init();
    Ok(exporter)
}

/// The error chain on one line: `outer: inner: root`.
///
/// oncely's errors already include their source in their message, so a cause whose text is
/// already on the line is skipped rather than repeated; newlines from drivers become spaces.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\r', '\n'], " ")
}

/// clap value parser for `--scope`.
fn parse_scope(s: &str) -> Result<Scope, KeyError> {
    Scope::new(s)
}

/// clap value parser for a key argument.
fn parse_key(s: &str) -> Result<Key, KeyError> {
    Key::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        config::with_env(Cli::command()).debug_assert();
    }

    /// README's example config file is accepted, and gives `serve` and `consume` their flags.
    #[test]
    fn the_readme_config_example_is_accepted() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# oncely.toml:")
            .expect("README's config example");
        let example = &readme[start..];
        let example = &example[..example.find("```").expect("the end of the block")];
        let dir = std::env::temp_dir().join(format!("oncely-readme-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("oncely.toml");
        std::fs::write(&path, example).unwrap();
        for (sub, flag, value) in [
            ("serve", "upstream", "http://127.0.0.1:3000"),
            ("consume", "deliver", "http://127.0.0.1:8080/orders"),
        ] {
            let args: Vec<std::ffi::OsString> = ["oncely", sub].map(Into::into).to_vec();
            let command = config::with_file(config::with_env(Cli::command()), &path, &args)
                .expect("README's example is a valid config");
            let matches = command
                .try_get_matches_from(&args)
                .expect("every required flag set");
            let (_, sub_matches) = matches.subcommand().unwrap();
            let got = sub_matches.get_raw(flag).unwrap().next().unwrap();
            assert_eq!(got, value, "{sub} --{flag}");
            assert_eq!(
                matches.get_one::<String>("store").map(String::as_str),
                Some("postgres://oncely@db.internal/oncely")
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_flag_of_every_command_has_its_variable() {
        let command = config::with_env(Cli::command());
        let mut checked = 0;
        for sub in std::iter::once(&command).chain(command.get_subcommands()) {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if ["help", "version", "config"].contains(&long) {
                    continue;
                }
                assert!(
                    arg.get_env()
                        .is_some_and(|v| v.to_string_lossy().starts_with("ONCELY_")),
                    "`oncely {} --{long}` has no ONCELY_* variable",
                    sub.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} flags");
    }

    #[test]
    fn one_line_does_not_repeat_a_source_already_in_the_message() {
        #[derive(Debug)]
        struct Root;
        impl std::fmt::Display for Root {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("file is not a database\nsecond line")
            }
        }
        impl std::error::Error for Root {}
        let store_err = oncely::Error::Unavailable {
            store: "sqlite:x".into(),
            source: Box::new(Root),
        };
        let err = anyhow::Error::new(store_err).context("opening");
        assert_eq!(
            one_line(&err),
            "opening: store unavailable at sqlite:x: file is not a database second line"
        );
    }
}
