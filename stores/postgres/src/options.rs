//! Options, and parsing them from a `postgres://` URL: oncely's own query parameters are taken
//! out, the rest are PostgreSQL's.

use std::str::FromStr;

use oncely_core::url::{count_param, flag_param, redact_password};
use oncely_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

use crate::partitions::Partitioning;

/// Claim batches in flight at once, and as many complete batches. Fewer, larger batches did
/// better than one per connection in `oncely bench` here (BENCHMARKS.md); the other connections
/// serve release, get, purge and explicit `claim_many` calls.
pub(crate) const GROUP_IN_FLIGHT: usize = 2;

/// A store URL, parsed.
pub(crate) struct Options {
    /// The driver's options, from the URL without oncely's parameters.
    pub(crate) connect: PgConnectOptions,
    /// The URL without oncely's parameters.
    pub(crate) url: String,
    /// `oncely_migrate`: whether to apply the migrations on connect (default `true`).
    pub(crate) migrate: bool,
    /// `oncely_partitions` and `oncely_partitions_ahead` (see [`crate::partitions`]).
    pub(crate) partitioning: Option<Partitioning>,
    /// `oncely_group_batches`: claim batches (and complete batches) in flight at once.
    pub(crate) group_batches: usize,
}

/// Parses a `postgres://` URL; see [`PostgresStore::connect`](crate::PostgresStore::connect).
pub(crate) fn parse(url: &str) -> Result<Options> {
    let (url, migrate) = flag_param(url, "oncely_migrate", true)?;
    let (url, partitioning) = Partitioning::from_url(&url)?;
    let (url, group_batches) = count_param(&url, "oncely_group_batches", GROUP_IN_FLIGHT)?;
    let connect = PgConnectOptions::from_str(&url).map_err(|e| Error::InvalidUrl {
        url: redact_password(&url),
        reason: e.to_string(),
    })?;
    Ok(Options {
        connect,
        url,
        migrate,
        partitioning,
        group_batches,
    })
}
