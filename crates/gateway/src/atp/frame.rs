//! ATP frames on the wire: reading a client's text frame (with an `EPARSE` message that names the
//! field for anything malformed) and writing the server's frames. Event frames are assembled from
//! the bus's notification text without re-encoding the event.

use aiventbus_proto::ErrorObject;
use aiventbus_proto::atp::{AtpError, atp_code};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Longest accepted `cmd.id` (bytes of its JSON text).
pub const MAX_ID_LEN: usize = 256;

/// A well-formed client frame.
#[derive(Debug)]
pub enum Incoming {
    /// `cmd`.
    Cmd(Command),
    /// `subscribe`.
    Subscribe {
        /// Topic patterns (empty: everything).
        events: Vec<String>,
        /// The last seq the client has seen.
        since_seq: Option<u64>,
    },
    /// `unsubscribe`.
    Unsubscribe,
    /// `ping` (application level).
    Ping {
        /// Echoed in the `pong`.
        id: Option<Value>,
    },
}

/// A `cmd` frame.
#[derive(Debug)]
pub struct Command {
    /// As sent (a string or a number); echoed in the reply.
    pub id: Value,
    /// The id's JSON text: what "already used on this connection" compares.
    pub id_text: String,
    /// A credential for this command only.
    pub token: Option<String>,
    /// `events`, `actions`, `auth`, …
    pub domain: String,
    /// `publish`, `approve`, …
    pub op: String,
    /// The method's params (absent or null: none).
    pub body: Option<Box<RawValue>>,
}

impl Command {
    /// The public method name.
    pub fn method(&self) -> String {
        format!("{}.{}", self.domain, self.op)
    }
}

/// Why a frame was refused: answered by a failed `reply` with `EPARSE`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The frame's id when it had a usable one, else null.
    pub id: Value,
    /// What is wrong, naming the field.
    pub message: String,
}

impl FrameError {
    fn new(id: &Value, message: impl Into<String>) -> FrameError {
        FrameError {
            id: id.clone(),
            message: message.into(),
        }
    }
}

/// The fast path: every field typed, the body borrowed as raw text.
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    since_seq: Option<u64>,
}

/// Reads one text frame.
pub fn parse(text: &str) -> Result<Incoming, FrameError> {
    match serde_json::from_str::<Typed<'_>>(text) {
        Ok(typed) => from_typed(typed),
        Err(error) => Err(explain(text, &error)),
    }
}

fn from_typed(typed: Typed<'_>) -> Result<Incoming, FrameError> {
    let id = typed
        .id
        .map(|raw| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null));
    let usable_id = id.clone().filter(usable).unwrap_or(Value::Null);
    match typed.kind.as_str() {
        "cmd" => {
            let Some(id) = id else {
                return Err(FrameError::new(&Value::Null, "cmd.id: missing"));
            };
            if !usable(&id) {
                return Err(FrameError::new(
                    &Value::Null,
                    format!("cmd.id: expected a string or a number of at most {MAX_ID_LEN} bytes"),
                ));
            }
            let domain = name_part(&id, "domain", typed.domain)?;
            let op = name_part(&id, "op", typed.op)?;
            let body = match typed.body {
                None => None,
                Some(raw) if raw.get().trim() == "null" => None,
                Some(raw) if raw.get().trim_start().starts_with('{') => Some(raw.to_owned()),
                Some(_) => {
                    return Err(FrameError::new(
                        &id,
                        "cmd.body: expected an object (the method's params)",
                    ));
                }
            };
            let id_text = id.to_string();
            Ok(Incoming::Cmd(Command {
                id,
                id_text,
                token: typed.token,
                domain,
                op,
                body,
            }))
        }
        "subscribe" => Ok(Incoming::Subscribe {
            events: typed.events.unwrap_or_default(),
            since_seq: typed.since_seq,
        }),
        "unsubscribe" => Ok(Incoming::Unsubscribe),
        "ping" => Ok(Incoming::Ping { id: id.filter(usable) }),
        other => Err(FrameError::new(
            &usable_id,
            format!("type: unknown frame type {other:?} (expected cmd, subscribe, unsubscribe or ping)"),
        )),
    }
}

