//! Canonical JSON: one text per value, whatever the key order, whitespace or number spelling it
//! arrived with, and never a number rounded through `f64`.
//!
//! Numbers are written so that only their exact value counts, not how it was spelled:
//!
//! - an integer (no `.`, `e` or `E`) keeps its digits, however long: `18446744073709551617` and
//!   `100000000000000000000001` stay exactly that;
//! - a number with a fraction or exponent is written from its exact decimal value, laid out as
//!   serde_json writes an `f64` (`2.50`, `25e-1` and `2.5` give `2.5`; `1e2` and `100.0` give
//!   `100.0`; `1e21` gives `1e+21`), but with every significant digit kept:
//!   `0.10000000000000000001` is not `0.1`. For a number written with the digits serde_json
//!   prints for its `f64` (the shortest that read back to it, which is what most serializers
//!   write), that is serde_json's own text, so such keys and fingerprints are what they were
//!   before numbers were kept exact;
//! - `1` and `1.0` stay different, as before (an integer and a float); `-0` is written `-0.0`,
//!   as serde_json did.

use std::borrow::Cow;

use serde_json::Value;

/// Writes `value` with object keys sorted by their UTF-8 bytes, no insignificant whitespace and
/// numbers in canonical form (see the module docs).
///
/// Sorting is done here rather than relying on `serde_json`'s map type, whose order depends on
/// whether some crate in the build enabled `preserve_order`. A [`Value`] parsed without
/// serde_json's `arbitrary_precision` feature has already rounded numbers that do not fit a
/// 64-bit integer or an `f64`; [`canonical_json_text`] reads them from the text instead.
///
/// ```
/// use oncely_core::canonical_json;
/// let v: serde_json::Value = serde_json::from_str(r#"{"b": [1, {"d":2,"c":3}], "a": "x"}"#)?;
/// assert_eq!(canonical_json(&v), r#"{"a":"x","b":[1,{"c":3,"d":2}]}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn canonical_json(value: &Value) -> String {
    canonical(&Json::from(value))
}

/// The canonical JSON of a JSON text as received, numbers exact: what [`canonical_json`] gives
/// for the same value, except that no number has been rounded on the way in. Fails as
/// `serde_json::from_slice` does on what is not one JSON text.
///
/// ```
/// use oncely_core::canonical_json_text;
/// let text = br#"{ "id": 18446744073709551617, "amount": 2.50 }"#;
/// assert_eq!(canonical_json_text(text)?, r#"{"amount":2.5,"id":18446744073709551617}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn canonical_json_text(text: &[u8]) -> Result<String, serde_json::Error> {
    Ok(canonical(&Json::parse(text)?))
}

/// A JSON value with each number kept as the text it was written with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    /// The number's JSON text, as received.
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in document order, repeated names included: the last one counts, as in
    /// serde_json's `Value`.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> From<&'a Value> for Json<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(Cow::Owned(n.to_string())),
            Value::String(s) => Json::String(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::from(v)))
                    .collect(),
            ),
        }
    }
}

impl<'a> Json<'a> {
    /// Parses one JSON text. serde_json checks it first, so what is accepted, and the error for
    /// what is not, are exactly `serde_json::from_slice`'s.
    pub(crate) fn parse(text: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<Value>(text)?;
        let text = std::str::from_utf8(text).map_err(|e| internal(e.to_string()))?;
        let mut parser = Parser { text, pos: 0 };
        let value = parser.value()?;
        parser.whitespace();
        if parser.pos != text.len() {
            return Err(parser.unexpected());
        }
        Ok(value)
    }

