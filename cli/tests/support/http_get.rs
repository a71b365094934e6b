//! A plain HTTP GET, for the metrics and health endpoints of a process under test.

use std::time::Duration;

/// `GET path` on `127.0.0.1:port` over HTTP/1.0: the whole answer, status line first, or the
/// error (nothing listening yet).
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
