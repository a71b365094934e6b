//! The brokers to bootstrap from and how to reach them: TLS and SASL, as librdkafka names them.

use std::fmt;

use rdkafka::ClientConfig;

/// Where the user name for SASL is read when the URL has none.
pub const USERNAME_VARIABLE: &str = "ONCELY_KAFKA_USERNAME";
/// Where the password for SASL is read when the URL has none: it stays out of process lists.
pub const PASSWORD_VARIABLE: &str = "ONCELY_KAFKA_PASSWORD";

/// The URL parameters that say how to connect, librdkafka's own names.
const SECURITY_PARAMS: [&str; 5] = [
    "security.protocol",
    "sasl.mechanism",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
];

/// A Kafka cluster: its bootstrap brokers (`host:port[,host:port...]`) and how to connect to
/// them. From a URL, `kafka://[USER:PASSWORD@]HOST[:PORT][,...][/TOPIC]?security.protocol=...`
/// (see the [crate docs](crate)); from a plain `host:port` list, with no security.
///
/// ```
/// use oncely_kafka::Cluster;
///
/// let plain = Cluster::from("127.0.0.1:9092");
/// assert_eq!(plain.client_config().get("security.protocol"), None);
///
/// let cloud = Cluster::from_url("kafka://KEY:SECRET@pkc-1.eu-west-1.aws.confluent.cloud:9092/orders")?;
/// let config = cloud.client_config();
/// assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
/// assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
/// assert_eq!(config.get("sasl.username"), Some("KEY"));
/// assert!(!format!("{cloud:?}").contains("SECRET"));
/// # Ok::<(), oncely_kafka::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    brokers: String,
    /// librdkafka settings, in the order given.
    security: Vec<(String, String)>,
}

impl Cluster {
    /// The cluster a `kafka://` URL names, its topic and options ignored.
    pub fn from_url(url: &str) -> Result<Cluster, crate::Error> {
        crate::options::locate(url)
            .map(|(cluster, _, _)| cluster)
            .map_err(|reason| crate::Error::InvalidUrl {
                url: oncely_core::url::redact_password(url),
                reason,
            })
    }

    /// The bootstrap brokers, `host:port[,host:port...]`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// A librdkafka configuration with the bootstrap brokers, the security settings and
    /// librdkafka's own log cut to errors: the start of every client here, and of your own
    /// producers, consumers or admin clients beside a source.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            // librdkafka logs through the `log` crate; oncely logs through tracing.
            .set("log_level", "3");
        for (name, value) in &self.security {
            config.set(name, value);
        }
        config
    }

    /// `brokers` with the security settings of the URL query `query` (`name=value&...`) and
    /// the credentials `userinfo` (`USER:PASSWORD`, percent-encoded) or the environment; the
    /// query's other parameters are given back.
    pub(crate) fn with_security(
        brokers: String,
        userinfo: Option<&str>,
        query: &str,
    ) -> Result<(Cluster, String), String> {
        let mut security = Vec::new();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sasl.username" | "sasl.password" => {
                    return Err(format!(
                        "`{name}=` does not go in the query: put the user and password in the \
                         URL (kafka://USER:PASSWORD@HOST) or in {USERNAME_VARIABLE} and \
                         {PASSWORD_VARIABLE}"
                    ));
                }
                "ssl.endpoint.identification.algorithm" | "enable.ssl.certificate.verification" => {
                    return Err(format!(
                        "`{name}=` is not taken: the broker's certificate and name are always \
                         verified"
                    ));
                }
                _ if SECURITY_PARAMS.contains(&name) => {
                    if value.is_empty() {
                        return Err(format!("`{name}=` needs a value"));
                    }
                    let value = decode(value);
                    // librdkafka's own error does not name the file.
                    if name.ends_with(".location")
                        && let Err(e) = std::fs::metadata(&value)
                    {
                        return Err(format!("{name}: {value}: {e}"));
                    }
                    security.push((name.to_owned(), value));
                }
                _ => rest.push(pair),
            }
        }
        let credentials = match userinfo {
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').ok_or(
                    "credentials in the URL are USER:PASSWORD (kafka://USER:PASSWORD@HOST)",
                )?;
                Some((decode(user), decode(password)))
            }
            None => match (
                std::env::var(USERNAME_VARIABLE),
                std::env::var(PASSWORD_VARIABLE),
            ) {
                (Ok(user), Ok(password)) => Some((user, password)),
                _ => None,
            },
        };
        let setting = |security: &[(String, String)], name: &str| {
            security
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_uppercase())
        };
        let protocol = match setting(&security, "security.protocol") {
            Some(protocol) => protocol,
            // Credentials in the URL are for a managed cluster: SASL over TLS.
            None if userinfo.is_some() => {
                security.push(("security.protocol".into(), "SASL_SSL".into()));
                "SASL_SSL".into()
            }
            None => "PLAINTEXT".into(),
        };
        if !matches!(
            protocol.as_str(),
            "PLAINTEXT" | "SSL" | "SASL_PLAINTEXT" | "SASL_SSL"
        ) {
            return Err(format!(
                "security.protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, not \
                 `{protocol}`"
            ));
        }
        let sasl = protocol.starts_with("SASL");
        match setting(&security, "sasl.mechanism") {
            Some(m) if !sasl => {
                return Err(format!(
                    "sasl.mechanism={m} needs security.protocol=SASL_SSL or SASL_PLAINTEXT"
                ));
            }
            Some(m) if !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {
                return Err(format!(
                    "sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, not `{m}`"
                ));
            }
            Some(_) => {}
            // librdkafka's own default is GSSAPI (Kerberos), which this build has not.
            None if sasl => security.push(("sasl.mechanism".into(), "PLAIN".into())),
            None => {}
        }
        match credentials {
            Some((user, password)) if sasl => {
                security.push(("sasl.username".into(), user));
                security.push(("sasl.password".into(), password));
            }
            Some(_) if userinfo.is_some() => {
                return Err(format!(
                    "credentials in the URL need security.protocol=SASL_SSL or SASL_PLAINTEXT, \
                     not {protocol}"
                ));
            }
            None if sasl => {
                return Err(format!(
                    "{protocol} needs a user and password: kafka://USER:PASSWORD@HOST, or \
                     {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}"
                ));
            }
            _ => {}
        }
        Ok((Cluster { brokers, security }, rest.join("&")))
    }
}

