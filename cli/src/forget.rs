//! `oncely forget`: remove records so that the next delivery of their keys runs again.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use oncely::{ForgetOutcome, Key, Oncely, Scope};
use serde_json::json;

use crate::rfc3339;

/// Arguments of `oncely forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Scope of the keys.
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = crate::parse_scope)]
    scope: Scope,

    /// Remove records still in progress too. Their holders may still be doing the work: the
    /// next delivery then runs it a second time, and the holder's completion fails.
    #[arg(long)]
    force: bool,

    /// Read more keys from FILE, one per line (`-`: standard input); blank lines are skipped.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,

    #[command(flatten)]
    output: crate::output::OutputArgs,

    /// The keys, as stored: the field's text, or a JSON array for a composite key.
    #[arg(value_parser = crate::parse_key)]
    keys: Vec<Key>,
}

/// Runs `oncely forget`: one line per key saying what became of it, then
/// `forgot N, held N, absent N` on stderr. Every key is checked before any is forgotten, so a
/// bad line in a file changes nothing. Exits 1 if a record was kept because it is in progress.
pub async fn run(
    oncely: &Oncely,
    args: ForgetArgs,
    stdin: impl BufRead,
    out: &mut impl Write,
) -> Result<ExitCode> {
    let mut keys = args.keys;
    if let Some(path) = &args.from {
        keys.extend(read_keys(path, stdin)?);
    }
    if keys.is_empty() {
        bail!("no keys given: name them as arguments or pass --from FILE");
    }
    let (mut forgot, mut held, mut absent) = (0, 0, 0);
    for key in &keys {
        let outcome = oncely
            .forget(&args.scope, key, args.force)
            .await
            .with_context(|| {
                format!(
                    "forgetting {}/{key} (the keys before it are forgotten)",
                    args.scope
                )
            })?;
        match outcome {
            ForgetOutcome::Completed | ForgetOutcome::InProgress => forgot += 1,
            ForgetOutcome::Held { .. } => held += 1,
            ForgetOutcome::Absent => absent += 1,
        }
        let line = if args.output.is_json() {
            let mut line = json!({
                "scope": args.scope.as_str(),
                "key": key.as_str(),
                "outcome": outcome.kind(),
            });
            if let ForgetOutcome::Held { lease_until } = outcome {
                line["lease_until"] = json!(rfc3339::format(lease_until));
            }
            line.to_string()
        } else {
            describe(&args.scope, key, outcome)
        };
        writeln!(out, "{line}").context("writing standard output")?;
    }
    out.flush().context("writing standard output")?;
    eprintln!("forgot {forgot}, held {held}, absent {absent}");
    Ok(if held > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn describe(scope: &Scope, key: &Key, outcome: ForgetOutcome) -> String {
    match outcome {
        ForgetOutcome::Completed => format!("forgot {scope}/{key} (completed)"),
        ForgetOutcome::InProgress => format!(
            "forgot {scope}/{key} (in progress: its holder may still be doing the work; \
             the next delivery runs it again)"
        ),
        ForgetOutcome::Held { lease_until } => format!(
            "kept {scope}/{key}: in progress, lease until {} (--force removes it)",
            rfc3339::format(lease_until)
        ),
        ForgetOutcome::Absent => format!("absent {scope}/{key} (no live record)"),
    }
}

/// The keys of a file (or stdin for `-`), all valid, or an error naming the first bad line.
fn read_keys(path: &PathBuf, stdin: impl BufRead) -> Result<Vec<Key>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(stdin)
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening the key file {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut keys = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let text = line.trim_end_matches('\r');
        if text.trim().is_empty() {
            continue;
        }
        let key = Key::new(text)
            .with_context(|| format!("{} line {}: nothing was forgotten", path.display(), n + 1))?;
        keys.push(key);
    }
    Ok(keys)
}
