//! Handlers as tower services, so that the layers put around HTTP services (timeouts,
//! concurrency and rate limits, load shedding, circuit breakers, your own) go around a
//! consumer's handler too.
//!
//! [`HandlerService`] makes a [`Handler`] the innermost service of a stack; [`ServiceHandler`]
//! hands the stack to the [`Consumer`](crate::Consumer) as its handler. A [`Handler`] written
//! directly works as before: the adapters are only for stacks.
//!
//! ```
//! use std::time::Duration;
//! use oncely_consumer::service::{HandlerService, ServiceHandler};
//! use oncely_consumer::{Consumer, Handled, Handler, HandlerError, KeySource, Message};
//! use oncely_core::{Key, async_trait};
//! use tower::ServiceBuilder;
//!
//! struct Ship;
//!
//! #[async_trait]
//! impl Handler for Ship {
//!     async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
//!         Ok(Handled::Done)
//!     }
//! }
//!
//! let stack = ServiceBuilder::new()
//!     .concurrency_limit(4) // at most 4 deliveries in the handler at once, whatever the consumer's concurrency
//!     .timeout(Duration::from_secs(10)) // a call that takes longer is a failed attempt
//!     .service(HandlerService::new(Ship));
//! let consumer = Consumer::new(ServiceHandler::new(stack), KeySource::Header("Event-Id".into()));
//! ```
//!
//! Each delivery calls a clone of the stack (`oneshot`: readiness, then the call), as tower's
//! servers do. Layers whose clones share their state (a concurrency limit's semaphore) limit
//! every delivery together; one whose clones do not (tower's `RateLimit`) limits all of them
//! only behind a `buffer` layer, which puts one instance behind a queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use oncely_core::consumer::{Handled, Handler, HandlerError, Message};
use oncely_core::{BoxError, Key, async_trait};
use tower::{Service, ServiceExt};

/// One delivery, as a service's request: the message and the key it is handled under.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The key the consumer's [`KeySource`](crate::KeySource) found.
    pub key: Key,
    /// The message.
    pub message: Message,
}

/// A [`Handler`] as a `Service<Delivered>` answering [`Handled`] or a [`HandlerError`]: the
/// innermost service of a stack. Always ready; cheap to clone.
pub struct HandlerService<H>(Arc<H>);

impl<H> HandlerService<H> {
    /// `handler` as a service.
    pub fn new(handler: H) -> Self {
        HandlerService(Arc::new(handler))
    }
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        HandlerService(self.0.clone())
    }
}

impl<H: Handler> Service<Delivered> for HandlerService<H> {
    type Response = Handled;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<Handled, HandlerError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Delivered) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.handle(&request.key, &request.message).await })
    }
}

/// A service stack as the consumer's [`Handler`].
///
/// Its errors: a [`HandlerError`] (the inner handler's, passed through layers that box it) is
/// kept as it is; any other (a timeout elapsed, a load shedder's overload, a breaker open) is
/// [`HandlerError::Failed`], a failed attempt: retried with backoff, then dead-lettered.
#[derive(Clone)]
pub struct ServiceHandler<S>(S);

impl<S> ServiceHandler<S> {
    /// `service` as a handler.
    pub fn new(service: S) -> Self {
        ServiceHandler(service)
    }
}

#[async_trait]
impl<S> Handler for ServiceHandler<S>
where
    S: Service<Delivered, Response = Handled> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        let request = Delivered {
            key: key.clone(),
            message: message.clone(),
        };
        self.0
            .clone()
            .oneshot(request)
            .await
            .map_err(|error| handler_error(error.into()))
    }
}

/// The [`HandlerError`] inside `error` if it is one, else `error` as a failed attempt.
fn handler_error(error: BoxError) -> HandlerError {
    match error.downcast::<HandlerError>() {
        Ok(error) => *error,
        Err(other) => HandlerError::Failed(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layers_boxed_handler_error_is_kept_and_any_other_is_a_failure() {
        let boxed: BoxError = Box::new(HandlerError::rejected("malformed"));
        assert!(matches!(handler_error(boxed), HandlerError::Rejected(_)));
        let elapsed: BoxError = "request timed out".into();
        assert!(matches!(handler_error(elapsed), HandlerError::Failed(_)));
    }
}
