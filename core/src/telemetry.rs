//! The metrics oncely records, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The library records; the application chooses where the numbers go by installing a recorder
//! (`metrics-exporter-prometheus`, an OpenTelemetry bridge, statsd...). Without one, recording
//! costs an atomic load. The `oncely` command installs a Prometheus recorder and serves it on
//! `--metrics-addr`. [`describe`] gives each metric its help text for exporters that show one.
//! Install the recorder at startup, before the first claim: an `Oncely` registers a scope's
//! claim counters at that scope's first claim and keeps them.
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
//! | [`STEPS`] | `outcome` (`executed`, `replayed`) | steps of multi-step handlers that finished |

use std::collections::HashMap;
use std::sync::RwLock;

use metrics::Counter;

use crate::{ClaimOutcome, Error, Scope};

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
/// Steps of multi-step handlers ([`Oncely::run_steps`](crate::Oncely::run_steps)) that
/// finished, by `outcome`: run now, or answered from an earlier attempt's record.
pub const STEPS: &str = "oncely_steps_total";

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
    describe_counter!(
        STEPS,
        "Steps of multi-step handlers that finished: executed, or replayed from a record."
    );
}

/// Times one store call and counts its failure by kind (a lost claim as such). The operation
/// is a literal, so its histogram's key is built at compile time: nothing is allocated or hashed
/// per call.
macro_rules! timed {
    ($operation:literal, $call:expr $(,)?) => {
        async {
            let started = ::std::time::Instant::now();
            let result = $call.await;
            ::metrics::histogram!("oncely_store_call_seconds", "operation" => $operation)
                .record(started.elapsed().as_secs_f64());
            if let Err(error) = &result {
                $crate::telemetry::failed($operation, error);
            }
            result
        }
    };
}
pub(crate) use timed;

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

/// The claim counters of one [`Oncely`](crate::Oncely), per scope: registered with the
/// recorder at a scope's first claim on it, then reused, because building a labelled key costs
/// more than a claim on the memory store. A recorder installed after a scope's first claim
/// (rather than at startup) does not see that scope's claims on that instance.
#[derive(Default)]
pub(crate) struct ClaimCounters {
    // foldhash, not SipHash: the lookup runs on every claim, and SipHash of a short scope cost
    // about as much as a claim on the memory store (callgrind); it is seeded per process, so
    // scopes cannot be chosen to collide.
    scopes: RwLock<HashMap<Scope, ScopeCounters, foldhash::fast::RandomState>>,
}

/// Scopes whose counters one instance keeps; more (scopes made per client, say) are counted
/// without the cache.
const MAX_CACHED_SCOPES: usize = 4096;

struct ScopeCounters {
    new: Counter,
    duplicate: Counter,
    in_progress: Counter,
    conflict: Counter,
    takeovers: Counter,
}

impl ScopeCounters {
    fn register(scope: &Scope) -> Self {
        let of = |outcome: &'static str| metrics::counter!(CLAIMS, "scope" => scope.shared(), "outcome" => outcome);
        ScopeCounters {
            new: of("new"),
            duplicate: of("duplicate"),
            in_progress: of("in_progress"),
            conflict: of("conflict"),
            takeovers: metrics::counter!(TAKEOVERS, "scope" => scope.shared()),
        }
    }
}

impl std::fmt::Debug for ClaimCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCounters").finish_non_exhaustive()
    }
}

impl ClaimCounters {
    /// Counts a claim's answer (and a takeover, for a new claim past the first attempt).
    pub(crate) fn claimed(&self, scope: &Scope, outcome: &ClaimOutcome) {
        {
            let read = self.scopes.read().unwrap_or_else(|p| p.into_inner());
            if let Some(counters) = read.get(scope) {
                counters.count(outcome);
                return;
            }
        }
        let counters = ScopeCounters::register(scope);
        counters.count(outcome);
        let mut write = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        if write.len() < MAX_CACHED_SCOPES {
            write.entry(scope.clone()).or_insert(counters);
        }
    }
}

impl ScopeCounters {
    fn count(&self, outcome: &ClaimOutcome) {
        if matches!(outcome, ClaimOutcome::New(claim) if claim.attempt > 1) {
            self.takeovers.increment(1);
        }
        let counter = match outcome {
            ClaimOutcome::New(_) => &self.new,
            ClaimOutcome::Duplicate(_) => &self.duplicate,
            ClaimOutcome::InProgress { .. } => &self.in_progress,
            ClaimOutcome::Conflict { .. } => &self.conflict,
        };
        counter.increment(1);
    }
}

/// Counts a renewed lease.
pub(crate) fn renewed(scope: &Scope) {
    metrics::counter!(RENEWALS, "scope" => scope.shared()).increment(1);
}

/// Records how many callers one group-commit round trip carried.
pub(crate) fn grouped(operation: &'static str, callers: usize) {
    metrics::histogram!(GROUP_COMMIT_BATCH, "operation" => operation).record(callers as f64);
}
