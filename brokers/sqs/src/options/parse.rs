//! Parsing `sqs[+http]://HOST[:PORT][/QUEUE][?OPTIONS]` into [`SqsOptions`].

use std::time::Duration;

use oncely_core::url::{parse_duration, redact_password};

use super::SqsOptions;
use crate::Error;

/// `url` as options; the queue may be left out unless `need_queue`.
pub(super) fn parse(url: &str, need_queue: bool) -> Result<SqsOptions, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_password(url),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected sqs://HOST/QUEUE".into()))?;
    let tls = match scheme {
        "sqs" => true,
        "sqs+http" => false,
        other => {
            return Err(invalid(format!(
                "the scheme must be sqs or sqs+http, not `{other}`"
            )));
        }
    };
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, queue) = location.split_once('/').unwrap_or((location, ""));
    if host.is_empty() || queue.contains('/') || (need_queue && queue.is_empty()) {
        return Err(invalid("expected sqs://HOST[:PORT]/QUEUE".into()));
    }
    let mut options = SqsOptions {
        endpoint: format!("{}://{host}", if tls { "https" } else { "http" }),
        queue: queue.to_owned(),
        region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        dead_letter_queue: None,
        dead_letters: true,
        visibility: Duration::from_secs(30),
        wait: Duration::from_secs(20),
        max_receives: 10,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "region" => options.region = value.to_owned(),
            "dlq" if value == "none" => options.dead_letters = false,
            "dlq" => options.dead_letter_queue = Some(value.to_owned()),
            "visibility" => options.visibility = parse_duration(name, value).map_err(invalid)?,
            "wait" => {
                options.wait = parse_duration(name, value)
                    .map_err(invalid)?
                    .min(Duration::from_secs(20))
            }
            "max_receives" => {
                options.max_receives = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    invalid(format!("max_receives must be at least 1, not `{value}`"))
                })?
            }
            other => return Err(invalid(format!("unknown option `{other}`"))),
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_url_may_leave_the_queue_out_and_a_source_url_may_not() {
        for url in ["sqs+http://127.0.0.1:5999", "sqs+http://127.0.0.1:5999/"] {
            let options = SqsOptions::parse_queue_optional(url).unwrap();
            assert_eq!(options.endpoint, "http://127.0.0.1:5999");
            assert_eq!(options.queue, "");
            assert!(url.parse::<SqsOptions>().is_err(), "{url}");
        }
        let options = SqsOptions::parse_queue_optional("sqs://sqs.example/orders.fifo").unwrap();
        assert_eq!(options.endpoint, "https://sqs.example");
        assert_eq!(options.queue, "orders.fifo");
        for bad in ["sqs://", "sqs:///q", "sqs://h/a/b", "http://h/q"] {
            assert!(SqsOptions::parse_queue_optional(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dlq_none_is_a_source_without_dead_letters() {
        let none: SqsOptions = "sqs+http://h:1/q-dlq?dlq=none".parse().unwrap();
        assert!(!none.dead_letters);
        let some: SqsOptions = "sqs+http://h:1/q".parse().unwrap();
        assert!(some.dead_letters);
    }
}
