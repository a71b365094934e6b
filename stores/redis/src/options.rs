//! Options, and parsing them from a store URL: which server(s), and oncely's own query
//! parameters.

use std::path::PathBuf;
use std::time::Duration;

use oncely_core::Error;

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "oncely";

/// The native-expiry grace used when the URL names none (see the crate docs, "Expiry").
pub const DEFAULT_TTL_GRACE: Duration = Duration::from_secs(3600);

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server: a URL the redis crate understands (`redis://`, `rediss://` for TLS,
    /// `redis+unix://`, `unix://`).
    Single(String),
    /// A Redis Cluster: one `redis://` (or, over TLS, `rediss://`) URL per seed node.
    Cluster(Vec<String>),
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    pub target: Target,
    /// Goes in front of every key (`prefix=`), so several applications share one Redis.
    pub prefix: String,
    /// Native expiry backstop: `None` when `ttl_grace=off`.
    pub ttl_grace: Option<Duration>,
    /// `cacert=PATH` (with `rediss://` or `rediss+cluster://`): the PEM roots a TLS server's
    /// certificate must chain to, instead of the system's.
    pub tls_root: Option<PathBuf>,
    /// The URL with any password replaced, for messages.
    pub shown: String,
}

const ACCEPTED: &str = "expected redis://[user:password@]host[:port][/db] (rediss:// for TLS), \
     redis+cluster://[user:password@]host:port,host:port,... (rediss+cluster:// for TLS), \
     redis+unix:///path or unix:///path, with optional ?prefix=NAME&ttl_grace=SECONDS|off \
     (and cacert=PATH over TLS)";

/// Parses a store URL. See the crate docs for the forms.
pub(crate) fn parse(url: &str) -> Result<Options, Error> {
    let shown = redact(url);
    let invalid = |reason: String| Error::InvalidUrl {
        url: shown.clone(),
        reason,
    };
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut prefix = DEFAULT_PREFIX.to_owned();
    let mut ttl_grace = Some(DEFAULT_TTL_GRACE);
    let mut tls_root = None;
    // Parameters that are not ours are the redis crate's own (`protocol=resp3`, ...).
    let mut passed = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("prefix", value)) => {
                if value.is_empty() || value.contains(['{', '}']) {
                    return Err(invalid(format!(
                        "prefix `{value}` must be non-empty and contain no `{{` or `}}` \
                         (braces would change which cluster slot a key lands in)"
                    )));
                }
                prefix = value.to_owned();
            }
            Some(("ttl_grace", "off")) => ttl_grace = None,
            Some(("ttl_grace", value)) => match value.parse::<u64>() {
                Ok(secs) if secs > 0 => ttl_grace = Some(Duration::from_secs(secs)),
                _ => {
                    return Err(invalid(format!(
                        "ttl_grace must be a whole number of seconds (at least 1) or `off`, \
                         not `{value}`"
                    )));
                }
            },
            Some(("cacert", path)) if !path.is_empty() => tls_root = Some(PathBuf::from(path)),
            Some(("cluster", _)) => {
                return Err(invalid(
                    "for a Redis Cluster use redis+cluster://host:port,host:port,...".to_owned(),
                ));
            }
            _ if pair.is_empty() => {}
            _ => passed.push(pair),
        }
    }
    let passed = if passed.is_empty() {
        String::new()
    } else {
        format!("?{}", passed.join("&"))
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(invalid(ACCEPTED.to_owned()));
    };
    if tls_root.is_some() && !matches!(scheme, "rediss" | "rediss+cluster") {
        return Err(invalid(
            "cacert= is for TLS: use rediss://host:port?cacert=PATH \
             (rediss+cluster://... for a cluster)"
                .to_owned(),
        ));
    }
    let target = match scheme {
        "redis" | "rediss" | "redis+unix" | "unix" => Target::Single(format!("{base}{passed}")),
        "redis+cluster" => Target::Cluster(cluster_nodes("redis", rest, &passed).map_err(invalid)?),
        "rediss+cluster" => {
            Target::Cluster(cluster_nodes("rediss", rest, &passed).map_err(invalid)?)
        }
        _ => return Err(invalid(ACCEPTED.to_owned())),
    };
    Ok(Options {
        target,
        prefix,
        ttl_grace,
        tls_root,
        shown,
    })
}

