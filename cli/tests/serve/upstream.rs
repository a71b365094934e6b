//! The upstreams behind the gateway, in this process: one that answers every request and
//! counts executions per Idempotency-Key, and two that misbehave.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Executions per key ("" for requests without one), shared with the upstream's tasks.
#[derive(Clone, Default)]
pub struct Executions(Arc<Mutex<HashMap<String, u64>>>);

impl Executions {
    pub fn of(&self, key: &str) -> u64 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub fn all(&self) -> HashMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Serves on `listener` until the returned handle is aborted. Each answer is unique (a global
/// sequence number), so a replay is told from a second execution by its bytes.
pub fn start_upstream(
    listener: TcpListener,
    executions: Executions,
) -> tokio::task::JoinHandle<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let executions = executions.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let executions = executions.clone();
                async move {
                    let key = request
                        .headers()
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let method = request.method().clone();
                    let path = request.uri().to_string();
                    let hop = request.headers().contains_key("x-hop");
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let forwarded = format!(
                        "host={} xff={} xfh={} xfp={}",
                        header("host"),
                        header("x-forwarded-for"),
                        header("x-forwarded-host"),
                        header("x-forwarded-proto")
                    );
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    // Counted on arrival: a request the gateway gives up on still counts.
                    let n = SEQUENCE.fetch_add(1, Ordering::SeqCst);
                    *executions.0.lock().unwrap().entry(key.clone()).or_default() += 1;
                    // Long enough for concurrent duplicates to overlap; /slow for timeouts
                    // and shutdown.
                    let pause = if path.starts_with("/slow") { 1000 } else { 20 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let mut text = format!(
                        "{method} {path} key={key} n={n} hop={hop} {forwarded} body={}",
                        String::from_utf8_lossy(&body)
                    );
                    if path.starts_with("/big") {
                        // Over the 1 MiB the gateway stores.
                        text = text.repeat(2 * 1024 * 1024 / text.len() + 1);
                    }
                    // `/status/429` answers 429, and so on.
                    let named = path
                        .strip_prefix("/status/")
                        .and_then(|code| code.parse().ok())
                        .and_then(|code| StatusCode::from_u16(code).ok());
                    let status = if let Some(named) = named {
                        named
                    } else if path.starts_with("/fail") {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else if method == hyper::Method::POST {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("x-upstream", "yes")
                            .header("set-cookie", "session=1")
                            .body(Full::new(Bytes::from(text)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

pub async fn upstream() -> (String, Executions, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let executions = Executions::default();
    let task = start_upstream(listener, executions.clone());
    (url, executions, task)
}

/// An upstream that reads each request, counts it, and dies without answering (its connection
/// closes, as when its process is killed).
pub async fn upstream_that_dies_on_receipt() -> (String, Arc<AtomicU64>) {
    use tokio::io::AsyncReadExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, received)
}

/// An upstream answering HTTP/1.0 and closing the connection, like Python's http.server.
pub fn http10_upstream() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream.write_all(b"HTTP/1.0 201 Created\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    url
}
