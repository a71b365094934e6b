//! [`IdempotencyService`]: claim, execute once, store, replay.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use oncely_core::panic::catch_unwind;
use oncely_core::trace::{Hop, TRACEPARENT};
use oncely_core::{BoxError, Claim, ClaimOutcome, Fingerprint, Key, Oncely, Record, Scope};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

use crate::body::{Collected, collect_limited};
use crate::hop::remove_hop_by_hop;
use crate::layer::{Config, FailedOpen, IN_FLIGHT_RETRY_AFTER, InFlight, NotSent};
use crate::problem::Problem;
use crate::request::{
    IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, principal_scope, read_key, request_fingerprint,
};
use crate::stored::StoredResponse;
use crate::{Body, ResponseFuture};

/// The service [`IdempotencyLayer`](crate::IdempotencyLayer) wraps around an inner service.
///
/// The inner service receives `Request<Body<B>>`: the original body for requests the layer does
/// not apply to, the buffered body for the others. It must be `Clone` (each request drives its
/// own clone, as with most tower middleware).
#[derive(Clone, Debug)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> IdempotencyService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        IdempotencyService { inner, config }
    }

    /// The keyed requests still running (see [`Running`](crate::Running)).
    pub fn running(&self) -> crate::Running {
        self.config.running.clone()
    }

    /// The lifecycle the layer claims keys with.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn oncely(&self) -> &Oncely {
        &self.config.oncely
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, consuming the wrapper.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for IdempotencyService<S>
where
    S: tower::Service<Request<Body<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: std::fmt::Display + Send,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
{
    type Response = Response<Body<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The clone that was made ready goes with this request (the usual tower idiom).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(Box::pin(handle(self.config.clone(), ready, request)))
    }
}

async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<ReqB>,
) -> Result<Response<Body<ResB>>, S::Error>
where
    S: tower::Service<Request<Body<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: std::fmt::Display + Send,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
{
    if !config.methods.contains(request.method()) {
        return pass_through(&mut inner, request.map(Body::stream)).await;
    }
    let header_key = match read_key(request.headers()) {
        Ok(key) => key,
        Err(problem) => return Ok(problem.into_response(&config.problem_type_base)),
    };
    if header_key.is_none() && config.key_from_body.is_none() {
        if config.require_key {
            return Ok(Problem::KeyMissing.into_response(&config.problem_type_base));
        }
        return pass_through(&mut inner, request.map(Body::stream)).await;
    }

    // The body is part of the fingerprint (and may hold the key): buffer it, within the limit,
    // and send it on after. A client that leaves while it arrives leaves nothing behind: no key
    // was claimed yet.
    let (parts, body) = request.into_parts();
    let (data, trailers) = match collect_limited(Box::pin(body), config.max_body).await {
        Collected::Complete { data, trailers } => (data, trailers),
        Collected::TooLarge { .. } => {
            return Ok(Problem::BodyTooLarge {
                limit: config.max_body,
            }
            .into_response(&config.problem_type_base));
        }
        Collected::Failed { error, .. } => {
            return Ok(Problem::BodyUnreadable {
                reason: error.to_string(),
            }
            .into_response(&config.problem_type_base));
        }
    };
    let principal = principal_scope(&config.principal_headers, &parts.headers);
    let (scope, key) = match (header_key, &config.key_from_body) {
        (Some(key), _) => (principal, key),
        (None, Some(from_body)) => match from_body.extract_json(&data) {
            // A scope of their own: a key from a body never meets a client's header key.
            Ok(key) => (body_scope(&principal), key),
            Err(e) if config.require_key => {
                return Ok(Problem::KeyNotInBody {
                    reason: e.to_string(),
                }
                .into_response(&config.problem_type_base));
            }
            Err(_) => {
                let request = Request::from_parts(parts, Body::buffered(data, trailers));
                return pass_through(&mut inner, request).await;
            }
        },
        (None, None) => unreachable!("a request with no way to a key passed through above"),
    };
    let fingerprint = match request_fingerprint(
        &config.fingerprint_headers,
        &config.body_fingerprint,
        &parts,
        &data,
    ) {
        Ok(fingerprint) => fingerprint,
        Err(problem) => return Ok(problem.into_response(&config.problem_type_base)),
    };
    let mut parts = parts;
    let span = request_span(&config, &mut parts, &scope, &key);
    let request = Request::from_parts(parts, Body::buffered(data, trailers));

    // From here on the request runs on a task of its own: once it reached the inner service,
    // its completion must not depend on the client staying (the effect may be in another
    // process, which a dropped future cannot stop). The client's future only waits for the
    // answer; the task stores the response whether or not anyone is still waiting.
    let (answer, answered) = oneshot::channel();
    let type_base = config.problem_type_base.clone();
    let keyed = Keyed {
        config,
        scope,
        key,
        fingerprint,
        answer: Some(answer),
    };
    let running = keyed.config.running.start();
    tokio::spawn(
        async move {
            keyed.run(inner, request).await;
            drop(running);
        }
        .instrument(span),
    );
    match answered.await {
        Ok(answer) => answer,
        // The task ended without answering: it panicked outside the inner service (the inner
        // service's own panics are caught and answered). Its claim is left to its lease.
        Err(_) => Ok(Problem::Panicked.into_response(&type_base)),
    }
}

