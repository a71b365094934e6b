//! `nats://[user:password@]HOST[:PORT]/STREAM/CONSUMER[?OPTIONS]` into [`NatsOptions`].

use oncely_core::url::{parse_duration, redact_password};

use super::{DEFAULT_PORT, NatsOptions};
use crate::Error;

const ACCEPTED: &str = "expected nats://[user:password@]HOST[:PORT]/STREAM/CONSUMER \
     (or tls://...) with optional ?dlq=SUBJECT|none&dlq_stream=NAME&create_dlq=true|false\
     &create=true|false&ack_wait=DURATION&max_ack_pending=N&batch=N&creds=PATH&nkey=PATH";

pub(crate) fn parse(url: &str) -> Result<NatsOptions, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_password(url),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid(format!("no scheme; {ACCEPTED}")))?;
    if !matches!(scheme, "nats" | "tls") {
        return Err(invalid(format!("unknown scheme `{scheme}`; {ACCEPTED}")));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return Err(invalid(format!("no host; {ACCEPTED}")));
    }
    let server = if has_port(host_port) {
        format!("{scheme}://{authority}")
    } else {
        format!("{scheme}://{authority}:{DEFAULT_PORT}")
    };
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let (Some(stream), Some(consumer), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(format!(
            "the path must be /STREAM/CONSUMER, not `/{path}`; {ACCEPTED}"
        )));
    };
    for (what, name) in [("stream", stream), ("consumer", consumer)] {
        check_name(what, name).map_err(invalid)?;
    }

    let mut options = NatsOptions::new(server, stream, consumer);
    let mut credentials = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "dlq" if value == "none" => options.dead_letters = false,
            "dlq" => {
                check_subject(value).map_err(invalid)?;
                options.dead_letter_subject = Some(value.to_owned());
            }
            "dlq_stream" => {
                check_name("dead-letter stream", value).map_err(invalid)?;
                options.dead_letter_stream = Some(value.to_owned());
            }
            "create_dlq" => {
                options.create_dead_letter_stream = flag(name, value).map_err(invalid)?
            }
            "create" => options.create_consumer = flag(name, value).map_err(invalid)?,
            "ack_wait" => options.ack_wait = Some(parse_duration(name, value).map_err(invalid)?),
            "max_ack_pending" => {
                let max = count(name, value).map_err(invalid)?;
                options.max_ack_pending = Some(i64::try_from(max).unwrap_or(i64::MAX));
            }
            "batch" => options.batch = count(name, value).map_err(invalid)?,
            // For the connection: they travel with the server (see `connect`).
            _ if crate::client::CREDENTIAL_PARAMS.contains(&name) => credentials.push(pair),
            _ => return Err(invalid(format!("unknown option `{name}`; {ACCEPTED}"))),
        }
    }
    if !credentials.is_empty() {
        options.server = format!("{}?{}", options.server, credentials.join("&"));
    }
    Ok(options)
}

fn has_port(host_port: &str) -> bool {
    match host_port.rsplit_once(':') {
        // An IPv6 literal without a port ends with `]`.
        Some((_, port)) => !port.contains(']'),
        None => false,
    }
}

/// JetStream stream and consumer names: no `.`, `*`, `>`, `/`, `\` or white space.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "the {what} name `{name}` contains `{c}`, which JetStream names cannot"
        ));
    }
    Ok(())
}

/// A subject to publish to: dot-separated, non-empty tokens, no wildcards.
fn check_subject(subject: &str) -> Result<(), String> {
    let bad = subject.is_empty()
        || subject.split('.').any(|token| {
            token.is_empty()
                || token == "*"
                || token == ">"
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
        });
    if bad {
        return Err(format!(
            "dlq `{subject}` is not a subject to publish to \
             (dot-separated tokens, no wildcards, no spaces)"
        ));
    }
    Ok(())
}

fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{name} must be true or false, not `{other}`")),
    }
}

