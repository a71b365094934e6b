//! Connecting to a NATS server named by a URL, credentials included: the NATS client takes the
//! server's address only, so a URL's user and password (or token) are handed to it here.

use async_nats::{Client, ConnectOptions};
use oncely_core::url::redact_password;

use crate::Error;

/// Connects to `server` (`nats://[user:password@|token@]HOST[:PORT]`, or `tls://...`): a user
/// and password, or a lone token, in the URL authenticate the connection, as `nats-server`'s
/// `--user`/`--pass` and `--auth` expect. A refusal never shows the secret.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_nats::Error> {
/// let client = oncely_nats::connect("nats://app:s3cret@127.0.0.1:4222").await?;
/// # let _ = client; Ok(()) }
/// ```
pub async fn connect(server: &str) -> Result<Client, Error> {
    let (address, options) = split_credentials(server);
    async_nats::connect_with_options(address.as_str(), options)
        .await
        .map_err(|e| Error::Unreachable {
            server: redact_password(server),
            source: e.into(),
        })
}

/// The server's address without its userinfo, and the options that carry the userinfo.
fn split_credentials(server: &str) -> (String, ConnectOptions) {
    let options = ConnectOptions::new();
    let Some((scheme, rest)) = server.split_once("://") else {
        return (server.to_owned(), options);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (server.to_owned(), options);
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let options = match userinfo.split_once(':') {
        Some((user, password)) => options.user_and_password(decode(user), decode(password)),
        None => options.token(decode(userinfo)),
    };
    (format!("{scheme}://{host}"), options)
}

/// Percent-decodes a URL's user or password (`%40` is `@`).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_userinfo_leaves_the_address() {
        assert_eq!(split_credentials("nats://a:b@h:4222").0, "nats://h:4222");
        assert_eq!(split_credentials("tls://tok@h:4222").0, "tls://h:4222");
        assert_eq!(split_credentials("nats://h:4222").0, "nats://h:4222");
        assert_eq!(decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(decode("100%"), "100%");
    }
}
