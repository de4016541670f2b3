//! JSON-RPC 2.0 envelope: requests, responses, notifications and the error-code table of SPEC §3.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The error codes every service uses. Numeric values are part of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// -32700: the line is not JSON.
    Parse,
    /// -32600: JSON, but not a JSON-RPC request.
    InvalidRequest,
    /// -32601: no such method.
    MethodNotFound,
    /// -32602: params are wrong; the message names the field.
    InvalidParams,
    /// -32603: our fault; details are logged, not sent.
    Internal,
    /// -32001: no token, a bad token, or a method outside the token's scope.
    Unauthorized,
    /// -32002: the thing asked for does not exist.
    NotFound,
    /// -32003: the request conflicts with the current state.
    Conflict,
    /// -32004: overloaded or rate limited; retry later.
    Overloaded,
    /// -32005: a dependency is down.
    Unavailable,
    /// -32006: a message or payload is too large.
    TooLarge,
    /// -32007: expired or timed out.
    Expired,
}

impl ErrorCode {
    /// All codes, for tables and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::Parse,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::TooLarge,
        ErrorCode::Expired,
    ];

    /// The numeric code on the wire.
    pub const fn code(self) -> i32 {
        match self {
            ErrorCode::Parse => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::Unauthorized => -32001,
            ErrorCode::NotFound => -32002,
            ErrorCode::Conflict => -32003,
            ErrorCode::Overloaded => -32004,
            ErrorCode::Unavailable => -32005,
            ErrorCode::TooLarge => -32006,
            ErrorCode::Expired => -32007,
        }
    }

    /// The code for a numeric value, if it is one of ours.
    pub fn from_code(code: i32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Numeric code, see [`ErrorCode`].
    pub code: i32,
    /// Human-readable message; for -32602 it names the field.
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl ErrorObject {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorObject {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    /// Attach structured detail.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The code as an [`ErrorCode`], if known.
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

impl std::fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for ErrorObject {}

/// A request or notification as read off the wire. `id` keeps the raw JSON so it is echoed exactly
/// as given; it is `None` for a notification and `Some("null")` for an explicit null id.
#[derive(Debug, Deserialize)]
pub struct Request {
    /// Must be `"2.0"`.
    pub jsonrpc: String,
    /// Absent for notifications.
    #[serde(default, deserialize_with = "present")]
    pub id: Option<Box<RawValue>>,
    /// `namespace.verb`.
    pub method: String,
    /// Object or array, if present.
    #[serde(default, deserialize_with = "present")]
    pub params: Option<Box<RawValue>>,
}

fn present<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(de).map(Some)
}

impl Request {
    /// Checks the parts serde cannot: the version tag, the id's type and the params' type.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.jsonrpc != "2.0" {
            return Err("jsonrpc must be \"2.0\"");
        }
        if let Some(id) = &self.id {
            match id.get().as_bytes().first() {
                Some(b'"' | b'-' | b'0'..=b'9' | b'n') => {}
                _ => return Err("id must be a string, a number or null"),
            }
        }
        if let Some(params) = &self.params {
            match params.get().as_bytes().first() {
                Some(b'{' | b'[') => {}
                _ => return Err("params must be an object or an array"),
            }
        }
        if self.method.is_empty() {
            return Err("method must not be empty");
        }
        Ok(())
    }
}

/// A request as a client writes it.
#[derive(Debug, Serialize)]
pub struct OutgoingRequest<'a, P: Serialize> {
    /// Always `"2.0"`.
    pub jsonrpc: &'static str,
    /// Client-chosen id.
    pub id: u64,
    /// Method name.
    pub method: &'a str,
    /// Params.
    pub params: &'a P,
}

/// A response as read by a client: exactly one of `result` and `error` is set.
#[derive(Debug, Deserialize)]
pub struct Response {
    /// The id of the request (null when the request could not be read).
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    /// Success value.
    #[serde(default, deserialize_with = "present")]
    pub result: Option<Box<RawValue>>,
    /// Failure.
    #[serde(default)]
    pub error: Option<ErrorObject>,
}

