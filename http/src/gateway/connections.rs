//! Bounds on the gateway's connections: how long a client gets to send a request's line and
//! headers ([`header_timeout`](super::GatewayOptions::header_timeout)), how long a keep-alive
//! connection may sit idle between requests ([`idle_timeout`](super::GatewayOptions::idle_timeout)),
//! and how many connections are served at once
//! ([`max_connections`](super::GatewayOptions::max_connections), a semaphore in the accept loop).
//!
//! Both timeouts are kept here rather than by hyper: hyper 1's `header_read_timeout` starts as
//! soon as a keep-alive connection is idle, so it bounds the idle wait and the next head
//! together, and an idle timeout longer than the header timeout could not be had with it.
//!
//! Each connection has a [`Watch`] of its phase. Its IO ([`Watched`]) tells it when bytes come
//! in and go out; its service ([`Watch::service`]) when a request starts (hyper has read its
//! head) and when it ends (the last frame of its response was handed to hyper, or the request
//! was dropped). While a request is in progress nothing here times out: a slow upstream is
//! the [timeout](super::GatewayOptions::timeout)'s business. Otherwise the connection waits for
//! one of two things:
//!
//! - idle: no request in progress and nothing received since the last response (nor anything
//!   sent since, as hyper flushes its end): closed the idle timeout after the last of these;
//! - a head: the rest of a request's line and headers, closed if they are not all in the
//!   header timeout after the connection opened (the first request) or after the request's
//!   first byte came in (later ones). More bytes do not extend it, so a client dribbling its
//!   headers is closed as one that stopped.
//!
//! [`Watch::expired`] resolves at that deadline; the connection's task then drops the
//! connection, which closes it (there is no request to answer).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::{Response, service::Service};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The header and the idle timeout.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) header: Duration,
    pub(super) idle: Duration,
}

/// What a connection without a request in progress waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// A request's first byte.
    Idle,
    /// The rest of a request's line and headers.
    Head,
}

#[derive(Debug)]
struct Phase {
    /// Requests in progress (hyper serves one at a time; counted to be safe).
    requests: usize,
    /// With none in progress: what the connection waits for, and until when.
    waiting: Waiting,
    deadline: Instant,
}

/// One connection's phase, shared by its IO, its service and its task.
#[derive(Clone)]
pub(super) struct Watch {
    timeouts: Timeouts,
    phase: Arc<Mutex<Phase>>,
    /// Told when the deadline may have come nearer, or a request has ended.
    nearer: Arc<Notify>,
}

impl Watch {
    /// A connection just accepted: its first request's head is due within the header timeout.
    pub(super) fn new(timeouts: Timeouts) -> Watch {
        Watch {
            timeouts,
            phase: Arc::new(Mutex::new(Phase {
                requests: 0,
                waiting: Waiting::Head,
                deadline: Instant::now() + timeouts.header,
            })),
            nearer: Arc::new(Notify::new()),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // The lock is never held across anything that can panic.
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the connection is to be closed: `None` while a request is in progress.
    fn deadline(&self) -> Option<Instant> {
        let phase = self.phase();
        (phase.requests == 0).then_some(phase.deadline)
    }

    /// Resolves when the connection has waited past its deadline with no request in progress.
    pub(super) async fn expired(&self) {
        loop {
            // Registered before the deadline is read, so no change in between is missed.
            let nearer = self.nearer.notified();
            match self.deadline() {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = nearer => {}
                    }
                }
                None => nearer.await,
            }
        }
    }

    /// Bytes came in: an idle connection's next request has begun.
    fn received(&self) {
        let mut phase = self.phase();
        if phase.requests == 0 && phase.waiting == Waiting::Idle {
            phase.waiting = Waiting::Head;
            phase.deadline = Instant::now() + self.timeouts.header;
            drop(phase);
            self.nearer.notify_one();
        }
    }

    /// Bytes went out: hyper still flushing the end of the last response is not idleness.
    fn sent(&self) {
        let mut phase = self.phase();
        if phase.requests == 0 && phase.waiting == Waiting::Idle {
            // Later, never nearer: expired() finds it when it wakes.
            phase.deadline = Instant::now() + self.timeouts.idle;
        }
    }

    fn request_started(&self) -> InProgress {
        self.phase().requests += 1;
        InProgress(self.clone())
    }

    fn request_ended(&self) {
        let mut phase = self.phase();
        phase.requests = phase.requests.saturating_sub(1);
        if phase.requests == 0 {
            phase.waiting = Waiting::Idle;
            phase.deadline = Instant::now() + self.timeouts.idle;
            drop(phase);
            self.nearer.notify_one();
        }
    }

    /// `service`, each of its requests in progress from its call until its response's body
    /// ends or is dropped.
    pub(super) fn service<S>(&self, service: S) -> Tracked<S> {
        Tracked {
            service,
            watch: self.clone(),
        }
    }
}

/// A request in progress, until dropped.
struct InProgress(Watch);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A service whose requests its connection's [`Watch`] sees start and end.
pub(super) struct Tracked<S> {
    service: S,
    watch: Watch,
}

type Answer<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, R, B> Service<R> for Tracked<S>
where
    S: Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Answer<Self::Response, S::Error>;

    fn call(&self, request: R) -> Self::Future {
        let in_progress = self.watch.request_started();
        let answer = self.service.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                in_progress: Some(in_progress),
            }))
        })
    }
}

/// A response body whose end (or drop) ends its request.
pub(super) struct TrackedBody<B> {
    body: B,
    in_progress: Option<InProgress>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.in_progress = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's IO, telling its [`Watch`] when bytes come in and go out.
pub(super) struct Watched<T> {
    io: T,
    watch: Watch,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, watch: Watch) -> Watched<T> {
        Watched { io, watch }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.watch.received();
        }
        Poll::Ready(read)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        if matches!(written, Ok(n) if n > 0) {
            self.watch.sent();
        }
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs));
        if matches!(written, Ok(n) if n > 0) {
            self.watch.sent();
        }
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(3),
        idle: Duration::from_secs(10),
    };

    /// Whether `watch` has expired `after` from now (the clock is paused: nothing else moves it).
    async fn expired_after(watch: &Watch, after: Duration) -> bool {
        tokio::time::timeout(after, watch.expired()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_timeout_for_its_first_head() {
        let watch = Watch::new(TIMEOUTS);
        watch.received();
        assert!(!expired_after(&watch, Duration::from_millis(2900)).await);
        assert!(expired_after(&watch, Duration::from_millis(200)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_never_expires_then_idle_then_a_head_is_due() {
        let watch = Watch::new(TIMEOUTS);
        let request = watch.request_started();
        assert!(!expired_after(&watch, Duration::from_secs(3600)).await);
        drop(request);
        // Idle: 10s, renewed by bytes going out.
        assert!(!expired_after(&watch, Duration::from_secs(9)).await);
        watch.sent();
        assert!(!expired_after(&watch, Duration::from_secs(9)).await);
        // A byte of the next request: its head is due within 3s, nearer than the idle end.
        watch.received();
        assert!(!expired_after(&watch, Duration::from_millis(2900)).await);
        watch.received();
        assert!(expired_after(&watch, Duration::from_millis(200)).await);
    }
}
