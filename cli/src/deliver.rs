//! The HTTP half of `oncely consume`: POST one message to the handler URL and read its answer.
//!
//! `http://` or `https://` (rustls; the system's roots, which `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! replace, as for OpenSSL).
//!
//! A failed POST says whether the handler may have run ([`send`](Deliverer::send)): when
//! nothing was sent (no connection), the failure is plain and the key is released for a retry;
//! once the request may have reached the handler (no answer in time, the connection lost),
//! it is an [`OutcomeUnknown`], which keeps the key held until its lease ends.

use oncely::trace::{TRACEPARENT, TRACESTATE};
use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::TokioExecutor;
use oncely::consumer::Message;
use oncely::{BoxError, Key, OutcomeUnknown};
use oncely_http::gateway::client::{self, Connector};

/// The key header the handler receives, as in the HTTP layer (`oncely_http`).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The broker's message id, when it has one.
pub const MESSAGE_ID: HeaderName = HeaderName::from_static("oncely-message-id");
/// Where the message was consumed from (subject or queue).
pub const SOURCE: HeaderName = HeaderName::from_static("oncely-source");

/// Most bytes of a 2xx answer's body kept as the key's stored outcome.
pub const OUTCOME_CAP: usize = 64 * 1024;
/// Most bytes of a failed answer's body quoted in the error (and the dead letter's header).
pub const ERROR_BODY_CAP: usize = 200;

/// Why a `--deliver` URL cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct BadUrl(String);

impl fmt::Display for BadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadUrl {}

/// Checks a `--deliver` URL: `http://HOST[:PORT][/PATH]`.
pub fn parse_url(text: &str) -> Result<Uri, BadUrl> {
    let bad = |why: &str| {
        BadUrl(format!(
            "--deliver `{}`: {why}",
            oncely::backend::url::redact_password(text)
        ))
    };
    let uri: Uri = text
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e}); use http://HOST[:PORT]/PATH")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(bad(&format!(
                "scheme `{other}` is not supported; use http://HOST[:PORT]/PATH or https://"
            )));
        }
        None => return Err(bad("no scheme; use http://HOST[:PORT]/PATH")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host; use http://HOST[:PORT]/PATH"));
    }
    Ok(uri)
}

/// POSTs messages to one handler URL, pooling connections.
#[derive(Clone, Debug)]
pub struct Deliverer {
    client: Client<Connector, Full<Bytes>>,
    url: Uri,
    timeout: Duration,
}

impl Deliverer {
    /// A deliverer to `url` (checked by [`parse_url`]) whose every attempt, answer included,
    /// must finish within `timeout`. An `https://` URL is verified against the system's roots
    /// (`SSL_CERT_FILE` / `SSL_CERT_DIR` replace them); a machine with none is an error here.
    pub fn new(url: Uri, timeout: Duration) -> Result<Self, BadUrl> {
        let connector = client::connector(url.scheme_str() == Some("https"))
            .map_err(|e| BadUrl(format!("--deliver `{url}`: {e}")))?;
        Ok(Deliverer {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
            timeout,
        })
    }

