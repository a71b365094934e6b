//! [`ResponseFuture`]: the future [`IdempotencyService`](crate::IdempotencyService) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// The response of an [`IdempotencyService`](crate::IdempotencyService): the inner
/// service's, a replay, or the layer's own problem.
///
/// Dropping it does not stop a keyed request that reached the inner service: that runs on its
/// own task, and its response is stored for the retry.
pub struct ResponseFuture<T, E> {
    inner: Boxed<T, E>,
}

impl<T, E> ResponseFuture<T, E> {
    pub(crate) fn new(inner: Boxed<T, E>) -> Self {
        ResponseFuture { inner }
    }
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
