//! What an [`AmqpSource`](crate::AmqpSource) consumes and how: the queue, its dead-letter
//! queue, the prefetch.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};

use crate::Error;

mod parse;

/// Deliveries the server sends ahead of the acks, unless told otherwise: room for a runner of
/// up to 16 handlers at once, with as many waiting. Keep it at about twice the runner's
/// `Consumer::concurrency` (`oncely-consumer`).
pub const DEFAULT_PREFETCH: u16 = 32;

/// The longest a message is held before it is given back ([`AmqpOptions::max_redelivery_wait`]).
pub const DEFAULT_MAX_REDELIVERY_WAIT: Duration = Duration::from_secs(10);

/// The queue to consume and how.
///
/// ```
/// use std::time::Duration;
/// use oncely_rabbitmq::AmqpOptions;
///
/// let options = AmqpOptions::new("orders").prefetch(64);
/// assert_eq!(options.dead_letter_queue_name(), "orders.dlq");
/// let options = options.dead_letter_queue("orders.failed").max_redelivery_wait(Duration::from_secs(5));
/// assert_eq!(options.dead_letter_queue_name(), "orders.failed");
/// assert_eq!(options.prefetch_count(), 64);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpOptions {
    queue: String,
    dead_letter_queue: Option<String>,
    dead_letters: bool,
    prefetch: u16,
    max_redelivery_wait: Duration,
}

impl AmqpOptions {
    /// Consumes `queue`, dead-lettering to `<queue>.dlq`, with a prefetch of
    /// [`DEFAULT_PREFETCH`].
    pub fn new(queue: impl Into<String>) -> Self {
        AmqpOptions {
            queue: queue.into(),
            dead_letter_queue: None,
            dead_letters: true,
            prefetch: DEFAULT_PREFETCH,
            max_redelivery_wait: DEFAULT_MAX_REDELIVERY_WAIT,
        }
    }

    /// Dead letters go to `queue` (declared durable if it does not exist).
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }

    /// No dead-letter queue (`dlq=none`): none is declared, and a dead-lettering fails, so
    /// the message is given back; for a source that only moves messages on, as `oncely
    /// redrive` reads a dead-letter queue.
    pub fn without_dead_letters(mut self) -> Self {
        self.dead_letters = false;
        self
    }

    /// At most `n` deliveries unacked at once (at least 1): AMQP's `basic.qos` prefetch count.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// The longest [`redeliver`](oncely_core::consumer::Delivery::redeliver) holds a message
    /// before giving it back ([`DEFAULT_MAX_REDELIVERY_WAIT`] by default). AMQP has no delayed
    /// requeue: a nacked message is back at once, so the wait happens here, holding a prefetch
    /// slot; the cap keeps a long wait from starving the consumer.
    pub fn max_redelivery_wait(mut self, wait: Duration) -> Self {
        self.max_redelivery_wait = wait;
        self
    }

    /// The queue consumed.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// Where dead letters go; empty with [`without_dead_letters`](Self::without_dead_letters).
    pub fn dead_letter_queue_name(&self) -> String {
        if !self.dead_letters {
            return String::new();
        }
        match &self.dead_letter_queue {
            Some(queue) => queue.clone(),
            None => format!("{}.dlq", self.queue),
        }
    }

    /// The prefetch count.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch
    }

    /// The cap on a redelivery's wait.
    pub fn redelivery_wait_cap(&self) -> Duration {
        self.max_redelivery_wait
    }
}

/// A source URL taken apart: where to connect (for lapin) and what to consume.
///
/// The form is `amqp[s]://[USER:PASSWORD@]HOST[:PORT][/VHOST]/QUEUE[?dlq=NAME&prefetch=N]`:
///
/// - the **last path segment is the queue**; a segment before it is the vhost, percent-encoded
///   (`%2f` is the default vhost `/`). With one segment the vhost is `/`:
///   `amqp://localhost/orders` and `amqp://localhost/%2f/orders` are the same queue;
/// - `dlq` names the dead-letter queue (default `<QUEUE>.dlq`);
/// - `prefetch` sets the prefetch count (default [`DEFAULT_PREFETCH`]);
/// - other query parameters (`heartbeat`, `connection_timeout`, `frame_max`, `channel_max`)
///   go to lapin.
///
/// `amqps://` (port 5671 by default) is TLS, over rustls: the server's certificate is verified
/// against the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` replace them, as for OpenSSL)
/// and, with `cacertfile=PATH` (RabbitMQ's own URI parameter), the PEM roots in that file too.
/// There is no way to turn verification off. A server that asks for a client certificate
/// (`ssl_options.verify = verify_peer`) is given the one `certfile=PATH` (the PEM certificate,
/// chain after it) and `keyfile=PATH` (its PEM private key, unencrypted) name; the user then
/// still logs in with the password, or with the certificate's name where the server runs
/// `rabbitmq_auth_mechanism_ssl` (the EXTERNAL mechanism is not offered by this client).
///
/// ```
/// use oncely_rabbitmq::AmqpUrl;
///
/// let url: AmqpUrl = "amqp://guest:secret@rabbit:5672/%2f/orders?prefetch=8&heartbeat=30".parse()?;
/// assert_eq!(url.options().queue_name(), "orders");
/// assert_eq!(url.options().dead_letter_queue_name(), "orders.dlq");
/// assert_eq!(url.options().prefetch_count(), 8);
/// assert_eq!(url.to_string(), "amqp://guest:***@rabbit:5672/%2f/orders");
///
/// let tls: AmqpUrl = "amqps://app:secret@mq.example.com/shop/orders?cacertfile=/etc/ssl/mq-ca.pem".parse()?;
/// assert_eq!(tls.to_string(), "amqps://app:***@mq.example.com/shop/orders");
///
/// let err = "amqp://guest:secret@rabbit/".parse::<AmqpUrl>().unwrap_err();
/// assert!(err.to_string().contains("guest:***@rabbit"), "{err}");
/// # Ok::<(), oncely_rabbitmq::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    connection: String,
    options: AmqpOptions,
    /// Extra roots to trust for `amqps://` (`cacertfile=`).
    ca_file: Option<PathBuf>,
    /// The client certificate chain and its key (`certfile=`, `keyfile=`).
    client_certificate: Option<(PathBuf, PathBuf)>,
}