/// The scope of the keys taken from bodies: the principal's, marked apart.
fn body_scope(principal: &Scope) -> Scope {
    Scope::new(format!("{}:body", principal.as_str()))
        .expect("a principal's scope is at most 69 bytes")
}

/// The span of a keyed request, `oncely.request` (info): a [`Hop`] of the request's trace,
/// with the method, path, scope, key and the status answered. The request the inner service
/// sees carries this span as its `traceparent` (when one came), so the trace goes on through
/// the effect.
fn request_span(
    config: &Config,
    parts: &mut http::request::Parts,
    scope: &Scope,
    key: &Key,
) -> tracing::Span {
    let hop = Hop::after(
        parts
            .headers
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok()),
    );
    let span = tracing::info_span!("oncely.request", otel.kind = "server",
        http.request.method = %parts.method, url.path = parts.uri.path(), %scope,
        key = %config.oncely.span_keys().show(key), http.response.status_code = Empty,
        trace_id = Empty, span_id = Empty, parent_span_id = Empty);
    hop.record(&span);
    if let Some(onward) = hop.onward() {
        let value = HeaderValue::from_str(&onward.to_string()).expect("a traceparent is ASCII");
        parts.headers.insert(TRACEPARENT, value);
    }
    span
}

/// A keyed request on its own task: claim, execute, store, and answer whoever still waits.
struct Keyed<T, E> {
    config: Arc<Config>,
    scope: Scope,
    key: Key,
    fingerprint: Fingerprint,
    answer: Option<oneshot::Sender<Result<T, E>>>,
}

