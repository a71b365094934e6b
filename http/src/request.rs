//! What the layer reads from a request: the key, the principal's scope and the fingerprint.

use http::request::Parts;
use http::{HeaderMap, HeaderName};
use oncely_core::{Fingerprint, Key, PayloadFingerprint, Scope};

use crate::problem::Problem;

/// The header carrying the key (IETF httpapi draft, Stripe).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The header marking a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// The request's key: `Ok(None)` if it has none, a problem if the key is malformed.
pub(crate) fn read_key(headers: &HeaderMap) -> Result<Option<Key>, Problem> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let extra = values.count();
    if extra > 0 {
        return Err(Problem::KeyRepeated { count: extra + 1 });
    }
    let bytes = value.as_bytes();
    let unquoted;
    let bytes = if bytes.first() == Some(&b'"') {
        // An RFC 8941 string, as the IETF draft sends it: the key is its content.
        unquoted = unquote(bytes)?;
        &unquoted[..]
    } else {
        // A bare token, as most clients send it: visible ASCII (VCHAR, 0x21-0x7E), as
        // README's HTTP section states: no space, control or non-ASCII byte. HTTP trims the
        // value's surrounding whitespace, so an inner space is the only one seen.
        if !bytes.iter().all(u8::is_ascii_graphic) {
            return Err(Problem::KeyNotVisibleAscii);
        }
        bytes
    };
    if bytes.is_empty() {
        return Err(Problem::KeyEmpty);
    }
    if bytes.len() > MAX_KEY_LEN {
        return Err(Problem::KeyTooLong { len: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Problem::KeyNotVisibleAscii)?;
    // At most 255 ASCII bytes: within every limit of `Key`.
    Key::new(text).map(Some).map_err(|_| Problem::KeyEmpty)
}

/// The content of an RFC 8941 sf-string (`"..."`, with `\"` and `\\` its only escapes, and
/// printable ASCII, space included, between the quotes).
fn unquote(quoted: &[u8]) -> Result<Vec<u8>, Problem> {
    let malformed = |why: &str| Problem::KeyNotSfString {
        why: why.to_owned(),
    };
    let inner = match quoted {
        [b'"', inner @ .., b'"'] if quoted.len() >= 2 => inner,
        _ => return Err(malformed("it has no closing quote")),
    };
    let mut content = Vec::with_capacity(inner.len());
    let mut chars = inner.iter();
    while let Some(&c) = chars.next() {
        match c {
            b'\\' => match chars.next() {
                Some(&escaped @ (b'"' | b'\\')) => content.push(escaped),
                _ => {
                    return Err(malformed(
                        "a backslash may escape only a quote or a backslash",
                    ));
                }
            },
            b'"' => return Err(malformed("a quote inside it must be escaped")),
            b' '..=b'~' => content.push(c),
            _ => {
                return Err(malformed(
                    "only printable ASCII may stand between its quotes",
                ));
            }
        }
    }
    Ok(content)
}

/// The principal's scope: `http:` and the SHA-256 of the configured headers' names and values,
/// or the one shared scope `http` when none is configured. A request that carries none of the
/// configured headers gets the scope of the anonymous principal (all such requests share it).
pub(crate) fn principal_scope(principal_headers: &[HeaderName], headers: &HeaderMap) -> Scope {
    if principal_headers.is_empty() {
        return Scope::new("http").expect("a valid scope");
    }
    let digest = Fingerprint::of_parts(header_parts(principal_headers, headers).iter().copied());
    Scope::new(format!("http:{}", digest.to_hex())).expect("69 bytes is a valid scope")
}

/// The request's fingerprint: method, path and query, the configured headers, and the body as
/// `body_fingerprint` sees it. A problem if the body cannot be fingerprinted that way.
pub(crate) fn request_fingerprint(
    fingerprint_headers: &[HeaderName],
    body_fingerprint: &PayloadFingerprint,
    parts: &Parts,
    body: &[u8],
) -> Result<Fingerprint, Problem> {
    // Bytes: the body itself is the part, as before body fingerprints could be chosen, so
    // records stored then still match their retries.
    let digest;
    let body = match body_fingerprint {
        PayloadFingerprint::Bytes => body,
        other => {
            digest = other.of(body).map_err(|e| Problem::BodyNotFingerprinted {
                reason: e.to_string(),
            })?;
            digest.as_bytes().as_slice()
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let mut all: Vec<&[u8]> = vec![parts.method.as_str().as_bytes(), path.as_bytes()];
    all.extend(header_parts(fingerprint_headers, &parts.headers));
    all.push(body);
    Ok(Fingerprint::of_parts(all))
}

/// Each configured header's name, its number of values and each value, in configured order:
/// a header absent, empty or sent twice all give different parts.
fn header_parts<'a>(names: &'a [HeaderName], headers: &'a HeaderMap) -> Vec<&'a [u8]> {
    const COUNTS: [&[u8]; 9] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8+"];
    let mut parts = Vec::new();
    for name in names {
        let values: Vec<_> = headers.get_all(name).iter().collect();
        parts.push(name.as_str().as_bytes());
        parts.push(COUNTS[values.len().min(8)]);
        parts.extend(values.into_iter().map(|v| v.as_bytes()));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request, header};

    fn headers(pairs: &[(&HeaderName, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append((*name).clone(), HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn keys_are_validated_like_the_ietf_draft_says() {
        let k = &IDEMPOTENCY_KEY;
        assert_eq!(read_key(&HeaderMap::new()), Ok(None));
        assert_eq!(
            read_key(&headers(&[(k, b"8e03978e-40d5")]))
                .unwrap()
                .unwrap()
                .as_str(),
            "8e03978e-40d5"
        );
        assert_eq!(read_key(&headers(&[(k, b"")])), Err(Problem::KeyEmpty));
        assert_eq!(
            read_key(&headers(&[(k, "x".repeat(256).as_bytes())])),
            Err(Problem::KeyTooLong { len: 256 })
        );
        assert!(read_key(&headers(&[(k, "x".repeat(255).as_bytes())])).is_ok());
        assert_eq!(
            read_key(&headers(&[(k, b"caf\xc3\xa9")])),
            Err(Problem::KeyNotVisibleAscii)
        );
        assert_eq!(
            read_key(&headers(&[(k, b"a\tb")])),
            Err(Problem::KeyNotVisibleAscii)
        );
        assert_eq!(
            read_key(&headers(&[(k, b"a"), (k, b"a")])),
            Err(Problem::KeyRepeated { count: 2 })
        );
    }

    #[test]
    fn a_quoted_key_is_an_rfc_8941_string_whose_content_is_the_key() {
        let k = &IDEMPOTENCY_KEY;
        let key = |value: &[u8]| read_key(&headers(&[(k, value)]));
        let text = |value: &[u8]| key(value).unwrap().unwrap().as_str().to_owned();
        // The draft's own example, and a bare form: one key.
        assert_eq!(
            text(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#),
            "8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
        assert_eq!(text(br#""k-1""#), text(b"k-1"));
        // Escapes, and a space, which only a string may hold.
        assert_eq!(text(br#""a \"b\" \\ c""#), r#"a "b" \ c"#);
        assert_eq!(key(b"\"\""), Err(Problem::KeyEmpty));
        for bad in [&b"\"abc"[..], b"\"", b"\"a\"b\"", b"\"a\\b\"", b"\"a\tb\""] {
            assert!(
                matches!(key(bad), Err(Problem::KeyNotSfString { .. })),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                key(bad)
            );
        }
        // The limit is on the key, not on its quotes.
        let longest = format!("\"{}\"", "x".repeat(MAX_KEY_LEN));
        assert!(key(longest.as_bytes()).is_ok());
        let over = format!("\"{}\"", "x".repeat(MAX_KEY_LEN + 1));
        assert_eq!(key(over.as_bytes()), Err(Problem::KeyTooLong { len: 256 }));
    }

    #[test]
    fn principals_are_kept_apart_by_their_headers() {
        let auth = [header::AUTHORIZATION];
        let alice = principal_scope(&auth, &headers(&[(&header::AUTHORIZATION, b"Bearer a")]));
        let bob = principal_scope(&auth, &headers(&[(&header::AUTHORIZATION, b"Bearer b")]));
        let anonymous = principal_scope(&auth, &HeaderMap::new());
        assert_ne!(alice, bob);
        assert_ne!(alice, anonymous);
        assert!(alice.as_str().starts_with("http:"));
        // The credential itself is never stored, only its digest.
        assert!(!alice.as_str().contains("Bearer"));
        assert_eq!(principal_scope(&[], &HeaderMap::new()).as_str(), "http");
    }

    #[test]
    fn fingerprint_covers_method_path_query_headers_and_body() {
        let parts = |method: &str, uri: &str, tenant: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .header("x-tenant", tenant)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let names = [HeaderName::from_static("x-tenant")];
        let json = PayloadFingerprint::Json;
        let of = |names: &[HeaderName], parts: &Parts, body: &[u8]| {
            request_fingerprint(names, &json, parts, body).unwrap()
        };
        const BODY: &[u8] = b"{\"a\":1,\"b\":2}";
        let base = of(&names, &parts("POST", "/charges", "t1"), BODY);
        // The same JSON, re-serialised: the same request.
        assert_eq!(
            base,
            of(
                &names,
                &parts("POST", "/charges", "t1"),
                b"{ \"b\": 2, \"a\": 1 }"
            )
        );
        for other in [
            of(&names, &parts("PATCH", "/charges", "t1"), BODY),
            of(&names, &parts("POST", "/refunds", "t1"), BODY),
            of(&names, &parts("POST", "/charges?x=1", "t1"), BODY),
            of(&names, &parts("POST", "/charges", "t2"), BODY),
            of(
                &names,
                &parts("POST", "/charges", "t1"),
                b"{\"a\":1,\"b\":3}",
            ),
        ] {
            assert_ne!(base, other);
        }
        // A header not configured does not count.
        assert_eq!(
            of(&[], &parts("POST", "/charges", "t1"), b"{}"),
            of(&[], &parts("POST", "/charges", "t2"), b"{}")
        );
        // Bytes: every byte counts. Fields of a body that is not JSON: a problem.
        let bytes = |body: &[u8]| {
            request_fingerprint(
                &[],
                &PayloadFingerprint::Bytes,
                &parts("POST", "/c", "t"),
                body,
            )
        };
        assert_ne!(bytes(b"{}").unwrap(), bytes(b"{ }").unwrap());
        let fields: PayloadFingerprint = "fields:/a".parse().unwrap();
        assert!(matches!(
            request_fingerprint(&[], &fields, &parts("POST", "/c", "t"), b"a=1"),
            Err(Problem::BodyNotFingerprinted { .. })
        ));
    }
}
