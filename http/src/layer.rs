//! [`IdempotencyLayer`]: the configuration, and the [`tower::Layer`] that applies it.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, header};
use oncely_core::{CompositeKey, Oncely, PayloadFingerprint};

use crate::problem::DEFAULT_PROBLEM_TYPE_BASE;
use crate::{IdempotencyService, Running};

/// How long a stored response is replayed by default: 24 hours, as Stripe does.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The largest request body buffered by default (1 MiB); a larger one gets 413.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// The largest response body stored by default (1 MiB); a larger one is passed through and
/// its key released.
pub const DEFAULT_MAX_RESPONSE: usize = 1024 * 1024;

/// The response headers never stored by default: `Set-Cookie` (a session is not replayed).
pub const DEFAULT_DENY_HEADERS: [HeaderName; 1] = [header::SET_COOKIE];

/// The 4xx statuses whose responses release the key rather than being stored, unless
/// [`IdempotencyLayer::store_statuses`] says otherwise: 408 Request Timeout, 409 Conflict,
/// 425 Too Early and 429 Too Many Requests say "not now", not "never", so the client's retry
/// must run again. (5xx release it too, unless [stored](IdempotencyLayer::store_server_errors).)
pub const RELEASING_CLIENT_ERRORS: [StatusCode; 4] = [
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::CONFLICT,
    StatusCode::TOO_EARLY,
    StatusCode::TOO_MANY_REQUESTS,
];

/// The longest `Retry-After` a 409 says while a key's first request is in flight: a hint of
/// when to look again, not the whole lease (most first requests finish long before their lease
/// ends, and clients such as urllib3 obey `Retry-After`).
pub const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An inner service's error meaning the request never reached anything that could act on it
/// (the upstream refused the connection, a request could not be built): the layer releases the
/// key, so a retry executes.
///
/// Return it from the inner service, as its error type or boxed in tower's `BoxError`. Any
/// other error leaves the outcome unknown (the request may have been executed), so the layer
/// keeps the key held until its lease ends rather than risk a second execution.
///
/// ```
/// use oncely_http::NotSent;
/// let error = NotSent::new("connection refused by 127.0.0.1:9000");
/// assert_eq!(error.to_string(), "the request was not sent: connection refused by 127.0.0.1:9000");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the request was not sent: {reason}")]
pub struct NotSent {
    reason: String,
}

impl NotSent {
    /// The error, with why the request could not be sent.
    pub fn new(reason: impl Into<String>) -> Self {
        NotSent {
            reason: reason.into(),
        }
    }

    /// Why the request could not be sent.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Put in the extensions of a request the layer passes to the inner service unprotected
/// because the store could not be reached and the layer [fails open](IdempotencyLayer::fail_open):
/// the inner service can tell such a request from one that was claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedOpen;

/// What a request gets when the first request with its key is still in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlight {
    /// `409 Conflict` at once, with `Retry-After` (the default, as the IETF draft says).
    Conflict,
    /// Wait up to this long for the first request to finish, then replay its response (or
    /// execute, if it failed and released the key); 409 if it is still in flight by then.
    /// Needs a Tokio runtime with the time driver.
    Wait(Duration),
}

/// A [`tower::Layer`] that makes POST and PATCH endpoints idempotent by `Idempotency-Key`.
///
/// The layer holds configuration only; see the [crate docs](crate) for the behaviour and an
/// axum example. Every setter returns the layer, so it is configured in one expression.
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) oncely: Oncely,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) principal_headers: Vec<HeaderName>,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) body_fingerprint: PayloadFingerprint,
    pub(crate) key_from_body: Option<CompositeKey>,
    pub(crate) max_body: usize,
    pub(crate) max_response: usize,
    pub(crate) in_flight: InFlight,
    pub(crate) store_server_errors: bool,
    pub(crate) stored_statuses: Option<Vec<StatusCode>>,
    pub(crate) error_retention: Option<Duration>,
    pub(crate) problem_type_base: String,
    pub(crate) deny_headers: Vec<HeaderName>,
    pub(crate) fail_open: bool,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) forward_key: Option<String>,
    pub(crate) running: Running,
}

impl IdempotencyLayer {
    /// The layer over `oncely`'s store, with the defaults: POST and PATCH, key optional, one
    /// shared principal, 1 MiB request and response limits, 24 h retention (replacing the
    /// retention `oncely` was built with), 409 while in flight, 5xx not stored, `Set-Cookie`
    /// not stored, and 503 when the store is down.
    ///
    /// The claim's lease is `oncely`'s ([`Oncely::with_lease`], 30 s by default); it is renewed
    /// while the inner service runs, so it bounds how long a key stays held after its process
    /// died, not how long a request may take. Needs a Tokio runtime: each keyed request runs on
    /// a task of its own, so a client that leaves cannot cancel it.
    pub fn new(oncely: Oncely) -> Self {
        IdempotencyLayer {
            config: Arc::new(Config {
                oncely: oncely.with_retention(DEFAULT_RETENTION),
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                principal_headers: Vec::new(),
                fingerprint_headers: Vec::new(),
                body_fingerprint: PayloadFingerprint::Json,
                key_from_body: None,
                max_body: DEFAULT_MAX_BODY,
                max_response: DEFAULT_MAX_RESPONSE,
                in_flight: InFlight::Conflict,
                store_server_errors: false,
                stored_statuses: None,
                error_retention: None,
                problem_type_base: DEFAULT_PROBLEM_TYPE_BASE.to_owned(),
                deny_headers: DEFAULT_DENY_HEADERS.to_vec(),
                fail_open: false,
                response_timeout: None,
                forward_key: None,
                running: Running::default(),
            }),
        }
    }

