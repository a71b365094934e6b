//! Hop-by-hop headers: what describes one connection, never the message (RFC 9110 7.6.1).
//! Neither stored by the layer nor forwarded by the gateway.

use http::{HeaderMap, HeaderName, header};

/// The hop-by-hop headers, `Proxy-Connection` (an old, non-standard one) included.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes from `headers` the hop-by-hop ones, those its `Connection` header names, and
/// `also`; the others keep their order (and are left untouched when nothing is removed).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, also: &[HeaderName]) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let removed = |name: &HeaderName| {
        HOP_BY_HOP.contains(name) || named_by_connection.contains(name) || also.contains(name)
    };
    if !headers.keys().any(removed) {
        return;
    }
    let mut kept = HeaderMap::with_capacity(headers.len());
    // `drain` names each header once, before its first value.
    let mut name = None;
    for (first, value) in headers.drain() {
        if first.is_some() {
            name = first;
        }
        if let Some(name) = name.as_ref().filter(|name| !removed(name)) {
            kept.append(name.clone(), value);
        }
    }
    *headers = kept;
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn hop_by_hop_headers_those_connection_names_and_the_others_asked_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("x-first", HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append("x-first", HeaderValue::from_static("2"));
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        remove_hop_by_hop(&mut headers, &[header::SET_COOKIE]);
        let left: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            [
                ("x-first", "1"),
                ("x-first", "2"),
                ("content-type", "text/plain")
            ]
        );
    }

    #[test]
    fn headers_without_any_to_drop_are_left_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let before = headers.clone();
        remove_hop_by_hop(&mut headers, &[header::SET_COOKIE]);
        assert_eq!(headers, before);
    }
}
