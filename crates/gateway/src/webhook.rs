//! `POST /api/v1/webhook/{path}` → an event `webhook.<path>` with source `webhook:<path>` (an
//! untrusted topic for policy). A JSON object becomes the payload, an array is wrapped as
//! `{items}`, another JSON value as `{value}`, anything else as `{raw}` text.
//!
//! Who may call it: when a secret named `webhook:<path>` exists, the request must carry
//! `X-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` (checked in constant time), and
//! that signature is what authenticates it — senders such as GitHub cannot present a token.
//! Without such a secret, the request needs a token with the operator role, like any publish.

use std::sync::Arc;

use aiventbus_proto::Method as _;
use aiventbus_proto::methods::{Publish, PublishParams};
use aiventbus_rpc::RpcError;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};

use crate::app::{App, error_response};
use crate::http::{authenticate, bad_request, json_response, read_body, rpc_error_response};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-signature-256";

/// The handler.
pub async fn receive(State(app): State<Arc<App>>, Path(path): Path<String>, request: Request) -> Response {
    match receive_inner(&app, path, request).await {
        Ok(response) | Err(response) => response,
    }
}

async fn receive_inner(app: &App, path: String, request: Request) -> Result<Response, Response> {
    let topic = topic_for(&path).map_err(|message| bad_request(&message))?;
    let secret_name = format!("webhook:{path}");
    let secret = app
        .secrets()
        .get(&secret_name)
        .map_err(|error| rpc_error_response(RpcError::from(error)))?;
    let headers = request.headers().clone();
    if secret.is_none() {
        let principal = authenticate(app, &headers)?;
        app.authorize(&principal, Publish::NAME).map_err(rpc_error_response)?;
    }
    let body = read_body(request).await?;
    if let Some(secret) = secret
        && !signature_matches(&headers, secret.as_bytes(), &body)
    {
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Signature-256 (expected sha256=<hex HMAC-SHA256 of the body>)",
        ));
    }
    let params = PublishParams {
        topic,
        payload: Some(Value::Object(payload_of(&body))),
        id: Some(aiventbus_rpc::ids::prefixed("evt")),
        source: Some(format!("webhook:{path}")),
        ..PublishParams::default()
    };
    let bus = app.bus();
    let published = bus
        .call::<Publish>(&params)
        .await
        .map_err(|error| rpc_error_response(crate::api::upstream_error(bus, error)))?;
    let body = serde_json::to_string(&published).map_err(|error| rpc_error_response(RpcError::internal(error)))?;
    Ok(json_response(StatusCode::OK, body))
}

/// `github/push` → `webhook.github.push`; segments of `[a-z0-9_-]`.
pub fn topic_for(path: &str) -> Result<String, String> {
    let valid = !path.is_empty()
        && path.len() <= 200
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if !valid {
        return Err(format!(
            "path: {path:?} must be segments of a-z, 0-9, _ and - separated by /"
        ));
    }
    Ok(format!("webhook.{}", path.replace('/', ".")))
}

/// The event payload for a webhook body.
pub fn payload_of(body: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(Value::Array(items)) => Map::from_iter([("items".to_owned(), Value::Array(items))]),
        Ok(value) => Map::from_iter([("value".to_owned(), value)]),
        Err(_) => Map::from_iter([(
            "raw".to_owned(),
            Value::String(String::from_utf8_lossy(body).into_owned()),
        )]),
    }
}

fn signature_matches(headers: &HeaderMap, secret: &[u8], body: &[u8]) -> bool {
    let Some(given) = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().strip_prefix("sha256="))
    else {
        return false;
    };
    let Some(given) = decode_hex(given) else {
        return false;
    };
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_topics() {
        assert_eq!(topic_for("github").unwrap(), "webhook.github");
        assert_eq!(topic_for("github/push").unwrap(), "webhook.github.push");
        for bad in ["", "GitHub", "a//b", "a/", "a.b", "a b", "ä"] {
            assert!(topic_for(bad).unwrap_err().starts_with("path:"), "{bad}");
        }
    }

    #[test]
    fn bodies_become_object_payloads() {
        assert_eq!(Value::Object(payload_of(br#"{"a":1}"#)), serde_json::json!({"a": 1}));
        assert_eq!(
            Value::Object(payload_of(b"[1,2]")),
            serde_json::json!({"items": [1, 2]})
        );
        assert_eq!(Value::Object(payload_of(b"7")), serde_json::json!({"value": 7}));
        assert_eq!(Value::Object(payload_of(b"hello")), serde_json::json!({"raw": "hello"}));
        assert_eq!(Value::Object(payload_of(b"")), serde_json::json!({"raw": ""}));
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"key").unwrap();
        mac.update(b"body");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, format!("sha256={hex}").parse().unwrap());
        assert!(signature_matches(&headers, b"key", b"body"));
        assert!(!signature_matches(&headers, b"key", b"bodY"));
        assert!(!signature_matches(&headers, b"other", b"body"));
        headers.insert(SIGNATURE_HEADER, "sha256=zz".parse().unwrap());
        assert!(!signature_matches(&headers, b"key", b"body"));
        assert!(!signature_matches(&HeaderMap::new(), b"key", b"body"));
    }
}
