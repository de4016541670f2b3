//! The wire protocol of `api.sock`, byte for byte: a table of request lines and the reply each must
//! get (SPEC §3), notifications, batches, the message size limit, and `socat` as a client.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Raw, assert_version_result, raw_id, run_async};

/// What a request line must get back.
enum Expect {
    /// An error with this code, this id (raw JSON text) and, for -32602, a message naming a field.
    Error {
        code: i32,
        id: &'static str,
        names: Option<&'static str>,
    },
    /// A `system.version` result with this id (raw JSON text).
    Version { id: &'static str },
}

struct Case {
    name: &'static str,
    line: &'static str,
    expect: Expect,
}

const fn error(code: i32, id: &'static str) -> Expect {
    Expect::Error { code, id, names: None }
}

const fn invalid_params(id: &'static str, field: &'static str) -> Expect {
    Expect::Error {
        code: -32602,
        id,
        names: Some(field),
    }
}

const CASES: &[Case] = &[
    Case {
        name: "truncated JSON",
        line: r#"{"jsonrpc":"2.0","id":1,"method":"#,
        expect: error(-32700, "null"),
    },
    Case {
        name: "not JSON at all",
        line: "hello there",
        expect: error(-32700, "null"),
    },
    Case {
        name: "an object that is not a request",
        line: r#"{"foo":1}"#,
        expect: error(-32600, "null"),
    },
    Case {
        name: "a bare number",
        line: "42",
        expect: error(-32600, "null"),
    },
    Case {
        name: "wrong jsonrpc version",
        line: r#"{"jsonrpc":"1.0","id":4,"method":"system.version"}"#,
        expect: error(-32600, "4"),
    },
    Case {
        name: "no method",
        line: r#"{"jsonrpc":"2.0","id":5}"#,
        expect: error(-32600, "5"),
    },
    Case {
        name: "params neither object nor array",
        line: r#"{"jsonrpc":"2.0","id":6,"method":"system.version","params":3}"#,
        expect: error(-32600, "6"),
    },
    Case {
        name: "an object as id",
        line: r#"{"jsonrpc":"2.0","id":{"a":1},"method":"system.version"}"#,
        expect: error(-32600, "null"),
    },
    Case {
        name: "empty batch",
        line: "[]",
        expect: error(-32600, "null"),
    },
    Case {
        name: "unknown method",
        line: r#"{"jsonrpc":"2.0","id":8,"method":"nope.nothing","params":{}}"#,
        expect: error(-32601, "8"),
    },
    Case {
        name: "publish without topic",
        line: r#"{"jsonrpc":"2.0","id":9,"method":"events.publish","params":{"payload":{"a":1}}}"#,
        expect: invalid_params("9", "topic"),
    },
    Case {
        name: "from_seq of the wrong type",
        line: r#"{"jsonrpc":"2.0","id":10,"method":"events.subscribe","params":{"patterns":["**"],"from_seq":"one"}}"#,
        expect: invalid_params("10", "from_seq"),
    },
    Case {
        name: "unknown field",
        line: r#"{"jsonrpc":"2.0","id":11,"method":"events.publish","params":{"topic":"demo.x","colour":"blue"}}"#,
        expect: invalid_params("11", "colour"),
    },
    Case {
        name: "list limit of the wrong type",
        line: r#"{"jsonrpc":"2.0","id":12,"method":"events.list","params":{"limit":"many"}}"#,
        expect: invalid_params("12", "limit"),
    },
    Case {
        name: "string id",
        line: r#"{"jsonrpc":"2.0","id":"abc","method":"system.version"}"#,
        expect: Expect::Version { id: r#""abc""# },
    },
    Case {
        name: "numeric id",
        line: r#"{"jsonrpc":"2.0","id":7,"method":"system.version","params":{}}"#,
        expect: Expect::Version { id: "7" },
    },
    Case {
        name: "id past f64 precision",
        line: r#"{"jsonrpc":"2.0","id":9007199254740993,"method":"system.version"}"#,
        expect: Expect::Version { id: "9007199254740993" },
    },
    Case {
        name: "id past u64",
        line: r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"system.version"}"#,
        expect: Expect::Version {
            id: "123456789012345678901234567890",
        },
    },
    Case {
        name: "negative id",
        line: r#"{"jsonrpc":"2.0","id":-3,"method":"system.version","params":[]}"#,
        expect: Expect::Version { id: "-3" },
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_table() {
    let daemon = support::start().await;
    let mut conn = Raw::connect(&daemon.paths.api_socket()).await;
    for (index, case) in CASES.iter().enumerate() {
        conn.send(case.line).await;
        let line = conn.recv().await;
        let reply: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", case.name));
        assert_eq!(reply["jsonrpc"], "2.0", "{}: {line}", case.name);
        match case.expect {
            Expect::Error { code, id, names } => {
                assert_eq!(reply["error"]["code"], json!(code), "{}: {line}", case.name);
                assert!(
                    reply.get("result").is_none(),
                    "{}: both result and error: {line}",
                    case.name
                );
                assert_eq!(
                    raw_id(&line).as_deref(),
                    Some(id),
                    "{}: id not echoed: {line}",
                    case.name
                );
                let message = reply["error"]["message"].as_str().unwrap_or_default();
                assert!(!message.is_empty(), "{}: no message: {line}", case.name);
                if let Some(field) = names {
                    assert!(
                        message.contains(field),
                        "{}: message does not name {field}: {line}",
                        case.name
                    );
                }
            }
            Expect::Version { id } => {
                assert_version_result(&reply);
                assert_eq!(
                    raw_id(&line).as_deref(),
                    Some(id),
                    "{}: id not echoed exactly: {line}",
                    case.name
                );
            }
        }
        // Whatever came before, the same connection still answers.
        conn.assert_answers(1000 + index as u64).await;
    }
    // And so does a new one.
    Raw::connect(&daemon.paths.api_socket()).await.assert_answers(1).await;
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_get_no_reply() {
    let daemon = support::start().await;
    let mut conn = Raw::connect(&daemon.paths.api_socket()).await;
    // A good notification, a notification of an unknown method, a notification with bad params:
    // none of them is answered, so the first reply on the line is the request's.
    conn.send(r#"{"jsonrpc":"2.0","method":"system.version"}"#).await;
    conn.send(r#"{"jsonrpc":"2.0","method":"nope.nothing","params":{}}"#)
        .await;
    conn.send(r#"{"jsonrpc":"2.0","method":"events.list","params":{"limit":"x"}}"#)
        .await;
    conn.send(r#"{"jsonrpc":"2.0","id":"after","method":"system.version"}"#)
        .await;
    let line = conn.recv().await;
    assert_eq!(
        raw_id(&line).as_deref(),
        Some(r#""after""#),
        "a notification was answered: {line}"
    );
    assert_version_result(&serde_json::from_str(&line).expect("JSON"));

    // A notification still takes effect: a published event is stored although nothing is answered.
    conn.send(r#"{"jsonrpc":"2.0","method":"events.publish","params":{"topic":"demo.notified","payload":{}}}"#)
        .await;
    let client = daemon.client().await.expect("client");
    let stored = aiventbus_testkit::eventually(Duration::from_secs(30), "the notified publish", || {
        let client = client.clone();
        async move {
            let events = client
                .list(&aiventbus_proto::methods::ListParams {
                    topic: Some("demo.notified".into()),
                    ..Default::default()
                })
                .await
                .ok()?;
            (!events.is_empty()).then_some(events)
        }
    })
    .await
    .expect("notification publish stored");
    assert_eq!(stored.len(), 1);
    conn.send(r#"{"jsonrpc":"2.0","id":2,"method":"system.version"}"#).await;
    let line = conn.recv().await;
    assert_eq!(
        raw_id(&line).as_deref(),
        Some("2"),
        "the notification was answered: {line}"
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches() {
    let daemon = support::start().await;
    let mut conn = Raw::connect(&daemon.paths.api_socket()).await;

    // Three entries, one a notification: an array of two replies.
    conn.send(
        r#"[{"jsonrpc":"2.0","id":1,"method":"system.version"},{"jsonrpc":"2.0","method":"system.version"},{"jsonrpc":"2.0","id":"b","method":"nope.nothing"}]"#,
    )
    .await;
    let reply = conn.recv_json().await;
    let replies = reply
        .as_array()
        .unwrap_or_else(|| panic!("batch reply is not an array: {reply}"));
    assert_eq!(replies.len(), 2, "{reply}");
    let by_id = |id: Value| {
        replies
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no reply with id {id} in {reply}"))
    };
    assert_version_result(by_id(json!(1)));
    assert_eq!(by_id(json!("b"))["error"]["code"], -32601, "{reply}");

    // A batch entry that is not a request gets its own -32600 with a null id.
    conn.send(r#"[1,{"jsonrpc":"2.0","id":3,"method":"system.version"}]"#)
        .await;
    let reply = conn.recv_json().await;
    let replies = reply
        .as_array()
        .unwrap_or_else(|| panic!("batch reply is not an array: {reply}"));
    assert_eq!(replies.len(), 2, "{reply}");
    assert!(
        replies
            .iter()
            .any(|r| r["id"].is_null() && r["error"]["code"] == -32600),
        "{reply}"
    );
    assert!(
        replies.iter().any(|r| r["id"] == 3 && r["result"].is_object()),
        "{reply}"
    );

    // A batch of notifications only gets nothing at all.
    conn.send(r#"[{"jsonrpc":"2.0","method":"system.version"},{"jsonrpc":"2.0","method":"system.version"}]"#)
        .await;
    conn.send(r#"{"jsonrpc":"2.0","id":4,"method":"system.version"}"#).await;
    let line = conn.recv().await;
    assert_eq!(
        raw_id(&line).as_deref(),
        Some("4"),
        "a batch of notifications was answered: {line}"
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_closes_only_that_connection() {
    let daemon = support::start_with_config("[rpc]\nmax_message = \"4KiB\"\n").await;
    let mut bystander = Raw::connect(&daemon.paths.api_socket()).await;
    bystander.assert_answers(1).await;

    let mut conn = Raw::connect(&daemon.paths.api_socket()).await;
    let big = "x".repeat(8 * 1024);
    let line =
        json!({"jsonrpc":"2.0","id":1,"method":"events.publish","params":{"topic":"demo.big","payload":{"big": big}}});
    conn.send(&line.to_string()).await;
    let reply = conn.recv_json().await;
    assert_eq!(reply["error"]["code"], -32006, "{reply}");
    assert!(reply["id"].is_null(), "{reply}");
    assert!(
        conn.closed_within(support::REPLY_DEADLINE).await,
        "the connection stayed open after an overlong line"
    );

    // The service is still up: a new connection and an existing one both answer, and nothing of
    // the overlong request was stored.
    let mut fresh = Raw::connect(&daemon.paths.api_socket()).await;
    fresh.assert_answers(2).await;
    bystander.assert_answers(3).await;
    let listed = fresh.call(4, "events.list", json!({"topic": "demo.big"})).await;
    assert_eq!(listed["result"]["events"], json!([]), "{listed}");

    // A line just under the limit is fine.
    let small = "y".repeat(2 * 1024);
    let reply = fresh
        .call(
            5,
            "events.publish",
            json!({"topic": "demo.small", "payload": {"s": small}}),
        )
        .await;
    assert!(reply["result"]["seq"].is_u64(), "{reply}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_can_publish() {
    if !support::on_path("socat") {
        println!("skipped: socat not installed");
        return;
    }
    let daemon = support::start().await;
    let socket = daemon.paths.api_socket();
    let request =
        r#"{"jsonrpc":"2.0","id":1,"method":"events.publish","params":{"topic":"demo.hello","payload":{"a":1}}}"#;
    let mut socat = Command::new("socat");
    // -t: how long socat waits for the reply after its stdin ends (the default 0.5 s is tight
    // for a debug build on a loaded machine).
    socat
        .args(["-t", "10", "-"])
        .arg(format!("UNIX-CONNECT:{}", socket.display()));
    let output = run_async(socat, format!("{request}\n").into_bytes(), Duration::from_secs(30)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().next().unwrap_or_else(|| {
        panic!(
            "socat printed nothing; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let reply: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(reply["id"], 1, "{reply}");
    let seq = reply["result"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no result.seq: {reply}"));
    let id = reply["result"]["id"].as_str().expect("result.id");
    let stored = daemon
        .client()
        .await
        .expect("client")
        .get(id)
        .await
        .expect("events.get");
    assert_eq!(stored.seq, seq);
    assert_eq!(stored.topic, "demo.hello");
    support::shut_down(daemon).await;
}
