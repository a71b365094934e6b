//! Connecting to a NATS server named by a URL, credentials included: the NATS client takes the
//! server's address only, so a URL's user and password (or token), credentials file or nkey
//! seed file are handed to it here.

use async_nats::{Client, ConnectOptions};
use oncely_core::url::{redact_password, take_param};

use crate::Error;

/// The URL parameters [`connect`] takes: a credentials file and an nkey seed file.
pub(crate) const CREDENTIAL_PARAMS: [&str; 2] = ["creds", "nkey"];

/// Connects to `server` (`nats://[user:password@|token@]HOST[:PORT][?creds=PATH|?nkey=PATH]`,
/// or `tls://...`), authenticating as the URL says, as `nats-server` and the `nats` CLI expect:
///
/// - a user and password, or a lone token, in the URL (`--user`/`--pass`, `--auth`);
/// - `creds=PATH`: a credentials file (`.creds`: a user JWT and its nkey seed, as `nsc` and
///   Synadia Cloud give them);
/// - `nkey=PATH`: a file holding a user's nkey seed (`SU...`), as `nk -gen user` makes it.
///
/// A refusal never shows a secret; a file that cannot be used is named.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_nats::Error> {
/// let client = oncely_nats::connect("nats://app:s3cret@127.0.0.1:4222").await?;
/// let cloud = oncely_nats::connect("tls://connect.ngs.global?creds=/etc/nats/app.creds").await?;
/// # let _ = (client, cloud); Ok(()) }
/// ```
pub async fn connect(server: &str) -> Result<Client, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_password(server),
        reason,
    };
    let (rest, creds) = take_param(server, "creds");
    let (rest, nkey) = take_param(&rest, "nkey");
    if let Some((_, query)) = rest.split_once('?') {
        return Err(invalid(format!(
            "unknown connection option `{query}`; known: creds, nkey"
        )));
    }
    let (address, mut options) = split_credentials(&rest);
    match (creds, nkey) {
        (Some(_), Some(_)) => {
            return Err(invalid("give creds= or nkey=, not both".into()));
        }
        (Some(path), None) => {
            options = options
                .credentials_file(&path)
                .await
                .map_err(|e| invalid(format!("credentials file {path}: {e}")))?;
        }
        (None, Some(path)) => {
            let seed = std::fs::read_to_string(&path)
                .map_err(|e| invalid(format!("nkey seed file {path}: {e}")))?;
            let seed = seed.trim().to_owned();
            // A user's seed; its text is never shown.
            if !seed.starts_with("SU") {
                return Err(invalid(format!(
                    "nkey seed file {path}: not an nkey seed (SU...)"
                )));
            }
            options = options.nkey(seed);
        }
        (None, None) => {}
    }
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

/// Percent-decodes a URL's part (`%40` is `@`); kept as it is if it is not valid.
fn decode(text: &str) -> String {
    oncely_core::url::percent_decode(text).unwrap_or_else(|| text.to_owned())
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
