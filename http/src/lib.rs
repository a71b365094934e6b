//! # oncely-http
//!
//! The `Idempotency-Key` header for any [tower] HTTP service (axum, hyper, tonic): a client
//! that retries a POST - after a timeout, a dropped connection, a crash on either side - gets
//! the first response again instead of a second charge, a second order, a second email.
//!
//! ## When to use it
//!
//! Put [`IdempotencyLayer`] in front of endpoints with an effect that must not happen twice
//! (payments, orders, sign-ups). Clients send a unique `Idempotency-Key` per operation (a UUID)
//! and the same key when they retry it. The semantics follow the IETF httpapi draft "The
//! Idempotency-Key HTTP Header Field" and Stripe's API:
//!
//! | the request | what it gets |
//! |---|---|
//! | a method the layer does not apply to (default: all but POST and PATCH) | passed through untouched |
//! | no `Idempotency-Key` | passed through, or 400 with [`require_key`](IdempotencyLayer::require_key) |
//! | a malformed key: empty, over 255 characters, not visible ASCII, or sent twice | 400 |
//! | a body over [`max_body`](IdempotencyLayer::max_body) (1 MiB) | 413, never truncated |
//! | a new key | executed; the response stored (status, headers, body) and sent |
//! | a key already answered | the stored response, byte for byte, with `Idempotent-Replayed: true` |
//! | a key already used with another method, path, body or [fingerprint header](IdempotencyLayer::fingerprint_headers) | 422 |
//! | a key whose first request is still in flight | 409 with `Retry-After: 1` ([`IN_FLIGHT_RETRY_AFTER`]), or a bounded [wait](InFlight::Wait) |
//! | a store that cannot be reached | 503 (or passed through with [`fail_open`](IdempotencyLayer::fail_open)) |
//!
//! What is stored, and for how long:
//!
//! - the status, the headers minus hop-by-hop ones and a [deny-list](IdempotencyLayer::deny_headers)
//!   (`Set-Cookie` by default: a session is not replayed), the body and any trailers, in the
//!   [versioned binary format](stored) of [`stored::StoredResponse`];
//! - a 5xx response *releases* the key so a retry runs again
//!   ([`store_server_errors`](IdempotencyLayer::store_server_errors) stores 5xx, as Stripe
//!   does), and so do 408, 409, 425 and 429 ([`RELEASING_CLIENT_ERRORS`]: "not now", not
//!   "never"); other 4xx are stored and replayed, for a shorter
//!   [`error_retention`](IdempotencyLayer::error_retention) if set;
//!   [`store_statuses`](IdempotencyLayer::store_statuses) lists the statuses to store instead;
//!   an inner service that fails without a response releases it only if it says the
//!   request was [not sent](NotSent) (see below);
//! - a response over [`max_response`](IdempotencyLayer::max_response) (1 MiB) is passed through
//!   as it streams, and its key released;
//! - a stored response is replayed for the [retention](IdempotencyLayer::retention) (24 h).
//!
//! Keys are scoped by **principal**: with [`principal_headers`](IdempotencyLayer::principal_headers)
//! (say `Authorization`), the scope is `http:` and a SHA-256 of those headers' values, so two
//! clients that pick the same key never see each other's responses, and no credential is stored.
//! The key header itself reaches the inner service unchanged.
//!
//! Every answer of the layer's own is `application/problem+json` (RFC 9457) with `type`
//! (`urn:oncely:http:...`, or a URL of yours with
//! [`problem_type_base`](IdempotencyLayer::problem_type_base)), `title`, `status` and `detail`.
//!
//! ## With axum
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use http::header::AUTHORIZATION;
//! use oncely_http::{IdempotencyLayer, InFlight};
//!
//! async fn create_charge(body: String) -> (http::StatusCode, String) {
//!     // ... charge the card: this runs once per Idempotency-Key ...
//!     (http::StatusCode::CREATED, format!(r#"{{"charged":{body}}}"#))
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = oncely::connect("sqlite:oncely.db").await?;
//! let idempotency = IdempotencyLayer::new(oncely::Oncely::new(store))
//!     .require_key(true)
//!     .principal_headers([AUTHORIZATION])
//!     .in_flight(InFlight::Wait(Duration::from_secs(5)));
//!
//! let app = Router::new()
//!     .route("/charges", post(create_charge))
//!     .layer(idempotency);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! With hyper, wrap your service with [`tower::Layer::layer`] and serve it through
//! `hyper_util::service::TowerToHyperService`. The inner service receives `Request<Body<B>>`
//! (see [`Body`]) and the layered one answers `Response<Body<B>>`; a tonic server that insists
//! on its own body type maps to it with `tower`'s `map_request`/`map_response`.
//!
//! ## Failure and cancellation
//!
//! The rule everywhere: **a key is released only when the request provably had no effect;
//! while it may still be executing the key stays in progress; when the outcome is unknown it
//! stays held until its lease ends.** Concretely:
//!
//! | what happens | the key | a retry with it gets |
//! |---|---|---|
//! | the client leaves (or a timeout drops the future) before the body arrived | never claimed | an execution |
//! | the client leaves after the request reached the inner service | the request runs on, on its own task; its response is stored | 409 (`Retry-After: 1`) while it runs, then the stored response |
//! | no response within [`response_timeout`](IdempotencyLayer::response_timeout) | held; the request runs on for the rest of its lease and its response is stored if it comes | 504 first, then 409, then the stored response |
//! | the inner service fails with [`NotSent`] (it never reached the upstream) | released | an execution |
//! | the inner service fails with any other error (a connection lost after sending) | held until its lease ends: it may have executed | 409, then an execution after the lease |
//! | a 5xx response (unless [stored](IdempotencyLayer::store_server_errors)), a 408, 409, 425 or 429, or a panic | released | an execution |
//! | the store is down when the response is to be stored | stored once the store is back, if that is within the lease (the answer waits for it); else held until its lease ends | 409 while it waits, then the stored response (or, after the lease, an execution) |
//!
//! Each keyed request runs on a Tokio task of its own (so the layer needs a Tokio runtime, as
//! axum and hyper have): a dropped future cannot stop an effect that already left the process,
//! so the layer does not pretend it did. While the inner service runs, the claim's lease (the
//! [`Oncely`](oncely_core::Oncely)'s, 30 s unless set with `with_lease`) is renewed every third
//! of it, so a slow request is never executed twice; a process that dies stops renewing, and
//! its keys are free one lease later.
//!
//! Exactly-once across the window between the effect and the stored response needs the effect
//! and the record in one transaction: see the transactional inbox of the SQL stores.
//!
//! ## In front of any HTTP service: the gateway
//!
//! With the feature `gateway` (`oncely-http = { version = "0.1", features = ["gateway"] }`),
//! the module `gateway` has the layer over a streaming reverse proxy, served on a Tokio
//! `TcpListener`: the gateway `oncely serve` runs, for a service in any language.
//! `GatewayOptions::new(upstream)` holds the upstream URL, the response timeout, the connection
//! limits and the shutdown grace; the `Idempotency-Key` semantics are the [`IdempotencyLayer`]
//! given to `Gateway::new(layer, options)`; `gateway.serve(listener, shutdown).await` serves
//! until `shutdown` resolves, lets the requests in flight finish and answers what happened to
//! each (a summary line, Prometheus text). The module's docs have an example.

#![warn(missing_docs)]

mod body;
mod future;
#[cfg(feature = "gateway")]
pub mod gateway;
mod hop;
mod layer;
mod problem;
mod request;
mod running;
mod service;
pub mod stored;

pub use body::Body;
pub use future::ResponseFuture;
pub use layer::{
    DEFAULT_DENY_HEADERS, DEFAULT_MAX_BODY, DEFAULT_MAX_RESPONSE, DEFAULT_RETENTION, FailedOpen,
    IN_FLIGHT_RETRY_AFTER, IdempotencyLayer, InFlight, NotSent, RELEASING_CLIENT_ERRORS,
};
pub use problem::{DEFAULT_PROBLEM_TYPE_BASE, PROBLEM_JSON};
pub use request::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, MAX_KEY_LEN};
pub use running::Running;
pub use service::IdempotencyService;
