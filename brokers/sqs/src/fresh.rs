//! [`fresh_destination`]: a new, uniquely named queue (and dead-letter queue) for one test or
//! benchmark run.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use oncely_core::fresh::{first_use_of, made_by_a_gone_process, unique_name};

use crate::error::describe;
use crate::{Error, SqsOptions, client};

/// The longest queue name SQS takes.
const MAX_NAME: usize = 80;
/// What a dead-letter queue's name adds at most: `-dlq.fifo`.
const LONGEST_SUFFIX: usize = "-dlq.fifo".len();

/// What [`fresh_destination`] makes: its name's prefix (which run made it), a label (what it
/// is for), and how the queues are set up.
#[derive(Debug, Clone)]
pub struct FreshOptions {
    prefix: String,
    label: String,
    fifo: bool,
    visibility: Option<Duration>,
}

impl FreshOptions {
    /// A standard queue named `<prefix><pid>-<millis>-<n>-<label>` (the label's characters
    /// other than letters, digits, `-` and `_` become `-`; the name cut to fit SQS's 80
    /// characters with its dead-letter suffix). Keep one prefix per kind of caller: leftovers
    /// are found by it.
    pub fn new(prefix: impl Into<String>, label: &str) -> Self {
        FreshOptions {
            prefix: prefix.into(),
            label: label.to_owned(),
            fifo: false,
            visibility: None,
        }
    }

    /// FIFO queues instead (names ending in `.fifo`), without content-based deduplication:
    /// each message carries its deduplication id, as the relay's do.
    pub fn fifo(mut self) -> Self {
        self.fifo = true;
        self
    }

    /// The queues' visibility timeout (whole seconds); SQS's default (30 s) otherwise.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility = Some(timeout);
        self
    }
}

/// The queues [`fresh_destination`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshDestination {
    /// The queue's name.
    pub queue: String,
    /// The queue's URL, for the SDK.
    pub queue_url: String,
    /// The dead-letter queue's name: the default of a source on the queue (`<name>-dlq`, or
    /// `<name>-dlq.fifo`).
    pub dead_letter_queue: String,
    /// The dead-letter queue's URL.
    pub dead_letter_queue_url: String,
}

/// Creates a new queue and its dead-letter queue at the SQS endpoint `server`
/// (`sqs[+http]://HOST[:PORT]`, any queue in it ignored), named uniquely (this process, the
/// time, a counter; SQS refuses a deleted queue's name for a while, so a name is never reused):
/// for tests and benchmarks that need a destination of their own on a real server.
///
/// First, once per process and prefix, it deletes the queues with this prefix that a process
/// now gone made (a run that ended before deleting its own).
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_sqs::Error> {
/// use oncely_sqs::{FreshOptions, fresh_destination};
///
/// let server = "sqs+http://127.0.0.1:5999";
/// let fresh = fresh_destination(server, &FreshOptions::new("my-tests-", "orders").fifo()).await?;
/// let url = format!("{server}/{}", fresh.queue);
/// # let _ = url; Ok(()) }
/// ```
pub async fn fresh_destination(
    server: &str,
    options: &FreshOptions,
) -> Result<FreshDestination, Error> {
    let mut endpoint = SqsOptions::parse_queue_optional(server)?;
    let client = client(&endpoint).await?;
    if first_use_of(&options.prefix) {
        remove_leftovers(&client, &options.prefix).await;
    }
    let mut queue: String = unique_name(&options.prefix, &options.label)
        .chars()
        .take(MAX_NAME - LONGEST_SUFFIX)
        .collect();
    if options.fifo {
        queue.push_str(".fifo");
    }
    endpoint.queue = queue.clone();
    let dead_letter_queue = endpoint.dead_letter_queue_or_default();
    let queue_url = create(&client, &endpoint.endpoint, &queue, options).await?;
    let dead_letter_queue_url =
        create(&client, &endpoint.endpoint, &dead_letter_queue, options).await?;
    Ok(FreshDestination {
        queue,
        queue_url,
        dead_letter_queue,
        dead_letter_queue_url,
    })
}

/// Creates the queue `name` as `options` say; its URL.
async fn create(
    client: &Client,
    endpoint: &str,
    name: &str,
    options: &FreshOptions,
) -> Result<String, Error> {
    let mut create = client.create_queue().queue_name(name);
    if options.fifo {
        create = create
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
    }
    if let Some(visibility) = options.visibility {
        create = create.attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.as_secs().to_string(),
        );
    }
    let created = create.send().await.map_err(|e| Error::Sqs {
        endpoint: endpoint.to_owned(),
        what: format!("creating the queue {name}"),
        source: describe(&e).into(),
    })?;
    Ok(created.queue_url.unwrap_or_default())
}

/// Deletes the queues (and their dead-letter queues) under `prefix` whose process is gone; a
/// failure leaves them.
async fn remove_leftovers(client: &Client, prefix: &str) {
    let Ok(listed) = client.list_queues().queue_name_prefix(prefix).send().await else {
        return;
    };
    for url in listed.queue_urls() {
        let name = url.rsplit('/').next().unwrap_or_default();
        if made_by_a_gone_process(name, prefix) {
            client.delete_queue().queue_url(url).send().await.ok();
        }
    }
}
