//! [`Running`]: the keyed requests still running on their own tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The keyed requests of one [`IdempotencyLayer`](crate::IdempotencyLayer) still running on
/// their own tasks, whether or not their clients are still there.
///
/// A server's graceful shutdown waits for its connections; a request whose client left is no
/// longer on a connection, yet its response is still to be stored. Wait for
/// [`finished`](Running::finished) too before the runtime goes, or those keys stay held until
/// their lease ends (never executed twice, but answered 409 until then).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use oncely_http::IdempotencyLayer;
/// let store = oncely::connect("memory:").await.unwrap();
/// let layer = IdempotencyLayer::new(oncely::Oncely::new(store));
/// let running = layer.running();
/// // ... serve with `layer`; on shutdown, after the connections closed:
/// assert_eq!(running.count(), 0);
/// running.finished().await;
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Running(Arc<Counter>);

#[derive(Debug, Default)]
struct Counter {
    count: AtomicUsize,
    changed: Notify,
}

impl Running {
    /// How many keyed requests are running now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }

    /// Resolves once no keyed request is running.
    pub async fn finished(&self) {
        loop {
            let changed = self.0.changed.notified();
            if self.count() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Counts one request until the returned guard is dropped (its task ended, however).
    pub(crate) fn start(&self) -> RunningGuard {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        RunningGuard(self.0.clone())
    }
}

/// One running request; dropping it counts it as finished.
pub(crate) struct RunningGuard(Arc<Counter>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}
