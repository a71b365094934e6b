//! Selecting values from a JSON payload: by JSON pointers (RFC 6901) or by a JMESPath expression,
//! for keys ([`CompositeKey`](crate::CompositeKey)) and fingerprints
//! ([`PayloadFingerprint`](crate::PayloadFingerprint)).
//!
//! JMESPath is evaluated by the `jmespath` crate with its built-in functions and two of AWS
//! Lambda Powertools' own, so expressions written for Powertools' idempotency utility run here:
//!
//! - `powertools_json(s)`: the JSON value encoded in the string `s`, for JSON carried inside a
//!   string field (an SNS notification's `Message` in an SQS body, API Gateway's `body`);
//! - `powertools_base64(s)`: the text the base64 string `s` encodes (a Kinesis record's `data`).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use jmespath::functions::{ArgumentType, CustomFunction, Signature};
use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, Variable};

use crate::canonical::{Json, write_number};
use crate::{ExtractError, KeySpecError};

/// What a key or a fingerprint is made of: one or more JSON pointers (`/orderId,/payment/id`),
/// or one JMESPath expression (`powertools_json(Message).orderId`).
///
/// A specification that starts with `/` is a comma-separated list of JSON pointers, each value
/// one part; anything else is a JMESPath expression, whose result is the one value (a
/// multi-select list such as `[orderId, paymentId]` makes a composite). An expression may call
/// JMESPath's built-in functions and two of AWS Lambda Powertools' own:
/// `powertools_json(s)`, the JSON value encoded in the string `s` (an SNS notification's
/// `Message` in an SQS body, API Gateway's `body`), and `powertools_base64(s)`, the text the
/// base64 string `s` encodes (a Kinesis record's `data`).
///
/// Numbers: pointers read every number exactly as written. JMESPath evaluates over
/// `serde_json` numbers, which hold 64-bit integers and `f64`s; so that two different numbers
/// never become one key, an expression whose result holds a number is refused
/// ([`ExtractError::InexactNumber`]) when the payload has a number those cannot hold exactly
/// (an integer past 64 bits, a decimal of more than 17 digits). Key such payloads by pointer.
#[derive(Clone)]
pub struct Selector(Selection);

#[derive(Clone)]
enum Selection {
    Pointers(Vec<String>),
    JmesPath(Arc<jmespath::Expression<'static>>),
}

/// Whether a field the selector names may be absent (or `null`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Absent {
    /// A key: every part must be there.
    Refused,
    /// A fingerprint: an absent field counts as `null`.
    Null,
}

/// The expressions' runtime: JMESPath's built-ins and Powertools' functions.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let mut runtime = Runtime::new();
    runtime.register_builtin_functions();
    let one_string = || Signature::new(vec![ArgumentType::String], None);
    runtime.register_function(
        "powertools_json",
        Box::new(CustomFunction::new(
            one_string(),
            Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
                let text = args[0].as_string().map(String::as_str).unwrap_or_default();
                let json = Json::parse(text.as_bytes())
                    .map_err(|e| function_error(ctx, format!("powertools_json: not JSON: {e}")))?;
                Ok(Arc::new(to_variable(&json)))
            }),
        )),
    );
    runtime.register_function(
        "powertools_base64",
        Box::new(CustomFunction::new(
            one_string(),
            Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
                let text = args[0].as_string().map(String::as_str).unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| function_error(ctx, format!("powertools_base64: {e}")))?;
                let decoded = String::from_utf8(bytes).map_err(|_| {
                    function_error(ctx, "powertools_base64: not UTF-8 text".to_owned())
                })?;
                Ok(Arc::new(Variable::String(decoded)))
            }),
        )),
    );
    runtime
});

fn function_error(ctx: &Context<'_>, reason: String) -> JmespathError {
    JmespathError::from_ctx(ctx, ErrorReason::Parse(reason))
}

thread_local! {
    /// Set while converting a payload when one of its numbers is not exact as a serde_json
    /// number. An evaluation is synchronous and on one thread, functions included.
    static INEXACT: Cell<bool> = const { Cell::new(false) };
}