    /// What the layer is configured with.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    fn set(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The methods the layer applies to (default POST and PATCH); others pass through untouched.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.set(|c| c.methods = methods)
    }

    /// Whether a request without a key (no `Idempotency-Key`, and none in its body under
    /// [`key_from_body`](Self::key_from_body)) gets 400 (`true`) or passes through
    /// un-deduplicated (`false`, the default).
    pub fn require_key(self, required: bool) -> Self {
        self.set(|c| c.require_key = required)
    }

    /// The headers that identify the principal, e.g. `Authorization` or an API-key header:
    /// the scope of a key is a SHA-256 of their values, so one client's stored response is never
    /// replayed to another (and the credential itself is never stored). Empty (the default):
    /// one scope shared by every client.
    pub fn principal_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.set(|c| c.principal_headers = names)
    }

    /// Headers that are part of the request's fingerprint besides method, path and body (e.g.
    /// `Content-Type`, a tenant header): the same key with another value gets 422.
    pub fn fingerprint_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.set(|c| c.fingerprint_headers = names)
    }

    /// Which differences between two bodies sent with one key make them different requests
    /// (422): see [`PayloadFingerprint`]. The default is the body's canonical JSON, so a retry
    /// that re-serialises the same JSON (keys in another order, other spacing) is the same
    /// request; a body that is not JSON counts byte for byte. Leave out what changes between
    /// retries (`ignore:/sentAt`), or compare only the fields that make the operation
    /// (`fields:[amount, currency, to]`). A body a `fields:` or `ignore:` fingerprint cannot
    /// read (not JSON, an expression that fails on it) gets 400.
    ///
    /// ```
    /// # let oncely = oncely::Oncely::new(std::sync::Arc::new(oncely::memory::MemoryStore::default()));
    /// // A client stamps each attempt with its own `sentAt`: not a different request.
    /// let layer = oncely_http::IdempotencyLayer::new(oncely)
    ///     .body_fingerprint("ignore:/sentAt".parse().unwrap());
    /// ```
    pub fn body_fingerprint(self, fingerprint: PayloadFingerprint) -> Self {
        self.set(|c| c.body_fingerprint = fingerprint)
    }

    /// Keys a request that carries no `Idempotency-Key` by fields of its JSON body (JSON
    /// pointers or a JMESPath expression: see [`CompositeKey`]), e.g. `/orderId` or
    /// `powertools_json(body).orderId`. The header still wins when sent. A body without the
    /// key passes through un-deduplicated, or gets 400 under
    /// [`require_key`](Self::require_key). Keys from bodies have a scope of their own (the
    /// principal's, marked `:body`), so one never meets a key a client sent in the header.
    /// Every request of the layer's methods is then buffered to read its key, within
    /// [`max_body`](Self::max_body).
    ///
    /// ```
    /// # let oncely = oncely::Oncely::new(std::sync::Arc::new(oncely::memory::MemoryStore::default()));
    /// // One charge per order, whether or not the client sends a key.
    /// let layer = oncely_http::IdempotencyLayer::new(oncely)
    ///     .key_from_body("[orderId, paymentId]".parse().unwrap());
    /// ```
    pub fn key_from_body(self, key: CompositeKey) -> Self {
        self.set(|c| c.key_from_body = Some(key))
    }

    /// The largest request body buffered to fingerprint it (default 1 MiB); larger gets 413.
    pub fn max_body(self, bytes: usize) -> Self {
        self.set(|c| c.max_body = bytes)
    }

    /// The largest response body stored (default 1 MiB). A larger response is passed through
    /// to the client unchanged and its key released, so a retry executes again.
    pub fn max_response(self, bytes: usize) -> Self {
        self.set(|c| c.max_response = bytes)
    }

    /// How long a stored response is replayed (default 24 h).
    pub fn retention(self, retention: Duration) -> Self {
        self.set(|c| c.oncely = c.oncely.clone().with_retention(retention))
    }

    /// What a request gets while the first with its key is in flight (default
    /// [`InFlight::Conflict`]).
    pub fn in_flight(self, in_flight: InFlight) -> Self {
        self.set(|c| c.in_flight = in_flight)
    }

    /// Whether 5xx responses are stored and replayed like any other (`true`, as Stripe does)
    /// or release the key so the client can retry (`false`, the default). An inner service
    /// that fails without a response releases the key only with [`NotSent`].
    pub fn store_server_errors(self, store: bool) -> Self {
        self.set(|c| c.store_server_errors = store)
    }

    /// Stores and replays responses with these statuses only; any other releases the key, so
    /// a retry executes again. Replaces the default rule: every status is stored but 5xx
    /// (see [`store_server_errors`](Self::store_server_errors)) and
    /// [`RELEASING_CLIENT_ERRORS`].
    ///
    /// ```
    /// use http::StatusCode;
    /// # let oncely = oncely::Oncely::new(std::sync::Arc::new(oncely::memory::MemoryStore::default()));
    /// // Only successes are replayed; a 4xx lets the client fix the request and retry the key.
    /// let layer = oncely_http::IdempotencyLayer::new(oncely)
    ///     .store_statuses([StatusCode::OK, StatusCode::CREATED, StatusCode::ACCEPTED]);
    /// ```
    pub fn store_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses = statuses.into_iter().collect();
        self.set(|c| c.stored_statuses = Some(statuses))
    }

    /// How long a stored error response (4xx, or 5xx when stored) is replayed, when it should
    /// be shorter than [`retention`](Self::retention) (default: the same).
    pub fn error_retention(self, retention: Duration) -> Self {
        self.set(|c| c.error_retention = Some(retention))
    }

    /// What goes before each problem's slug in the `type` of the layer's
    /// `application/problem+json` answers (default [`DEFAULT_PROBLEM_TYPE_BASE`],
    /// `urn:oncely:http:`): with a URL, each error type links to its documentation.
    ///
    /// ```
    /// # let oncely = oncely::Oncely::new(std::sync::Arc::new(oncely::memory::MemoryStore::default()));
    /// // A malformed key's type: https://docs.example.com/errors/idempotency-key-malformed
    /// let layer = oncely_http::IdempotencyLayer::new(oncely)
    ///     .problem_type_base("https://docs.example.com/errors/");
    /// ```
    pub fn problem_type_base(self, base: impl Into<String>) -> Self {
        let base = base.into();
        self.set(|c| c.problem_type_base = base)
    }

    /// Response headers never stored, so never replayed (default: `Set-Cookie`). Hop-by-hop
    /// headers are never stored either. Replaces the list: include `Set-Cookie` to keep it.
    pub fn deny_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.set(|c| c.deny_headers = names)
    }

    /// What happens when the store cannot be reached: `false` (the default) answers 503 and
    /// executes nothing (fail closed); `true` passes the request through without protection
    /// (fail open: availability over exactly-once), marked with [`FailedOpen`] in its extensions.
    pub fn fail_open(self, open: bool) -> Self {
        self.set(|c| c.fail_open = open)
    }
}