/// `[userinfo@]h1:p1,h2:p2[/0]` -> one `scheme://` URL per node.
fn cluster_nodes(scheme: &str, rest: &str, passed: &str) -> Result<Vec<String>, String> {
    let (authority, path) = match rest.find('/') {
        // A slash inside the userinfo (a password) is not the path: look after the '@'.
        Some(_) => {
            let after_at = rest.rfind('@').map_or(0, |at| at + 1);
            match rest[after_at..].find('/') {
                Some(slash) => rest.split_at(after_at + slash),
                None => (rest, ""),
            }
        }
        None => (rest, ""),
    };
    if !matches!(path, "" | "/" | "/0") {
        return Err(format!(
            "a Redis Cluster has only database 0, not `{}`",
            &path[1..]
        ));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|host| {
            if host.is_empty() {
                return Err("empty node in the host list".to_owned());
            }
            let host = if host.contains(':') {
                host.to_owned()
            } else {
                format!("{host}:6379")
            };
            Ok(format!("{scheme}://{userinfo}{host}{passed}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(nodes)
}

pub(crate) use oncely_core::url::redact_password as redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_url_keeps_database_and_foreign_parameters() {
        let opts = parse("redis://127.0.0.1:6379/2?prefix=app&protocol=resp3").unwrap();
        assert_eq!(
            opts.target,
            Target::Single("redis://127.0.0.1:6379/2?protocol=resp3".to_owned())
        );
        assert_eq!(opts.prefix, "app");
        assert_eq!(opts.ttl_grace, Some(DEFAULT_TTL_GRACE));
    }

    #[test]
    fn defaults_apply_without_parameters() {
        let opts = parse("redis://localhost").unwrap();
        assert_eq!(opts.target, Target::Single("redis://localhost".to_owned()));
        assert_eq!(opts.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn cluster_url_lists_every_node_with_credentials() {
        let opts = parse("redis+cluster://:pw@h1:7000,h2,h3:7002/?prefix=p&ttl_grace=off").unwrap();
        assert_eq!(
            opts.target,
            Target::Cluster(vec![
                "redis://:pw@h1:7000".to_owned(),
                "redis://:pw@h2:6379".to_owned(),
                "redis://:pw@h3:7002".to_owned(),
            ])
        );
        assert_eq!(opts.ttl_grace, None);
        assert_eq!(
            opts.shown,
            "redis+cluster://:***@h1:7000,h2,h3:7002/?prefix=p&ttl_grace=off"
        );
    }

    #[test]
    fn tls_cluster_url_gives_rediss_nodes_and_keeps_cacert() {
        let opts =
            parse("rediss+cluster://app:pw@h1:7000,h2:7001?cacert=/ca.pem&prefix=p").unwrap();
        assert_eq!(
            opts.target,
            Target::Cluster(vec![
                "rediss://app:pw@h1:7000".to_owned(),
                "rediss://app:pw@h2:7001".to_owned(),
            ])
        );
        assert_eq!(opts.tls_root, Some(PathBuf::from("/ca.pem")));
        assert_eq!(opts.prefix, "p");
        assert_eq!(
            opts.shown,
            "rediss+cluster://app:***@h1:7000,h2:7001?cacert=/ca.pem&prefix=p"
        );
    }

    #[test]
    fn unusable_urls_say_what_is_accepted() {
        for (url, says) in [
            ("redis+cluster://h1:1,h2:2/3", "only database 0"),
            ("redis+cluster://h1:1,,h2:2", "empty node"),
            ("rediss+cluster://h1:1,h2:2/1", "only database 0"),
            ("redis://h?cacert=/ca.pem", "cacert= is for TLS"),
            ("redis+cluster://h1:1?cacert=/ca.pem", "cacert= is for TLS"),
            ("redis://h?cluster=true", "redis+cluster://"),
            ("redis://h?prefix=a{b}", "prefix"),
            ("redis://h?prefix=", "prefix"),
            ("redis://h?ttl_grace=0", "ttl_grace"),
            ("redis://h?ttl_grace=soon", "ttl_grace"),
            ("memcached://h", "expected redis://"),
            ("localhost:6379", "expected redis://"),
        ] {
            match parse(url) {
                Err(Error::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(says), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://app:s3cret@db:6379/0"),
            "redis://app:***@db:6379/0"
        );
        assert_eq!(redact("redis://:s3cret@db"), "redis://:***@db");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
        let tls = parse("rediss://app:s3cret@db:6380?cacert=/etc/ca.pem").unwrap();
        assert_eq!(tls.shown, "rediss://app:***@db:6380?cacert=/etc/ca.pem");
        assert_eq!(tls.tls_root, Some(PathBuf::from("/etc/ca.pem")));
        match parse("rediss+cluster://app:s3cret@db:1,db:2/5") {
            Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
            Ok(_) => panic!("database 5 of a cluster accepted"),
        }
    }
}