    /// The value a JSON pointer (RFC 6901) names, resolved as serde_json's `Value::pointer`.
    pub(crate) fn pointer(&self, pointer: &str) -> Option<&Json<'a>> {
        if pointer.is_empty() {
            return Some(self);
        }
        if !pointer.starts_with('/') {
            return None;
        }
        pointer
            .split('/')
            .skip(1)
            .map(|token| token.replace("~1", "/").replace("~0", "~"))
            .try_fold(self, |target, token| match target {
                Json::Object(members) => members
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == token)
                    .map(|(_, v)| v),
                Json::Array(items) => array_index(&token).and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

impl Json<'_> {
    /// Removes what a JSON pointer names (every member of that name, for an object); nothing if
    /// it names nothing. The empty pointer names the whole value, which is left as it is.
    pub(crate) fn remove(&mut self, pointer: &str) {
        let Some((parent, last)) = pointer.rsplit_once('/') else {
            return;
        };
        let last = last.replace("~1", "/").replace("~0", "~");
        let mut target = self;
        for token in parent.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            let next = match target {
                Json::Object(members) => members
                    .iter_mut()
                    .rev()
                    .find(|(name, _)| *name == token)
                    .map(|(_, v)| v),
                Json::Array(items) => array_index(&token).and_then(|i| items.get_mut(i)),
                _ => None,
            };
            match next {
                Some(next) => target = next,
                None => return,
            }
        }
        match target {
            Json::Object(members) => members.retain(|(name, _)| *name != last),
            Json::Array(items) => {
                if let Some(i) = array_index(&last).filter(|i| *i < items.len()) {
                    items.remove(i);
                }
            }
            _ => {}
        }
    }
}

/// An array index in a pointer: decimal, no sign, no leading zero (as serde_json reads it).
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// An error for text serde_json accepted but this parser did not: a bug, reported, not hidden.
fn internal(what: String) -> serde_json::Error {
    serde_json::Error::io(std::io::Error::other(format!(
        "JSON accepted by serde_json but not by oncely's exact reader: {what}"
    )))
}

/// Reads text serde_json has already accepted, keeping numbers as written.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn unexpected(&self) -> serde_json::Error {
        internal(format!("unexpected input at byte {}", self.pos))
    }

    /// Consumes `byte`, after any whitespace.
    fn expect(&mut self, byte: u8) -> Result<(), serde_json::Error> {
        self.whitespace();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn value(&mut self) -> Result<Json<'a>, serde_json::Error> {
        self.whitespace();
        let rest = &self.text[self.pos..];
        for (word, value) in [
            ("null", Json::Null),
            ("true", Json::Bool(true)),
            ("false", Json::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        match self.peek() {
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                ) {
                    self.pos += 1;
                }
                Ok(Json::Number(Cow::Borrowed(&self.text[start..self.pos])))
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.whitespace();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut members = Vec::new();
                self.whitespace();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.whitespace();
                    let name = self.string()?;
                    self.expect(b':')?;
                    members.push((name, self.value()?));
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            _ => Err(self.unexpected()),
        }
    }

    /// A string literal at `pos`: borrowed when it has no escapes, else decoded by serde_json.
    fn string(&mut self) -> Result<Cow<'a, str>, serde_json::Error> {
        if self.peek() != Some(b'"') {
            return Err(self.unexpected());
        }
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            match bytes.get(i) {
                Some(b'"') => break,
                // The escaped character is skipped with it; \uXXXX's digits are plain.
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(_) => i += 1,
                None => return Err(self.unexpected()),
            }
        }
        self.pos = i + 1;
        if escaped {
            serde_json::from_str::<String>(&self.text[start..self.pos]).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(&self.text[start + 1..i]))
        }
    }
}

/// The canonical JSON of `value`.
pub(crate) fn canonical(value: &Json) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// The canonical JSON array of `values`.
pub(crate) fn canonical_array(values: &[&Json]) -> String {
    let mut out = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(v, &mut out);
    }
    out.push(']');
    out
}

