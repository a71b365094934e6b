//! The proxy behind the layer: forwards a request to the upstream and streams the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use oncely_core::BoxError;

use super::GatewayError;
use crate::hop::remove_hop_by_hop;
use crate::problem::Problem;
use crate::{Body, FailedOpen, NotSent};

/// Checks the upstream URL: `http[s]://HOST[:PORT][/PREFIX]`, no query.
pub(super) fn parse_upstream(text: &str) -> Result<Upstream, GatewayError> {
    let bad = |why: &str| GatewayError::Upstream {
        url: text.to_owned(),
        reason: why.to_owned(),
    };
    let uri: Uri = text
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e}); use http://HOST[:PORT]")))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        Some(other) => {
            return Err(bad(&format!(
                "scheme `{other}` is not supported; use http://HOST[:PORT] or https://"
            )));
        }
        None => return Err(bad("no scheme; use http://HOST[:PORT]")),
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("no host; use http://HOST[:PORT]"));
    };
    if uri.query().is_some() {
        return Err(bad("a query is not supported; each request brings its own"));
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok(Upstream {
        base: format!("{scheme}://{authority}{}", uri.path().trim_end_matches('/')),
        authority: format!("{}:{port}", authority.host()),
    })
}

/// The upstream as `http[s]://AUTHORITY[/PREFIX]`, without a trailing slash.
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) base: String,
    /// `HOST:PORT`, the port explicit: where a connection goes.
    pub(super) authority: String,
}

/// The upstream gave no response after the request was sent (the connection broke, or the
/// upstream closed it): it may have executed the request. A failure *before* the request was
/// sent is [`NotSent`] instead.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(super) struct UpstreamFailed {
    reason: String,
}

/// Put in a request's extensions by the gateway; the proxy marks it when it forwards the
/// request, and whether the layer let it through unprotected ([`FailedOpen`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Forwarded(Arc<[AtomicBool; 2]>);

impl Forwarded {
    fn mark(&self, failed_open: bool) {
        self.0[1].store(failed_open, Ordering::SeqCst);
        self.0[0].store(true, Ordering::SeqCst);
    }

    /// Whether the request was forwarded.
    pub(super) fn forwarded(&self) -> bool {
        self.0[0].load(Ordering::SeqCst)
    }

    /// Whether it was forwarded unprotected because the store could not be reached.
    pub(super) fn failed_open(&self) -> bool {
        self.0[1].load(Ordering::SeqCst)
    }
}

/// The innermost service: forwards a request to the upstream and streams the response back.
///
/// It has no timeout of its own: the layer answers a keyed request's client at the timeout and
/// waits on for the upstream in the background; the gateway bounds other requests.
#[derive(Clone, Debug)]
pub(super) struct Proxy {
    pub(super) client: Client<super::client::Connector, Body<Incoming>>,
    pub(super) upstream: Arc<Upstream>,
}

impl tower::Service<Request<Body<Incoming>>> for Proxy {
    type Response = Response<Incoming>;
    /// [`NotSent`] or [`UpstreamFailed`].
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body<Incoming>>) -> Self::Future {
        let client = self.client.clone();
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if let Some(forwarded) = parts.extensions.remove::<Forwarded>() {
                forwarded.mark(parts.extensions.remove::<FailedOpen>().is_some());
            }
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{}{path}", upstream.base)
                .parse()
                .map_err(|e| NotSent::new(format!("cannot build the upstream URL: {e}")))?;
            // The client's HTTP version for the answer; HTTP/1.1 to the upstream.
            let version = std::mem::replace(&mut parts.version, Version::HTTP_11);
            remove_hop_by_hop(&mut parts.headers, &[]);
            let peer = parts.extensions.remove::<Peer>();
            add_forwarded_headers(&mut parts.headers, peer);
            let response = match client.request(Request::from_parts(parts, body)).await {
                Ok(response) => response,
                // No connection, so nothing was sent: a retry may safely execute.
                Err(error) if error.is_connect() => {
                    return Err(NotSent::new(error_chain(&error)).into());
                }
                Err(error) => {
                    return Err(UpstreamFailed {
                        reason: error_chain(&error),
                    }
                    .into());
                }
            };
            let (mut parts, body) = response.into_parts();
            // An HTTP/1.0 upstream (Python's http.server) must not make the answer HTTP/1.0.
            parts.version = version;
            remove_hop_by_hop(&mut parts.headers, &[]);
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// The address of the client a request came from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub(super) address: SocketAddr,
    /// Whether the client reached the gateway over TLS.
    pub(super) tls: bool,
}

/// The headers a reverse proxy adds: `X-Forwarded-For` (the client's address appended to any
/// the request brought), `X-Forwarded-Host` (the `Host` it asked for; the upstream gets its
/// own name as `Host`, set by the client) and `X-Forwarded-Proto` (`https` or `http`, as the
/// client reached the gateway, unless a proxy in front already said).
fn add_forwarded_headers(headers: &mut HeaderMap, peer: Option<Peer>) {
    const FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    if let Some(Peer { address, .. }) = peer {
        let mut chain: Vec<String> = headers
            .get_all(&FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(address.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert(FOR, value);
        }
    }
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HOST, host);
    }
    if !headers.contains_key(&PROTO) {
        let proto = if peer.is_some_and(|peer| peer.tls) {
            "https"
        } else {
            "http"
        };
        headers.insert(PROTO, HeaderValue::from_static(proto));
    }
}

/// The error and its sources, `outer: inner`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The 502 the gateway answers when the upstream gave no response; what a retry gets depends
/// on whether the request was sent (`held`: the key's claim is kept until `held` ends).
pub(super) fn upstream_failed(
    error: &BoxError,
    held: Duration,
    type_base: &str,
) -> Response<Body<Incoming>> {
    match error.downcast_ref::<NotSent>() {
        Some(not_sent) => Problem::UpstreamNotSent {
            reason: not_sent.reason().to_owned(),
        },
        None => Problem::UpstreamFailed {
            reason: error.to_string(),
            held,
        },
    }
    .into_response(type_base)
}

/// The 504 the gateway answers when a request without a key gets no response within `timeout`.
pub(super) fn upstream_timed_out(timeout: Duration, type_base: &str) -> Response<Body<Incoming>> {
    Problem::UpstreamTimedOut { timeout }.into_response(type_base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_plain_http_with_an_optional_prefix() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:9000").unwrap().base,
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            parse_upstream("http://svc:9000/api/").unwrap().base,
            "http://svc:9000/api"
        );
        assert_eq!(
            parse_upstream("https://svc:8443/api/").unwrap().base,
            "https://svc:8443/api"
        );
        let query = parse_upstream("http://svc/?a=1").unwrap_err().to_string();
        assert!(query.contains("query"), "{query}");
        assert!(parse_upstream("svc:80").is_err());
    }

    #[test]
    fn forwarded_headers_extend_what_a_proxy_in_front_said() {
        let peer = Some(Peer {
            address: "10.0.0.7:5000".parse().unwrap(),
            tls: false,
        });
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        add_forwarded_headers(&mut headers, peer);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(!headers.contains_key(header::HOST));

        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded_headers(&mut headers, peer);
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }
}