impl Config {
    /// Whether a response with `status` is stored and replayed; if not, its key is released.
    pub(crate) fn stores(&self, status: StatusCode) -> bool {
        match &self.stored_statuses {
            Some(statuses) => statuses.contains(&status),
            None if status.is_server_error() => self.store_server_errors,
            None => !RELEASING_CLIENT_ERRORS.contains(&status),
        }
    }

    /// How long a stored response with `status` is replayed, where it differs from the
    /// retention `oncely` has.
    pub(crate) fn retention_of(&self, status: StatusCode) -> Option<Duration> {
        let error = status.is_client_error() || status.is_server_error();
        self.error_retention.filter(|_| error)
    }
}

impl IdempotencyLayer {
    /// How long a client waits for the inner service's response (default: as long as it
    /// takes). Past it the client gets 504 (`urn:oncely:http:response-timeout`) while the
    /// request runs on: its key stays held, the response is stored when it comes (within the
    /// claim's lease) and a retry gets it. The lease is renewed until the timeout, then left to
    /// run out, so a request that never answers frees its key one lease after the timeout.
    ///
    /// Use it instead of a timeout layer *inside* this one, which would drop the request's
    /// future: a dropped future cannot stop an effect that already left the process.
    pub fn response_timeout(self, timeout: Duration) -> Self {
        self.set(|c| c.response_timeout = Some(timeout))
    }

    /// The inner service gets, as its `Idempotency-Key`, the key derived for `step` from the
    /// claimed scope and key ([`Key::derive`](oncely_core::Key::derive)) instead of the
    /// client's own key (default: the client's key, unchanged).
    ///
    /// For an inner service that is itself idempotent by `Idempotency-Key` (another oncely
    /// gateway, a payments API behind `oncely serve`): if this layer runs a request again (its
    /// claim's holder died, and a retry took the key over after the lease), the second call
    /// carries the same derived key, so that service answers it from its own record. The
    /// derived key is per scope, so two clients' equal keys stay two operations downstream
    /// too. Whatever the setting, the inner service finds a keyed request's claim
    /// ([`Claim`](oncely_core::Claim)) in its extensions, to derive keys for the calls it makes.
    pub fn forward_key(self, step: impl Into<String>) -> Self {
        let step = step.into();
        self.set(|c| c.forward_key = Some(step))
    }

    /// The keyed requests of this layer (and of every service it wraps) still running: wait
    /// for them at shutdown (see [`Running`]).
    pub fn running(&self) -> Running {
        self.config.running.clone()
    }
}

impl<S> tower::Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, self.config.clone())
    }
}
