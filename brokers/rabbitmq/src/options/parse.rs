//! `amqp[s]://[USER:PASSWORD@]HOST[:PORT][/VHOST]/QUEUE[?dlq=NAME&prefetch=N&cacertfile=PATH
//! &certfile=PATH&keyfile=PATH]`, taken apart.

use std::str::FromStr;

use oncely_core::url::{percent_decode as decode, redact_password, take_param};

use super::{AmqpOptions, AmqpUrl};
use crate::Error;

/// The longest name AMQP allows for a queue, in bytes.
const MAX_NAME: usize = 255;

pub(super) fn parse(url: &str) -> Result<AmqpUrl, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_password(url),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected amqp://HOST[:PORT][/VHOST]/QUEUE".into()))?;
    if !matches!(scheme, "amqp" | "amqps") {
        return Err(invalid(format!(
            "the scheme must be amqp or amqps, not `{scheme}`"
        )));
    }

    let (rest, dlq) = take_param(rest, "dlq");
    // RabbitMQ's own URI parameter names for TLS.
    let (rest, ca_file) = take_param(&rest, "cacertfile");
    let (rest, cert_file) = take_param(&rest, "certfile");
    let (rest, key_file) = take_param(&rest, "keyfile");
    for (name, given) in [
        ("cacertfile", ca_file.is_some()),
        ("certfile", cert_file.is_some()),
        ("keyfile", key_file.is_some()),
    ] {
        if given && scheme != "amqps" {
            return Err(invalid(format!(
                "{name}= is for TLS: use amqps:// (or leave the parameter out)"
            )));
        }
    }
    let client_certificate = match (cert_file, key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        _ => {
            return Err(invalid(
                "a client certificate needs both certfile= (its PEM chain) and keyfile= (its PEM \
                 private key)"
                    .into(),
            ));
        }
    };
    if take_param(&rest, "verify").1.is_some() {
        return Err(invalid(
            "`verify=` is not supported: the server's certificate is always verified (add its \
             root with cacertfile=)"
                .into(),
        ));
    }
    let (rest, prefetch) = take_param(&rest, "prefetch");
    let (rest, queue_param) = take_param(&rest, "queue");
    if queue_param.is_some() {
        return Err(invalid(
            "the queue is the last path segment (amqp://HOST/VHOST/QUEUE), not a `queue=` parameter"
                .into(),
        ));
    }
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest.as_str(), None),
    };
    let (authority, path) = location.split_once('/').unwrap_or((location, ""));
    if authority.rsplit('@').next().unwrap_or_default().is_empty() {
        return Err(invalid("no host".into()));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let (vhost, queue) = match segments.as_slice() {
        [queue] => (None, *queue),
        [vhost, queue] => (Some(*vhost), *queue),
        _ => {
            return Err(invalid(
                "expected at most two path segments, /VHOST/QUEUE (write a `/` inside a vhost or \
                 queue name as %2f)"
                    .into(),
            ));
        }
    };
    if queue.is_empty() {
        return Err(invalid(
            "no queue: name it as the last path segment, amqp://HOST[/VHOST]/QUEUE".into(),
        ));
    }
    let queue = decode(queue)
        .ok_or_else(|| invalid(format!("`{queue}` is not a valid percent-encoded name")))?;
    if let Some(vhost) = vhost {
        decode(vhost)
            .ok_or_else(|| invalid(format!("`{vhost}` is not a valid percent-encoded vhost")))?;
    }

    let mut options = AmqpOptions::new(queue);
    if dlq.as_deref() == Some("none") {
        options = options.without_dead_letters();
    } else if let Some(dlq) = dlq {
        let dlq = decode(&dlq)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| invalid(format!("dlq must name a queue, not `{dlq}`")))?;
        options = options.dead_letter_queue(dlq);
    }
    if let Some(n) = prefetch {
        match n.parse::<u16>() {
            Ok(n) if n >= 1 => options = options.prefetch(n),
            _ => {
                return Err(invalid(format!(
                    "prefetch must be a whole number from 1 to 65535, not `{n}`"
                )));
            }
        }
    }
    for name in [
        options.queue_name().to_owned(),
        options.dead_letter_queue_name(),
    ] {
        if name.len() > MAX_NAME {
            return Err(invalid(format!(
                "queue name `{name}` is longer than AMQP's {MAX_NAME} bytes"
            )));
        }
    }

    let mut connection = format!("{scheme}://{authority}");
    if let Some(vhost) = vhost {
        connection.push('/');
        connection.push_str(vhost);
    }
    if let Some(query) = query {
        connection.push('?');
        connection.push_str(query);
    }
    lapin::uri::AMQPUri::from_str(&connection).map_err(invalid)?;
    Ok(AmqpUrl {
        connection,
        options,
        ca_file: ca_file.map(Into::into),
        client_certificate,
    })
}