/// A string or number id short enough to keep.
fn usable(id: &Value) -> bool {
    match id {
        Value::String(text) => !text.is_empty() && text.len() <= MAX_ID_LEN,
        Value::Number(_) => true,
        _ => false,
    }
}

fn name_part(id: &Value, field: &str, value: Option<String>) -> Result<String, FrameError> {
    let Some(value) = value else {
        return Err(FrameError::new(id, format!("cmd.{field}: missing")));
    };
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(FrameError::new(
            id,
            format!("cmd.{field}: {value:?} is not a name (lower-case letters, digits, _)"),
        ));
    }
    Ok(value)
}

/// The slow path, only for frames the typed parse refused: say which field is wrong.
fn explain(text: &str, error: &serde_json::Error) -> FrameError {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => return FrameError::new(&Value::Null, format!("the frame is not JSON: {}", strip(error))),
    };
    let Value::Object(object) = value else {
        return FrameError::new(&Value::Null, "a frame is a JSON object with a \"type\"");
    };
    let id = object.get("id").filter(|id| usable(id)).cloned().unwrap_or(Value::Null);
    let expect = |field: &str, ok: fn(&Value) -> bool, what: &str| -> Option<FrameError> {
        match object.get(field) {
            Some(value) if !value.is_null() && !ok(value) => {
                Some(FrameError::new(&id, format!("{field}: expected {what}")))
            }
            _ => None,
        }
    };
    if !object.contains_key("type") {
        return FrameError::new(&id, "type: missing (cmd, subscribe, unsubscribe or ping)");
    }
    let checks: [FieldCheck; 6] = [
        ("type", Value::is_string, "a string"),
        ("token", Value::is_string, "a string"),
        ("domain", Value::is_string, "a string"),
        ("op", Value::is_string, "a string"),
        ("events", is_string_list, "an array of topic patterns"),
        ("since_seq", Value::is_u64, "a non-negative integer"),
    ];
    for (field, ok, what) in checks {
        if let Some(found) = expect(field, ok, what) {
            return found;
        }
    }
    FrameError::new(&id, format!("invalid frame: {}", strip(error)))
}

/// A field, the test its value must pass, and what it should have been.
type FieldCheck = (&'static str, fn(&Value) -> bool, &'static str);

fn is_string_list(value: &Value) -> bool {
    value.as_array().is_some_and(|items| items.iter().all(Value::is_string))
}

fn strip(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message,
    }
}

/// The ATP error for a JSON-RPC error (SPEC §12): -32001 is `EPERM` when the caller lacks the role
/// (`data.reason = "forbidden"`), `EEXPIRED` when the credential expired, else `EAUTH`.
pub fn atp_error(error: &ErrorObject) -> AtpError {
    let code = if error.code == aiventbus_proto::ErrorCode::Unauthorized.code() {
        match error
            .data
            .as_ref()
            .and_then(|data| data.get("reason"))
            .and_then(Value::as_str)
        {
            Some("forbidden") => "EPERM",
            Some("expired") => "EEXPIRED",
            _ => "EAUTH",
        }
    } else {
        atp_code(error.code)
    };
    AtpError {
        code: code.to_owned(),
        message: error.message.clone(),
    }
}

/// `reply {id, ok: true, body}` with the body's JSON as given.
pub fn reply_ok(id: &Value, body: &RawValue) -> String {
    let mut out = String::with_capacity(body.get().len() + 48);
    out.push_str("{\"type\":\"reply\",\"id\":");
    out.push_str(&id.to_string());
    out.push_str(",\"ok\":true,\"body\":");
    out.push_str(body.get());
    out.push('}');
    out
}

