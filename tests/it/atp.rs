//! ATP, the gateway's WebSocket protocol (SPEC §12), against the real binaries: logins, credentials
//! refused before the upgrade, one reply per command and none for a reused id, `EPARSE` for
//! malformed frames on a connection that lives on, roles, replay after a reconnect with no gap and
//! no duplicate, logout that outlives a gateway restart, keepalive that closes a peer that stopped
//! answering pings, and a slow subscriber cut off with a reason while another keeps receiving.

use std::collections::VecDeque;
use std::time::Duration;

use aiventbus_client::Client;
use aiventbus_proto::auth::{KeyCreateParams, KeysCreate, Role};
use aiventbus_proto::methods::ListParams;
use aiventbus_testkit::{Daemon, eventually, process_alive};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{self, REPLY_DEADLINE, or_log};

// ---------------------------------------------------------------- helpers

/// `http://127.0.0.1:PORT` of the daemon's gateway, from the address file it writes once bound.
async fn http_base(daemon: &Daemon) -> String {
    let path = daemon.paths.runtime_dir.join("gateway.addr");
    let path = &path;
    let addr = eventually(REPLY_DEADLINE, "the gateway's address file", move || async move {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}\n{}", daemon.init_output()));
    if addr.starts_with("http") {
        addr
    } else {
        format!("http://{addr}")
    }
}

fn ws_url(base: &str) -> String {
    format!("{}/atp", base.replacen("http", "ws", 1))
}

fn host_port(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// An API key for `user` with `role`, made on api.sock.
async fn api_key(client: &Client, user: &str, role: Role) -> String {
    client
        .call::<KeysCreate>(&KeyCreateParams {
            user: user.into(),
            role,
            label: None,
        })
        .await
        .expect("keys.create")
        .key
}

/// A minimal HTTP/1.1 POST (no client library needed for one request): status and body.
async fn http_post(base: &str, path: &str, body: &Value) -> (u16, String) {
    let mut stream = TcpStream::connect(host_port(base))
        .await
        .expect("connecting to the gateway");
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        host_port(base),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("writing the request");
    let mut response = Vec::new();
    tokio::time::timeout(REPLY_DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("no HTTP answer in time")
        .expect("reading the answer");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// An ATP session token for `user` (logs in with an API key made for it).
async fn session_token(base: &str, client: &Client, user: &str, role: Role) -> Value {
    let key = api_key(client, user, role).await;
    let (status, body) = http_post(base, "/atp/auth/login", &json!({"identity": user, "credential": key})).await;
    assert_eq!(status, 200, "login: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("login answer is not JSON ({e}): {body}"))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An ATP client over tokio-tungstenite: frames as JSON, events met while waiting for a reply are
/// kept for [`Atp::event`].
struct Atp {
    socket: Socket,
    events: VecDeque<Value>,
}

impl Atp {
    async fn connect(base: &str, token: &str) -> Atp {
        Atp::try_connect(base, &[("authorization", format!("Bearer {token}"))], "")
            .await
            .unwrap_or_else(|error| panic!("ATP connect: {error}"))
    }

    async fn try_connect(
        base: &str,
        headers: &[(&'static str, String)],
        query: &str,
    ) -> Result<Atp, tungstenite::Error> {
        let mut request = format!("{}{query}", ws_url(base)).into_client_request()?;
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        let (socket, _) = tokio::time::timeout(REPLY_DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .expect("no WebSocket handshake in time")?;
        Ok(Atp {
            socket,
            events: VecDeque::new(),
        })
    }

    async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("sending a frame");
    }

    async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.expect("sending a frame");
    }

    /// The next text frame as JSON; panics when the connection ends or nothing comes in time.
    async fn recv(&mut self) -> Value {
        // One deadline for the frame, however many pings arrive meanwhile.
        let deadline = tokio::time::Instant::now() + REPLY_DEADLINE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("no frame in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The reply to `id`, keeping events that arrive first.
    async fn reply(&mut self, id: &Value) -> Value {
        loop {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("reply") if frame["id"] == *id => return frame,
                Some("event") => self.events.push_back(frame),
                Some("subscribed") => {}
                _ => panic!("while waiting for the reply to {id}: {frame}"),
            }
        }
    }

    async fn cmd(&mut self, id: &str, domain: &str, op: &str, body: Value) -> Value {
        self.send(json!({"type": "cmd", "id": id, "domain": domain, "op": op, "body": body}))
            .await;
        self.reply(&json!(id)).await
    }

    /// Subscribes and waits for `subscribed`.
    async fn subscribe(&mut self, events: &[&str], since_seq: Option<u64>) -> Value {
        let mut frame = json!({"type": "subscribe", "events": events});
        if let Some(since_seq) = since_seq {
            frame["since_seq"] = json!(since_seq);
        }
        self.send(frame).await;
        let answer = self.recv().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }

    async fn event(&mut self) -> Value {
        if let Some(event) = self.events.pop_front() {
            return event;
        }
        let frame = self.recv().await;
        assert_eq!(frame["type"], "event", "{frame}");
        frame
    }

    /// Reads until the server closes; its close frame (if any) and the text frames before it.
    async fn closed(&mut self, deadline: Duration) -> (Option<CloseFrame>, Vec<Value>) {
        let mut frames = Vec::new();
        let result = tokio::time::timeout(deadline, async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(Message::Text(text))) => {
                        frames.push(serde_json::from_str(text.as_str()).unwrap_or(Value::Null));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await;
        match result {
            Ok(frame) => (frame, frames),
            Err(_) => panic!("the connection was still open after {deadline:?}"),
        }
    }
}

fn assert_ok(reply: &Value) -> &Value {
    assert_eq!(reply["ok"], true, "{reply}");
    &reply["body"]
}

fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(
        reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
}

/// The HTTP status of a refused upgrade.
fn refused_status(result: Result<Atp, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

async fn events_on(client: &Client, topic: &str) -> Vec<aiventbus_proto::Event> {
    client
        .list(&ListParams {
            topic: Some(topic.into()),
            limit: Some(5000),
            ..Default::default()
        })
        .await
        .expect("events.list")
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_login_answers_a_session_and_failures_look_alike() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "alice", Role::Operator).await;

    let (status, body) = http_post(
        &base,
        "/atp/auth/login",
        &json!({"identity": "alice", "credential": key}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let login: Value = serde_json::from_str(&body).unwrap();
    let token = login["token"].as_str().expect("token").to_owned();
    assert!(login["session_id"].as_str().is_some_and(|id| !id.is_empty()), "{login}");
    assert!(
        login["expires_at"]
            .as_str()
            .and_then(aiventbus_rpc::time::parse_rfc3339_ms)
            .is_some_and(|at| at > aiventbus_rpc::time::now_ms()),
        "{login}"
    );

    let (wrong_status, wrong_key) = http_post(
        &base,
        "/atp/auth/login",
        &json!({"identity": "alice", "credential": "aib_wrong"}),
    )
    .await;
    let (unknown_status, unknown_user) = http_post(
        &base,
        "/atp/auth/login",
        &json!({"identity": "nobody", "credential": key}),
    )
    .await;
    assert_eq!(wrong_status, 401, "{wrong_key}");
    assert_eq!(unknown_status, 401, "{unknown_user}");
    assert_eq!(wrong_key, unknown_user, "a failed login tells whether the user exists");

    // The session works on ATP, as the upgrade's credential and as a command's own token.
    let mut atp = Atp::connect(&base, &token).await;
    let version = atp.cmd("v1", "system", "version", json!({})).await;
    assert!(assert_ok(&version)["version"].is_string(), "{version}");
    let me = atp.cmd("me", "auth", "whoami", json!({})).await;
    assert_eq!(assert_ok(&me)["user"], "alice");
    assert_eq!(me["body"]["role"], "operator");
    // The API key itself also opens a connection (header or query parameter).
    let mut by_key = Atp::connect(&base, &key).await;
    assert_ok(&by_key.cmd("k", "system", "version", json!({})).await);
    let mut by_query = Atp::try_connect(&base, &[], &format!("?token={key}")).await.unwrap();
    assert_ok(&by_query.cmd("q", "system", "version", json!({})).await);

    // auth.refresh: a new token that works; the old one stops working.
    let refreshed = atp.cmd("r", "auth", "refresh", json!({})).await;
    let new_token = assert_ok(&refreshed)["token"].as_str().expect("token").to_owned();
    assert_ne!(new_token, token);
    let mut with_new = Atp::connect(&base, &new_token).await;
    assert_ok(&with_new.cmd("n", "system", "version", json!({})).await);
    assert_eq!(
        refused_status(Atp::try_connect(&base, &[("authorization", format!("Bearer {token}"))], "").await),
        401
    );
    // The connection follows its refreshed credential.
    assert_ok(&atp.cmd("after-refresh", "system", "version", json!({})).await);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_refuses_bad_credentials_and_foreign_pages_before_the_upgrade() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let login = session_token(&base, &client, "bob", Role::Operator).await;
    let token = login["token"].as_str().unwrap().to_owned();
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    for (what, headers, query) in [
        ("no credential", vec![], String::new()),
        (
            "garbage",
            vec![("authorization", "Bearer garbage".to_owned())],
            String::new(),
        ),
        (
            "tampered",
            vec![("authorization", format!("Bearer {tampered}"))],
            String::new(),
        ),
        ("tampered query", vec![], format!("?token={tampered}")),
        (
            "tampered cookie",
            vec![("cookie", format!("aiventbus_session={tampered}"))],
            String::new(),
        ),
    ] {
        let status = refused_status(Atp::try_connect(&base, &headers, &query).await);
        assert_eq!(status, 401, "{what}");
    }
    let bearer = ("authorization", format!("Bearer {token}"));
    let origin = ("origin", "http://evil.example".to_owned());
    assert_eq!(
        refused_status(Atp::try_connect(&base, &[bearer.clone(), origin], "").await),
        403,
        "a cross-site Origin"
    );
    let own_origin = ("origin", base.clone());
    let mut same_site = Atp::try_connect(&base, &[bearer.clone(), own_origin], "")
        .await
        .unwrap();
    assert_ok(&same_site.cmd("o", "system", "version", json!({})).await);
    let foreign_host = ("host", "rebind.example:80".to_owned());
    assert_eq!(
        refused_status(Atp::try_connect(&base, &[bearer, foreign_host], "").await),
        421,
        "a foreign Host"
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_refuses_an_expired_session_before_the_upgrade() {
    let mut daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let login = session_token(&base, &client, "ivy", Role::Operator).await;
    let token = login["token"].as_str().unwrap().to_owned();
    let mut atp = Atp::connect(&base, &token).await;
    assert_ok(&atp.cmd("v", "system", "version", json!({})).await);
    drop(atp);
    drop(client);

    // Age the session past its expiry while the daemon is down.
    daemon = tokio::task::spawn_blocking(move || {
        daemon.stop(Duration::from_secs(30)).expect("stopping the daemon");
        daemon
    })
    .await
    .unwrap();
    let database = daemon.paths.state_dir.join("gateway.db");
    let connection = rusqlite::Connection::open(&database).expect("opening gateway.db");
    let aged = connection
        .execute("UPDATE sessions SET expires_at_ms = 1 WHERE user = 'ivy'", [])
        .expect("ageing the session");
    assert_eq!(aged, 1);
    drop(connection);
    daemon = tokio::task::spawn_blocking(move || {
        daemon.launch().expect("restarting the daemon");
        daemon
    })
    .await
    .unwrap();

    let base = http_base(&daemon).await;
    let refused = Atp::try_connect(&base, &[("authorization", format!("Bearer {token}"))], "").await;
    assert_eq!(refused_status(refused), 401, "an expired session opened a connection");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_runs_a_command_id_once_and_answers_malformed_frames() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "carol", Role::Operator).await;
    let mut atp = Atp::connect(&base, &key).await;

    let publish = json!({"topic": "atp.once", "payload": {"n": 1}});
    let first = atp.cmd("same", "events", "publish", publish.clone()).await;
    assert!(assert_ok(&first)["seq"].is_u64(), "{first}");
    let second = atp.cmd("same", "events", "publish", publish).await;
    assert_error(&second, "EPARSE");
    assert!(
        second["error"]["message"].as_str().unwrap().contains("already used"),
        "{second}"
    );
    let stored = events_on(&client, "atp.once").await;
    assert_eq!(stored.len(), 1, "a reused id ran again: {stored:?}");
    assert_eq!(stored[0].source, "user:carol");

    // Each malformed frame gets an EPARSE reply, with the id when it had one.
    let malformed: Vec<(Message, Value)> = vec![
        (Message::text("this is not json"), Value::Null),
        (Message::text("[1,2,3]"), Value::Null),
        (Message::text("{}"), Value::Null),
        (Message::text(r#"{"type":"launch","id":"m1"}"#), json!("m1")),
        (
            Message::text(r#"{"type":"cmd","domain":"system","op":"version"}"#),
            Value::Null,
        ),
        (Message::text(r#"{"type":"cmd","id":"m2","op":"version"}"#), json!("m2")),
        (
            Message::text(r#"{"type":"cmd","id":"m3","domain":"system"}"#),
            json!("m3"),
        ),
        (
            Message::text(r#"{"type":"cmd","id":"m4","domain":"system","op":"version","body":[1]}"#),
            json!("m4"),
        ),
        (Message::binary(vec![1u8, 2, 3]), Value::Null),
    ];
    for (frame, id) in malformed {
        let shown = format!("{frame:?}");
        atp.send_raw(frame).await;
        let reply = atp.recv().await;
        assert_eq!(reply["type"], "reply", "{shown}: {reply}");
        assert_eq!(reply["id"], id, "{shown}: {reply}");
        assert_error(&reply, "EPARSE");
    }
    // A subscription the bus refuses is answered by a failed reply with id null.
    atp.send(json!({"type": "subscribe", "events": ["Not A Pattern"]}))
        .await;
    let refused = atp.recv().await;
    assert_eq!(refused["type"], "reply", "{refused}");
    assert_eq!(refused["id"], Value::Null, "{refused}");
    assert_error(&refused, "EPARSE");
    // Unknown methods and bad params map to EPARSE too; the connection still answers.
    assert_error(&atp.cmd("u1", "events", "explode", json!({})).await, "EPARSE");
    let bad = atp.cmd("u2", "events", "publish", json!({"topic": "Bad Topic"})).await;
    assert_error(&bad, "EPARSE");
    assert!(bad["error"]["message"].as_str().unwrap().contains("topic"), "{bad}");
    assert_error(
        &atp.cmd("u3", "events", "get", json!({"id": "evt_nope"})).await,
        "ENOTFOUND",
    );
    assert_ok(&atp.cmd("alive", "system", "version", json!({})).await);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_roles_gate_commands_and_output() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let viewer_key = api_key(&client, "vera", Role::Viewer).await;
    let mut viewer = Atp::connect(&base, &viewer_key).await;

    let approve = viewer
        .cmd(
            "a",
            "actions",
            "approve",
            json!({"id": "act_01HZZZZZZZZZZZZZZZZZZZZZZZ"}),
        )
        .await;
    assert_error(&approve, "EPERM");
    let publish = viewer
        .cmd("p", "events", "publish", json!({"topic": "viewer.try", "payload": {}}))
        .await;
    assert_error(&publish, "EPERM");
    assert!(events_on(&client, "viewer.try").await.is_empty());
    let keys = viewer
        .cmd("k", "keys", "create", json!({"user": "mallory", "role": "admin"}))
        .await;
    assert_error(&keys, "EPERM");

    // Process output reaches an operator but not a viewer: the viewer sees that a chunk was
    // written, not what.
    let operator_key = api_key(&client, "otto", Role::Operator).await;
    let mut operator = Atp::connect(&base, &operator_key).await;
    viewer.subscribe(&["exec.output"], None).await;
    operator.subscribe(&["exec.output"], None).await;
    let run = client
        .call_raw(
            "exec.run",
            serde_json::value::to_raw_value(&json!({"argv": ["echo", "hush-hush-42"]})).ok(),
        )
        .await
        .expect("exec.run");
    let run_id = serde_json::from_str::<Value>(run.get()).unwrap()["run_id"].clone();
    let seen_by_operator = operator.event().await;
    assert_eq!(
        seen_by_operator["body"]["payload"]["run_id"], run_id,
        "{seen_by_operator}"
    );
    assert!(
        seen_by_operator["body"]["payload"]["data"]
            .as_str()
            .is_some_and(|data| data.contains("hush-hush-42")),
        "{seen_by_operator}"
    );
    let seen_by_viewer = viewer.event().await;
    assert_eq!(seen_by_viewer["seq"], seen_by_operator["seq"]);
    let payload = &seen_by_viewer["body"]["payload"];
    assert_eq!(payload["run_id"], run_id, "{seen_by_viewer}");
    assert_eq!(payload["redacted"], true, "{seen_by_viewer}");
    assert!(
        payload.get("data").is_none() && payload.get("data_b64").is_none(),
        "{seen_by_viewer}"
    );
    assert!(!seen_by_viewer.to_string().contains("hush-hush-42"), "{seen_by_viewer}");

    // Reads are fine.
    assert_ok(&viewer.cmd("l", "events", "list", json!({"limit": 1})).await);
    assert_ok(&viewer.cmd("s", "system", "status", json!({})).await);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_replays_exactly_what_was_missed_after_a_reconnect() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "dave", Role::Viewer).await;
    let publish = |n: u64| {
        let client = client.clone();
        async move {
            client
                .publish(&support::event("replay.item", json!({"n": n})))
                .await
                .expect("publish")
                .seq
        }
    };

    let mut atp = Atp::connect(&base, &key).await;
    let subscribed = atp.subscribe(&["replay.*"], None).await;
    let first_live = subscribed["next_seq"].as_u64().expect("next_seq");
    let mut seen = Vec::new();
    for n in 0..5 {
        let seq = publish(n).await;
        assert!(seq >= first_live);
        let event = atp.event().await;
        assert_eq!(event["seq"], seq, "{event}");
        assert_eq!(event["event"], "replay.item");
        assert_eq!(event["body"]["payload"]["n"], n);
        assert_eq!(event["body"]["seq"], seq);
        assert!(event["ts"].is_string());
        seen.push(seq);
    }
    drop(atp);

    let mut missed = Vec::new();
    for n in 5..10 {
        missed.push(publish(n).await);
    }
    let last_seen = *seen.last().unwrap();
    let mut again = Atp::connect(&base, &key).await;
    let resubscribed = again.subscribe(&["replay.*"], Some(last_seen)).await;
    assert_eq!(resubscribed["next_seq"], last_seen + 1, "{resubscribed}");
    let mut replayed = Vec::new();
    for _ in 0..missed.len() {
        replayed.push(again.event().await["seq"].as_u64().unwrap());
    }
    assert_eq!(replayed, missed, "the replay is not exactly what was missed");
    // Live after the replay: the next one, no duplicate of the replayed ones.
    let live = publish(10).await;
    assert_eq!(again.event().await["seq"], live);
    let every: Vec<u64> = events_on(&client, "replay.item").await.iter().map(|e| e.seq).collect();
    let delivered: Vec<u64> = seen.iter().chain(&replayed).chain([&live]).copied().collect();
    assert_eq!(
        delivered, every,
        "deliveries across the reconnect are not the stored events"
    );

    // A later subscribe replaces the earlier one.
    again.subscribe(&["other.*"], None).await;
    publish(11).await;
    let other = client
        .publish(&support::event("other.thing", json!({})))
        .await
        .unwrap()
        .seq;
    assert_eq!(
        again.event().await["seq"],
        other,
        "an event of the replaced subscription arrived"
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_replays_a_backlog_far_larger_than_the_queue_whole_and_in_order() {
    // A queue of 16 frames and a backlog of 3000: the replay must wait for the reader, not cut it
    // off, and every frame must arrive.
    let daemon = support::start_with_config("[gateway]\natp_send_queue = 16\n").await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "kim", Role::Viewer).await;
    let total = 3000u64;
    for chunk in 0..total / 100 {
        let publishes = (0..100).map(|i| {
            let client = client.clone();
            async move {
                client
                    .publish(&support::event("backlog.item", json!({"n": chunk * 100 + i})))
                    .await
                    .expect("publish")
            }
        });
        futures_util::future::join_all(publishes).await;
    }
    let stored: Vec<u64> = events_on(&client, "backlog.item").await.iter().map(|e| e.seq).collect();
    assert_eq!(stored.len() as u64, total);

    let mut atp = Atp::connect(&base, &key).await;
    atp.subscribe(&["backlog.*"], Some(0)).await;
    let mut replayed = Vec::with_capacity(stored.len());
    for _ in 0..total {
        let event = atp.event().await;
        replayed.push(event["seq"].as_u64().expect("seq"));
    }
    assert_eq!(replayed, stored, "the replay is not the backlog, whole and in order");
    // Live again after it, on the same connection.
    let live = client
        .publish(&support::event("backlog.item", json!({"n": "live"})))
        .await
        .unwrap()
        .seq;
    assert_eq!(atp.event().await["seq"], live);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_logout_closes_the_connection_and_outlives_a_gateway_restart() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let login = session_token(&base, &client, "erin", Role::Operator).await;
    let token = login["token"].as_str().unwrap().to_owned();
    let bearer = ("authorization", format!("Bearer {token}"));

    let mut atp = Atp::connect(&base, &token).await;
    let logout = atp.cmd("bye", "auth", "logout", json!({})).await;
    assert_ok(&logout);
    let (close, _) = atp.closed(REPLY_DEADLINE).await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1000, "{close:?}");
    assert_eq!(close.reason.as_str(), "logged out");
    assert_eq!(
        refused_status(Atp::try_connect(&base, std::slice::from_ref(&bearer), "").await),
        401
    );

    // Kill the gateway; init starts a new one, which must still refuse the token.
    let old_pid = or_log(&daemon, daemon.service_pid("gateway").await);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let running = &daemon;
    or_log(
        &daemon,
        eventually(Duration::from_secs(60), "a restarted gateway", move || async move {
            let pid = running.service_pid("gateway").await.ok()?;
            (pid != old_pid && !process_alive(old_pid)).then_some(())
        })
        .await,
    );
    let restarted_base = or_log(
        &daemon,
        eventually(
            Duration::from_secs(60),
            "the restarted gateway's HTTP face",
            move || async move {
                let base = http_base(running).await;
                TcpStream::connect(host_port(&base)).await.ok().map(|_| base)
            },
        )
        .await,
    );
    assert_eq!(
        refused_status(Atp::try_connect(&restarted_base, &[bearer], "").await),
        401,
        "a logged-out token works again after a restart"
    );
    // The restarted gateway is up for everyone else.
    let fresh = session_token(&restarted_base, &client, "erin", Role::Operator).await;
    let mut atp = Atp::connect(&restarted_base, fresh["token"].as_str().unwrap()).await;
    assert_ok(&atp.cmd("v", "system", "version", json!({})).await);
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- a raw client for keepalive and backpressure

/// A WebSocket client written by hand: it answers no pings and reads only when told to, which the
/// library clients cannot be made to do.
struct RawWs {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// One frame from the server.
#[derive(Debug)]
enum RawFrame {
    Text(String),
    Ping,
    Close(u16, String),
    Other,
}

impl RawWs {
    /// Connects with a small receive buffer (so a client that does not read fills up quickly).
    async fn connect(base: &str, token: &str) -> RawWs {
        let addr: std::net::SocketAddr = host_port(base).parse().expect("gateway address");
        let socket = tokio::net::TcpSocket::new_v4().expect("raw WebSocket I/O");
        socket.set_recv_buffer_size(4096).expect("raw WebSocket I/O");
        let stream = socket.connect(addr).await.expect("connecting");
        let (read, mut writer) = stream.into_split();
        let request = format!(
            "GET /atp HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n",
            host_port(base)
        );
        writer.write_all(request.as_bytes()).await.expect("raw WebSocket I/O");
        let mut reader = BufReader::new(read);
        let mut status = String::new();
        reader.read_line(&mut status).await.expect("raw WebSocket I/O");
        assert!(status.contains(" 101 "), "upgrade refused: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("raw WebSocket I/O");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        RawWs { reader, writer }
    }

    async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).await.expect("raw WebSocket I/O");
    }

    /// The next frame; `None` at end of stream.
    async fn next(&mut self) -> Option<RawFrame> {
        let mut head = [0u8; 2];
        self.reader.read_exact(&mut head).await.ok()?;
        let opcode = head[0] & 0x0f;
        let length = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.reader.read_exact(&mut n).await.ok()?;
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                self.reader.read_exact(&mut n).await.ok()?;
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(length).ok()?];
        self.reader.read_exact(&mut payload).await.ok()?;
        Some(match opcode {
            0x1 => RawFrame::Text(String::from_utf8(payload).ok()?),
            0x9 => RawFrame::Ping,
            0x8 => {
                let code = payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(1005);
                RawFrame::Close(
                    code,
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned(),
                )
            }
            _ => RawFrame::Other,
        })
    }

    /// Reads to the end: the text frames, how many pings, and the close frame.
    async fn drain(&mut self, deadline: Duration) -> (Vec<Value>, usize, Option<(u16, String)>) {
        let mut texts = Vec::new();
        let mut pings = 0;
        let read = tokio::time::timeout(deadline, async {
            while let Some(frame) = self.next().await {
                match frame {
                    RawFrame::Text(text) => texts.push(serde_json::from_str(&text).unwrap_or(Value::Null)),
                    RawFrame::Ping => pings += 1,
                    RawFrame::Close(code, reason) => return Some((code, reason)),
                    RawFrame::Other => {}
                }
            }
            None
        })
        .await;
        match read {
            Ok(close) => (texts, pings, close),
            Err(_) => panic!("the server had not closed the connection after {deadline:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_closes_a_peer_that_stops_answering_pings() {
    let daemon = support::start_with_config(
        "[gateway]\nlisten = \"127.0.0.1:0\"\natp_ping_interval = \"200ms\"\natp_pong_timeout = \"1s\"\n",
    )
    .await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "frank", Role::Viewer).await;

    // A library client answers pings while it reads, so it stays connected across many ping
    // periods; it reads on its own task until the silent one is gone.
    let healthy = Atp::connect(&base, &key).await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        let mut healthy = healthy;
        loop {
            tokio::select! {
                _ = &mut stopped => return healthy,
                message = healthy.socket.next() => match message {
                    Some(Ok(_)) => continue,
                    other => panic!("the answering client was closed: {other:?}"),
                },
            }
        }
    });
    let mut silent = RawWs::connect(&base, &key).await;
    // The silent one reads (to see what the server does) but never answers a ping.
    let (texts, pings, close) = silent.drain(REPLY_DEADLINE).await;
    stop.send(()).unwrap();
    let mut healthy = keeper.await.unwrap();
    let (code, reason) = close.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1008, "keepalive timeout"));
    assert!(pings >= 2, "closed after {pings} pings");
    let closing = texts.last().expect("a closing frame");
    assert_eq!(closing["type"], "closing", "{closing}");
    assert_eq!(closing["error"]["code"], "ETIMEOUT", "{closing}");
    // The answering client outlived it.
    assert_ok(&healthy.cmd("still", "system", "version", json!({})).await);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_cuts_off_a_slow_subscriber_while_another_keeps_receiving() {
    let daemon = support::start_with_config("[gateway]\nlisten = \"127.0.0.1:0\"\natp_send_queue = 8\n").await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "gina", Role::Viewer).await;

    let mut fast = Atp::connect(&base, &key).await;
    fast.subscribe(&["flood.*"], None).await;
    let mut slow = RawWs::connect(&base, &key).await;
    slow.send_text(r#"{"type":"subscribe","events":["flood.*"]}"#).await;
    let Some(RawFrame::Text(subscribed)) = tokio::time::timeout(REPLY_DEADLINE, slow.next())
        .await
        .expect("no answer to subscribe in time")
    else {
        panic!("no subscribed frame");
    };
    assert!(subscribed.contains("\"subscribed\""), "{subscribed}");

    // Far more than the kernel's socket buffers and the 8-frame queue hold: the slow client,
    // which reads nothing meanwhile, must be cut off.
    let chunk = "x".repeat(60 * 1024);
    let total = 300u64;
    // The fast client reads all along, on its own task.
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for _ in 0..total {
            seqs.push(fast.event().await["seq"].as_u64().expect("seq"));
        }
        (fast, seqs)
    });
    let mut published = Vec::new();
    for n in 0..total {
        let seq = client
            .publish(&support::event("flood.big", json!({"n": n, "pad": chunk})))
            .await
            .expect("publish")
            .seq;
        published.push(seq);
    }
    let (mut fast, received) = reader.await.expect("the fast reader failed");
    assert_eq!(received, published, "the fast subscriber missed events");

    let (texts, _, close) = slow.drain(REPLY_DEADLINE).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    let closing = texts.last().expect("a closing frame");
    assert_eq!(closing["type"], "closing", "{closing}");
    assert_eq!(closing["error"]["code"], "ELIMIT", "{closing}");
    let delivered: Vec<u64> = texts
        .iter()
        .filter(|frame| frame["type"] == "event")
        .map(|frame| frame["seq"].as_u64().unwrap())
        .collect();
    assert!(
        (delivered.len() as u64) < total,
        "the slow client got everything: not cut off"
    );
    assert_eq!(
        delivered,
        published[..delivered.len()],
        "the slow client's events have a gap"
    );
    // Resuming from next_seq loses nothing and repeats nothing.
    let next_seq = closing["next_seq"].as_u64().expect("next_seq");
    assert!(
        delivered.last().is_none_or(|last| next_seq > *last) && next_seq <= published[delivered.len()],
        "next_seq {next_seq} does not follow the last delivered event ({:?}) up to the first missed ({})",
        delivered.last(),
        published[delivered.len()]
    );

    // The fast client is still connected and live.
    let after = client
        .publish(&support::event("flood.after", json!({})))
        .await
        .unwrap()
        .seq;
    assert_eq!(fast.event().await["seq"], after);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_connections_close_with_1001_when_the_daemon_stops() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let base = http_base(&daemon).await;
    let key = api_key(&client, "hank", Role::Viewer).await;
    let mut atp = Atp::connect(&base, &key).await;
    atp.subscribe(&["**"], None).await;
    let stopping = tokio::task::spawn_blocking(move || {
        let mut daemon = daemon;
        daemon.stop(Duration::from_secs(30))
    });
    let (close, frames) = atp.closed(REPLY_DEADLINE).await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    let closing = frames
        .iter()
        .rev()
        .find(|frame| frame["type"] == "closing")
        .expect("a closing frame");
    assert_eq!(closing["error"]["code"], "EUNAVAIL", "{closing}");
    stopping.await.unwrap().unwrap();
}
