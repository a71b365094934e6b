//! Store and broker URLs: their scheme, and what a store or broker does with its connection string
//! before the driver sees it (its own parameters taken out, passwords kept out of messages).

use std::time::Duration;

use crate::{Error, Result};

/// Removes `name=value` from a URL's query; answers the URL and the value, so a store can take
/// its own parameters out before handing the rest to its driver.
pub fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, value)
}

/// The URL with any password replaced by `***`, for messages and logs. On NATS (`nats://`,
/// `tls://`) a user name alone is a token, a secret too, so it is replaced as well.
///
/// ```
/// use oncely_core::url::redact_password;
/// assert_eq!(redact_password("postgres://app:s3cret@db/app"), "postgres://app:***@db/app");
/// assert_eq!(redact_password("postgres://app@db/app"), "postgres://app@db/app");
/// assert_eq!(redact_password("nats://s3cret-token@h:4222"), "nats://***@h:4222");
/// ```
pub fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None if matches!(&url[..scheme_end], "nats" | "tls") => {
                    format!("{}***{}", &url[..scheme_end + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Takes the whole-number parameter `name` out of `url` (at least 1; `default` if absent).
pub fn count_param(url: &str, name: &str, default: usize) -> Result<(String, usize)> {
    let (rest, value) = take_param(url, name);
    let count = match value.as_deref().map(str::parse::<usize>) {
        None => default,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            return Err(Error::InvalidUrl {
                url: redact_password(&rest),
                reason: format!(
                    "{name} must be a whole number of at least 1, not `{}`",
                    value.unwrap_or_default()
                ),
            });
        }
    };
    Ok((rest, count))
}

/// Takes the boolean parameter `name` out of `url` (`true` or `false`, `default` if absent).
pub fn flag_param(url: &str, name: &str, default: bool) -> Result<(String, bool)> {
    let (rest, value) = take_param(url, name);
    let flag = match value.as_deref() {
        None => default,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(Error::InvalidUrl {
                url: redact_password(&rest),
                reason: format!("{name} must be true or false, not `{other}`"),
            });
        }
    };
    Ok((rest, flag))
}

/// A positive duration as URL parameters write it, in the grammar of [`crate::duration`]:
/// `250ms`, `30s`, `5m`, `1h`, `7d`, `1h30m`. The error names the parameter `name` and says what
/// is accepted.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(oncely_core::url::parse_duration("ack_wait", "5m"), Ok(Duration::from_secs(300)));
/// assert!(oncely_core::url::parse_duration("ack_wait", "5").is_err());
/// assert!(oncely_core::url::parse_duration("ack_wait", "0s").is_err());
/// ```
pub fn parse_duration(name: &str, value: &str) -> Result<Duration, String> {
    crate::duration::parse_positive(value).map_err(|_| {
        format!("{name} must be a positive duration like 500ms, 30s, 5m or 1h, not `{value}`")
    })
}

/// The scheme of a URL: what comes before its first `:` (`postgres` in
/// `postgres://db/app`, `sqlite` in `sqlite:oncely.db`); `None` if it has no `:`. Every
/// dispatch on a URL (which store, which broker) takes the scheme with this one function.
///
/// ```
/// use oncely_core::url::scheme;
/// assert_eq!(scheme("redis+cluster://h1:7000,h2:7000"), Some("redis+cluster"));
/// assert_eq!(scheme("sqlite:oncely.db"), Some("sqlite"));
/// assert_eq!(scheme("oncely.db"), None);
/// ```
pub fn scheme(url: &str) -> Option<&str> {
    url.split_once(':').map(|(scheme, _)| scheme)
}

/// Percent-decodes a URL part (`%40` is `@`); `None` if an escape is broken or the result is
/// not UTF-8.
///
/// ```
/// use oncely_core::url::percent_decode;
/// assert_eq!(percent_decode("p%40ss%3Aword").as_deref(), Some("p@ss:word"));
/// assert_eq!(percent_decode("100%"), None);
/// ```
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
            out.push((hex(i + 1)? * 16 + hex(i + 2)?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The hint after a store that could not be reached: about TLS when the driver's error is about
/// a certificate or a handshake ([`TLS_HINT`]), otherwise whether `server` (`"PostgreSQL"`, ...)
/// is running.
///
/// ```
/// use oncely_core::url::unreachable_hint;
/// assert!(unreachable_hint("Connection refused", "Redis").contains("is Redis running?"));
/// assert!(unreachable_hint("invalid peer certificate: UnknownIssuer", "Redis").contains("TLS"));
/// ```
pub fn unreachable_hint(error: &str, server: &str) -> String {
    if is_about_tls(error) {
        TLS_HINT.to_owned()
    } else {
        format!("(is {server} running? see README \"Stores\")")
    }
}

/// The hint after a connection that failed for TLS (see [`is_about_tls`]).
pub const TLS_HINT: &str = "(TLS: check the server's certificate, the roots the URL trusts and \
                            any client certificate it gives; see README \"Connecting to managed \
                            services: TLS\")";

/// Whether a driver's error `text` is about TLS: a certificate, a handshake, an alert the peer
/// sent (e.g. rustls' `received fatal alert: UnknownCA` when the server refuses the client's
/// certificate).
///
/// ```
/// use oncely_core::url::is_about_tls;
/// assert!(is_about_tls("IO error: received fatal alert: UnknownCA"));
/// assert!(!is_about_tls("Connection refused (os error 111)"));
/// ```
pub fn is_about_tls(error: &str) -> bool {
    let lower = error.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "ssl", "fatal alert"]
        .iter()
        .any(|word| lower.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_password("postgres://app@db/x"),
            "postgres://app@db/x"
        );
    }

    #[test]
    fn store_parameters_are_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "postgres://h/db?sslmode=disable&oncely_migrate=false",
                "oncely_migrate"
            ),
            (
                "postgres://h/db?sslmode=disable".to_owned(),
                Some("false".to_owned())
            )
        );
        assert_eq!(
            take_param("postgres://h/db", "oncely_migrate"),
            ("postgres://h/db".to_owned(), None)
        );
        assert!(flag_param("mysql://h/db?oncely_migrate=no", "oncely_migrate", true).is_err());
    }
}
