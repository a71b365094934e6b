//! [`IdempotencyService`]: claim, execute once, store, replay.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use oncely_core::{Claim, ClaimOutcome, Oncely, Record};
use tokio::time::Instant;

use crate::body::{Collected, collect_limited};
use crate::layer::{Config, FailedOpen, InFlight};
use crate::problem::Problem;
use crate::request::{IDEMPOTENT_REPLAYED, principal_scope, read_key, request_fingerprint};
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
    S: tower::Service<Request<Body<ReqB>>, Response = Response<ResB>>,
    ReqB: http_body::Body<Data = Bytes>,
    ReqB::Error: std::fmt::Display,
    ResB: http_body::Body<Data = Bytes>,
{
    if !config.methods.contains(request.method()) {
        return pass_through(&mut inner, request.map(Body::stream)).await;
    }
    let key = match read_key(request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) if config.require_key => return Ok(Problem::KeyMissing.into_response()),
        Ok(None) => return pass_through(&mut inner, request.map(Body::stream)).await,
        Err(problem) => return Ok(problem.into_response()),
    };

    // The body is part of the fingerprint: buffer it, within the limit, and send it on after.
    let (parts, body) = request.into_parts();
    let (data, trailers) = match collect_limited(Box::pin(body), config.max_body).await {
        Collected::Complete { data, trailers } => (data, trailers),
        Collected::TooLarge { .. } => {
            return Ok(Problem::BodyTooLarge {
                limit: config.max_body,
            }
            .into_response());
        }
        Collected::Failed { error, .. } => {
            return Ok(Problem::BodyUnreadable {
                reason: error.to_string(),
            }
            .into_response());
        }
    };
    let scope = principal_scope(&config.principal_headers, &parts.headers);
    let fingerprint = request_fingerprint(&config.fingerprint_headers, &parts, &data);
    let request = Request::from_parts(parts, Body::buffered(data, trailers));

    let oncely = &config.oncely;
    let claim = match claim(oncely, config.in_flight, &scope, &key, fingerprint).await {
        Ok(ClaimOutcome::New(claim)) => claim,
        Ok(ClaimOutcome::Duplicate(record)) => return Ok(replay(&record)),
        Ok(ClaimOutcome::InProgress { retry_after }) => {
            return Ok(Problem::InFlight { retry_after }.into_response());
        }
        Ok(ClaimOutcome::Conflict { .. }) => return Ok(Problem::Mismatch.into_response()),
        Err(error) if config.fail_open => {
            tracing::warn!(%scope, %key, %error,
                "idempotency store unavailable; passing the request through unprotected (fail open)");
            let mut request = request;
            request.extensions_mut().insert(FailedOpen);
            return pass_through(&mut inner, request).await;
        }
        Err(error) => {
            tracing::warn!(%scope, %key, %error,
                "idempotency store unavailable; answering 503 (fail closed)");
            return Ok(Problem::StoreUnavailable.into_response());
        }
    };

    let guard = ClaimGuard::new(oncely.clone(), claim);
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            guard.release().await;
            return Err(error);
        }
    };
    if response.status().is_server_error() && !config.store_server_errors {
        guard.release().await;
        return Ok(response.map(Body::stream));
    }

    let (parts, body) = response.into_parts();
    match collect_limited(Box::pin(body), config.max_response).await {
        Collected::Complete { data, trailers } => {
            let stored = StoredResponse {
                status: parts.status,
                headers: storable_headers(&parts.headers, &config.deny_headers),
                body: data.clone(),
                trailers: trailers.clone(),
            };
            guard.complete(&stored.encode()).await;
            Ok(Response::from_parts(parts, Body::buffered(data, trailers)))
        }
        Collected::TooLarge { prefix, rest } => {
            guard.release().await;
            Ok(Response::from_parts(
                parts,
                Body::prefixed_pinned(prefix, rest),
            ))
        }
        Collected::Failed { prefix, error } => {
            guard.release().await;
            Ok(Response::from_parts(parts, Body::failed(prefix, error)))
        }
    }
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

/// Claims the key; with [`InFlight::Wait`], polls while another request holds it, up to the
/// configured time.
async fn claim(
    oncely: &Oncely,
    in_flight: InFlight,
    scope: &oncely_core::Scope,
    key: &oncely_core::Key,
    fingerprint: oncely_core::Fingerprint,
) -> oncely_core::Result<ClaimOutcome> {
    let outcome = oncely.claim(scope, key, Some(fingerprint)).await?;
    let InFlight::Wait(max_wait) = in_flight else {
        return Ok(outcome);
    };
    let deadline = Instant::now() + max_wait;
    let mut pause = Duration::from_millis(10);
    let mut outcome = outcome;
    while let ClaimOutcome::InProgress { retry_after } = outcome {
        let now = Instant::now();
        if now >= deadline {
            return Ok(ClaimOutcome::InProgress { retry_after });
        }
        tokio::time::sleep(pause.min(retry_after).min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(250));
        outcome = oncely.claim(scope, key, Some(fingerprint)).await?;
    }
    Ok(outcome)
}

/// The stored response, as it was first sent, marked `Idempotent-Replayed: true`.
fn replay<B: http_body::Body>(record: &Record) -> Response<Body<B>> {
    let stored = match StoredResponse::decode(record.outcome().unwrap_or_default()) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::error!(scope = %record.scope, key = %record.key, %error,
                "stored response cannot be decoded; not replayed");
            return Problem::StoredUnreadable {
                reason: error.to_string(),
            }
            .into_response();
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

/// Headers that describe one connection, never the response (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The response headers worth storing: all but hop-by-hop ones (and those `Connection` names)
/// and the deny-list.
fn storable_headers(headers: &HeaderMap, deny: &[HeaderName]) -> HeaderMap {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(name) || named_by_connection.contains(name) || deny.contains(name) {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

/// A held claim that is completed or released exactly once, even if the request is dropped.
///
/// If the future driving the request is dropped (the client went away, a timeout layer fired)
/// before the claim was completed or released, `Drop` releases it on a spawned Tokio task, so
/// a retry can execute. Without a runtime the claim stays until its lease runs out, after which
/// a retry takes it over; it never stays stuck longer.
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

    /// Stores the response. A failure is logged: the effect happened and the client gets the
    /// response; a retry then finds the key released or its lease run out and executes again.
    async fn complete(mut self, outcome: &[u8]) {
        let Some(claim) = self.claim.as_ref() else {
            return;
        };
        if let Err(error) = self.oncely.complete(claim, outcome).await {
            tracing::warn!(scope = %claim.scope, key = %claim.key, %error,
                "could not store the response; a retry with this key will execute again");
            // Give the key back now rather than at the end of its lease.
            return self.release().await;
        }
        self.claim = None;
    }

    /// Gives the key back so a retry executes.
    async fn release(mut self) {
        let Some(claim) = self.claim.as_ref() else {
            return;
        };
        if let Err(error) = self.oncely.release(claim).await {
            tracing::warn!(scope = %claim.scope, key = %claim.key, %error,
                "could not release the key; a retry executes once its lease runs out");
        }
        self.claim = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(scope = %claim.scope, key = %claim.key,
                "request dropped outside a Tokio runtime; its key is held until its lease runs out");
            return;
        };
        let oncely = self.oncely.clone();
        runtime.spawn(async move {
            if let Err(error) = oncely.release(&claim).await {
                tracing::warn!(scope = %claim.scope, key = %claim.key, %error,
                    "could not release the key of a dropped request; it is held until its lease runs out");
            }
        });
    }
}
