//! [`DynamoOptions`]: the `dynamodb://` URL, parsed.

use oncely_core::url::redact_password;
use oncely_core::{Error, Result};

/// `dynamodb[+http]://HOST[:PORT]/TABLE[?region=..&oncely_migrate=false]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DynamoOptions {
    /// `https://HOST[:PORT]` (`dynamodb://`) or `http://HOST[:PORT]` (`dynamodb+http://`, an
    /// emulator on loopback).
    pub endpoint: String,
    /// The table that holds the records (created if missing, unless `migrate` is off).
    pub table: String,
    /// The region signed for (`region=`, else `AWS_REGION`, else `us-east-1`).
    pub region: String,
    /// Whether to create the table (and turn its TTL on) if missing: `oncely_migrate=false`
    /// for a table made by infrastructure code.
    pub migrate: bool,
}

impl std::str::FromStr for DynamoOptions {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_password(url),
            reason,
        };
        let expected = "expected dynamodb://HOST[:PORT]/TABLE (dynamodb+http:// for an emulator)";
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid(expected.into()))?;
        let tls = match scheme {
            "dynamodb" => true,
            "dynamodb+http" => false,
            other => {
                return Err(invalid(format!(
                    "the scheme must be dynamodb or dynamodb+http, not `{other}`"
                )));
            }
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, table) = location.split_once('/').unwrap_or((location, ""));
        if host.is_empty() || table.is_empty() || table.contains('/') {
            return Err(invalid(expected.into()));
        }
        // DynamoDB's own rule for table names.
        if table.len() < 3
            || table.len() > 255
            || !table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(invalid(format!(
                "`{table}` is not a DynamoDB table name (3-255 of a-z, A-Z, 0-9, `_`, `-`, `.`)"
            )));
        }
        let mut options = DynamoOptions {
            endpoint: format!("{}://{host}", if tls { "https" } else { "http" }),
            table: table.to_owned(),
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            migrate: true,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (name, value) {
                ("region", _) => options.region = value.to_owned(),
                ("oncely_migrate", "true") => options.migrate = true,
                ("oncely_migrate", "false") => options.migrate = false,
                ("oncely_migrate", _) => {
                    return Err(invalid(format!(
                        "oncely_migrate must be true or false, not `{value}`"
                    )));
                }
                (other, _) => return Err(invalid(format!("unknown option `{other}`"))),
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_endpoint_table_and_options() {
        let o: DynamoOptions = "dynamodb+http://127.0.0.1:5998/oncely".parse().unwrap();
        assert_eq!(
            (o.endpoint.as_str(), o.table.as_str(), o.migrate),
            ("http://127.0.0.1:5998", "oncely", true)
        );
        let o: DynamoOptions =
            "dynamodb://dynamodb.eu-west-1.amazonaws.com/idem.records?region=eu-west-1&oncely_migrate=false"
                .parse()
                .unwrap();
        assert_eq!(o.endpoint, "https://dynamodb.eu-west-1.amazonaws.com");
        assert_eq!(
            (o.table.as_str(), o.region.as_str()),
            ("idem.records", "eu-west-1")
        );
        assert!(!o.migrate);
        for bad in [
            "dynamodb://host",
            "dynamodb://host/",
            "dynamodb://host/a/b",
            "dynamodb://host/ab",
            "dynamodb://host/t$ble",
            "dynamo://host/table",
            "dynamodb://host/table?colour=red",
            "dynamodb://host/table?oncely_migrate=maybe",
        ] {
            assert!(
                matches!(bad.parse::<DynamoOptions>(), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
