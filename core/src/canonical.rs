//! Canonical JSON: one text per value, whatever the key order or whitespace it arrived with.

use serde_json::Value;

/// Writes `value` with object keys sorted by their UTF-8 bytes and no insignificant whitespace.
///
/// Sorting is done here rather than relying on `serde_json`'s map type, whose order depends on
/// whether some crate in the build enabled `preserve_order`. Numbers keep `serde_json`'s text,
/// so `1` and `1.0` stay different values.
///
/// ```
/// use oncely_core::canonical_json;
/// let v: serde_json::Value = serde_json::from_str(r#"{"b": [1, {"d":2,"c":3}], "a": "x"}"#)?;
/// assert_eq!(canonical_json(&v), r#"{"a":"x","b":[1,{"c":3,"d":2}]}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's string escaping is already canonical (shortest escapes, \u for controls).
    out.push_str(&Value::String(s.to_owned()).to_string());
}