/// `reply {id, ok: false, error}`.
pub fn reply_error(id: &Value, code: &str, message: &str) -> String {
    serde_json::json!({
        "type": "reply",
        "id": id,
        "ok": false,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

/// `closing {error, next_seq}`.
pub fn closing(code: &str, message: &str, next_seq: Option<u64>) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), "closing".into());
    frame.insert("error".into(), serde_json::json!({"code": code, "message": message}));
    if let Some(next_seq) = next_seq {
        frame.insert("next_seq".into(), next_seq.into());
    }
    Value::Object(frame).to_string()
}

/// `subscribed {events, next_seq}`.
pub fn subscribed(events: &[String], next_seq: Option<u64>) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), "subscribed".into());
    frame.insert("events".into(), events.into());
    if let Some(next_seq) = next_seq {
        frame.insert("next_seq".into(), next_seq.into());
    }
    Value::Object(frame).to_string()
}

/// `pong {id}`.
pub fn pong(id: Option<&Value>) -> String {
    match id {
        Some(id) => serde_json::json!({"type": "pong", "id": id}).to_string(),
        None => "{\"type\":\"pong\"}".to_owned(),
    }
}

/// What the event frame needs from an event.
#[derive(Deserialize)]
struct EventHead<'a> {
    seq: u64,
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    ts: std::borrow::Cow<'a, str>,
}

/// One bus notification, read without decoding the event.
#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(borrow)]
    params: NotificationParams<'a>,
}

#[derive(Deserialize)]
struct NotificationParams<'a> {
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

/// What a bus notification line carried.
#[derive(Debug, PartialEq)]
pub enum Pushed {
    /// An event, as an ATP `event` frame.
    Event {
        /// Its seq.
        seq: u64,
        /// Its topic.
        topic: String,
        /// The frame's text.
        frame: String,
    },
    /// The bus ended the subscription.
    Ended(ErrorObject),
}

/// Turns one bus notification line into what the client gets; `redact` decides (from the topic)
/// whether the event's output data is stripped for this client. `None` for a line that is not a
/// notification of this subscription (ignored).
pub fn pushed(line: &[u8], redact: impl Fn(&str) -> bool) -> Option<Pushed> {
    let notification: Notification<'_> = serde_json::from_slice(line).ok()?;
    if let Some(error) = notification.params.error {
        return Some(Pushed::Ended(error));
    }
    let event = notification.params.result?;
    let head: EventHead<'_> = serde_json::from_str(event.get()).ok()?;
    let mut frame = String::with_capacity(event.get().len() + head.topic.len() + head.ts.len() + 64);
    frame.push_str("{\"type\":\"event\",\"seq\":");
    frame.push_str(&head.seq.to_string());
    frame.push_str(",\"event\":");
    frame.push_str(&Value::from(head.topic.as_ref()).to_string());
    frame.push_str(",\"ts\":");
    frame.push_str(&Value::from(head.ts.as_ref()).to_string());
    frame.push_str(",\"body\":");
    if redact(&head.topic) {
        let mut body: Value = serde_json::from_str(event.get()).ok()?;
        redact_output(&mut body);
        frame.push_str(&body.to_string());
    } else {
        frame.push_str(event.get());
    }
    frame.push('}');
    Some(Pushed::Event {
        seq: head.seq,
        topic: head.topic.into_owned(),
        frame,
    })
}

