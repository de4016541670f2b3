//! The error a handler returns. It carries a wire code and a message safe to send; internal details
//! go to the log, never to the caller.

use aiventbus_proto::{ErrorCode, ErrorObject};

/// A JSON-RPC error as returned by handlers.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError(pub ErrorObject);

impl RpcError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError(ErrorObject::new(code, message))
    }

    /// -32602 naming what is wrong.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::InvalidParams, message)
    }

    /// -32002.
    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::NotFound, message)
    }

    /// -32003.
    pub fn conflict(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::Conflict, message)
    }

    /// -32001.
    pub fn unauthorized(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::Unauthorized, message)
    }

    /// -32005 naming the dependency.
    pub fn unavailable(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::Unavailable, message)
    }

    /// -32603; the detail is logged here and not sent.
    pub fn internal(detail: impl std::fmt::Display) -> RpcError {
        tracing::error!(%detail, "internal error");
        RpcError::new(ErrorCode::Internal, "internal error")
    }

    /// Attach structured data.
    pub fn with_data(self, data: serde_json::Value) -> RpcError {
        RpcError(self.0.with_data(data))
    }

    /// The wire code.
    pub fn code(&self) -> i32 {
        self.0.code
    }
}

impl From<ErrorObject> for RpcError {
    fn from(error: ErrorObject) -> RpcError {
        RpcError(error)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RpcError {}

/// Parses params for a method, producing -32602 messages that name the field (`from_seq: invalid
/// type …`). Absent params and `[]` read as `{}`.
pub fn parse_params<T: serde::de::DeserializeOwned>(
    params: Option<&serde_json::value::RawValue>,
) -> Result<T, RpcError> {
    let text = match params.map(|p| p.get().trim()) {
        None | Some("[]") => "{}",
        Some(text) if text.starts_with('[') => {
            return Err(RpcError::invalid_params("params must be an object of named fields"));
        }
        Some(text) => text,
    };
    // The plain parse is the fast path; only a failure pays for tracking the field's path.
    if let Ok(params) = serde_json::from_str(text) {
        return Ok(params);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = strip_position(&inner.to_string());
        if path.is_empty() || path == "." {
            RpcError::invalid_params(format!("invalid params: {message}"))
        } else {
            RpcError::invalid_params(format!("invalid params: {path}: {message}"))
        }
    })
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        topic: String,
        from_seq: Option<u64>,
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn messages_name_the_field() {
        let e = parse_params::<P>(Some(&raw(r#"{"topic":"a","from_seq":"x"}"#))).unwrap_err();
        assert!(e.0.message.contains("from_seq"), "{}", e.0.message);
        assert!(!e.0.message.contains("line 1"), "{}", e.0.message);
        let e = parse_params::<P>(Some(&raw(r#"{}"#))).unwrap_err();
        assert!(e.0.message.contains("topic"), "{}", e.0.message);
        let e = parse_params::<P>(Some(&raw(r#"{"topic":"a","bogus":1}"#))).unwrap_err();
        assert!(e.0.message.contains("bogus"), "{}", e.0.message);
        assert_eq!(e.code(), -32602);
        assert!(parse_params::<P>(Some(&raw(r#"["a"]"#))).is_err());
    }
}