impl<ResB, E> Keyed<Response<Body<ResB>>, E>
where
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
    E: Send + 'static,
{
    fn answer(&mut self, answer: Result<Response<Body<ResB>>, E>) {
        if let Ok(response) = &answer {
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", status);
        }
        if let Some(sender) = self.answer.take() {
            // The client may be gone: then the answer (already stored, if storable) is dropped.
            let _ = sender.send(answer);
        }
    }

    fn client_gone(&self) -> bool {
        self.answer.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    async fn run<S, ReqB>(mut self, mut inner: S, mut request: Request<Body<ReqB>>)
    where
        S: tower::Service<Request<Body<ReqB>>, Response = Response<ResB>, Error = E>,
        S::Future: Send + 'static,
        ReqB: http_body::Body<Data = Bytes> + Send,
        ReqB::Error: Send,
    {
        let config = self.config.clone();
        let oncely = &config.oncely;
        let claim = match self.claim().await {
            Ok(ClaimOutcome::New(claim)) => claim,
            Ok(ClaimOutcome::Duplicate(record)) => {
                return self.answer(Ok(replay(&record, &config.problem_type_base)));
            }
            Ok(ClaimOutcome::InProgress { retry_after }) => {
                // A hint of when to look again, not the whole lease: most first requests are
                // done long before their lease ends, and clients obey Retry-After.
                let retry_after = retry_after.min(IN_FLIGHT_RETRY_AFTER);
                return self.answer(Ok(
                    Problem::InFlight { retry_after }.into_response(&config.problem_type_base)
                ));
            }
            Ok(ClaimOutcome::Conflict { .. }) => {
                return self.answer(Ok(
                    Problem::Mismatch.into_response(&config.problem_type_base)
                ));
            }
            Err(error) if config.fail_open => {
                let (scope, key) = (&self.scope, &self.key);
                tracing::warn!(%scope, %key, %error,
                    "idempotency store unavailable; passing the request through unprotected (fail open)");
                if self.client_gone() {
                    return;
                }
                request.extensions_mut().insert(FailedOpen);
                let response = pass_through(&mut inner, request).await;
                return self.answer(response);
            }
            Err(error) => {
                let (scope, key) = (&self.scope, &self.key);
                tracing::warn!(%scope, %key, %error,
                    "idempotency store unavailable; answering 503 (fail closed)");
                return self.answer(Ok(
                    Problem::StoreUnavailable.into_response(&config.problem_type_base)
                ));
            }
        };
        let mut guard = ClaimGuard::new(oncely.clone(), claim);
        if self.client_gone() {
            // Nothing was sent on: give the key back so the client's retry executes.
            return guard.release().await;
        }

        let claim = guard.claim.clone().expect("a new guard holds its claim");
        if let Some(step) = &config.forward_key {
            let derived = HeaderValue::from_str(claim.derive(step).as_str())
                .expect("a derived key is a UUID");
            request.headers_mut().insert(IDEMPOTENCY_KEY, derived);
        }
        request.extensions_mut().insert(claim);
        let call = std::pin::pin!(catch_unwind(inner.call(request)));
        let Some(result) = self.call_holding(&mut guard, call).await else {
            return;
        };
        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                if was_not_sent(&error) {
                    guard.release().await;
                } else {
                    guard.hold("the inner service failed without a response");
                }
                return self.answer(Err(error));
            }
            Err(panic) => {
                tracing::error!(scope = %self.scope, key = %self.key, %panic,
                    "the inner service panicked; its key is released");
                guard.release().await;
                return self.answer(Ok(
                    Problem::Panicked.into_response(&config.problem_type_base)
                ));
            }
        };
        if !config.stores(response.status()) {
            guard.release().await;
            return self.answer(Ok(response.map(Body::stream)));
        }

        let (parts, body) = response.into_parts();
        let answer = match collect_limited(Box::pin(body), config.max_response).await {
            Collected::Complete { data, trailers } => {
                // What is worth storing: all but hop-by-hop headers and the deny-list.
                let mut headers = parts.headers.clone();
                remove_hop_by_hop(&mut headers, &config.deny_headers);
                let stored = StoredResponse {
                    status: parts.status,
                    headers,
                    body: data.clone(),
                    trailers: trailers.clone(),
                };
                let retention = config.retention_of(parts.status);
                guard.complete(&stored.encode(), retention).await;
                Response::from_parts(parts, Body::buffered(data, trailers))
            }
            Collected::TooLarge { prefix, rest } => {
                guard.release().await;
                Response::from_parts(parts, Body::prefixed_pinned(prefix, rest))
            }
            Collected::Failed { prefix, error } => {
                guard.release().await;
                Response::from_parts(parts, Body::failed(prefix, error))
            }
        };
        self.answer(Ok(answer));
    }

    /// Claims the key; with [`InFlight::Wait`], polls while another request holds it, up to
    /// the configured time, or until the client goes away.
    async fn claim(&self) -> oncely_core::Result<ClaimOutcome> {
        let (oncely, scope, key) = (&self.config.oncely, &self.scope, &self.key);
        let fingerprint = Some(self.fingerprint);
        let outcome = oncely.claim(scope, key, fingerprint).await?;
        let InFlight::Wait(max_wait) = self.config.in_flight else {
            return Ok(outcome);
        };
        let deadline = Instant::now() + max_wait;
        let mut pause = Duration::from_millis(10);
        let mut outcome = outcome;
        while let ClaimOutcome::InProgress { retry_after } = outcome {
            let now = Instant::now();
            if now >= deadline || self.client_gone() {
                return Ok(ClaimOutcome::InProgress { retry_after });
            }
            tokio::time::sleep(pause.min(retry_after).min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
            outcome = oncely.claim(scope, key, fingerprint).await?;
        }
        Ok(outcome)
    }

    /// Awaits the inner service's answer while holding the claim: renewing its lease, and,
    /// past the configured response timeout, answering the client 504 and waiting on for the
    /// rest of the lease, unrenewed. `None` when there is nothing more to do: the lease ended
    /// with no answer, or the claim was lost (the client was answered).
    async fn call_holding<F: Future>(
        &mut self,
        guard: &mut ClaimGuard,
        mut call: std::pin::Pin<&mut F>,
    ) -> Option<F::Output> {
        let oncely = self.config.oncely.clone();
        let claim = guard.claim.as_mut().expect("a new guard holds its claim");
        let held = match self.config.response_timeout {
            None => oncely.renewing(claim, call.as_mut()).await.map(Some),
            Some(limit) => oncely
                .renewing(claim, tokio::time::timeout(limit, call.as_mut()))
                .await
                .map(Result::ok),
        };
        match held {
            Ok(Some(output)) => Some(output),
            Ok(None) => {
                let waited = self.config.response_timeout.unwrap_or_default();
                self.answer(Ok(
                    Problem::StillRunning { waited }.into_response(&self.config.problem_type_base)
                ));
                // The inner service may still be executing: the key stays held (no release)
                // and the answer, if it comes within the lease, is stored for the retry.
                let rest = oncely.now().until(claim.lease_until);
                match tokio::time::timeout(rest, call).await {
                    Ok(output) => Some(output),
                    Err(_) => {
                        guard.hold("no response within the claim's lease");
                        None
                    }
                }
            }
            Err(error) => {
                tracing::error!(scope = %self.scope, key = %self.key, %error,
                    "the claim was lost while the request ran; its response is not stored");
                guard.abandon();
                self.answer(Ok(
                    Problem::ClaimLost.into_response(&self.config.problem_type_base)
                ));
                None
            }
        }
    }
}

