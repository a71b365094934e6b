//! [`fresh_destination`]: a new, uniquely named queue (and dead-letter queue) for one test or
//! benchmark run.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use oncely_core::fresh::unique_name;

use crate::Error;

/// How long an unused fresh queue lives on the server by default.
const DEFAULT_EXPIRES: Duration = Duration::from_secs(10 * 60);

/// What [`fresh_destination`] makes: its name's prefix (which run made it), a label (what it
/// is for), and how the queues are set up.
#[derive(Debug, Clone)]
pub struct FreshOptions {
    prefix: String,
    label: String,
    expires: Duration,
}

impl FreshOptions {
    /// A queue named `<prefix><pid>-<millis>-<n>-<label>` (the label's characters other than
    /// letters, digits, `-` and `_` become `-`). Keep one prefix per kind of caller.
    pub fn new(prefix: impl Into<String>, label: &str) -> Self {
        FreshOptions {
            prefix: prefix.into(),
            label: label.to_owned(),
            expires: DEFAULT_EXPIRES,
        }
    }

    /// The server deletes both queues this long after their last use (`x-expires`); 10 minutes
    /// by default. This is how queues of earlier runs go away: AMQP cannot list queues.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = after;
        self
    }
}

/// The queues [`fresh_destination`] declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshDestination {
    /// The queue: publish to it through the default exchange, consume it.
    pub queue: String,
    /// Its dead-letter queue, `<queue>.dlq` (pass it as `?dlq=`).
    pub dead_letter_queue: String,
}

/// Declares a new durable queue and its dead-letter queue on the RabbitMQ server at `server`
/// (`amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST]`), named uniquely (this process, the time, a
/// counter) and expiring when unused: for tests and benchmarks that need a destination of their
/// own on a real server.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_rabbitmq::Error> {
/// use oncely_rabbitmq::{FreshOptions, fresh_destination};
///
/// let server = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// let fresh = fresh_destination(server, &FreshOptions::new("my-tests.", "orders")).await?;
/// let url = format!("{server}/{}?dlq={}", fresh.queue, fresh.dead_letter_queue);
/// # let _ = url; Ok(()) }
/// ```
pub async fn fresh_destination(
    server: &str,
    options: &FreshOptions,
) -> Result<FreshDestination, Error> {
    let connection = crate::connect(server).await?;
    let queue = unique_name(&options.prefix, &options.label);
    let dead_letter_queue = format!("{queue}.dlq");
    let channel = connection
        .create_channel()
        .await
        .map_err(Error::setup("opening a channel"))?;
    let expires_ms = i32::try_from(options.expires.as_millis()).unwrap_or(i32::MAX);
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(expires_ms));
    for name in [&queue, &dead_letter_queue] {
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments.clone(),
            )
            .await
            .map_err(Error::setup(format!("declaring the queue {name}")))?;
    }
    connection
        .close(200, "OK".into())
        .await
        .map_err(Error::setup("closing the connection"))?;
    Ok(FreshDestination {
        queue,
        dead_letter_queue,
    })
}