/// The JMESPath value of `json`; notes in [`INEXACT`] a number serde_json would round.
fn to_variable(json: &Json) -> Variable {
    match json {
        Json::Null => Variable::Null,
        Json::Bool(b) => Variable::Bool(*b),
        Json::String(s) => Variable::String(s.to_string()),
        Json::Number(text) => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(number) => {
                if canonical_number(text) != canonical_number(&number.to_string()) {
                    INEXACT.set(true);
                }
                Variable::Number(number)
            }
            // Valid JSON number syntax always parses; out of f64's range it is an error.
            Err(_) => {
                INEXACT.set(true);
                Variable::Null
            }
        },
        Json::Array(items) => {
            Variable::Array(items.iter().map(|v| Arc::new(to_variable(v))).collect())
        }
        Json::Object(members) => {
            // Inserted in document order: a repeated name keeps its last value, as serde_json.
            let mut map = BTreeMap::new();
            for (name, value) in members {
                map.insert(name.to_string(), Arc::new(to_variable(value)));
            }
            Variable::Object(map)
        }
    }
}

fn canonical_number(text: &str) -> String {
    let mut out = String::new();
    write_number(text, &mut out);
    out
}

/// The JSON value of a JMESPath result, and whether it holds a number.
fn from_variable(variable: &Variable, has_number: &mut bool) -> Json<'static> {
    match variable {
        Variable::Null | Variable::Expref(_) => Json::Null,
        Variable::Bool(b) => Json::Bool(*b),
        Variable::String(s) => Json::String(Cow::Owned(s.clone())),
        Variable::Number(n) => {
            *has_number = true;
            Json::Number(Cow::Owned(n.to_string()))
        }
        Variable::Array(items) => {
            Json::Array(items.iter().map(|v| from_variable(v, has_number)).collect())
        }
        Variable::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (Cow::Owned(k.clone()), from_variable(v, has_number)))
                .collect(),
        ),
    }
}