pub(crate) fn write_value(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(text) => write_number(text, out),
        Json::String(s) => write_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        Json::Object(members) => {
            let mut sorted: Vec<_> = members.iter().collect();
            // Stable: members of one name stay in document order, so the last one is last.
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            let mut first = true;
            for (i, (name, v)) in sorted.iter().enumerate() {
                if sorted.get(i + 1).is_some_and(|next| next.0 == *name) {
                    continue; // a later member of the same name replaces this one
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_string(name, out);
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
    }
}

pub(crate) fn write_string(s: &str, out: &mut String) {
    // serde_json's string escaping is already canonical (shortest escapes, \u for controls).
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// Writes the JSON number `text` (valid JSON number syntax) in canonical form: see the module
/// docs. Exact: no digit is ever dropped or rounded.
pub(crate) fn write_number(text: &str, out: &mut String) {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if !unsigned.contains(['.', 'e', 'E']) && text != "-0" {
        // A JSON integer has one spelling: its digits are its canonical form, however many.
        out.push_str(text);
        return;
    }
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = || int.bytes().chain(frac.bytes());
    let Some(leading_zeros) = all().position(|d| d != b'0') else {
        out.push_str(if negative { "-0.0" } else { "0.0" });
        return;
    };
    let trailing_zeros = frac
        .bytes()
        .rev()
        .chain(int.bytes().rev())
        .take_while(|&d| d == b'0')
        .count();
    let digit_count = int.len() + frac.len() - leading_zeros - trailing_zeros;
    let digits: String = all()
        .skip(leading_zeros)
        .take(digit_count)
        .map(char::from)
        .collect();
    let exponent: i128 = match exponent.map(str::parse::<i64>) {
        None => 0,
        Some(Ok(e)) => e.into(),
        // An exponent beyond 64 bits (an underflow to 0 for an f64): the text as written is
        // exact, and no other spelling of a number is written like it.
        Some(Err(_)) => {
            out.push_str(text);
            return;
        }
    };
    // The value is d.ddd x 10^e, d the first significant digit.
    let e = int.len() as i128 - 1 - leading_zeros as i128 + exponent;
    let n = digits.len() as i128;
    if negative {
        out.push('-');
    }
    // serde_json's layout of an f64 (its `zmij` formatter): plain from 1e-5 to below 1e16.
    if (-5..=15).contains(&e) {
        if n - 1 <= e {
            // 1234e7 -> 12340000000.0
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (e + 1 - n) as usize));
            out.push_str(".0");
        } else if e >= 0 {
            // 1234e-2 -> 12.34
            let point = e as usize + 1;
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        } else {
            // 1234e-6 -> 0.001234
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-e - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        // 1234e30 -> 1.234e+33
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(if e >= 0 { "e+" } else { "e-" });
        out.push_str(&e.unsigned_abs().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> String {
        let mut out = String::new();
        write_number(text, &mut out);
        out
    }

    fn text(json: &str) -> String {
        canonical_json_text(json.as_bytes()).unwrap()
    }

    #[test]
    fn integers_keep_every_digit() {
        for n in [
            "0",
            "-1",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "18446744073709551617",
            "-9223372036854775809",
            "100000000000000000000001",
            "100000000000000000000002",
        ] {
            assert_eq!(text(n), n);
            assert_eq!(text(&format!("{{\"n\": {n}}}")), format!("{{\"n\":{n}}}"));
        }
        let big = format!("[{}]", "9".repeat(300));
        assert_eq!(text(&big), big);
    }

    #[test]
    fn fractions_and_exponents_keep_their_exact_value_in_serde_jsons_layout() {
        let cases = [
            ("2.50", "2.5"),
            ("25e-1", "2.5"),
            ("0.25E+1", "2.5"),
            ("1e2", "100.0"),
            ("1E+2", "100.0"),
            ("100.000", "100.0"),
            ("-0", "-0.0"),
            ("-0.0e7", "-0.0"),
            ("0e99999999999999999999999", "0.0"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("1.5e-5", "0.000015"),
            ("0.0000015", "1.5e-6"),
            ("-123.456e10", "-1234560000000.0"),
            ("1e-400", "1e-400"),
            ("1e-99999999999999999999999", "1e-99999999999999999999999"),
            ("0.10000000000000000001", "0.10000000000000000001"),
            ("18446744073709551617.0", "1.8446744073709551617e+19"),
            ("18446744073709551616.0", "1.8446744073709551616e+19"),
            (
                "1.00000000000000000000001e300",
                "1.00000000000000000000001e+300",
            ),
        ];
        for (written, canonical) in cases {
            assert_eq!(number(written), canonical, "{written}");
            assert_eq!(
                number(canonical),
                canonical,
                "{canonical} is not a fixed point"
            );
            assert_eq!(text(written), canonical, "{written} read from text");
        }
        // An integer and a float of one value stay apart, as before.
        assert_ne!(text("1"), text("1.0"));
    }

    /// `s`, a float as serde_json writes it, spelled as others may: `2.5` as `2.50`, `2.5E0`
    /// and `25e-1`.
    fn other_spellings(s: &str) -> [String; 3] {
        let (sign, unsigned) = s.strip_prefix('-').map_or(("", s), |rest| ("-", rest));
        let (mantissa, exponent) = unsigned
            .split_once('e')
            .map_or((unsigned, 0), |(m, e)| (m, e.parse::<i64>().unwrap()));
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        [
            format!("{sign}{int}.{frac}0E{exponent:+}"),
            format!("{sign}{mantissa}E{exponent}"),
            format!("{sign}{digits}e{}", exponent - frac.len() as i64),
        ]
    }

    /// For a float written with serde_json's digits for it, and for a 64-bit integer, the
    /// canonical text is serde_json's own: the canonical JSON, keys and fingerprints of such
    /// payloads are what they were before numbers were kept exact.
    #[test]
    fn agrees_with_serde_json_for_its_own_float_digits_and_64_bit_integers() {
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..50_000 {
            let x = match i % 4 {
                0 => f64::from_bits(rng.u64(..)),
                1 => rng.f64() * 10f64.powi(rng.i32(-30..30)),
                2 => (rng.i64(-1_000_000..1_000_000) as f64) / 100.0,
                _ => rng.u32(..) as f64 * 10f64.powi(rng.i32(-12..20)),
            };
            if !x.is_finite() {
                continue;
            }
            let serde = Value::from(x).to_string();
            assert_eq!(number(&serde), serde, "{x:?}");
            for written in other_spellings(&serde) {
                assert_eq!(text(&written), serde, "{written}");
            }
        }
        for _ in 0..10_000 {
            for n in [rng.u64(..).to_string(), rng.i64(..).to_string()] {
                let serde = serde_json::from_str::<Value>(&n).unwrap().to_string();
                assert_eq!(text(&n), serde);
            }
        }
    }

    #[test]
    fn text_and_value_give_one_canonical_form() {
        let samples = [
            r#"{"b": [1, {"d":2,"c":3}], "a": "x"}"#,
            r#"{"a":1,"a":2,"b":{"x":1,"x":{"y":3}}}"#,
            r#"["\u00e9\ud83d\ude00", "\/", "\"q\"", "tab\there", "\u0001", "", "é"]"#,
            r#"{"é":1,"e":2,"E":3,"":4,"a\u0000":5}"#,
            r#" [ true , false , null , [ ] , { } , -1.5e-3 , 0 , 1e300 ] "#,
            r#""just a string""#,
            "42",
        ];
        for sample in samples {
            let value: Value = serde_json::from_str(sample).unwrap();
            assert_eq!(text(sample), canonical_json(&value), "{sample}");
            let again = text(sample);
            assert_eq!(text(&again), again, "canonical JSON is a fixed point");
        }
        assert_eq!(text(r#"{"a":1,"a":2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn what_is_not_json_fails_as_in_serde_json() {
        for bad in [
            "",
            "[1,",
            "nope",
            "{\"a\" 1}",
            "1e400",
            "[1] x",
            "\"\\udc00\"",
        ] {
            let ours = canonical_json_text(bad.as_bytes()).unwrap_err().to_string();
            let serde = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            assert_eq!(ours, serde);
        }
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(canonical_json_text(deep.as_bytes()).is_err());
    }

    #[test]
    fn pointers_resolve_as_in_serde_json() {
        let sample = r#"{"a":[10,{"b~/c":20}],"":{"":30},"d":1,"d":2}"#;
        let json = Json::parse(sample.as_bytes()).unwrap();
        let value: Value = serde_json::from_str(sample).unwrap();
        for pointer in [
            "",
            "/a",
            "/a/0",
            "/a/1/b~0~1c",
            "/a/01",
            "/a/+1",
            "/a/2",
            "/",
            "//",
            "/d",
            "/x",
            "a",
            "/a/0/x",
        ] {
            assert_eq!(
                json.pointer(pointer).map(canonical),
                value.pointer(pointer).map(canonical_json),
                "{pointer}"
            );
        }
    }
}
