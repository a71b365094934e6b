//! Parsing `kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC?group=NAME[&OPTIONS]` into
//! [`KafkaOptions`].

use oncely_core::url::{parse_duration, redact_password, take_param};

use super::{DEFAULT_PORT, KafkaOptions, Order};
use crate::Cluster;
use crate::Error;

/// `url` as options (see the [crate docs](crate)).
pub(super) fn parse(url: &str) -> Result<KafkaOptions, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_password(url),
        reason,
    };
    let (cluster, topic, query) = locate(url).map_err(invalid)?;
    let topic =
        topic.ok_or_else(|| invalid("no topic: kafka://HOST[:PORT]/TOPIC?group=NAME".into()))?;
    let rest = format!("x?{query}");
    let (rest, group) = take_param(&rest, "group");
    let group = group.filter(|g| !g.is_empty()).ok_or_else(|| {
        invalid("no consumer group: add ?group=NAME (members of one group share the topic)".into())
    })?;
    let mut options = KafkaOptions::new(cluster, topic, group);
    let (_, query) = rest.split_once('?').unwrap_or((&rest, ""));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "dlq" if value == "none" => options.dead_letters = false,
            "dlq" if !value.is_empty() => options.dead_letter_topic = Some(value.to_owned()),
            "create_dlq" => {
                options.create_dead_letter_topic = flag(name, value).map_err(invalid)?
            }
            "session_timeout" => {
                options.session_timeout = parse_duration(name, value).map_err(invalid)?
            }
            "commit_interval" => {
                options.commit_interval = parse_duration(name, value).map_err(invalid)?
            }
            "revoke_wait" => options.revoke_wait = parse_duration(name, value).map_err(invalid)?,
            "order" => {
                options.order = match value {
                    "key" => Order::Key,
                    "partition" => Order::Partition,
                    _ => {
                        return Err(invalid(format!(
                            "order `{value}`: `key` or `partition` expected"
                        )));
                    }
                }
            }
            _ => {
                return Err(invalid(format!(
                    "unknown option `{name}`; known: group, dlq, create_dlq, session_timeout, \
                     commit_interval, revoke_wait, order, security.protocol, sasl.mechanism, \
                     ssl.ca.location, ssl.certificate.location, ssl.key.location"
                )));
            }
        }
    }
    Ok(options)
}

fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{name} must be true or false, not `{other}`")),
    }
}

/// `kafka://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/TOPIC][?QUERY]` taken apart: the
/// cluster (the bootstrap list, each host with its port, and the security settings of the
/// credentials and the query), the topic if any, and the rest of the query.
pub(crate) fn locate(url: &str) -> Result<(Cluster, Option<String>, String), String> {
    let rest = match url.split_once("://") {
        Some(("kafka", rest)) => rest,
        Some((other, _)) => return Err(format!("the scheme must be kafka, not `{other}`")),
        None => return Err("expected kafka://HOST[:PORT]/TOPIC".into()),
    };
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hosts, topic) = match location.split_once('/') {
        Some((hosts, topic)) => (hosts, Some(topic)),
        None => (location, None),
    };
    let (userinfo, hosts) = match hosts.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, hosts),
    };
    let mut brokers = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err("no host".into());
        }
        match host.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_err() => {
                return Err(format!("`{port}` is not a port"));
            }
            Some(_) => brokers.push(host.to_owned()),
            None => brokers.push(format!("{host}:{DEFAULT_PORT}")),
        }
    }
    let topic = match topic {
        None | Some("") => None,
        Some(topic) if !valid_topic(topic) => {
            return Err(format!(
                "`{topic}` is not a Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
            ));
        }
        Some(topic) => Some(topic.to_owned()),
    };
    let (cluster, rest) = Cluster::with_security(brokers.join(","), userinfo, query)?;
    Ok((cluster, topic, rest))
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_cli_form_parses_with_its_defaults() {
        let options: KafkaOptions = "kafka://127.0.0.1/orders?group=billing".parse().unwrap();
        assert_eq!(
            options,
            KafkaOptions::new("127.0.0.1:9092", "orders", "billing")
        );
        let full: KafkaOptions = "kafka://a:1,b/t?group=g&dlq=t.failed&create_dlq=false&commit_interval=1s&revoke_wait=5s&order=partition"
            .parse()
            .unwrap();
        assert_eq!(full.cluster.brokers(), "a:1,b:9092");
        assert_eq!(full.dead_letter_topic_or_default(), "t.failed");
        assert!(!full.create_dead_letter_topic);
        assert_eq!(full.commit_interval, Duration::from_secs(1));
        assert_eq!(full.revoke_wait, Duration::from_secs(5));
        assert_eq!(full.order, Order::Partition);
        assert_eq!(options.order, Order::Key, "by default");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("nats://h/t?group=g", "scheme"),
            ("kafka://h/t", "group"),
            ("kafka://h?group=g", "topic"),
            ("kafka://h/a/b?group=g", "topic name"),
            ("kafka://h:x/t?group=g", "port"),
            (
                "kafka://u:p@h/t?group=g&security.protocol=SSL",
                "credentials",
            ),
            ("kafka://h/t?group=g&batch=3", "unknown option `batch`"),
            (
                "kafka://h/t?group=g&session_timeout=10",
                "positive duration",
            ),
        ] {
            let error = url.parse::<KafkaOptions>().unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn dlq_none_is_a_source_without_dead_letters() {
        let none: KafkaOptions = "kafka://h/t.dlq?group=g&dlq=none".parse().unwrap();
        assert!(!none.dead_letters);
        let some: KafkaOptions = "kafka://h/t?group=g".parse().unwrap();
        assert!(some.dead_letters);
    }
}