impl From<&str> for Cluster {
    /// Plain brokers, `host:port[,host:port...]`: no TLS, no SASL.
    fn from(brokers: &str) -> Cluster {
        Cluster {
            brokers: brokers.to_owned(),
            security: Vec::new(),
        }
    }
}

impl From<&Cluster> for Cluster {
    fn from(cluster: &Cluster) -> Cluster {
        cluster.clone()
    }
}

impl From<&String> for Cluster {
    /// Plain brokers, `host:port[,host:port...]`: no TLS, no SASL.
    fn from(brokers: &String) -> Cluster {
        Cluster::from(brokers.as_str())
    }
}

impl From<String> for Cluster {
    /// Plain brokers, `host:port[,host:port...]`: no TLS, no SASL.
    fn from(brokers: String) -> Cluster {
        Cluster {
            brokers,
            security: Vec::new(),
        }
    }
}

/// The brokers, with the security protocol when there is one.
impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.security.iter().find(|(n, _)| n == "security.protocol") {
            Some((_, protocol)) => write!(f, "{} ({protocol})", self.brokers),
            None => f.write_str(&self.brokers),
        }
    }
}

/// The settings, the password hidden.
impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .security
            .iter()
            .map(|(name, value)| match name.as_str() {
                "sasl.password" => (name.as_str(), "***"),
                _ => (name.as_str(), value.as_str()),
            })
            .collect();
        f.debug_struct("Cluster")
            .field("brokers", &self.brokers)
            .field("security", &shown)
            .finish()
    }
}

/// Percent-decodes a URL's part (`%40` is `@`); kept as it is if it is not valid.
fn decode(text: &str) -> String {
    oncely_core::url::percent_decode(text).unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(userinfo: Option<&str>, query: &str) -> Result<(Cluster, String), String> {
        Cluster::with_security("h:9092".into(), userinfo, query)
    }

    fn get(cluster: &Cluster, name: &str) -> Option<String> {
        cluster.client_config().get(name).map(str::to_owned)
    }

    #[test]
    fn settings_map_to_librdkafka_and_the_rest_is_given_back() {
        let (c, rest) = cluster(
            Some("app:p%40ss"),
            "group=g&security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512\
             &ssl.ca.location=/etc/hostname&dlq=x",
        )
        .unwrap();
        assert_eq!(rest, "group=g&dlq=x");
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(get(&c, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&c, "ssl.ca.location").as_deref(), Some("/etc/hostname"));
        assert_eq!(get(&c, "sasl.username").as_deref(), Some("app"));
        assert_eq!(get(&c, "sasl.password").as_deref(), Some("p@ss"));
        assert!(!format!("{c:?}").contains("p@ss"));
        assert_eq!(c.to_string(), "h:9092 (SASL_SSL)");

        let (plain, _) = cluster(None, "group=g").unwrap();
        assert_eq!(get(&plain, "security.protocol"), None);
        let (tls, _) = cluster(None, "security.protocol=ssl").unwrap();
        assert_eq!(get(&tls, "sasl.mechanism"), None);
    }

    #[test]
    fn credentials_default_to_sasl_ssl_with_plain() {
        let (c, _) = cluster(Some("key:secret"), "").unwrap();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(get(&c, "sasl.mechanism").as_deref(), Some("PLAIN"));
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_reason() {
        for (userinfo, query, says) in [
            (
                None,
                "security.protocol=SASL_SSL",
                "needs a user and password",
            ),
            (
                Some("u:p"),
                "security.protocol=SSL",
                "credentials in the URL need",
            ),
            (Some("nopassword"), "", "USER:PASSWORD"),
            (None, "sasl.password=x", "does not go in the query"),
            (None, "security.protocol=TLS", "must be PLAINTEXT"),
            (Some("u:p"), "sasl.mechanism=GSSAPI", "must be PLAIN"),
            (None, "sasl.mechanism=PLAIN", "needs security.protocol"),
            (
                None,
                "ssl.endpoint.identification.algorithm=none",
                "always verified",
            ),
            (None, "ssl.ca.location=", "needs a value"),
            (None, "ssl.ca.location=/no/such/ca.pem", "/no/such/ca.pem"),
        ] {
            let error = cluster(userinfo, query).unwrap_err();
            assert!(error.contains(says), "{query}: {error}");
            assert!(!error.contains(":p@"), "{error}");
        }
    }
}
