//! oncely's spans as OpenTelemetry traces, exported over OTLP/HTTP with JSON bodies.
//!
//! oncely's spans (`oncely.request` of the HTTP layer, `oncely.delivery` of the consumer,
//! `oncely.publish` of the relay, and the lifecycle's `oncely.claim`, `oncely.complete`, ...)
//! are plain [`tracing`] spans. Those that continue a W3C trace carry its ids in fields
//! (see [`oncely_core::trace`]); [`OtlpLayer`] reads them, so an exported span joins the trace
//! the request or message came with, and the span oncely names as the parent of the next hop
//! is the one exported. Spans without those fields take their parent span's trace, or start one.
//!
//! [`OtlpConfig::from_env`] reads the standard OpenTelemetry variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the URL spans are POSTed to, as it is |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | a base URL: spans go to its `/v1/traces` |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` | `name=value,...` (values URL-encoded), e.g. an API key |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` | `http/json` (the only one spoken here) |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` | milliseconds per export (default 10000) |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource the spans come from |
//! | `OTEL_BSP_SCHEDULE_DELAY` | milliseconds between exports (default 5000) |
//! | `OTEL_BSP_MAX_QUEUE_SIZE` | spans held for export; more are dropped and counted (default 2048) |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | export nothing |
//!
//! ```no_run
//! use tracing_subscriber::filter::{LevelFilter, Targets};
//! use tracing_subscriber::prelude::*;
//!
//! # fn main() -> Result<(), oncely_otlp::OtlpError> {
//! // Nothing to do when no endpoint is configured.
//! if let Some(config) = oncely_otlp::OtlpConfig::from_env("my-service")? {
//!     let (layer, exporter) = oncely_otlp::OtlpLayer::new(config)?;
//!     tracing_subscriber::registry()
//!         .with(layer.with_filter(Targets::new().with_target("oncely", LevelFilter::INFO)))
//!         .init();
//!     // ... run ...
//!     exporter.shutdown(); // sends what is left
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod export;
mod layer;

pub use config::{OtlpConfig, OtlpError};
pub use export::Exporter;
pub use layer::OtlpLayer;