impl AmqpUrl {
    /// The URL lapin connects to: scheme, credentials, host, port, vhost, lapin's parameters.
    /// It holds the password; [`Display`](fmt::Display) redacts it.
    pub fn connection_url(&self) -> &str {
        &self.connection
    }

    /// What to consume.
    pub fn options(&self) -> &AmqpOptions {
        &self.options
    }

    /// What to consume, to change it.
    pub fn options_mut(&mut self) -> &mut AmqpOptions {
        &mut self.options
    }

    /// The connection URL with the password redacted, for messages.
    pub(crate) fn redacted_connection(&self) -> String {
        oncely_core::url::redact_password(&self.connection)
    }

    /// Opens a connection named `name` (shown in RabbitMQ's management UI): TLS for
    /// `amqps://`, trusting the system's roots and `cacertfile=`'s.
    pub(crate) async fn open(&self, name: &str) -> Result<Connection, Error> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let read = |parameter: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::InvalidUrl {
                url: self.to_string(),
                reason: format!("cannot read {parameter} {}: {e}", path.display()),
            })
        };
        let cert_chain = match &self.ca_file {
            None => None,
            Some(path) => Some(String::from_utf8_lossy(&read("cacertfile", path)?).into_owned()),
        };
        let identity = match &self.client_certificate {
            None => None,
            Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("certfile", cert)?,
                key: read("keyfile", key)?,
            }),
        };
        let tls = OwnedTLSConfig {
            identity,
            cert_chain,
        };
        let connect = async {
            let runtime = lapin::runtime::default_runtime()?;
            Connection::connect_with_config(&self.connection, properties, tls, runtime).await
        };
        connect.await.map_err(|source| Error::connect(self, source))
    }
}

impl FromStr for AmqpUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        parse::parse(url)
    }
}

/// Connects to the server `server` names, `amqp[s]://[USER:PASSWORD@]HOST[:PORT][/VHOST][?...]`
/// (no queue), the way [`AmqpSource`](crate::AmqpSource) and
/// [`AmqpPublisher`](crate::AmqpPublisher) do: TLS for `amqps://`, trusting the system's roots
/// and `cacertfile=`'s (see [`AmqpUrl`]).
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_rabbitmq::Error> {
/// let connection = oncely_rabbitmq::connect("amqps://app:secret@mq.example.com/shop").await?;
/// # Ok(()) }
/// ```
pub async fn connect(server: &str) -> Result<Connection, Error> {
    queue_url(server, "-")
        .parse::<AmqpUrl>()?
        .open("oncely")
        .await
}

/// The URL of the queue `queue` on `server` (`amqp[s]://...[/VHOST][?...]`): the queue's name,
/// percent-encoded, as the last path segment, the query kept.
///
/// ```
/// use oncely_rabbitmq::queue_url;
/// assert_eq!(queue_url("amqp://h/%2f?heartbeat=5", "a/b"), "amqp://h/%2f/a%2Fb?heartbeat=5");
/// ```
pub fn queue_url(server: &str, queue: &str) -> String {
    let (location, query) = server.split_once('?').unwrap_or((server, ""));
    let sep = if query.is_empty() { "" } else { "?" };
    let location = location.trim_end_matches('/');
    format!("{location}/{}{sep}{query}", parse::encode(queue))
}

/// The connection with the queue, password redacted (the source's own parameters left out).
impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connection = self.redacted_connection();
        let base = connection.split('?').next().unwrap_or_default();
        let has_vhost = base
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        let vhost = if has_vhost { "" } else { "/%2f" };
        write!(f, "{base}{vhost}/{}", parse::encode(&self.options.queue))
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpUrl")
            .field("connection", &self.redacted_connection())
            .field("options", &self.options)
            .finish()
    }
}
