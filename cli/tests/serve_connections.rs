//! `oncely serve`'s connection bounds, end to end: the binary as a process on loopback (SQLite
//! store), a small blocking upstream in this process, and clients on raw TCP sockets, so a
//! request can be sent by halves, a connection left idle and counted. `--header-timeout` closes
//! a connection whose request line and headers do not all arrive in time (even dribbled),
//! `--idle-timeout` one that waits for its next request too long but never one whose request
//! is in progress, and `--max-connections` keeps a client out until a connection closes.
//!
//! The timing assertions are bounds, not measurements: closed after at least most of the
//! timeout and well after it (within 5 s of a 1 s timeout, 8 s of a 3 s one).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{BIN, Gateway, PATIENCE};

/// How long an upstream request to /slow takes.
const SLOW: Duration = Duration::from_millis(2500);

// ---------------------------------------------------------------------------------------------
// The upstream: HTTP/1.1 with keep-alive, a thread per connection; /slow answers after SLOW.

fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve_upstream(stream));
        }
    });
    url
}

fn serve_upstream(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if path.starts_with("/slow") {
            std::thread::sleep(SLOW);
        }
        let text = format!("upstream answered {path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

impl Gateway {
    fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).unwrap()
    }

    fn log(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw clients.

fn get(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
}

/// GETs `path` and reads the response (within [`PATIENCE`]): its body if it is a 200, else what
/// came instead.
fn get_ok(stream: &mut TcpStream, path: &str) -> Result<String, String> {
    get(stream, path);
    let (status, body) = response(stream, PATIENCE)?;
    if status.contains(" 200 ") {
        Ok(body)
    } else {
        Err(format!("answered {status}: {body:?}"))
    }
}

/// Reads one response (Content-Length or chunked) within `within`: its status line and body.
fn response(stream: &mut TcpStream, within: Duration) -> Result<(String, String), String> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&bytes, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let body = &bytes[end + 4..];
            let header = |name: &str| {
                head.lines().skip(1).find_map(|line| {
                    let (n, v) = line.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
            };
            let complete = match header("content-length") {
                Some(length) => body.len() >= length.parse::<usize>().unwrap(),
                None if header("transfer-encoding").is_some() => find(body, b"0\r\n\r\n").is_some(),
                None => false,
            };
            if complete {
                let status = head.lines().next().unwrap_or_default().to_owned();
                return Ok((status, String::from_utf8_lossy(body).into_owned()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete response within {within:?}; got {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("closed; got {:?}", String::from_utf8_lossy(&bytes))),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("{e}; got {:?}", String::from_utf8_lossy(&bytes))),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How long after `since` the gateway closed `stream` (end of file or reset), if it did within
/// `within`; bytes from the gateway meanwhile are a failure.
fn closed_within(stream: &mut TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    let mut chunk = [0u8; 1024];
    while since.elapsed() < within {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return Some(since.elapsed()),
            Ok(n) => panic!(
                "the gateway sent {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(since.elapsed()),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_half_sent_or_dribbled_request_head_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // The idle timeout is long: only the header timeout can close these.
    let gateway = Gateway::start(
        dir.path(),
        &upstream(),
        &["--header-timeout", "1s", "--idle-timeout", "30s"],
    );
    let start = Instant::now();
    // Connects and says nothing.
    let mut silent = gateway.connect();
    // Half a request: the line and one header, no blank line.
    let mut half = gateway.connect();
    half.write_all(b"GET /half HTTP/1.1\r\nHost: gateway\r\n")
        .unwrap();
    // A request answered, then half of the next one (its header timeout runs from its first
    // byte; the idle timeout would be 30 s).
    let mut half_later = gateway.connect();
    get_ok(&mut half_later, "/first").unwrap();
    let half_later_start = Instant::now();
    half_later.write_all(b"GET /second HTTP/1.1\r\n").unwrap();
    // A byte every 100 ms, never done.
    let mut dribbled = gateway.connect();
    let mut dribbler = dribbled.try_clone().unwrap();
    std::thread::spawn(move || {
        let head = b"GET /dribbled HTTP/1.1\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if dribbler.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    for (what, stream) in [
        ("silent", &mut silent),
        ("half", &mut half),
        ("dribbled", &mut dribbled),
    ] {
        let closed = closed_within(stream, start, Duration::from_secs(5));
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after 5 s"));
        assert!(
            closed >= Duration::from_millis(800),
            "{what}: closed after {closed:?}, before the header timeout"
        );
    }
    let closed = closed_within(&mut half_later, half_later_start, Duration::from_secs(5))
        .expect("half of a second request: still open after 5 s");
    assert!(
        closed >= Duration::from_millis(800),
        "closed after {closed:?}"
    );

    // The gateway itself is unharmed.
    let mut fine = gateway.connect();
    let body = get_ok(&mut fine, "/").unwrap_or_else(|e| panic!("{e} {:?}", gateway.log()));
    assert_eq!(body, "upstream answered /");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(
        dir.path(),
        &upstream(),
        &["--header-timeout", "1s", "--idle-timeout", "3s"],
    );
    let mut client = gateway.connect();
    get_ok(&mut client, "/first").unwrap();

    // Idle past the header timeout but within the idle timeout: the connection still serves.
    std::thread::sleep(Duration::from_millis(1500));
    let body = get_ok(&mut client, "/second")
        .unwrap_or_else(|e| panic!("an idle connection was cut before --idle-timeout: {e}"));
    assert_eq!(body, "upstream answered /second");

    // Then idle for good: closed after about 3 s.
    let idle_since = Instant::now();
    let closed = closed_within(&mut client, idle_since, Duration::from_secs(8))
        .expect("an idle keep-alive connection still open 8 s after its last response");
    assert!(
        closed >= Duration::from_millis(2500),
        "closed after {closed:?}, before the idle timeout"
    );
}

#[test]
fn a_request_in_progress_is_not_cut_by_the_idle_or_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(
        dir.path(),
        &upstream(),
        &["--header-timeout", "1s", "--idle-timeout", "1s"],
    );
    let mut client = gateway.connect();
    let start = Instant::now();
    // The upstream answers after 2.5 s, past both timeouts.
    let body = get_ok(&mut client, "/slow")
        .unwrap_or_else(|e| panic!("a request in progress was cut: {e}"));
    assert!(start.elapsed() >= SLOW);
    assert_eq!(body, "upstream answered /slow");
    // Idle once it is answered.
    let closed = closed_within(&mut client, Instant::now(), Duration::from_secs(5));
    assert!(closed.is_some(), "still open 5 s after the response");
}

#[test]
fn past_max_connections_a_client_waits_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), &upstream(), &["--max-connections", "2"]);
    // Two keep-alive connections, served and then idle (the idle timeout is 75 s).
    let mut first = gateway.connect();
    let mut second = gateway.connect();
    for client in [&mut first, &mut second] {
        get_ok(client, "/").unwrap();
    }

    // A third connects (the kernel's backlog takes it) but is not served.
    let mut third = gateway.connect();
    get(&mut third, "/third");
    let waited = response(&mut third, Duration::from_millis(1500));
    assert!(
        waited.is_err(),
        "a third connection was served with --max-connections 2: {waited:?}"
    );

    // One of the two closes: the third is served, its request as sent.
    drop(first);
    let (status, body) = response(&mut third, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("not served once a connection closed: {e}"));
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "upstream answered /third");
    // The second is still served.
    get_ok(&mut second, "/again").unwrap();
}

#[test]
fn a_zero_timeout_or_max_connections_is_refused() {
    for flags in [
        ["--header-timeout", "0s"],
        ["--idle-timeout", "0ms"],
        ["--max-connections", "0"],
    ] {
        let output = Command::new(BIN)
            .args(["--store", "sqlite::memory:", "serve"])
            .args(["--upstream", "http://127.0.0.1:9"])
            .args(flags)
            .env_remove("ONCELY_STORE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(flags[0]), "{flags:?}: {stderr}");
    }
}
