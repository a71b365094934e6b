//! [`OtlpConfig`]: where spans go, from the standard OpenTelemetry variables.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

/// Where and how spans are exported (see the [crate] docs for the variables).
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The URL spans are POSTed to (`.../v1/traces`).
    pub endpoint: Uri,
    /// Headers sent with each export (an API key, a tenant).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `service.name` and the other resource attributes.
    pub resource: Vec<(String, String)>,
    /// How long one export may take.
    pub timeout: Duration,
    /// The time between exports (spans are sent in batches).
    pub every: Duration,
    /// Spans held for export at most: more are dropped (and counted in a warning).
    pub max_queue: usize,
}

/// A setting that cannot be used: export would not work, so the process says so at start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A variable's value is not what it should be.
    #[error("{variable}: {reason}")]
    Variable {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The exporter's thread or its HTTP client could not be started.
    #[error("cannot start the OTLP exporter: {0}")]
    Start(#[from] std::io::Error),
}

impl OtlpConfig {
    /// The configuration the environment gives, or `None` when it sets no endpoint (or
    /// disables export). `service` is the `service.name` unless `OTEL_SERVICE_NAME` or
    /// `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub fn from_env(service: &str) -> Result<Option<Self>, OtlpError> {
        Self::from_vars(service, |name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables (tests, a config file).
    pub fn from_vars(
        service: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtlpError> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true")
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
        if disabled {
            return Ok(None);
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => uri("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim())?,
            (None, Some(base)) => uri(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            )?,
            (None, None) => return Ok(None),
        };
        let specific = |name: &'static str, general: &'static str| {
            var(name)
                .map(|value| (name, value))
                .or_else(|| var(general).map(|value| (general, value)))
        };
        if let Some((variable, protocol)) = specific(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) && protocol.trim() != "http/json"
        {
            return Err(OtlpError::Variable {
                variable,
                reason: format!(
                    "`{}`: oncely exports over http/json only (every OTLP/HTTP receiver takes it)",
                    protocol.trim()
                ),
            });
        }
        let headers = match specific(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            Some((variable, value)) => headers(variable, &value)?,
            None => Vec::new(),
        };
        let timeout = match specific(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            Some((variable, value)) => millis(variable, &value)?,
            None => Duration::from_secs(10),
        };
        let every = match var("OTEL_BSP_SCHEDULE_DELAY") {
            Some(value) => millis("OTEL_BSP_SCHEDULE_DELAY", &value)?,
            None => Duration::from_secs(5),
        };
        let max_queue = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
            Some(value) => value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| OtlpError::Variable {
                    variable: "OTEL_BSP_MAX_QUEUE_SIZE",
                    reason: format!("`{value}` is not a positive number"),
                })?,
            None => 2048,
        };
        let mut resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
            Some(value) => pairs("OTEL_RESOURCE_ATTRIBUTES", &value)?,
            None => Vec::new(),
        };
        let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned());
        let named = resource.iter().any(|(key, _)| key == "service.name");
        if var("OTEL_SERVICE_NAME").is_some() || !named {
            resource.retain(|(key, _)| key != "service.name");
            resource.insert(0, ("service.name".to_owned(), service.trim().to_owned()));
        }
        Ok(Some(OtlpConfig {
            endpoint,
            headers,
            resource,
            timeout,
            every,
            max_queue,
        }))
    }
}

fn uri(variable: &'static str, value: &str) -> Result<Uri, OtlpError> {
    let parsed: Uri = value.parse().map_err(|e| OtlpError::Variable {
        variable,
        reason: format!("`{value}` is not a URL: {e}"),
    })?;
    match parsed.scheme_str() {
        Some("http" | "https") if parsed.host().is_some() => Ok(parsed),
        _ => Err(OtlpError::Variable {
            variable,
            reason: format!("`{value}`: an http:// or https:// URL with a host expected"),
        }),
    }
}

fn millis(variable: &'static str, value: &str) -> Result<Duration, OtlpError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| OtlpError::Variable {
            variable,
            reason: format!("`{value}` is not a number of milliseconds"),
        })
}

/// `key=value,key=value`, values percent-encoded (W3C Baggage's format, which the OpenTelemetry
/// variables use).
fn pairs(variable: &'static str, value: &str) -> Result<Vec<(String, String)>, OtlpError> {
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let bad = || OtlpError::Variable {
                variable,
                reason: format!("`{pair}` is not key=value"),
            };
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            let key = key.trim();
            if key.is_empty() {
                return Err(bad());
            }
            Ok((
                key.to_owned(),
                percent_decode(value.trim()).ok_or_else(bad)?,
            ))
        })
        .collect()
}

fn headers(
    variable: &'static str,
    value: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, OtlpError> {
    pairs(variable, value)?
        .into_iter()
        .map(|(name, value)| {
            let bad = |what: &str| OtlpError::Variable {
                variable,
                reason: format!("`{name}`: not a valid HTTP header {what}"),
            };
            Ok((
                HeaderName::try_from(name.as_str()).map_err(|_| bad("name"))?,
                HeaderValue::try_from(value.as_str()).map_err(|_| bad("value"))?,
            ))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, OtlpError> {
        OtlpConfig::from_vars("oncely-test", |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn no_endpoint_or_disabled_means_no_export() {
        assert!(config(&[]).unwrap().is_none());
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(
            config(&[endpoint, ("OTEL_SDK_DISABLED", "true")])
                .unwrap()
                .is_none()
        );
        assert!(
            config(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_base_endpoint_gets_v1_traces_and_the_traces_endpoint_is_taken_as_it_is() {
        let base = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(base.endpoint, "http://collector:4318/v1/traces");
        let exact = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://x.example/otlp",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(exact.endpoint, "https://x.example/otlp");
    }

    #[test]
    fn headers_resource_and_service_name_are_read() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b, x-tenant=t1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=billing",
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.headers[0].0, "x-api-key");
        assert_eq!(c.headers[0].1, "a b");
        assert_eq!(c.headers[1].1, "t1");
        assert_eq!(c.every, Duration::from_millis(250));
        // The resource's own service.name wins over the default...
        assert!(
            c.resource
                .contains(&("service.name".into(), "billing".into()))
        );
        assert!(
            c.resource
                .contains(&("deployment.environment".into(), "prod".into()))
        );
        // ... and OTEL_SERVICE_NAME over both.
        let named = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing"),
            ("OTEL_SERVICE_NAME", "payments"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(named.resource, [("service.name".into(), "payments".into())]);
        let default = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(
            default.resource,
            [("service.name".into(), "oncely-test".into())]
        );
    }

    #[test]
    fn what_cannot_work_is_an_error_naming_the_variable() {
        for (vars, variable) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "no-equals-sign"),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
                ],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
        ] {
            let error = config(&vars).unwrap_err();
            assert!(error.to_string().starts_with(variable), "{error}");
        }
    }
}