    /// The request for `message` under `key`: the payload as the body, with the headers the
    /// handler relies on. Fails only if the key cannot be an HTTP header value.
    pub fn request(&self, key: &Key, message: &Message) -> Result<Request<Full<Bytes>>, String> {
        let key_value = HeaderValue::from_bytes(key.as_str().as_bytes()).map_err(|_| {
            format!("key `{key}` cannot be sent as an HTTP header (it has control characters)")
        })?;
        let content_type = if serde_json::from_slice::<serde_json::Value>(message.payload()).is_ok()
        {
            "application/json"
        } else {
            "application/octet-stream"
        };
        let mut request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, content_type)
            .header(IDEMPOTENCY_KEY, key_value)
            .body(Full::new(Bytes::copy_from_slice(message.payload())))
            .map_err(|e| format!("cannot build the request to {}: {e}", self.url))?;
        let headers = request.headers_mut();
        // Queue and subject names are the broker's; one a header cannot carry is left out
        // rather than failing the message.
        let optional = [
            (MESSAGE_ID, message.message_id()),
            (SOURCE, Some(message.source())),
        ];
        for (name, value) in optional {
            if let Some(Ok(value)) = value.map(|v| HeaderValue::from_bytes(v.as_bytes())) {
                headers.insert(name, value);
            }
        }
        // The message's trace goes on to the handler, its parent this delivery's span (W3C
        // Trace Context), with its tracestate; none if the message came without one.
        if let Some(onward) = oncely::consumer::current_trace() {
            let value =
                HeaderValue::from_str(&onward.to_string()).expect("a traceparent is plain ASCII");
            headers.insert(TRACEPARENT, value);
            if let Some(Ok(state)) = message
                .header(TRACESTATE)
                .map(|v| HeaderValue::from_bytes(v.as_bytes()))
            {
                headers.insert(TRACESTATE, state);
            }
        }
        Ok(request)
    }

    /// Sends `request`. A 2xx answer gives its body (at most [`OUTCOME_CAP`] bytes); anything
    /// else is the error the runner retries with and dead-letters with:
    ///
    /// - nothing was sent (no connection could be made, or the request was given back unsent):
    ///   a plain error, so the key is released and the retry POSTs again;
    /// - the handler answered, but not 2xx: a plain error too, as it said it failed;
    /// - the request may have reached the handler and no answer came (`--timeout` passed once
    ///   a connection was had, or the connection was lost): [`OutcomeUnknown`], so the key stays
    ///   held until its lease ends and no retry POSTs again meanwhile.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<Vec<u8>, BoxError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Set once the client has a connection for the request, right before writing it.
        let connection = capture_connection(&mut request);
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) if connection.connection_metadata().is_none() => {
                return Err(format!(
                    "handler at {} unreachable: no connection within {} (--timeout)",
                    self.url,
                    humane(self.timeout)
                )
                .into());
            }
            Err(_) => {
                return Err(OutcomeUnknown::new(format!(
                    "handler at {} did not answer within {} (--timeout)",
                    self.url,
                    humane(self.timeout)
                ))
                .into());
            }
            Ok(Err(error)) => {
                // The client's own text ("client error (Connect)") says less than its source.
                let cause = error.source().map_or_else(|| chain(&error), chain);
                if error.is_connect() {
                    return Err(format!("handler at {} unreachable: {cause}", self.url).into());
                }
                let failed = format!("request to handler at {} failed: {cause}", self.url);
                // A request the connection gave back before writing it (hyper's "canceled"),
                // or one that never had a connection, was not sent.
                let unsent = connection.connection_metadata().is_none()
                    || error
                        .source()
                        .and_then(|e| e.downcast_ref::<hyper::Error>())
                        .is_some_and(hyper::Error::is_canceled);
                return Err(if unsent {
                    failed.into()
                } else {
                    OutcomeUnknown::new(failed).into()
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let cap = if status.is_success() {
            OUTCOME_CAP
        } else {
            ERROR_BODY_CAP
        };
        let body = tokio::time::timeout_at(deadline, read_capped(response.into_body(), cap)).await;
        if status.is_success() {
            // The handler said done: its effect happened. A body cut short by the deadline or
            // the connection is kept as far as it came.
            return Ok(match body {
                Ok(Ok(bytes)) | Ok(Err(bytes)) => bytes,
                Err(_) => Vec::new(),
            });
        }
        let quoted = match body {
            Ok(Ok(bytes)) | Ok(Err(bytes)) => String::from_utf8_lossy(&bytes).trim().to_owned(),
            Err(_) => String::new(),
        };
        // The handler answered that it failed: a plain failure, the key released for a retry.
        Err(if quoted.is_empty() {
            format!("handler answered {status}").into()
        } else {
            format!("handler answered {status}: {quoted}").into()
        })
    }
}

/// Reads `body` up to `cap` bytes; what was read before an error comes back as the error.
async fn read_capped(mut body: Incoming, cap: usize) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < cap {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Err(out),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(cap - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
        }
    }
    Ok(out)
}