/// Percent-encodes what cannot stand in a path segment as it is.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> AmqpUrl {
        url.parse().unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn reason(url: &str) -> String {
        match url.parse::<AmqpUrl>() {
            Err(Error::InvalidUrl { url, reason }) => {
                assert!(!url.contains("secret"), "the password is redacted: {url}");
                reason
            }
            other => panic!("{url}: expected an invalid URL, got {other:?}"),
        }
    }

    #[test]
    fn the_last_segment_is_the_queue_and_the_one_before_the_vhost() {
        let url = parsed("amqp://guest:guest@127.0.0.1:5672/%2f/orders");
        assert_eq!(
            url.connection_url(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(url.options().queue_name(), "orders");

        let url = parsed("amqp://rabbit/orders");
        assert_eq!(url.connection_url(), "amqp://rabbit");
        assert_eq!(url.options().queue_name(), "orders");

        let url = parsed("amqp://rabbit/shop/orders%2Feu");
        assert_eq!(url.connection_url(), "amqp://rabbit/shop");
        assert_eq!(url.options().queue_name(), "orders/eu");
        assert_eq!(url.to_string(), "amqp://rabbit/shop/orders%2Feu");
    }

    #[test]
    fn dlq_and_prefetch_are_taken_and_the_rest_goes_to_lapin() {
        let url = parsed("amqp://u:secret@h/%2f/orders?dlq=orders.failed&heartbeat=30&prefetch=7");
        assert_eq!(url.options().dead_letter_queue_name(), "orders.failed");
        assert_eq!(url.options().prefetch_count(), 7);
        assert_eq!(url.connection_url(), "amqp://u:secret@h/%2f?heartbeat=30");
        assert!(!format!("{url:?}").contains("secret"));

        let url = parsed("amqp://h/orders");
        assert_eq!(url.options().dead_letter_queue_name(), "orders.dlq");
        assert_eq!(
            url.options().prefetch_count(),
            super::super::DEFAULT_PREFETCH
        );
    }

    #[test]
    fn invalid_urls_say_why_and_redact_the_password() {
        assert!(reason("amqp://u:secret@h/%2f/").contains("no queue"));
        assert!(reason("amqp://u:secret@h").contains("no queue"));
        assert!(reason("amqp://u:secret@h/q?cacertfile=/ca.pem").contains("amqps://"));
        assert!(reason("amqps://u:secret@h/q?verify=verify_none").contains("always verified"));
        assert!(reason("amqps://u:secret@h/q?certfile=/c.pem").contains("both certfile="));
        assert!(reason("amqps://u:secret@h/q?keyfile=/k.pem").contains("both certfile="));
        assert!(reason("amqp://u:secret@h/q?certfile=/c.pem&keyfile=/k.pem").contains("amqps://"));
        assert!(reason("amqps://u:secret@h/q?verify=verify_none").contains("always verified"));
        let with_certificate = parsed("amqps://u:secret@h/q?certfile=/c.pem&keyfile=/k.pem");
        assert_eq!(
            with_certificate.client_certificate,
            Some(("/c.pem".into(), "/k.pem".into()))
        );
        assert_eq!(with_certificate.connection, "amqps://u:secret@h");
        assert!(reason("http://u:secret@h/q").contains("scheme"));
        assert!(reason("amqp://u:secret@h/a/b/c").contains("two path segments"));
        assert!(reason("amqp://u:secret@h/q?prefetch=0").contains("prefetch"));
        assert!(reason("amqp://u:secret@h/q?prefetch=70000").contains("prefetch"));
        assert!(reason("amqp://u:secret@h/q?dlq=").contains("dlq"));
        assert!(reason("amqp://u:secret@h/q?queue=q").contains("last path segment"));
        assert!(reason("amqp://u:secret@h/%zz").contains("percent"));
        assert!(reason("amqp://u:secret@/q").contains("host"));
        assert!(reason("orders").contains("amqp://"));
        let long = "q".repeat(300);
        assert!(reason(&format!("amqp://h/{long}")).contains("255"));
    }

    #[test]
    fn dlq_none_is_a_source_without_dead_letters() {
        let none = parsed("amqp://h/%2f/q.dlq?dlq=none");
        assert_eq!(none.options().dead_letter_queue_name(), "");
        assert_eq!(
            parsed("amqp://h/%2f/q").options().dead_letter_queue_name(),
            "q.dlq"
        );
    }
}
