//! The handler: a minimal HTTP/1.1 server on 127.0.0.1:0, in this process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::FAILING;

/// One request the handler got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn key(&self) -> &str {
        self.header("idempotency-key").unwrap_or_default()
    }
}

/// Answers 200 with `ok <key>` to every request, except 500 to key [`FAILING`]; one
/// connection per request (`Connection: close`).
pub struct Handler {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Handler {
    pub fn start() -> Handler {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    if let Some(request) = answer(stream) {
                        log.lock().unwrap().push(request);
                    }
                });
            }
        });
        Handler { url, received }
    }

    /// A handler that takes connections and never answers.
    pub fn silent() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
            }
        });
        url
    }

    /// A handler URL where nothing listens.
    pub fn down() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests each key got.
    pub fn per_key(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for request in self.received() {
            *counts.entry(request.key().to_owned()).or_default() += 1;
        }
        counts
    }
}

fn answer(stream: TcpStream) -> Option<Received> {
    let request = read_request(&stream)?;
    let (status, text) = if request.key() == FAILING {
        (
            "500 Internal Server Error",
            format!("boom: {} cannot be handled", request.key()),
        )
    } else {
        ("200 OK", format!("ok {}", request.key()))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )
    .ok()?;
    stream.flush().ok()?;
    Some(request)
}

/// One request from `stream`, head and body.
pub fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

/// A handler in this process that records each request as it arrives, then does `then` with
/// the connection (answer late, hang up, ...).
pub fn receiving_handler(
    listener: TcpListener,
    then: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Arc<Mutex<Vec<(Instant, Received)>>> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let then = Arc::new(then);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (log, then) = (log.clone(), then.clone());
            std::thread::spawn(move || {
                if let Some(request) = read_request(&stream) {
                    log.lock().unwrap().push((Instant::now(), request));
                    then(stream);
                }
            });
        }
    });
    received
}

/// Answers 200 `ok` on `stream` after `delay`.
pub fn answer_after(delay: Duration) -> impl Fn(TcpStream) + Send + Sync + 'static {
    move |mut stream| {
        std::thread::sleep(delay);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
}
