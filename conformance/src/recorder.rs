//! [`Recorder`]: an HTTP/1.1 server on loopback that answers every request and keeps it: the
//! upstream, handler or OTLP receiver a test looks at afterwards.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One request as the recorder got it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Header names in lowercase; a repeated header's last value.
    pub headers: HashMap<String, String>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// A header's value, by any case of its name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Answers each request `status` with an empty JSON object, on a thread of its own, and keeps
/// every request in arrival order. Runs until the test process ends.
#[derive(Clone, Debug)]
pub struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    /// A recorder answering `status` on 127.0.0.1 and a free port.
    pub fn start(status: u16) -> Recorder {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("bound").port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let kept = requests.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(serve(listener, status, kept));
        });
        Recorder { port, requests }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("not poisoned").clone()
    }

    /// Waits up to `patience` for `count` requests; panics naming `what` if they do not come.
    pub fn wait_for(&self, count: usize, what: &str, patience: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + patience;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {count} requests after {patience:?}",
                requests.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    status: StatusCode,
    kept: Arc<Mutex<Vec<Recorded>>>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let kept = kept.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let kept = kept.clone();
                async move {
                    let method = request.method().to_string();
                    let path = request.uri().to_string();
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(name, value)| {
                            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                            (name.as_str().to_owned(), value)
                        })
                        .collect();
                    let body = match request.into_body().collect().await {
                        Ok(body) => body.to_bytes().to_vec(),
                        Err(_) => Vec::new(),
                    };
                    kept.lock().expect("not poisoned").push(Recorded {
                        method,
                        path,
                        headers,
                        body,
                    });
                    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
