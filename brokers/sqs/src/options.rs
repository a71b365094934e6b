//! [`SqsOptions`] (the `sqs://` URL, parsed in `parse`) and the SDK [`client`].

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use std::time::Duration;

use crate::Error;
use crate::error::describe;

mod parse;

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
        parse::parse(url, true)
    }
}

impl SqsOptions {
    /// As [`str::parse`], but the queue may be left out: `sqs[+http]://HOST[:PORT][/QUEUE]`,
    /// `queue` empty when it is. What a publisher takes (rows name their own queues).
    pub fn parse_queue_optional(url: &str) -> Result<Self, Error> {
        parse::parse(url, false)
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
