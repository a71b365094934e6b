//! A future cut off at its n-th wait, as a killed process cuts off whatever it was awaiting.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `inner` until it has waited `waits` times, then, at its next wait, gives up: the inner
/// future is dropped with its work half done. `Some(output)` if it finished first.
pub(crate) struct Interrupt<F> {
    inner: Pin<Box<F>>,
    waits_left: usize,
}

impl<F: Future> Interrupt<F> {
    /// Cuts `inner` off at wait number `waits` (0: at its first wait).
    pub(crate) fn at_wait(inner: F, waits: usize) -> Self {
        Interrupt {
            inner: Box::pin(inner),
            waits_left: waits,
        }
    }
}

impl<F: Future> Future for Interrupt<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if self.waits_left == 0 => Poll::Ready(None),
            Poll::Pending => {
                self.waits_left -= 1;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cuts_off_at_the_chosen_wait_or_finishes() {
        let steps = std::sync::Mutex::new(Vec::new());
        let work = || async {
            steps.lock().unwrap().push(1);
            tokio::task::yield_now().await;
            steps.lock().unwrap().push(2);
            tokio::task::yield_now().await;
            steps.lock().unwrap().push(3);
        };
        assert_eq!(Interrupt::at_wait(work(), 1).await, None);
        assert_eq!(*steps.lock().unwrap(), [1, 2]);
        steps.lock().unwrap().clear();
        assert_eq!(Interrupt::at_wait(work(), 2).await, Some(()));
        assert_eq!(*steps.lock().unwrap(), [1, 2, 3]);
    }
}
