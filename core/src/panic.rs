//! A handler that panics is a failed attempt, not a crashed consumer.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `future`, turning a panic inside it into `Err` with the panic's message.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use oncely_core::panic::catch_unwind;
///
/// assert_eq!(catch_unwind(async { 7 }).await, Ok(7));
/// let failed = catch_unwind(async { if true { panic!("card declined") } }).await;
/// assert_eq!(failed, Err("card declined".to_owned()));
/// # }
/// ```
pub async fn catch_unwind<F: Future>(future: F) -> Result<F::Output, String> {
    CatchUnwind(Box::pin(future))
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
