//! `oncely dedup`: pass each JSON line whose key is new, drop duplicates, durably.
//!
//! Per batch: claim every key in one round trip, write the lines of new keys, flush, and only
//! then complete their claims. A crash before the flush leaves the claims to their lease, so a
//! rerun passes those lines again: no line is lost, and at most one batch is passed twice.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use oncely::{
    Claim, ClaimOutcome, CompositeKey, Error, JsonKeyError, Key, Oncely, Scope, duration,
};
use tokio::task::JoinSet;

use crate::input::{self, Line};
/// Arguments of `oncely dedup`.
#[derive(Args, Debug)]
pub struct DedupArgs {
    /// The key's field(s): JSON pointers (/eventId, or /orderId,/paymentId for a composite
    /// key) or a JMESPath expression (detail.orderId, [orderId, paymentId],
    /// powertools_json(Message).orderId for JSON inside a string field).
    #[arg(long, value_name = "SPEC", value_parser = CompositeKey::parse)]
    key: CompositeKey,

    /// Namespace of the keys, e.g. one per pipeline; the same key in two scopes is two keys.
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = crate::parse_scope)]
    scope: Scope,

    /// How long a passed key is remembered (500ms, 90s, 15m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = duration::parse)]
    ttl: Duration,

    /// How long a claimed key is held before another run may take it over, should this run die
    /// before recording it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    lease: Duration,

    /// Most lines claimed in one store round trip.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,

    /// Also write every rejected line, verbatim, to FILE.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,

    /// Exit with status 1 if any line was rejected.
    #[arg(long)]
    strict: bool,

    /// Serve Prometheus metrics (the library's: claims, store calls...) at
    /// http://ADDR/metrics while it runs, with /healthz and /readyz (503 while the store
    /// cannot be reached): for a long dedup of a stream.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// How often a key held by another run is claimed again while waiting for it.
const HELD_KEY_POLL: Duration = Duration::from_millis(50);

/// The counts of the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    read: u64,
    passed: u64,
    duplicates: u64,
    rejected: u64,
}

