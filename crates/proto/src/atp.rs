//! ATP, the WebSocket protocol of the gateway (SPEC §12): every frame is a JSON object with a
//! `type`. Clients send `cmd` (a public method as `domain` + `op`, its params as `body`) and
//! `subscribe`; the server answers each `cmd` with exactly one `reply` and pushes `event` frames.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ErrorCode;

/// `POST /atp/auth/login` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub identity: String,
    /// An API key or the user's password.
    pub credential: String,
}

/// `POST /atp/auth/login` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The session token for `cmd.token` (and `Authorization: Bearer`).
    pub token: String,
    /// RFC 3339 UTC.
    pub expires_at: String,
    /// `atp_…`.
    pub session_id: String,
}

/// A frame from the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// A method call.
    Cmd(Cmd),
    /// Starts (or replaces) the connection's event subscription.
    Subscribe(Subscribe),
    /// Ends it.
    Unsubscribe {},
    /// Application-level keepalive; answered with `pong`.
    Ping {
        /// Echoed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
}

/// `cmd`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cmd {
    /// Unique on the connection; a reused id gets `EPARSE` and is not executed.
    pub id: String,
    /// A session token or an API key (may be omitted when the upgrade was authenticated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `events`, `actions`, `auth`, …
    pub domain: String,
    /// `publish`, `approve`, `logout`, …
    pub op: String,
    /// The method's params.
    #[serde(default)]
    pub body: Value,
}

/// `subscribe`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subscribe {
    /// Topic patterns (default: everything the role may see).
    #[serde(default)]
    pub events: Vec<String>,
    /// The last seq the client has seen: stored events after it are replayed, then live ones
    /// follow with no gap and no duplicate (`0` replays everything; absent means live only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seq: Option<u64>,
}

/// A frame from the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The one answer to a `cmd`.
    Reply(Reply),
    /// An event of the subscription.
    Event(EventFrame),
    /// A `subscribe` took effect (a refused one is answered by a failed `reply` with id null).
    Subscribed {
        /// The patterns now followed.
        events: Vec<String>,
        /// The first seq this subscription delivers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_seq: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        /// As sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The server ends the subscription or the connection (slow consumer, shutdown, logout).
    Closing {
        /// Why.
        error: AtpError,
        /// Where to resume.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_seq: Option<u64>,
    },
}

/// `reply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The `cmd.id` (null when the frame had none).
    pub id: Value,
    /// Success.
    pub ok: bool,
    /// The method's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AtpError>,
}

/// `{code, message}` with an ATP code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtpError {
    /// `EAUTH EEXPIRED EPERM ENOTFOUND ECONFLICT EPARSE ELIMIT ETIMEOUT EINTERNAL EUNAVAIL`.
    pub code: String,
    /// Human readable.
    pub message: String,
}

/// `event`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventFrame {
    /// The event's seq.
    pub seq: u64,
    /// Its topic.
    pub event: String,
    /// Its time.
    pub ts: String,
    /// The event itself.
    pub body: Value,
}

/// The ATP code for a JSON-RPC error code (SPEC §12); `-32001` maps to `EAUTH` here, and to
/// `EPERM` where the caller is known but lacks the role.
pub fn atp_code(code: i32) -> &'static str {
    match ErrorCode::from_code(code) {
        Some(ErrorCode::Parse | ErrorCode::InvalidRequest | ErrorCode::MethodNotFound | ErrorCode::InvalidParams) => {
            "EPARSE"
        }
        Some(ErrorCode::Unauthorized) => "EAUTH",
        Some(ErrorCode::NotFound) => "ENOTFOUND",
        Some(ErrorCode::Conflict) => "ECONFLICT",
        Some(ErrorCode::Overloaded | ErrorCode::TooLarge) => "ELIMIT",
        Some(ErrorCode::Unavailable) => "EUNAVAIL",
        Some(ErrorCode::Expired) => "ETIMEOUT",
        Some(ErrorCode::Internal) | None => "EINTERNAL",
    }
}

/// The JSON-RPC error code for an ATP code (the client side of [`atp_code`]).
pub fn rpc_code(code: &str) -> i32 {
    match code {
        "EPARSE" => ErrorCode::InvalidParams.code(),
        "EAUTH" | "EPERM" | "EEXPIRED" => ErrorCode::Unauthorized.code(),
        "ENOTFOUND" => ErrorCode::NotFound.code(),
        "ECONFLICT" => ErrorCode::Conflict.code(),
        "ELIMIT" => ErrorCode::Overloaded.code(),
        "EUNAVAIL" => ErrorCode::Unavailable.code(),
        "ETIMEOUT" => ErrorCode::Expired.code(),
        _ => ErrorCode::Internal.code(),
    }
}