/// Strips a process's output from an `exec.output` event (`data`, `data_b64`) and marks it.
pub fn redact_output(event: &mut Value) {
    if let Some(payload) = event.get_mut("payload").and_then(Value::as_object_mut) {
        let had = payload.remove("data").is_some() | payload.remove("data_b64").is_some();
        if had {
            payload.insert("redacted".into(), Value::Bool(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(text: &str) -> FrameError {
        match parse(text) {
            Err(error) => error,
            Ok(frame) => panic!("{text} was accepted as {frame:?}"),
        }
    }

    #[test]
    fn a_cmd_is_read_with_its_body_raw() {
        let Ok(Incoming::Cmd(cmd)) = parse(
            r#"{"type":"cmd","id":"c1","token":"t","domain":"events","op":"publish","body":{"topic":"a.b","payload":{"x":[1,2]}}}"#,
        ) else {
            panic!("not a cmd");
        };
        assert_eq!(cmd.id, json!("c1"));
        assert_eq!(cmd.id_text, "\"c1\"");
        assert_eq!(cmd.token.as_deref(), Some("t"));
        assert_eq!(cmd.method(), "events.publish");
        assert_eq!(cmd.body.unwrap().get(), r#"{"topic":"a.b","payload":{"x":[1,2]}}"#);
        let Ok(Incoming::Cmd(numeric)) = parse(r#"{"type":"cmd","id":7,"domain":"system","op":"version"}"#) else {
            panic!("numeric ids are accepted");
        };
        assert_eq!(numeric.id_text, "7");
        assert!(numeric.body.is_none());
    }

    #[test]
    fn malformed_frames_name_what_is_wrong() {
        let cases: &[(&str, Value, &str)] = &[
            ("not json", Value::Null, "not JSON"),
            ("[1,2]", Value::Null, "JSON object"),
            ("{}", Value::Null, "type: missing"),
            (r#"{"id":"x"}"#, json!("x"), "type: missing"),
            (r#"{"type":"nope","id":"x"}"#, json!("x"), "unknown frame type"),
            (r#"{"type":5}"#, Value::Null, "type: expected a string"),
            (
                r#"{"type":"cmd","domain":"events","op":"list"}"#,
                Value::Null,
                "cmd.id: missing",
            ),
            (
                r#"{"type":"cmd","id":{},"domain":"events","op":"list"}"#,
                Value::Null,
                "cmd.id",
            ),
            (
                r#"{"type":"cmd","id":"a","op":"list"}"#,
                json!("a"),
                "cmd.domain: missing",
            ),
            (
                r#"{"type":"cmd","id":"a","domain":"events"}"#,
                json!("a"),
                "cmd.op: missing",
            ),
            (
                r#"{"type":"cmd","id":"a","domain":"Ev ents","op":"x"}"#,
                json!("a"),
                "cmd.domain",
            ),
            (
                r#"{"type":"cmd","id":"a","domain":7,"op":"x"}"#,
                json!("a"),
                "domain: expected a string",
            ),
            (
                r#"{"type":"cmd","id":"a","domain":"e","op":"x","body":[1]}"#,
                json!("a"),
                "cmd.body",
            ),
            (
                r#"{"type":"subscribe","events":"a.*"}"#,
                Value::Null,
                "events: expected an array",
            ),
            (
                r#"{"type":"subscribe","since_seq":-1}"#,
                Value::Null,
                "since_seq: expected a non-negative",
            ),
        ];
        for (text, id, needle) in cases {
            let error = refused(text);
            assert_eq!(&error.id, id, "{text}");
            assert!(error.message.contains(needle), "{text}: {}", error.message);
        }
        let long = format!(
            r#"{{"type":"cmd","id":"{}","domain":"a","op":"b"}}"#,
            "x".repeat(MAX_ID_LEN + 1)
        );
        assert_eq!(refused(&long).id, Value::Null);
    }

    #[test]
    fn subscribe_unsubscribe_and_ping() {
        assert!(matches!(
            parse(r#"{"type":"subscribe","events":["a.*"],"since_seq":4}"#),
            Ok(Incoming::Subscribe { events, since_seq: Some(4) }) if events == ["a.*"]
        ));
        assert!(matches!(
            parse(r#"{"type":"subscribe"}"#),
            Ok(Incoming::Subscribe { events, since_seq: None }) if events.is_empty()
        ));
        assert!(matches!(parse(r#"{"type":"unsubscribe"}"#), Ok(Incoming::Unsubscribe)));
        assert!(matches!(
            parse(r#"{"type":"ping","id":3}"#),
            Ok(Incoming::Ping { id: Some(_) })
        ));
        assert_eq!(pong(Some(&json!(3))), r#"{"id":3,"type":"pong"}"#);
    }

    #[test]
    fn rpc_errors_become_atp_codes() {
        let unauthorized = |data: Option<Value>| ErrorObject {
            code: -32001,
            message: "no".into(),
            data,
        };
        assert_eq!(
            atp_error(&unauthorized(Some(json!({"reason": "forbidden"})))).code,
            "EPERM"
        );
        assert_eq!(
            atp_error(&unauthorized(Some(json!({"reason": "expired"})))).code,
            "EEXPIRED"
        );
        assert_eq!(atp_error(&unauthorized(None)).code, "EAUTH");
        for (code, atp) in [
            (-32700, "EPARSE"),
            (-32600, "EPARSE"),
            (-32601, "EPARSE"),
            (-32602, "EPARSE"),
            (-32002, "ENOTFOUND"),
            (-32003, "ECONFLICT"),
            (-32004, "ELIMIT"),
            (-32006, "ELIMIT"),
            (-32005, "EUNAVAIL"),
            (-32007, "ETIMEOUT"),
            (-32603, "EINTERNAL"),
        ] {
            let error = ErrorObject {
                code,
                message: "m".into(),
                data: None,
            };
            assert_eq!(atp_error(&error).code, atp, "{code}");
        }
    }

    #[test]
    fn server_frames_are_valid_json() {
        let body = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        let ok: Value = serde_json::from_str(&reply_ok(&json!("i"), &body)).unwrap();
        assert_eq!(ok, json!({"type": "reply", "id": "i", "ok": true, "body": {"a": 1}}));
        let failed: Value = serde_json::from_str(&reply_error(&Value::Null, "EPARSE", "bad \"x\"")).unwrap();
        assert_eq!(failed["error"]["message"], "bad \"x\"");
        assert_eq!(failed["id"], Value::Null);
        let closing: Value = serde_json::from_str(&closing("ELIMIT", "slow", Some(9))).unwrap();
        assert_eq!(
            closing,
            json!({"type": "closing", "error": {"code": "ELIMIT", "message": "slow"}, "next_seq": 9})
        );
        let subscribed: Value = serde_json::from_str(&subscribed(&["a.*".into()], Some(3))).unwrap();
        assert_eq!(
            subscribed,
            json!({"type": "subscribed", "events": ["a.*"], "next_seq": 3})
        );
    }

    #[test]
    fn notifications_become_event_frames() {
        let line = br#"{"jsonrpc":"2.0","method":"events.event","params":{"subscription":"sub_1","result":{"id":"evt_1","seq":12,"ts":"2026-01-01T00:00:00.000Z","topic":"exec.output","payload":{"run_id":"run_1","stream":"stdout","n":1,"data":"secret\n"}}}}"#;
        let Some(Pushed::Event { seq, topic, frame }) = pushed(line, |_| false) else {
            panic!("not an event");
        };
        assert_eq!((seq, topic.as_str()), (12, "exec.output"));
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["event"], "exec.output");
        assert_eq!(frame["ts"], "2026-01-01T00:00:00.000Z");
        assert_eq!(frame["body"]["payload"]["data"], "secret\n");

        let Some(Pushed::Event { frame, .. }) = pushed(line, |topic| topic == "exec.output") else {
            panic!("not an event");
        };
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert!(frame["body"]["payload"].get("data").is_none(), "{frame}");
        assert_eq!(frame["body"]["payload"]["redacted"], true);
        assert_eq!(frame["body"]["payload"]["run_id"], "run_1");

        let ended = br#"{"jsonrpc":"2.0","method":"events.event","params":{"subscription":"s","error":{"code":-32004,"message":"slow","data":{"next_seq":40}}}}"#;
        let Some(Pushed::Ended(error)) = pushed(ended, |_| false) else {
            panic!("not an end");
        };
        assert_eq!(error.data.unwrap()["next_seq"], 40);
        assert!(pushed(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}", |_| false).is_none());
    }
}