/// Runs `oncely dedup` over `input`, writing passed lines to `out`.
pub async fn run(
    oncely: Oncely,
    args: DedupArgs,
    input: impl Read + Send + 'static,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let rejects = match &args.rejects {
        Some(path) => Some(BufWriter::new(File::create(path).with_context(|| {
            format!("cannot create rejects file {}", path.display())
        })?)),
        None => None,
    };
    let _ops = match args.metrics_addr {
        Some(addr) => Some(serve_ops(addr, oncely.clone()).await?),
        None => None,
    };
    let batch = args.batch as usize;
    let mut lines = input::spawn(input, 2 * batch).context("starting the input reader")?;
    let mut dedup = Dedup {
        oncely: oncely.with_lease(args.lease).with_retention(args.ttl),
        scope: args.scope,
        key: args.key,
        out: BufWriter::with_capacity(1 << 16, out),
        rejects,
        counts: Counts::default(),
        noted_line: None,
    };
    let counter = crate::progress::Counter::new("lines read");
    while let Some(lines) = lines.next_batch(batch).await {
        let lines = lines.context("reading standard input")?;
        counter.add(lines.len() as u64);
        dedup.batch(lines).await?;
    }
    drop(counter);
    let Counts {
        read,
        passed,
        duplicates,
        rejected,
    } = dedup.counts;
    eprintln!("read {read}, passed {passed}, duplicates {duplicates}, rejected {rejected}");
    Ok(if args.strict && rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The metrics and health endpoints on `addr`, until the answer is dropped.
async fn serve_ops(addr: std::net::SocketAddr, oncely: Oncely) -> Result<crate::ops::Serving> {
    use oncely_http::gateway::ops::{OpsServer, store_ready};
    let listener = crate::ops::listen(addr).await?;
    let metrics = crate::ops::recorder();
    let ops = OpsServer::new(move || metrics.render()).ready_when(move || {
        let oncely = oncely.clone();
        async move { store_ready(&oncely).await }
    });
    Ok(crate::ops::Serving(tokio::spawn(ops.serve(listener))))
}

struct Dedup<W: Write> {
    oncely: Oncely,
    scope: Scope,
    key: CompositeKey,
    out: BufWriter<W>,
    rejects: Option<BufWriter<File>>,
    counts: Counts,
    /// The line whose held key was last reported, so a wait is reported once, not per poll.
    noted_line: Option<u64>,
}

impl<W: Write> Dedup<W> {
    async fn batch(&mut self, lines: Vec<Line>) -> Result<()> {
        self.counts.read += lines.len() as u64;
        let mut keyed = Vec::with_capacity(lines.len());
        for line in lines {
            match key_of(&self.key, &line.bytes) {
                Ok(key) => keyed.push((line, key)),
                Err(reason) => self.reject(&line, &reason)?,
            }
        }
        if let Some(rejects) = &mut self.rejects {
            rejects.flush().context("writing the rejects file")?;
        }
        let mut rest = &keyed[..];
        while !rest.is_empty() {
            let settled = self.round(rest).await?;
            rest = &rest[settled..];
        }
        Ok(())
    }

    /// Claims the keys of `lines` and settles the longest prefix that has no key held by
    /// another run; returns its length. If a key is held elsewhere, waits for its lease first,
    /// and the lines from it on are claimed again by the next round, so order is kept.
    async fn round(&mut self, lines: &[(Line, Key)]) -> Result<usize> {
        let requests = lines
            .iter()
            .map(|(_, key)| (self.scope.clone(), key.clone(), None));
        let outcomes = self
            .oncely
            .claim_many(requests)
            .await
            .context("claiming keys")?;
        let mut seen = HashSet::with_capacity(lines.len());
        let mut settled = lines.len();
        let mut wait = Duration::ZERO;
        let mut passed = Vec::new();
        let mut unsettled = Vec::new();
        for (i, ((line, key), outcome)) in lines.iter().zip(outcomes).enumerate() {
            let earlier_in_batch = !seen.insert(key);
            if i >= settled {
                // Claimed, but behind a key we must wait for: give it back, claim it again later.
                unsettled.extend(outcome.into_new());
                continue;
            }
            match outcome {
                ClaimOutcome::New(claim) => {
                    write_line(&mut self.out, &line.bytes).context("writing standard output")?;
                    passed.push(claim);
                }
                // In progress because this batch claimed it a moment ago: a duplicate.
                ClaimOutcome::InProgress { .. } if earlier_in_batch => self.counts.duplicates += 1,
                ClaimOutcome::InProgress { retry_after } => {
                    if self.noted_line != Some(line.number) {
                        self.noted_line = Some(line.number);
                        eprintln!(
                            "note: key {key} (line {}) is held by another run, or by one that \
                             died; waiting for it (at most {retry_after:?})",
                            line.number
                        );
                    }
                    settled = i;
                    // A live holder usually records the key within milliseconds: look again
                    // soon rather than sleeping out the whole lease.
                    wait = retry_after.min(HELD_KEY_POLL);
                }
                // No fingerprints are given, so a conflict cannot arise; the key is known, though.
                ClaimOutcome::Duplicate(_) | ClaimOutcome::Conflict { .. } => {
                    self.counts.duplicates += 1
                }
            }
        }
        // Recorded only once the lines are out: a crash in between re-emits, never loses.
        self.out.flush().context("writing standard output")?;
        self.counts.passed += passed.len() as u64;
        self.settle(passed, Settle::Complete).await?;
        if settled < lines.len() {
            self.settle(unsettled, Settle::Release).await?;
            tokio::time::sleep(wait).await;
        }
        Ok(settled)
    }

    /// Completes or releases `claims`, all at once: the store commits them together.
    async fn settle(&self, claims: Vec<Claim>, how: Settle) -> Result<()> {
        let mut tasks = JoinSet::new();
        for claim in claims {
            let oncely = self.oncely.clone();
            tasks.spawn(async move {
                let result = match how {
                    Settle::Complete => oncely.complete(&claim, b"").await,
                    Settle::Release => oncely.release(&claim).await,
                };
                (claim, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (claim, result) = joined.context("recording keys")?;
            match result {
                Ok(()) => {}
                // The line is out; another run took the key over after our lease ran out and
                // will pass it too. Worth a warning, not worth stopping for.
                Err(lost @ Error::ClaimLost { .. }) if how == Settle::Complete => eprintln!(
                    "warning: key {} was passed, but could not be recorded: {lost} \
                     (another run may pass it again; consider a longer --lease)",
                    claim.key
                ),
                Err(Error::ClaimLost { .. }) => {}
                Err(err) => return Err(err).context("recording passed keys"),
            }
        }
        Ok(())
    }

    fn reject(&mut self, line: &Line, reason: &str) -> Result<()> {
        self.counts.rejected += 1;
        eprintln!("line {}: {reason}", line.number);
        if let Some(rejects) = &mut self.rejects {
            write_line(rejects, &line.bytes).context("writing the rejects file")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Complete,
    Release,
}

/// Writes `bytes` as read, adding the newline a last line may lack.
fn write_line(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The key of one raw input line, or why the line is rejected. Read from the line's text, so a
/// number is keyed exactly as written (never rounded through f64), and the string `"42"` and the
/// number `42` are two keys (see `CompositeKey`).
fn key_of(spec: &CompositeKey, bytes: &[u8]) -> Result<Key, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("blank line".into());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    spec.extract_json(text.as_bytes()).map_err(|e| match e {
        // Each input line is one JSON text, so serde's "line 1" would only confuse.
        JsonKeyError::NotJson(_) => e.to_string().replace(" at line 1 column ", " at column "),
        _ => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(line: &str) -> Result<String, String> {
        let spec = CompositeKey::parse("/eventId").unwrap();
        key_of(&spec, line.as_bytes()).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn keys_and_reasons() {
        assert_eq!(key("{\"eventId\":\"e-1\"}\r\n"), Ok("e-1".into()));
        assert_eq!(
            key("{\"eventId\": 1\n"),
            Err("not JSON: EOF while parsing an object at column 13".into())
        );
        assert_eq!(key(" \t\n"), Err("blank line".into()));
        assert_eq!(key("{\"n\":1}\n"), Err("missing key field /eventId".into()));
        assert_eq!(key("{\"eventId\":\"\"}"), Err("key is empty".into()));
        assert_eq!(
            key("{\"eventId\":null}"),
            Err("key field /eventId is null".into())
        );
        let long = format!("{{\"eventId\":\"{}\"}}", "x".repeat(513));
        assert!(key(&long).unwrap_err().contains("longer than the limit"));
        assert_eq!(
            key("nope\n"),
            Err("not JSON: expected ident at column 2".into())
        );
        let spec = CompositeKey::parse("/eventId").unwrap();
        assert!(
            key_of(&spec, b"{\"eventId\":\"\xff\"}")
                .unwrap_err()
                .starts_with("not UTF-8")
        );
    }

    #[test]
    fn numbers_are_keyed_exactly_and_apart_from_strings() {
        for n in [
            "18446744073709551616",
            "18446744073709551617",
            "100000000000000000000001",
            "100000000000000000000002",
        ] {
            assert_eq!(key(&format!("{{\"eventId\":{n}}}\n")), Ok(n.to_owned()));
        }
        assert_eq!(key("{\"eventId\":42}\n"), Ok("42".into()));
        assert_eq!(key("{\"eventId\":\"42\"}\n"), Ok("\"42\"".into()));
        let spec = CompositeKey::parse("/orderId,/paymentId").unwrap();
        let line = b"{\"orderId\":100000000000000000000001,\"paymentId\":\"42\"}\n";
        assert_eq!(
            key_of(&spec, line).unwrap().as_str(),
            "[100000000000000000000001,\"42\"]"
        );
    }

    #[test]
    fn lines_are_written_as_read_and_always_end_in_a_newline() {
        let mut out = Vec::new();
        write_line(&mut out, b"{}\r\n").unwrap();
        write_line(&mut out, b"{}").unwrap();
        assert_eq!(out, b"{}\r\n{}\n");
    }
}
