//! [`NatsPublisher`]: JetStream publishes that wait for the stream's ack, for the outbox relay.

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::{self, Context};
use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, MESSAGE_ID_HEADER, Message};
use oncely_core::outbox::Publisher;
use oncely_core::url::redact_password;

use crate::{BROKER, Error};

/// Publishes outbox rows to JetStream, as the relay (`oncely-relay`) asks: each message with
/// `Nats-Msg-Id` set to its stable id, and a publish counts only once the stream has acked it
/// (stored it, or recognised the id as a duplicate within its duplicate window).
///
/// ## The URL
///
/// `nats://[USER:PASSWORD@]HOST[:PORT][/SUBJECT]` (or `tls://`; port 4222 by default). `SUBJECT`
/// is where rows without a destination go; a row's own destination is a subject too. Without
/// one, every row must name its destination. Connecting checks that a stream captures the
/// default subject: JetStream stores nothing published to a subject no stream captures.
///
/// JetStream drops a second publish with the same `Nats-Msg-Id` within the stream's
/// `duplicate_window` (2 minutes by default): a row re-published after a relay crash is stored
/// once if the relay is back within that window; later, consumers dedup by message id
/// (`oncely consume --key message-id`).
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_nats::Error> {
/// let publisher = oncely_nats::NatsPublisher::connect("nats://127.0.0.1:4222/orders.events").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsPublisher {
    context: Context,
    server: String,
    subject: Option<String>,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("server", &self.server)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// Connects as `url` says (see the type's docs).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (server, subject) = parse(url)?;
        let client = crate::connect(&server).await?;
        Self::open(jetstream::new(client), subject).await
    }

    /// A publisher on an existing JetStream context, with `subject` as the default destination.
    /// Checks that a stream captures it.
    pub async fn open(context: Context, subject: Option<String>) -> Result<Self, Error> {
        let info = context.client().server_info();
        let server = format!("nats://{}:{}", info.host, info.port);
        if let Some(subject) = &subject {
            match context.stream_by_subject(subject.as_str()).await {
                Ok(_) => {}
                Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                    return Err(Error::NoStream {
                        stream: format!("capturing subject {subject}"),
                        server,
                    });
                }
                Err(e) => {
                    return Err(Error::JetStream {
                        what: format!(
                            "looking up the stream that captures {subject} (is JetStream \
                             enabled, nats-server -js?)"
                        ),
                        server,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(NatsPublisher {
            context,
            server,
            subject,
        })
    }

    /// The default subject.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

/// `nats://[USER:PASSWORD@]HOST[:PORT][/SUBJECT]` into the server URL and the subject.
fn parse(url: &str) -> Result<(String, Option<String>), Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: redact_password(url),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected nats://HOST[:PORT][/SUBJECT]"))?;
    if scheme != "nats" && scheme != "tls" {
        return Err(invalid("the scheme must be nats:// or tls://"));
    }
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let connection_only = query.split('&').filter(|p| !p.is_empty()).all(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        crate::client::CREDENTIAL_PARAMS.contains(&name)
    });
    if !connection_only {
        return Err(invalid(
            "a publisher URL takes no options but the connection's (creds=, nkey=)",
        ));
    }
    let (authority, subject) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.rsplit('@').next().unwrap_or_default().is_empty() {
        return Err(invalid("no host"));
    }
    if subject.contains(char::is_whitespace) {
        return Err(invalid("a subject has no spaces"));
    }
    let subject = (!subject.is_empty()).then(|| subject.to_owned());
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Ok((format!("{scheme}://{authority}{query}"), subject))
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let Some(subject) = destination.or(self.subject.as_deref()) else {
            return Err(BrokerError::permanent(
                BROKER,
                format!("publish to {}", self.server),
                "the row names no destination and the relay's URL no default subject \
                 (nats://HOST/SUBJECT)",
            ));
        };
        let what = format!("publish to {subject} at {}", self.server);
        let mut headers = HeaderMap::new();
        for (name, value) in message.headers() {
            headers.append(name.as_str(), value.as_str());
        }
        if let Some(id) = message.dedup_id() {
            headers.insert(NATS_MESSAGE_ID, id);
        }
        // A dedup id of its own: the message id travels beside it.
        if let Some(id) = message.message_id()
            && message.dedup_id() != Some(id)
        {
            headers.insert(MESSAGE_ID_HEADER, id);
        }
        let payload = message.payload().to_vec().into();
        // A message too large or a subject no stream captures is refused (the relay parks
        // such a row in the end); a timeout or a lost connection may pass.
        let failed = |e: async_nats::jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => BrokerError::permanent(BROKER, what.clone(), e),
            PublishErrorKind::StreamNotFound => BrokerError::permanent(
                BROKER,
                what.clone(),
                format!("{e}: no JetStream stream captures the subject (create one)"),
            ),
            _ => BrokerError::new(BROKER, what.clone(), e),
        };
        let ack = self
            .context
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(failed)?;
        ack.await.map(drop).map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_the_default_subject() {
        assert_eq!(
            parse("nats://u:p@127.0.0.1:4222/orders.events").unwrap(),
            (
                "nats://u:p@127.0.0.1:4222".to_owned(),
                Some("orders.events".to_owned())
            )
        );
        assert_eq!(
            parse("nats://localhost").unwrap(),
            ("nats://localhost".to_owned(), None)
        );
        let err = parse("amqp://u:secret@host/x").unwrap_err().to_string();
        assert!(err.contains("u:***@host"), "{err}");
        assert!(parse("nats:///orders").is_err());
    }
}