/// An error and its sources on one line, each cause once.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = error.source();
    }
    line
}

/// `30s`, `1500ms`: a duration as the flags write it.
pub fn humane(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        assert!(parse_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(parse_url("http://handler").is_ok());
        assert!(parse_url("https://example.com/hook").is_ok());
        for (url, needle) in [
            ("ftp://x/y", "scheme `ftp`"),
            ("localhost:8080/hook", "use http://"),
            ("/hook", "no scheme"),
            ("http://exa mple", "not a URL"),
        ] {
            let error = parse_url(url).unwrap_err().to_string();
            assert!(error.contains(needle), "{url}: {error}");
        }
    }

    #[test]
    fn the_request_carries_key_type_id_and_source() {
        let deliverer = Deliverer::new(
            parse_url("http://127.0.0.1:9/h").unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        let key = Key::new("k-1").unwrap();
        let json = Message::new(br#"{"a":1}"#.to_vec(), "orders").with_message_id("m-1");
        let request = deliverer.request(&key, &json).unwrap();
        let h = request.headers();
        assert_eq!(request.method(), hyper::Method::POST);
        assert_eq!(h[IDEMPOTENCY_KEY], "k-1");
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h[MESSAGE_ID], "m-1");
        assert_eq!(h[SOURCE], "orders");

        let raw = Message::new(b"\x00\x01".to_vec(), "q");
        let request = deliverer.request(&key, &raw).unwrap();
        assert_eq!(request.headers()[CONTENT_TYPE], "application/octet-stream");
        assert!(!request.headers().contains_key(MESSAGE_ID));
    }

    /// A handler on a fresh port that reads one request, then does `then` with the connection.
    fn one_request_then(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> Uri {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = parse_url(&format!("http://{}/h", listener.local_addr().unwrap())).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            then(stream);
        });
        url
    }

    async fn post(url: Uri, timeout: Duration) -> Result<Vec<u8>, BoxError> {
        let deliverer = Deliverer::new(url, timeout).unwrap();
        let message = Message::new(Vec::new(), "q");
        let request = deliverer
            .request(&Key::new("k").unwrap(), &message)
            .unwrap();
        deliverer.send(request).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_a_request_that_may_have_reached_the_handler_has_an_unknown_outcome() {
        let timeout = Duration::from_millis(300);
        // Nothing listens: nothing was sent.
        let down = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            parse_url(&format!("http://{}/h", listener.local_addr().unwrap())).unwrap()
        };
        let refused = post(down, timeout).await.unwrap_err();
        assert!(!OutcomeUnknown::is_in(&refused), "{refused}");
        assert!(refused.to_string().contains("unreachable"), "{refused}");

        // The handler answered that it failed.
        let answered = one_request_then(|mut stream| {
            use std::io::Write;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy");
        });
        let failed = post(answered, timeout).await.unwrap_err();
        assert!(!OutcomeUnknown::is_in(&failed), "{failed}");
        assert_eq!(
            failed.to_string(),
            "handler answered 503 Service Unavailable: busy"
        );

        // The handler got the request and says nothing within the timeout.
        let (hold, held) = std::sync::mpsc::channel();
        let silent = one_request_then(move |stream| hold.send(stream).unwrap());
        let timed_out = post(silent, timeout).await.unwrap_err();
        assert!(OutcomeUnknown::is_in(&timed_out), "{timed_out}");
        assert!(
            timed_out
                .to_string()
                .contains("did not answer within 300ms (--timeout); outcome unknown"),
            "{timed_out}"
        );
        drop(held);

        // The handler got the request and the connection broke.
        let closed = one_request_then(drop);
        let lost = post(closed, timeout).await.unwrap_err();
        assert!(OutcomeUnknown::is_in(&lost), "{lost}");
        assert!(
            lost.to_string().starts_with("request to handler at "),
            "{lost}"
        );
    }

    #[test]
    fn durations_print_as_the_flags_write_them() {
        assert_eq!(humane(Duration::from_secs(30)), "30s");
        assert_eq!(humane(Duration::from_millis(1500)), "1500ms");
    }
}
