//! Options, and parsing them from a `mysql://` or `mariadb://` URL: oncely's own query
//! parameters are taken out, the rest are the driver's.

use std::str::FromStr;

use oncely_core::url::{count_param, flag_param, redact_password};
use oncely_core::{Error, Result};
use sqlx::mysql::MySqlConnectOptions;

/// Claim batches in flight at once, and as many complete batches. Fewer, larger batches did
/// better than one per connection in `oncely bench` here (BENCHMARKS.md); the other connections
/// serve release, get, purge and explicit `claim_many` calls.
pub(crate) const GROUP_IN_FLIGHT: usize = 2;

/// A store URL, parsed.
pub(crate) struct Options {
    /// The driver's options, from the URL without oncely's parameters (`mariadb://` read as
    /// `mysql://`).
    pub(crate) connect: MySqlConnectOptions,
    /// The URL without oncely's parameters.
    pub(crate) url: String,
    /// `oncely_migrate`: whether to apply the migrations on connect (default `true`).
    pub(crate) migrate: bool,
    /// `oncely_group_batches`: claim batches (and complete batches) in flight at once.
    pub(crate) group_batches: usize,
}

/// Parses a `mysql://` or `mariadb://` URL; see
/// [`MySqlStore::connect`](crate::MySqlStore::connect).
pub(crate) fn parse(url: &str) -> Result<Options> {
    let (url, migrate) = flag_param(url, "oncely_migrate", true)?;
    let (url, group_batches) = count_param(&url, "oncely_group_batches", GROUP_IN_FLIGHT)?;
    let driver_url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.clone(),
    };
    let connect = MySqlConnectOptions::from_str(&driver_url).map_err(|e| Error::InvalidUrl {
        url: redact_password(&url),
        reason: e.to_string(),
    })?;
    Ok(Options {
        connect,
        url,
        migrate,
        group_batches,
    })
}
