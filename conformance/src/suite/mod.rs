//! The behaviour suite: each test a plain async function over a fresh store, named for the
//! guarantee it proves. One file per behaviour: a claim's answers, release, forget, lease
//! takeover, completion and retention, `claim_many`, expiry and purge, what keys and outcomes round-trip,
//! stats, the version guard, `Oncely::run` and `Oncely::run_steps`, real concurrency, and lease renewal. Each file
//! lists its tests with `tests!`; [`all`] runs the files in that order.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    ClaimOutcome, Error, Fingerprint, Key, LostReason, ManualClock, Oncely, Scope, Store,
};

use crate::TestFuture;

/// The message of the panic the suite raises on purpose (in a handler, to prove the claim is
/// released); the harness keeps it out of the test output.
pub const INTENDED_PANIC: &str = "intended panic: handler bug";

/// The lease every test uses.
pub const LEASE: Duration = Duration::from_secs(30);
/// The retention every test uses.
pub const RETENTION: Duration = Duration::from_secs(3600);
/// The lease of the real-time renewal tests: short, so a handler several leases long takes a
/// second or two, and long enough that a renewal every third of it gets through on a busy
/// machine.
pub const REAL_LEASE: Duration = Duration::from_millis(400);

type Test = fn(Arc<dyn Store>) -> TestFuture;

/// Lists a file's tests, in the order they run, as its `all()`.
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        /// This file's tests, by name.
        pub(super) fn all() -> Vec<(&'static str, super::Test)> {
            vec![$((
                stringify!($name),
                (|s| Box::pin($name(s)) as crate::TestFuture) as super::Test,
            )),*]
        }
    };
}

mod batch;
mod claim;
mod complete;
mod concurrency;
mod expiry;
mod forget;
mod keys;
mod lease;
mod release;
mod renewal;
mod run;
mod stats;
mod steps;
mod version;

/// Every test in the suite, by name.
pub fn all() -> Vec<(&'static str, Test)> {
    [
        claim::all(),
        release::all(),
        forget::all(),
        lease::all(),
        complete::all(),
        batch::all(),
        expiry::all(),
        keys::all(),
        stats::all(),
        version::all(),
        run::all(),
        steps::all(),
        concurrency::all(),
        renewal::all(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn setup(store: Arc<dyn Store>) -> (Oncely, ManualClock) {
    let clock = ManualClock::default();
    let oncely = Oncely::new(store)
        .with_clock(clock.clone())
        .with_lease(LEASE)
        .with_retention(RETENTION);
    (oncely, clock)
}

pub(crate) fn key(k: &str) -> Key {
    Key::new(k).expect("valid test key")
}

pub(crate) fn scope(s: &str) -> Scope {
    Scope::new(s).expect("valid test scope")
}

pub(crate) fn fp(s: &str) -> Option<Fingerprint> {
    Some(Fingerprint::of_bytes(s.as_bytes()))
}

fn expect_new(outcome: ClaimOutcome) -> oncely_core::Claim {
    match outcome {
        ClaimOutcome::New(claim) => claim,
        other => panic!("expected New, got {other:?}"),
    }
}

fn expect_lost<T: std::fmt::Debug>(result: oncely_core::Result<T>, want: LostReason) {
    match result {
        Err(Error::ClaimLost { reason, .. }) => assert_eq!(reason, want),
        other => panic!("expected ClaimLost({want:?}), got {other:?}"),
    }
}
