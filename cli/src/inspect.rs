//! `oncely inspect`: the stored record of one key, as the store holds it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use oncely::{Key, Oncely, Record, RecordState, Scope};
use oncely_http::stored::StoredResponse;
use serde_json::json;

use crate::rfc3339;

/// Arguments of `oncely inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Scope of the key.
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = crate::parse_scope)]
    scope: Scope,

    #[command(flatten)]
    output: crate::output::OutputArgs,

    /// The key, as stored: the field's text, or a JSON array for a composite key.
    #[arg(value_parser = crate::parse_key)]
    key: Key,
}

/// Longest outcome preview shown, in characters.
const PREVIEW_CHARS: usize = 60;

/// Runs `oncely inspect`. A missing key is an answer, not a failure: it says so and exits 1.
pub async fn run(oncely: &Oncely, args: InspectArgs, out: &mut impl Write) -> Result<ExitCode> {
    // The raw store, not `Oncely::get`: an expired record not yet purged is worth seeing.
    let record = oncely
        .store()
        .get(&args.scope, &args.key)
        .await
        .with_context(|| format!("reading {}/{}", args.scope, args.key))?;
    let Some(record) = record else {
        eprintln!("no record for {}/{}", args.scope, args.key);
        return Ok(ExitCode::FAILURE);
    };
    let expired = record.is_expired(oncely.now());
    let text = if args.output.is_json() {
        format!("{}\n", as_json(&record, expired))
    } else {
        as_text(&record, expired)
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing standard output")?;
    Ok(ExitCode::SUCCESS)
}

fn as_text(record: &Record, expired: bool) -> String {
    let state = match &record.state {
        _ if expired => "expired".to_owned(),
        RecordState::InProgress => format!(
            "in progress, lease until {}",
            rfc3339::format(record.expires_at)
        ),
        RecordState::Completed { .. } => "completed".to_owned(),
    };
    let response = record.outcome().and_then(http_response);
    let outcome = match (record.outcome(), &response) {
        (Some(bytes), Some(_)) => format!("an HTTP response, {} bytes stored", bytes.len()),
        (None, _) => "-".to_owned(),
        (Some([]), _) => "0 bytes".to_owned(),
        (Some(bytes), None) => format!("{} bytes: {}", bytes.len(), preview(bytes)),
    };
    let fingerprint = record
        .fingerprint
        .map_or_else(|| "-".to_owned(), |f| f.to_hex());
    let mut text = format!(
        "scope        {}\nkey          {}\nstate        {state}\nattempt      {}\n\
         fingerprint  {fingerprint}\ncreated      {}\nexpires      {}\noutcome      {outcome}\n",
        record.scope,
        record.key,
        record.attempt,
        rfc3339::format(record.created_at),
        rfc3339::format(record.expires_at),
    );
    if let Some(response) = response {
        text.push_str(&response_as_text(&response));
    }
    text
}

/// The outcome as the HTTP response the layer and `oncely serve` store, if it is one (the
/// stored format starts with a magic, so nothing else decodes as one).
fn http_response(outcome: &[u8]) -> Option<StoredResponse> {
    StoredResponse::decode(outcome).ok()
}

/// Status, headers, trailers, then the body after a blank line, as text (lossy UTF-8).
fn response_as_text(response: &StoredResponse) -> String {
    let mut text = format!("status       {}\n", response.status);
    for (name, value) in &response.headers {
        text.push_str(&format!(
            "header       {name}: {}\n",
            lossy(value.as_bytes())
        ));
    }
    for (name, value) in response.trailers.iter().flatten() {
        text.push_str(&format!(
            "trailer      {name}: {}\n",
            lossy(value.as_bytes())
        ));
    }
    text.push_str(&format!("body         {} bytes\n", response.body.len()));
    if !response.body.is_empty() {
        text.push('\n');
        text.push_str(&lossy(&response.body));
        if !response.body.ends_with(b"\n") {
            text.push('\n');
        }
    }
    text
}

fn response_as_json(response: &StoredResponse) -> serde_json::Value {
    let pairs = |headers: &hyper::HeaderMap| {
        headers
            .iter()
            .map(|(name, value)| json!([name.as_str(), lossy(value.as_bytes())]))
            .collect::<Vec<_>>()
    };
    json!({
        "status": response.status.as_u16(),
        "headers": pairs(&response.headers),
        "trailers": response.trailers.as_ref().map(pairs),
        "body": lossy(&response.body),
        "body_bytes": response.body.len(),
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn as_json(record: &Record, expired: bool) -> serde_json::Value {
    let state = match record.state {
        _ if expired => "expired",
        RecordState::InProgress => "in_progress",
        RecordState::Completed { .. } => "completed",
    };
    let outcome = record.outcome();
    json!({
        "scope": record.scope.as_str(),
        "key": record.key.as_str(),
        "state": state,
        "attempt": record.attempt,
        "fingerprint": record.fingerprint.map(|f| f.to_hex()),
        "created_at": rfc3339::format(record.created_at),
        "expires_at": rfc3339::format(record.expires_at),
        "outcome_bytes": outcome.map(<[u8]>::len),
        "outcome_preview": outcome.map(|bytes| head(bytes).0),
        "response": outcome.and_then(http_response).as_ref().map(response_as_json),
    })
}

/// A short, quoted, lossy-UTF-8 preview: control characters escaped, long outcomes cut.
fn preview(bytes: &[u8]) -> String {
    let (head, cut) = head(bytes);
    format!("{head:?}{}", if cut { "..." } else { "" })
}

/// The first [`PREVIEW_CHARS`] characters of the lossy UTF-8 text, and whether more follow.
fn head(bytes: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let head = chars.by_ref().take(PREVIEW_CHARS).collect();
    (head, chars.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_short_quoted_and_lossy() {
        assert_eq!(preview(b"ok"), "\"ok\"");
        assert_eq!(preview(b"a\nb\xff"), "\"a\\nb\u{fffd}\"");
        let long = preview("x".repeat(100).as_bytes());
        assert!(
            long.ends_with("\"...") && long.len() == PREVIEW_CHARS + 5,
            "{long}"
        );
    }
}
