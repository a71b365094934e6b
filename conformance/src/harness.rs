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