/// Any message a client may receive: a response (has `id`) or a notification (has `method`).
#[derive(Debug, Deserialize)]
pub struct Incoming {
    /// Present on responses.
    #[serde(default, deserialize_with = "present")]
    pub id: Option<Box<RawValue>>,
    /// Present on notifications.
    #[serde(default)]
    pub method: Option<String>,
    /// Notification params.
    #[serde(default, deserialize_with = "present")]
    pub params: Option<Box<RawValue>>,
    /// Success value.
    #[serde(default, deserialize_with = "present")]
    pub result: Option<Box<RawValue>>,
    /// Failure.
    #[serde(default)]
    pub error: Option<ErrorObject>,
}

/// Params of a subscription notification: `{subscription, result}` or, for the last one, `{subscription, error}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubscriptionNotice<T> {
    /// The id returned by the subscribe call.
    pub subscription: String,
    /// One delivered item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// Why the subscription ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
}

/// Writes a success response line (without the trailing newline) with the id echoed verbatim.
pub fn encode_result(id: &RawValue, result: &RawValue) -> String {
    let mut out = String::with_capacity(40 + id.get().len() + result.get().len());
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    out.push_str(id.get());
    out.push_str(",\"result\":");
    out.push_str(result.get());
    out.push('}');
    out
}

/// Writes an error response line (without the trailing newline); `id` is `None` when the request's id
/// could not be read, which the protocol spells `null`.
pub fn encode_error(id: Option<&RawValue>, error: &ErrorObject) -> String {
    let error = serde_json::to_string(error).unwrap_or_else(|_| {
        // Serializing a struct of an integer, a string and a Value cannot fail; keep a valid line anyway.
        format!("{{\"code\":{},\"message\":\"internal error\"}}", error.code)
    });
    let id = id.map(RawValue::get).unwrap_or("null");
    let mut out = String::with_capacity(40 + id.len() + error.len());
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    out.push_str(id);
    out.push_str(",\"error\":");
    out.push_str(&error);
    out.push('}');
    out
}

/// Writes a subscription notification line (without the trailing newline).
/// `result` must be valid JSON (for example an event serialized once at commit).
pub fn encode_notification(method: &str, subscription: &str, result: &str) -> String {
    let mut out = String::with_capacity(80 + method.len() + result.len());
    out.push_str("{\"jsonrpc\":\"2.0\",\"method\":");
    push_json_str(&mut out, method);
    out.push_str(",\"params\":{\"subscription\":");
    push_json_str(&mut out, subscription);
    out.push_str(",\"result\":");
    out.push_str(result);
    out.push_str("}}");
    out
}

/// Writes the last notification of a subscription, carrying why it ended.
pub fn encode_close_notification(method: &str, subscription: &str, error: &ErrorObject) -> String {
    let value = serde_json::json!({
        "jsonrpc": "2.0",
        "method": method,
        "params": {"subscription": subscription, "error": error},
    });
    value.to_string()
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires; strings cannot fail to serialize.
    out.push_str(&serde_json::Value::from(s).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_kinds_are_told_apart() {
        let r: Request = serde_json::from_str(r#"{"jsonrpc":"2.0","method":"a.b"}"#).unwrap();
        assert!(r.id.is_none());
        let r: Request = serde_json::from_str(r#"{"jsonrpc":"2.0","id":null,"method":"a.b"}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "null");
        let r: Request = serde_json::from_str(r#"{"jsonrpc":"2.0","id":"x","method":"a.b","params":{}}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "\"x\"");
        assert_eq!(r.params.unwrap().get(), "{}");
    }

    #[test]
    fn validation_rejects_bad_shapes() {
        let bad = [
            r#"{"jsonrpc":"1.0","id":1,"method":"a.b"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"a.b"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"a.b","params":3}"#,
        ];
        for line in bad {
            let r: Request = serde_json::from_str(line).unwrap();
            assert!(r.validate().is_err(), "{line}");
        }
    }

    #[test]
    fn responses_echo_ids_verbatim() {
        let id = RawValue::from_string("12345678901234567890".into()).unwrap();
        let result = RawValue::from_string("{\"a\":1}".into()).unwrap();
        assert_eq!(
            encode_result(&id, &result),
            r#"{"jsonrpc":"2.0","id":12345678901234567890,"result":{"a":1}}"#
        );
        let err = ErrorObject::new(ErrorCode::NotFound, "no event evt_1");
        let line = encode_error(None, &err);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], -32002);
    }

    #[test]
    fn codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
    }
}