/// Whether the inner service's error says the request never reached anything that could act
/// on it: [`NotSent`], itself or boxed (tower's `BoxError`).
fn was_not_sent<E: 'static>(error: &E) -> bool {
    let error: &dyn Any = error;
    error.is::<NotSent>()
        || error
            .downcast_ref::<BoxError>()
            .is_some_and(|boxed| boxed.is::<NotSent>())
}

async fn pass_through<S, ReqB, ResB>(
    inner: &mut S,
    request: Request<Body<ReqB>>,
) -> Result<Response<Body<ResB>>, S::Error>
where
    S: tower::Service<Request<Body<ReqB>>, Response = Response<ResB>>,
    ReqB: http_body::Body,
    ResB: http_body::Body,
{
    Ok(inner.call(request).await?.map(Body::stream))
}

/// The stored response, as it was first sent, marked `Idempotent-Replayed: true`.
fn replay<B: http_body::Body>(record: &Record, type_base: &str) -> Response<Body<B>> {
    let stored = match StoredResponse::decode(record.outcome().unwrap_or_default()) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(scope = %record.scope, key = %record.key, %error,
                "stored response cannot be decoded; not replayed");
            return Problem::StoredUnreadable {
                reason: error.to_string(),
            }
            .into_response(type_base);
        }
    };
    let mut response = Response::new(Body::buffered(stored.body, stored.trailers));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers;
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// A held claim that is completed, released or deliberately held exactly once.
///
/// It lives on the request's own task, which the client cannot cancel; dropping it unfinished
/// (the runtime shutting down) leaves the claim to its lease: the outcome is unknown, so the
/// key is not given back early.
struct ClaimGuard {
    oncely: Oncely,
    claim: Option<Claim>,
}

impl ClaimGuard {
    fn new(oncely: Oncely, claim: Claim) -> Self {
        ClaimGuard {
            oncely,
            claim: Some(claim),
        }
    }

    /// Stores the response, waiting out a store that is unavailable for as long as the lease
    /// lasts (the client's answer waits with it, so that its retry is a replay). A failure is
    /// logged: the effect happened and the client gets the response; the key stays held until
    /// its lease ends (the effect is done, so it is not given back early), then a retry
    /// executes again.
    /// `retention`, if given, replaces the one `oncely` keeps records for.
    async fn complete(&mut self, outcome: &[u8], retention: Option<Duration>) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let with_retention;
        let oncely = match retention {
            Some(retention) => {
                with_retention = self.oncely.clone().with_retention(retention);
                &with_retention
            }
            None => &self.oncely,
        };
        if let Err(error) = oncely.complete_within_lease(&claim, outcome).await {
            tracing::warn!(scope = %claim.scope, key = %claim.key, %error,
                "could not store the response; the key is held until its lease ends, then a \
                 retry with it executes again");
        }
    }

    /// Gives the key back so a retry executes: only when the effect provably did not happen,
    /// or failed in a way the inner service reported.
    async fn release(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        if let Err(error) = self.oncely.release(&claim).await {
            tracing::warn!(scope = %claim.scope, key = %claim.key, %error,
                "could not release the key; a retry executes once its lease runs out");
        }
    }

    /// Leaves the key held until its lease ends: the effect may have happened.
    fn hold(&mut self, why: &str) {
        if let Some(claim) = self.claim.take() {
            tracing::warn!(scope = %claim.scope, key = %claim.key, lease_until = %claim.lease_until,
                "{why}; the request may have executed, so its key is held until its lease ends");
        }
    }

    /// Forgets a claim that is no longer ours.
    fn abandon(&mut self) {
        self.claim = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            tracing::warn!(scope = %claim.scope, key = %claim.key,
                "a keyed request's task ended unfinished (runtime shutting down?); its key is \
                 held until its lease ends");
        }
    }
}
