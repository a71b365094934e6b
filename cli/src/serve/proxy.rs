//! The proxy behind the layer: forwards a request to the upstream and streams the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use oncely_http::{Body, FailedOpen, PROBLEM_JSON};

/// Checks `--upstream`: `http://HOST[:PORT][/PREFIX]`, no query.
pub(super) fn parse_upstream(text: &str) -> Result<Upstream> {
    let bad = |why: &str| anyhow::anyhow!("--upstream `{text}`: {why}");
    let uri: Uri = text
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e}); use http://HOST[:PORT]")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported (this build has no TLS stack); put the gateway in \
                 front of a plain http:// service, e.g. on localhost",
            ));
        }
        Some(other) => {
            return Err(bad(&format!(
                "scheme `{other}` is not supported; use http://HOST[:PORT]"
            )));
        }
        None => return Err(bad("no scheme; use http://HOST[:PORT]")),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("no host; use http://HOST[:PORT]"));
    };
    if uri.query().is_some() {
        return Err(bad("a query is not supported; each request brings its own"));
    }
    Ok(Upstream {
        base: format!("http://{authority}{}", uri.path().trim_end_matches('/')),
    })
}

/// The upstream as `http://AUTHORITY[/PREFIX]`, without a trailing slash.
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) base: String,
}

/// Why the upstream gave no response.
#[derive(Debug)]
pub(super) struct UpstreamFailed {
    /// No response within `--timeout` (504), rather than no connection or a broken one (502).
    timed_out: bool,
    reason: String,
}

impl UpstreamFailed {
    fn new(reason: String) -> Self {
        UpstreamFailed {
            timed_out: false,
            reason,
        }
    }
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
#[derive(Clone, Debug)]
pub(super) struct Proxy {
    pub(super) client: Client<HttpConnector, Body<Incoming>>,
    pub(super) upstream: Arc<Upstream>,
    /// How long the upstream gets to start its response.
    pub(super) timeout: Duration,
}

impl tower::Service<Request<Body<Incoming>>> for Proxy {
    type Response = Response<Incoming>;
    type Error = UpstreamFailed;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Incoming>, UpstreamFailed>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), UpstreamFailed>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body<Incoming>>) -> Self::Future {
        let client = self.client.clone();
        let upstream = self.upstream.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if let Some(forwarded) = parts.extensions.remove::<Forwarded>() {
                forwarded.mark(parts.extensions.remove::<FailedOpen>().is_some());
            }
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{}{path}", upstream.base)
                .parse()
                .map_err(|e| UpstreamFailed::new(format!("cannot build the upstream URL: {e}")))?;
            // The client's HTTP version for the answer; HTTP/1.1 to the upstream.
            let version = std::mem::replace(&mut parts.version, Version::HTTP_11);
            remove_hop_by_hop(&mut parts.headers);
            let peer = parts.extensions.remove::<Peer>();
            add_forwarded_headers(&mut parts.headers, peer);
            let sent = client.request(Request::from_parts(parts, body));
            let response = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => return Err(UpstreamFailed::new(error_chain(&error))),
                Err(_) => {
                    return Err(UpstreamFailed {
                        timed_out: true,
                        reason: format!("no response within {}", crate::deliver::humane(timeout)),
                    });
                }
            };
            let (mut parts, body) = response.into_parts();
            // An HTTP/1.0 upstream (Python's http.server) must not make the answer HTTP/1.0.
            parts.version = version;
            remove_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// The address of the client a request came from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer(pub(super) SocketAddr);

/// The headers a reverse proxy adds: `X-Forwarded-For` (the client's address appended to any
/// the request brought), `X-Forwarded-Host` (the `Host` it asked for; the upstream gets its
/// own name as `Host`, set by the client) and `X-Forwarded-Proto` (`http`, unless a proxy in
/// front already said).
fn add_forwarded_headers(headers: &mut HeaderMap, peer: Option<Peer>) {
    const FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    if let Some(Peer(peer)) = peer {
        let mut chain: Vec<String> = headers
            .get_all(&FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(peer.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert(FOR, value);
        }
    }
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HOST, host);
    }
    if !headers.contains_key(&PROTO) {
        headers.insert(PROTO, HeaderValue::from_static("http"));
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

/// Headers that describe one connection, never the message (RFC 9110 7.6.1), and those the
/// `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The 502 (or 504) the gateway answers when the upstream gave no response (in time).
pub(super) fn upstream_failed(failed: &UpstreamFailed) -> Response<Body<Incoming>> {
    let reason = &failed.reason;
    let (status, json) = if failed.timed_out {
        let json = serde_json::json!({
            "type": "urn:oncely:http:upstream-timeout",
            "title": "Upstream timed out",
            "status": 504,
            "detail": format!(
                "the upstream gave no response ({reason}); it may still execute the request, \
                 and a retry with the same Idempotency-Key executes it again"
            ),
        });
        (StatusCode::GATEWAY_TIMEOUT, json)
    } else {
        let json = serde_json::json!({
            "type": "urn:oncely:http:upstream-unavailable",
            "title": "Upstream unavailable",
            "status": 502,
            "detail": format!(
                "the upstream gave no response ({reason}); a retry with the same \
                 Idempotency-Key executes the request"
            ),
        });
        (StatusCode::BAD_GATEWAY, json)
    };
    let mut response = Response::new(Body::buffered(Bytes::from(json.to_string()), None));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
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
        let https = parse_upstream("https://svc").unwrap_err().to_string();
        assert!(https.contains("https is not supported"), "{https}");
        let query = parse_upstream("http://svc/?a=1").unwrap_err().to_string();
        assert!(query.contains("query"), "{query}");
        assert!(parse_upstream("svc:80").is_err());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn forwarded_headers_extend_what_a_proxy_in_front_said() {
        let peer = Some(Peer("10.0.0.7:5000".parse().unwrap()));
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
