//! [`SqsOptions`] (the `sqs://` URL, parsed in `parse`) and the SDK [`client`].

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Region, SharedCredentialsProvider, SharedHttpClient};
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
    /// Whether the source dead-letters at all (default). `false` (`dlq=none`): no dead-letter
    /// queue is looked up, nothing is dead-lettered on receipt (`max_receives` is not
    /// checked), and a dead-lettering fails, so the message is given back: for a source that
    /// only moves messages on, as `oncely redrive` reads a dead-letter queue.
    pub dead_letters: bool,
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

/// An SQS client for `options`: rustls with ring, credentials as [`credentials`] finds them.
pub async fn client(options: &SqsOptions) -> Result<Client, Error> {
    let credentials = credentials(options).await?;
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(Region::new(options.region.clone()))
        .credentials_provider(credentials)
        .endpoint_url(&options.endpoint)
        .http_client(https_client())
        .build();
    Ok(Client::from_conf(config))
}

/// The HTTP client of SQS and of the credential providers: [`oncely_aws::https_client`].
fn https_client() -> SharedHttpClient {
    oncely_aws::https_client()
}

/// The credentials an SQS client for `options` signs with: [`oncely_aws::credentials`] (the
/// AWS SDKs' standard chain; for a plain-HTTP emulator, `sqs+http://`, the environment or
/// `test`/`test`). Fails, saying where it looked, when no source has credentials.
pub async fn credentials(options: &SqsOptions) -> Result<SharedCredentialsProvider, Error> {
    oncely_aws::credentials(&options.endpoint, &options.region)
        .await
        .map_err(|e| Error::Sqs {
            endpoint: options.endpoint.clone(),
            what: "credentials".into(),
            source: e.to_string().into(),
        })
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
