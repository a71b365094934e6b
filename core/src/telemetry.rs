//! The metrics oncely records, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The library records; the application chooses where the numbers go by installing a recorder
//! (`metrics-exporter-prometheus`, an OpenTelemetry bridge, statsd...). Without one, recording
//! costs an atomic load. The `oncely` command installs a Prometheus recorder and serves it on
//! `--metrics-addr`. [`describe`] gives each metric its help text for exporters that show one.
//!
//! Names follow Prometheus conventions: counters end in `_total`, durations are histograms in
//! seconds (`_seconds`). What each counts:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | [`CLAIMS`] | `scope`, `outcome` (`new`, `duplicate`, `in_progress`, `conflict`) | claims answered |
//! | [`TAKEOVERS`] | `scope` | new claims that took a key over from a holder whose lease ran out |
//! | [`RENEWALS`] | `scope` | leases renewed |
//! | [`CLAIMS_LOST`] | `operation` (`complete`, `release`, `extend`) | a holder found its claim gone |
//! | [`STORE_CALL_SECONDS`] | `operation` | each store call's duration, errors included |
//! | [`STORE_ERRORS`] | `operation`, `kind` (`unavailable`, `backend`, `corrupt`, `full`, `other`) | store calls that failed |
//! | [`GROUP_COMMIT_BATCH`] | `operation` (`claim`, `complete`) | callers served by one store round trip |
//! | [`PURGE_RUNS`] | | purge runs that held the purge lease |
//! | [`PURGED`] | | expired records removed |
//! | [`FORGOTTEN`] | `outcome` (`completed`, `in_progress`, `held`, `absent`) | keys asked to be forgotten |

use std::future::Future;
use std::time::Instant;

use crate::{ClaimOutcome, Error, Result, Scope};

/// Claims answered, by `scope` and `outcome`.
pub const CLAIMS: &str = "oncely_claims_total";
/// New claims that took a key over after its holder's lease ran out, by `scope`.
pub const TAKEOVERS: &str = "oncely_lease_takeovers_total";
/// Leases renewed, by `scope`.
pub const RENEWALS: &str = "oncely_lease_renewals_total";
/// Completions, releases and renewals refused because the claim was no longer held, by
/// `operation`.
pub const CLAIMS_LOST: &str = "oncely_claims_lost_total";
/// Store calls' durations in seconds, by `operation`.
pub const STORE_CALL_SECONDS: &str = "oncely_store_call_seconds";
/// Store calls that failed, by `operation` and `kind`.
pub const STORE_ERRORS: &str = "oncely_store_errors_total";
/// Callers whose claims or completions one group-commit round trip carried, by `operation`.
pub const GROUP_COMMIT_BATCH: &str = "oncely_group_commit_batch_size";
/// Purge runs that held the purge lease.
pub const PURGE_RUNS: &str = "oncely_purge_runs_total";
/// Expired records purged.
pub const PURGED: &str = "oncely_purged_records_total";
/// Keys asked to be forgotten, by `outcome`.
pub const FORGOTTEN: &str = "oncely_forgotten_total";

/// Registers each metric's unit and help text with the installed recorder. Call it once after
/// installing one; recording works without it.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(CLAIMS, "Claims answered, by scope and outcome.");
    describe_counter!(
        TAKEOVERS,
        "New claims that took a key over after its holder's lease ran out."
    );
    describe_counter!(RENEWALS, "Leases renewed.");
    describe_counter!(
        CLAIMS_LOST,
        "Completions, releases and renewals refused: the claim was no longer held."
    );
    describe_histogram!(
        STORE_CALL_SECONDS,
        Unit::Seconds,
        "Store calls' durations, by operation."
    );
    describe_counter!(
        STORE_ERRORS,
        "Store calls that failed, by operation and kind."
    );
    describe_histogram!(
        GROUP_COMMIT_BATCH,
        Unit::Count,
        "Callers one group-commit round trip carried."
    );
    describe_counter!(PURGE_RUNS, "Purge runs that held the purge lease.");
    describe_counter!(PURGED, "Expired records purged.");
    describe_counter!(FORGOTTEN, "Keys asked to be forgotten, by outcome.");
}

/// Times one store call and counts its failure by kind (a lost claim as such).
pub(crate) async fn timed<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!(STORE_CALL_SECONDS, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &result {
        failed(operation, error);
    }
    result
}

/// Counts a failed store call.
pub(crate) fn failed(operation: &'static str, error: &Error) {
    if matches!(error, Error::ClaimLost { .. }) {
        metrics::counter!(CLAIMS_LOST, "operation" => operation).increment(1);
        return;
    }
    let kind = match error {
        Error::Unavailable { .. } => "unavailable",
        Error::Backend { .. } => "backend",
        Error::Corrupt { .. } => "corrupt",
        Error::StoreFull { .. } => "full",
        _ => "other",
    };
    metrics::counter!(STORE_ERRORS, "operation" => operation, "kind" => kind).increment(1);
}

/// Counts a claim's answer (and a takeover, for a new claim past the first attempt).
pub(crate) fn claimed(scope: &Scope, outcome: &ClaimOutcome) {
    let scope = scope.shared();
    if let ClaimOutcome::New(claim) = outcome
        && claim.attempt > 1
    {
        metrics::counter!(TAKEOVERS, "scope" => scope.clone()).increment(1);
    }
    metrics::counter!(CLAIMS, "scope" => scope, "outcome" => outcome.kind()).increment(1);
}

/// Counts a renewed lease.
pub(crate) fn renewed(scope: &Scope) {
    metrics::counter!(RENEWALS, "scope" => scope.shared()).increment(1);
}

/// Records how many callers one group-commit round trip carried.
pub(crate) fn grouped(operation: &'static str, callers: usize) {
    metrics::histogram!(GROUP_COMMIT_BATCH, "operation" => operation).record(callers as f64);
}