fn count(name: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{name} must be a whole number of at least 1, not `{value}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_cli_form_parses_with_its_defaults() {
        let options = parse("nats://127.0.0.1/ORDERS/billing").unwrap();
        assert_eq!(options.server, "nats://127.0.0.1:4222");
        assert_eq!(
            (options.stream.as_str(), options.consumer.as_str()),
            ("ORDERS", "billing")
        );
        assert_eq!(options.dead_letter_subject_or_default(), "ORDERS.dlq");
        assert_eq!(options.dead_letter_stream_or_default(), "ORDERS_DLQ");
        assert!(options.create_consumer && options.create_dead_letter_stream);
        assert_eq!((options.ack_wait, options.max_ack_pending), (None, None));
        assert_eq!(options.batch, super::super::DEFAULT_BATCH);
    }

    #[test]
    fn every_option_is_taken() {
        let options = parse(
            "tls://u:p@nats.example:4333/ORDERS/billing?dlq=orders.dead&dlq_stream=DEAD\
             &create_dlq=false&create=false&ack_wait=90s&max_ack_pending=64&batch=8",
        )
        .unwrap();
        assert_eq!(options.server, "tls://u:p@nats.example:4333");
        assert_eq!(options.dead_letter_subject_or_default(), "orders.dead");
        assert_eq!(options.dead_letter_stream_or_default(), "DEAD");
        assert!(!options.create_consumer && !options.create_dead_letter_stream);
        assert_eq!(options.ack_wait, Some(Duration::from_secs(90)));
        assert_eq!(options.max_ack_pending, Some(64));
        assert_eq!(options.batch, 8);
        assert_eq!(options.shown_server(), "tls://u:***@nats.example:4333");

        // The credentials travel with the server, to `connect`.
        let options =
            parse("tls://nats.example/ORDERS/billing?creds=/etc/a.creds&batch=4").unwrap();
        assert_eq!(options.server, "tls://nats.example:4222?creds=/etc/a.creds");
        assert_eq!(options.batch, 4);
    }

    #[test]
    fn ipv6_hosts_get_the_default_port_only_when_they_have_none() {
        assert_eq!(
            parse("nats://[::1]/S/C").unwrap().server,
            "nats://[::1]:4222"
        );
        assert_eq!(
            parse("nats://[::1]:5222/S/C").unwrap().server,
            "nats://[::1]:5222"
        );
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("d", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("d", "5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("d", "2h"), Ok(Duration::from_secs(7200)));
        for bad in ["30", "0s", "s", "1w", "-1s", ""] {
            assert!(parse_duration("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_urls_name_the_url_without_its_password_and_say_what_is_accepted() {
        for (url, says) in [
            ("127.0.0.1:4222/S/C", "no scheme"),
            ("http://h/S/C", "unknown scheme `http`"),
            (
                "nats://u:secret@h/ORDERS",
                "the path must be /STREAM/CONSUMER",
            ),
            (
                "nats://u:secret@h/S/C/extra",
                "the path must be /STREAM/CONSUMER",
            ),
            ("nats:///S/C", "no host"),
            ("nats://h/OR.DERS/c", "contains `.`"),
            ("nats://u:secret@h/S/C?ack_wait=soon", "positive duration"),
            ("nats://h/S/C?batch=0", "at least 1"),
            ("nats://h/S/C?dlq=a.*", "not a subject"),
            ("nats://h/S/C?create=yes", "true or false"),
            ("nats://h/S/C?durable=x", "unknown option `durable`"),
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("secret"), "{url}: {error}");
            assert!(
                error.contains("nats://") || error.contains("://h") || error.contains("127.0.0.1"),
                "{error}"
            );
        }
    }

    #[test]
    fn dlq_none_is_a_source_without_dead_letters() {
        assert!(
            !parse("nats://h/S_DLQ/redrive?dlq=none")
                .unwrap()
                .dead_letters
        );
        assert!(parse("nats://h/S/C?dlq=S.failed").unwrap().dead_letters);
    }
}