impl Selector {
    /// Parses JSON pointers (`/eventId`, `/orderId,/paymentId`) or a JMESPath expression
    /// (`detail.orderId`, `powertools_json(body).[orderId, paymentId]`).
    pub fn parse(spec: &str) -> Result<Self, KeySpecError> {
        let spec = spec.trim();
        if spec.split(',').all(|part| part.trim().is_empty()) {
            return Err(KeySpecError::Empty);
        }
        if spec.starts_with('/') {
            let pointers: Vec<String> = spec
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    if p.starts_with('/') {
                        Ok(p.to_owned())
                    } else {
                        Err(KeySpecError::NotAPointer(p.to_owned()))
                    }
                })
                .collect::<Result<_, _>>()?;
            return Ok(Selector(Selection::Pointers(pointers)));
        }
        let expression = RUNTIME
            .compile(spec)
            .map_err(|e| KeySpecError::Expression {
                expression: spec.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Selector(Selection::JmesPath(Arc::new(expression))))
    }

    /// The JSON pointers, if the selector is made of them.
    pub fn pointers(&self) -> Option<&[String]> {
        match &self.0 {
            Selection::Pointers(pointers) => Some(pointers),
            Selection::JmesPath(_) => None,
        }
    }

    /// The values selected from `json`, one per pointer, or the expression's result.
    pub(crate) fn select<'j>(
        &self,
        json: &'j Json<'j>,
        absent: Absent,
    ) -> Result<Vec<Cow<'j, Json<'j>>>, ExtractError> {
        match &self.0 {
            Selection::Pointers(pointers) => pointers
                .iter()
                .map(|pointer| match (json.pointer(pointer), absent) {
                    (None, Absent::Refused) => Err(ExtractError::Missing(pointer.clone())),
                    (Some(Json::Null), Absent::Refused) => Err(ExtractError::Null(pointer.clone())),
                    (None, Absent::Null) => Ok(Cow::Owned(Json::Null)),
                    (Some(value), _) => Ok(Cow::Borrowed(value)),
                })
                .collect(),
            Selection::JmesPath(expression) => {
                let value = self.search(expression, json)?;
                if absent == Absent::Refused {
                    let nothing = match &value {
                        Json::Null => true,
                        Json::Array(items) => items.is_empty() || items.contains(&Json::Null),
                        _ => false,
                    };
                    if nothing {
                        return Err(ExtractError::Nothing(expression.as_str().to_owned()));
                    }
                }
                Ok(vec![Cow::Owned(value)])
            }
        }
    }

    /// Whether the selector holds of the JSON text `json`: a JMESPath result that is truthy
    /// (not `null`, `false`, an empty string, list or object), or pointers that all name a
    /// field that is neither `null` nor `false`. For filters (`oncely redrive --filter`).
    ///
    /// ```
    /// use oncely_core::Selector;
    /// let failed_on_timeout = Selector::parse("contains(headers.\"oncely-error\", 'timeout')")?;
    /// let letter = br#"{"headers": {"oncely-error": "upstream timeout"}, "payload": null}"#;
    /// assert!(failed_on_timeout.holds_for(letter)?);
    /// assert!(!Selector::parse("payload.orderId")?.holds_for(letter)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn holds_for(&self, json: &[u8]) -> Result<bool, ExtractError> {
        let parsed = Json::parse(json).map_err(|e| ExtractError::Expression {
            expression: self.to_string(),
            reason: format!("not JSON: {e}"),
        })?;
        match &self.0 {
            Selection::Pointers(pointers) => Ok(pointers.iter().all(|pointer| {
                !matches!(
                    parsed.pointer(pointer),
                    None | Some(Json::Null | Json::Bool(false))
                )
            })),
            Selection::JmesPath(expression) => expression
                .search(Arc::new(to_variable(&parsed)))
                .map(|result| result.is_truthy())
                .map_err(|e| ExtractError::Expression {
                    expression: expression.as_str().to_owned(),
                    reason: e.reason.to_string(),
                }),
        }
    }

    fn search(
        &self,
        expression: &jmespath::Expression<'static>,
        json: &Json,
    ) -> Result<Json<'static>, ExtractError> {
        INEXACT.set(false);
        let input = Arc::new(to_variable(json));
        let result = expression.search(input);
        let inexact = INEXACT.replace(false);
        let result = result.map_err(|e| ExtractError::Expression {
            expression: expression.as_str().to_owned(),
            reason: e.reason.to_string(),
        })?;
        let mut has_number = false;
        let value = from_variable(&result, &mut has_number);
        if has_number && inexact {
            return Err(ExtractError::InexactNumber(expression.as_str().to_owned()));
        }
        Ok(value)
    }
}

impl std::str::FromStr for Selector {
    type Err = KeySpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Selector {}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Selection::Pointers(pointers) => f.write_str(&pointers.join(",")),
            Selection::JmesPath(expression) => f.write_str(expression.as_str()),
        }
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

#[cfg(test)]
mod tests {
    use crate::{CompositeKey, ExtractError, JsonKeyError, KeySpecError};

    fn key(spec: &str, payload: &str) -> Result<String, JsonKeyError> {
        let spec = CompositeKey::parse(spec).unwrap();
        spec.extract_json(payload.as_bytes())
            .map(|key| key.as_str().to_owned())
    }

