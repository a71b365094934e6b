//! What a libtest-mimic suite over real servers needs, shared by the store and broker suites.

/// Keeps a suite's deliberate panic (`intended`) out of the output, so a log shows only real ones.
pub fn quiet_panics(intended: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied());
        if message != Some(intended) {
            default(info);
        }
    }));
}

/// A runtime for one test: several workers, so "concurrent" tests contend on real threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The message of a test task that panicked.
pub fn panic_text(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(panic) => {
            if let Some(s) = panic.downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = panic.downcast_ref::<String>() {
                s.clone()
            } else {
                "test panicked".to_owned()
            }
        }
        Err(e) => e.to_string(),
    }
}

/// One test over a fresh database of a suite's harness type `D` (the inbox's, the offsets').
pub type Test<D> = fn(std::sync::Arc<D>) -> crate::TestFuture;

/// A list of [`Test`]s for [`database_trials`], each named after its function:
/// `async fn name(db: Arc<D>)`. For a suite, or a database's own tests beside it.
#[macro_export]
macro_rules! database_tests {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|d| Box::pin($name(d)) as $crate::TestFuture) as $crate::harness::Test<_>,
        )),*]
    };
}

/// One trial per test of `tests`, each named `<backend>::<name>` and run on a database `fresh`
/// makes, on a runtime of its own: the way the database suites ([`crate::inbox`],
/// [`crate::offsets`]) become test binaries.
pub fn database_trials<D, F, Fut>(
    backend: &str,
    fresh: F,
    tests: Vec<(&'static str, Test<D>)>,
) -> Vec<libtest_mimic::Trial>
where
    D: Send + Sync + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = D> + Send + 'static,
{
    let fresh = std::sync::Arc::new(fresh);
    tests
        .into_iter()
        .map(|(name, test)| {
            let fresh = fresh.clone();
            libtest_mimic::Trial::test(format!("{backend}::{name}"), move || {
                runtime().block_on(async move {
                    let database = std::sync::Arc::new(fresh().await);
                    tokio::spawn(test(database))
                        .await
                        .map_err(|e| panic_text(e).into())
                })
            })
            .with_kind(backend.to_owned())
        })
        .collect()
}

/// Runs `trials` as a test binary (`cargo test` arguments such as a name filter work) and
/// exits with its status.
pub fn run_trials(trials: Vec<libtest_mimic::Trial>) -> ! {
    libtest_mimic::run(&libtest_mimic::Arguments::from_args(), trials).exit()
}

/// `Ok` if `ok`, else a failure saying `what`: an assertion for a [`url_trial`].
pub fn check(ok: bool, what: &str) -> Result<(), libtest_mimic::Failed> {
    if ok { Ok(()) } else { Err(what.into()) }
}

/// A trial `<backend>::<name>` that runs the async `test` with `url`, on a runtime of its own.
pub fn url_trial<F, Fut>(backend: &str, name: &str, url: String, test: F) -> libtest_mimic::Trial
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), libtest_mimic::Failed>>,
{
    libtest_mimic::Trial::test(format!("{backend}::{name}"), move || {
        tokio::runtime::Runtime::new()?.block_on(test(url))
    })
}
