//! # oncely-conformance
//!
//! One behaviour suite, run against every store. A store crate adds a test target with
//! `harness = false` whose `main` hands this crate a constructor:
//!
//! ```no_run
//! use std::sync::Arc;
//! fn main() {
//!     oncely_conformance::main("memory", || async {
//!         Arc::new(oncely_memory::MemoryStore::new()) as _
//!     });
//! }
//! ```
//!
//! Each test is a plain async function over a fresh store (see [`suite`]); the constructor is
//! called once per test, so tests never see each other's records. Every test runs for every
//! backend: there is no way to skip one, so a backend that cannot keep a guarantee fails.
//!
//! The model test ([`model`]) drives random sequences of claim / claim_many / complete /
//! release / get / advance-clock / purge through the store and through a small reference model
//! written independently of the core's rules, and fails on the first disagreement.
//!
//! The SQL stores' transactional inbox has a suite of its own, run the same way: [`inbox`]; so
//! do their consumer offsets: [`offsets`].

#![warn(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use harness::{panic_text, quiet_panics, runtime};
use libtest_mimic::{Arguments, Conclusion, Trial};

/// The test-harness types a backend needs to add trials of its own to [`run`].
pub use libtest_mimic;
use oncely_core::Store;

pub mod boundaries;
pub mod certs;
pub mod faults;
pub mod harness;
pub mod inbox;
pub mod model;
pub mod offsets;
pub mod process;
pub mod recorder;
pub mod servers;
pub mod suite;
pub mod tls_proxy;

/// A boxed test body.
pub type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Makes a fresh, empty store for one test.
pub trait StoreFactory: Send + Sync + 'static {
    /// A fresh, empty store.
    fn make(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>>;
}

impl<F, Fut> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn Store>> + Send + 'static,
{
    fn make(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + '_>> {
        Box::pin(self())
    }
}

/// Runs the whole suite and the model test against the stores `factory` makes, as a test
/// binary (`cargo test` arguments such as a name filter work), and exits with its status.
pub fn main(backend: &str, factory: impl StoreFactory) -> ! {
    run(backend, factory, Vec::new()).exit()
}

/// Like [`main`], with a backend's own `extra` trials beside the suite, and without exiting:
/// for a harness that must tear something down (a server it started) before the process ends.
pub fn run(backend: &str, factory: impl StoreFactory, extra: Vec<Trial>) -> Conclusion {
    let args = Arguments::from_args();
    quiet_panics(suite::INTENDED_PANIC);
    let factory: Arc<dyn StoreFactory> = Arc::new(factory);
    let mut trials = Vec::new();
    for (name, test) in suite::all().into_iter().chain(boundaries::all()) {
        let factory = factory.clone();
        trials.push(
            Trial::test(format!("{backend}::{name}"), move || {
                runtime().block_on(async move {
                    let store = factory.make().await;
                    tokio::spawn(test(store))
                        .await
                        .map_err(|e| panic_text(e).into())
                })
            })
            .with_kind(backend.to_owned()),
        );
    }
    let model_factory = factory.clone();
    trials.push(
        Trial::test(
            format!("{backend}::model_agrees_with_store_on_random_histories"),
            move || {
                model::check(model_factory.as_ref(), model::cases_from_env()).map_err(Into::into)
            },
        )
        .with_kind(backend.to_owned()),
    );
    trials.extend(extra);
    libtest_mimic::run(&args, trials)
}