    #[test]
    fn an_expression_keys_as_the_pointers_to_the_same_fields() {
        for value in [
            r#""evt-1""#,
            r#""42""#,
            r#"42"#,
            r#"-2.50"#,
            r#"true"#,
            r#"[1,"x"]"#,
            r#"{"b":1,"a":[2]}"#,
            r#""[1,2]""#,
        ] {
            let payload = format!(r#"{{"id":{value},"o":{{"p":"q-1"}}}}"#);
            assert_eq!(key("id", &payload).unwrap(), key("/id", &payload).unwrap());
            assert_eq!(
                key("[id, o.p]", &payload).unwrap(),
                key("/id,/o/p", &payload).unwrap()
            );
        }
    }

    #[test]
    fn json_inside_a_string_field_is_read_with_powertools_json() {
        // An SNS notification delivered through SQS, and an API Gateway proxy event.
        let sns = r#"{"Type":"Notification","MessageId":"m-1","Message":"{\"orderId\":\"o-7\",\"amount\":10}"}"#;
        assert_eq!(key("powertools_json(Message).orderId", sns).unwrap(), "o-7");
        let api = r#"{"httpMethod":"POST","body":"{\"user\":{\"id\":5},\"product\":\"p-2\"}"}"#;
        assert_eq!(
            key("powertools_json(body).[user.id, product]", api).unwrap(),
            r#"[5,"p-2"]"#
        );
        // Kinesis: base64 text, here of {"id":"k-1"}.
        let kinesis = r#"{"kinesis":{"data":"eyJpZCI6ImstMSJ9"}}"#;
        assert_eq!(
            key(
                "powertools_json(powertools_base64(kinesis.data)).id",
                kinesis
            )
            .unwrap(),
            "k-1"
        );
    }

    #[test]
    fn an_expression_that_selects_nothing_is_a_typed_error() {
        for (spec, payload) in [
            ("orderId", r#"{"other":1}"#),
            ("orderId", r#"{"orderId":null}"#),
            ("items[].id", r#"{"items":[]}"#),
            ("[orderId, paymentId]", r#"{"orderId":"o-1"}"#),
        ] {
            assert!(
                matches!(
                    key(spec, payload),
                    Err(JsonKeyError::Extract(ExtractError::Nothing(ref e))) if e == spec
                ),
                "{spec} on {payload}: {:?}",
                key(spec, payload)
            );
        }
        assert!(matches!(
            key("powertools_json(body).id", r#"{"body":"not json"}"#),
            Err(JsonKeyError::Extract(ExtractError::Expression { .. }))
        ));
        assert!(matches!(
            key("powertools_json(body).id", r#"{"body":7}"#),
            Err(JsonKeyError::Extract(ExtractError::Expression { .. }))
        ));
    }

    #[test]
    fn a_number_jmespath_cannot_hold_exactly_is_never_a_key() {
        let big = r#"{"id":18446744073709551617,"name":"n-1"}"#;
        assert!(matches!(
            key("id", big),
            Err(JsonKeyError::Extract(ExtractError::InexactNumber(ref e))) if e == "id"
        ));
        // The pointer keeps every digit; a string beside the big number is keyed as usual.
        assert_eq!(key("/id", big).unwrap(), "18446744073709551617");
        assert_eq!(key("name", big).unwrap(), "n-1");
        // Inside an embedded document too.
        let embedded = r#"{"body":"{\"id\":100000000000000000000001}"}"#;
        assert!(matches!(
            key("powertools_json(body).id", embedded),
            Err(JsonKeyError::Extract(ExtractError::InexactNumber(_)))
        ));
        // Numbers serde_json holds exactly are keyed as by pointer.
        let exact = r#"{"id":9007199254740993,"f":2.50}"#;
        assert_eq!(key("id", exact).unwrap(), "9007199254740993");
        assert_eq!(key("f", exact).unwrap(), key("/f", exact).unwrap());
    }

    #[test]
    fn specs_are_pointers_or_expressions() {
        assert_eq!(CompositeKey::parse(" , "), Err(KeySpecError::Empty));
        assert_eq!(
            CompositeKey::parse("/a,b"),
            Err(KeySpecError::NotAPointer("b".into()))
        );
        assert!(matches!(
            CompositeKey::parse("orders[?"),
            Err(KeySpecError::Expression { .. })
        ));
        let spec = CompositeKey::parse("detail.orderId").unwrap();
        assert_eq!(spec.to_string(), "detail.orderId");
        assert_eq!(spec, CompositeKey::parse("detail.orderId").unwrap());
        assert!(spec.selector().pointers().is_none());
    }
}
