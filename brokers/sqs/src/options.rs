//! [`SqsOptions`] (the `sqs://` URL), the [`Error`] of setting up, and the SDK [`client`].

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use oncely_core::url::{parse_duration, redact_password};
use std::time::Duration;

/// Setting a source or publisher up failed, or a message cannot go to SQS as it is (the source
/// of the [`BrokerError`](oncely_core::consumer::BrokerError) a publish answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used.
    #[error("invalid SQS URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// SQS refused or could not be reached.
    #[error("SQS at {endpoint}: {what}: {source}")]
    Sqs {
        /// The endpoint.
        endpoint: String,
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: oncely_core::BoxError,
    },
    /// The queue does not exist (queues are not created here).
    #[error("no queue {queue} at {endpoint}: create it")]
    NoQueue {
        /// The queue's name.
        queue: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The payload is not UTF-8: SQS message bodies are text, and a lossy conversion would
    /// change the data. Nothing was sent.
    #[error(
        "the payload for {queue} is not UTF-8 (invalid at byte {valid_up_to}): SQS bodies are text; encode it (base64, JSON) before it is enqueued"
    )]
    NotUtf8 {
        /// The queue it was for.
        queue: String,
        /// The length of its valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The message's headers cannot be SQS message attributes. Nothing was sent.
    #[error("a message for {queue} cannot be sent: {reason}")]
    Unsendable {
        /// The queue it was for.
        queue: String,
        /// Why.
        reason: String,
    },
}

/// `sqs[+http]://HOST[:PORT]/QUEUE[?region=..&dlq=..&visibility=30s&wait=20s&max_receives=10]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqsOptions {
    /// `https://HOST[:PORT]` (`sqs://`) or `http://HOST[:PORT]` (`sqs+http://`, emulators).
    pub endpoint: String,
    /// The queue's name.
    pub queue: String,
    /// The region signed for (`region=`, else `AWS_REGION`, else `us-east-1`).
    pub region: String,
    /// The dead-letter queue; `None` for `<QUEUE>-dlq` (`<NAME>-dlq.fifo` for a FIFO queue).
    pub dead_letter_queue: Option<String>,
    /// How long a received message stays invisible to other consumers.
    pub visibility: Duration,
    /// Long polling: how long a receive waits for a message (at most 20 s).
    pub wait: Duration,
    /// Receives after which a message is dead-lettered on receipt.
    pub max_receives: u32,
}

impl std::str::FromStr for SqsOptions {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        SqsOptions::parse(url, true)
    }
}

impl SqsOptions {
    /// As [`str::parse`], but the queue may be left out: `sqs[+http]://HOST[:PORT][/QUEUE]`,
    /// `queue` empty when it is. What a publisher takes (rows name their own queues).
    pub fn parse_queue_optional(url: &str) -> Result<Self, Error> {
        SqsOptions::parse(url, false)
    }

    fn parse(url: &str, need_queue: bool) -> Result<Self, Error> {
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
            visibility: Duration::from_secs(30),
            wait: Duration::from_secs(20),
            max_receives: 10,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "region" => options.region = value.to_owned(),
                "dlq" => options.dead_letter_queue = Some(value.to_owned()),
                "visibility" => {
                    options.visibility = parse_duration(name, value).map_err(invalid)?
                }
                "wait" => {
                    options.wait = parse_duration(name, value)
                        .map_err(invalid)?
                        .min(Duration::from_secs(20))
                }
                "max_receives" => {
                    options.max_receives =
                        value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            invalid(format!("max_receives must be at least 1, not `{value}`"))
                        })?
                }
                other => return Err(invalid(format!("unknown option `{other}`"))),
            }
        }
        Ok(options)
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue_or_default(&self) -> String {
        match (&self.dead_letter_queue, self.queue.strip_suffix(".fifo")) {
            (Some(name), _) => name.clone(),
            (None, Some(base)) => format!("{base}-dlq.fifo"),
            (None, None) => format!("{}-dlq", self.queue),
        }
    }
}

/// An SQS client for `options`: rustls with ring, credentials from `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`), or `test`/`test` for a plain-HTTP emulator.
pub fn client(options: &SqsOptions) -> Result<Client, Error> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let credentials = match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(id), Ok(secret)) => Credentials::new(
            id,
            secret,
            std::env::var("AWS_SESSION_TOKEN").ok(),
            None,
            "env",
        ),
        _ if options.endpoint.starts_with("http://") => {
            Credentials::new("test", "test", None, None, "emulator")
        }
        _ => {
            return Err(Error::Sqs {
                endpoint: options.endpoint.clone(),
                what: "credentials".into(),
                source: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            });
        }
    };
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(Region::new(options.region.clone()))
        .credentials_provider(credentials)
        .endpoint_url(&options.endpoint)
        .http_client(http)
        .build();
    Ok(Client::from_conf(config))
}

/// The URL of the queue named `queue` (`GetQueueUrl`); [`Error::NoQueue`] if there is none.
pub(crate) async fn queue_url(
    client: &Client,
    endpoint: &str,
    queue: &str,
) -> Result<String, Error> {
    match client.get_queue_url().queue_name(queue).send().await {
        Ok(output) => Ok(output.queue_url.unwrap_or_default()),
        Err(error) => {
            let missing = error
                .as_service_error()
                .is_some_and(|e| e.is_queue_does_not_exist())
                || error.code() == Some("AWS.SimpleQueueService.NonExistentQueue");
            Err(if missing {
                Error::NoQueue {
                    queue: queue.to_owned(),
                    endpoint: endpoint.to_owned(),
                }
            } else {
                Error::Sqs {
                    endpoint: endpoint.to_owned(),
                    what: format!("looking up the queue {queue}"),
                    source: describe(&error).into(),
                }
            })
        }
    }
}

/// `error` and its causes on one line (`dispatch failure: io error: ... Connection refused`):
/// the SDK's own message is only the first of them.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = error.source();
    }
    line
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
}
