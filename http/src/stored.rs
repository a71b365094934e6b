//! The stored response: what the layer keeps as a record's outcome, and replays.
//!
//! The encoding is a small versioned, length-prefixed binary format, so a body of any bytes
//! (JSON, protobuf, an image) is replayed exactly as it was sent, and a record written by a
//! newer layer is reported as such instead of being misread:
//!
//! ```text
//! magic    "OHR"                          3 bytes
//! version  1                              u8
//! status   e.g. 201                       u16, big-endian
//! headers  count: u32, then per header:   u16 name length, name, u32 value length, value
//! body     length: u64, then the bytes
//! trailers 0 (none) or 1, then a header list as above
//! ```
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, StatusCode, header};
//! use oncely_http::stored::StoredResponse;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
//! let response = StoredResponse {
//!     status: StatusCode::CREATED,
//!     headers,
//!     body: Bytes::from_static(br#"{"id":"ch_1"}"#),
//!     trailers: None,
//! };
//! let bytes = response.encode();
//! assert_eq!(StoredResponse::decode(&bytes)?, response);
//! # Ok::<(), oncely_http::stored::DecodeError>(())
//! ```

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The first four bytes of every stored response: the magic and the format version.
const MAGIC: &[u8; 3] = b"OHR";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// A response as stored for replay: status, headers, body and trailers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers kept (the layer drops hop-by-hop headers and its deny-list before storing).
    pub headers: HeaderMap,
    /// The body, exactly as the upstream sent it.
    pub body: Bytes,
    /// The trailers, if the upstream sent any (gRPC sends its status in them).
    pub trailers: Option<HeaderMap>,
}

/// Why stored bytes are not a response this version can replay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not start with the magic: not written by this layer.
    #[error("not a stored HTTP response (bad magic)")]
    BadMagic,
    /// Written by a newer version of the layer.
    #[error("stored response format version {0}, this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u8),
    /// The bytes end before the response does.
    #[error("stored response is truncated")]
    Truncated,
    /// Bytes left after the response.
    #[error("{0} unexpected bytes after the stored response")]
    TrailingBytes(usize),
    /// A status outside 100-999.
    #[error("stored status {0} is not a valid HTTP status")]
    BadStatus(u16),
    /// A header name or value that HTTP does not allow.
    #[error("stored header is not a valid HTTP header")]
    BadHeader,
}

impl StoredResponse {
    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len() + 64 * self.headers.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        encode_headers(&mut out, &self.headers);
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.body);
        match &self.trailers {
            None => out.push(0),
            Some(trailers) => {
                out.push(1);
                encode_headers(&mut out, trailers);
            }
        }
        out
    }

    /// Reads back what [`encode`](Self::encode) wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len()).map_err(|_| DecodeError::BadMagic)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let code = r.u16()?;
        let status = StatusCode::from_u16(code).map_err(|_| DecodeError::BadStatus(code))?;
        let headers = decode_headers(&mut r)?;
        let body_len = usize::try_from(r.u64()?).map_err(|_| DecodeError::Truncated)?;
        let body = Bytes::copy_from_slice(r.take(body_len)?);
        let trailers = match r.u8()? {
            0 => None,
            1 => Some(decode_headers(&mut r)?),
            _ => return Err(DecodeError::BadHeader),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes(r.0.len()));
        }
        Ok(StoredResponse {
            status,
            headers,
            body,
            trailers,
        })
    }
}

fn encode_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        // Header names are at most 64 KiB in any HTTP implementation we can receive them from.
        let name = name.as_str().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
}

fn decode_headers(r: &mut Reader<'_>) -> Result<HeaderMap, DecodeError> {
    let count = r.u32()? as usize;
    // Each header takes at least 6 bytes: a count beyond that is damage, not a huge map.
    if count > r.0.len() / 6 {
        return Err(DecodeError::Truncated);
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name_len = r.u16()? as usize;
        let name = HeaderName::from_bytes(r.take(name_len)?).map_err(|_| DecodeError::BadHeader)?;
        let value_len = r.u32()? as usize;
        let value =
            HeaderValue::from_bytes(r.take(value_len)?).map_err(|_| DecodeError::BadHeader)?;
        headers.append(name, value);
    }
    Ok(headers)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers.append("x-multi", "one".parse().unwrap());
        headers.append("x-multi", "two".parse().unwrap());
        headers.insert("x-empty", HeaderValue::from_static(""));
        headers.insert(
            "x-obs-text",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        StoredResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"\x00\xffbinary body\r\n"),
            trailers: None,
        }
    }

    #[test]
    fn round_trips_status_headers_in_order_and_binary_body() {
        let response = sample();
        let decoded = StoredResponse::decode(&response.encode()).unwrap();
        assert_eq!(decoded, response);
        let multi: Vec<_> = decoded.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);
    }

    #[test]
    fn round_trips_trailers_and_empty_body() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let response = StoredResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trailers: Some(trailers),
        };
        assert_eq!(
            StoredResponse::decode(&response.encode()).unwrap(),
            response
        );
    }

    #[test]
    fn every_truncation_is_an_error_never_a_shorter_response() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                StoredResponse::decode(&bytes[..len]).is_err(),
                "decoded a prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn newer_versions_and_foreign_bytes_are_reported() {
        let mut bytes = sample().encode();
        bytes[3] = 2;
        assert_eq!(
            StoredResponse::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(
            StoredResponse::decode(b"charge ch_1"),
            Err(DecodeError::BadMagic)
        );
        let mut long = sample().encode();
        long.push(0);
        assert_eq!(
            StoredResponse::decode(&long),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
