//! Tests of the scripted model server, over a minimal raw HTTP/1.1 client so the wire bytes (framing,
//! chunked encoding, content types) are what is checked.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A response as read off the wire by [`send`].
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body with chunked transfer encoding undone.
    body: String,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client: one request per connection, read to EOF.
async fn send(address: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<Wire> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer sk-test\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw).expect("response is UTF-8");
    let Some((head, rest)) = raw.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no complete response head: {raw:?}"),
        ));
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(key, value)| key == "transfer-encoding" && value.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    Ok(Wire { status, headers, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("CRLF after chunk");
    }
}

async fn post(server: &ModelServer, path: &str, body: Value) -> Wire {
    send(server.address(), "POST", path, &body.to_string())
        .await
        .expect("request")
}

async fn chat_ollama(server: &ModelServer, stream: Option<bool>) -> Wire {
    let mut body = json!({
        "model": "test-model",
        "messages": [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Say hello there"}],
        "format": {"type": "object"},
    });
    if let Some(stream) = stream {
        body["stream"] = json!(stream);
    }
    post(server, "/api/chat", body).await
}

async fn chat_openai(server: &ModelServer, extra: Value) -> Wire {
    let mut body = json!({
        "model": "test-model",
        "messages": [{"role": "user", "content": "Say hello there"}],
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    post(server, "/v1/chat/completions", body).await
}

/// Content of a non-streamed answer from either API.
fn content(wire: &Wire) -> String {
    let body = wire.json();
    let content = body
        .pointer("/message/content")
        .or_else(|| body.pointer("/choices/0/message/content"));
    content.and_then(Value::as_str).expect("content").to_owned()
}

/// Parses an NDJSON stream: every line is one JSON object.
fn ndjson(body: &str) -> Vec<Value> {
    assert!(body.ends_with('\n'), "NDJSON ends with a newline: {body:?}");
    body.lines()
        .map(|line| serde_json::from_str(line).expect("NDJSON line"))
        .collect()
}

/// Parses an SSE stream of `data:` events; `[DONE]` must come last and is not returned.
fn sse(body: &str) -> Vec<Value> {
    let events: Vec<&str> = body
        .strip_suffix("\n\n")
        .expect("events end with a blank line")
        .split("\n\n")
        .collect();
    let (last, chunks) = events.split_last().expect("events");
    assert_eq!(*last, "data: [DONE]");
    chunks
        .iter()
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("data event");
            serde_json::from_str(data).expect("SSE data is JSON")
        })
        .collect()
}

fn positive(value: &Value, field: &str) -> u64 {
    let n = value.get(field).and_then(Value::as_u64).unwrap_or(0);
    assert!(n > 0, "{field} is a positive integer in {value}");
    n
}

#[tokio::test]
async fn ollama_chat_answers_one_object_when_not_streaming() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Content("hello there".into()));
    let wire = chat_ollama(&server, Some(false)).await;
    assert_eq!(wire.status, 200);
    assert!(wire.header("content-type").unwrap().starts_with("application/json"));
    let body = wire.json();
    assert_eq!(body["model"], "test-model");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["message"], json!({"role": "assistant", "content": "hello there"}));
    assert_eq!(body["done"], true);
    assert_eq!(body["done_reason"], "stop");
    for field in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        positive(&body, field);
    }
    // Deterministic: the same request counts the same.
    server.push(Reply::Content("hello there".into()));
    let again = chat_ollama(&server, Some(false)).await.json();
    assert_eq!(again["prompt_eval_count"], body["prompt_eval_count"]);
    assert_eq!(again["eval_count"], body["eval_count"]);
    let recorded = server.requests();
    assert_eq!(recorded[0].api, Api::Ollama);
    assert!(!recorded[0].stream);
    assert_eq!(recorded[0].body["format"], json!({"type": "object"}));
}

#[tokio::test]
async fn ollama_chat_streams_ndjson_by_default() {
    let server = ModelServer::start().await.unwrap();
    let text = "a longer answer that arrives in several chunks";
    server.push(Reply::Content(text.into()));
    let wire = chat_ollama(&server, None).await;
    assert_eq!(wire.status, 200);
    assert_eq!(wire.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(wire.header("transfer-encoding"), Some("chunked"));
    let lines = ndjson(&wire.body);
    let (last, pieces) = lines.split_last().unwrap();
    assert!(pieces.len() > 1, "several chunks: {lines:?}");
    let mut reassembled = String::new();
    for piece in pieces {
        assert_eq!(piece["done"], false);
        assert_eq!(piece["model"], "test-model");
        assert_eq!(piece["message"]["role"], "assistant");
        assert!(piece.get("eval_count").is_none());
        reassembled.push_str(piece["message"]["content"].as_str().unwrap());
    }
    assert_eq!(reassembled, text);
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["message"], json!({"role": "assistant", "content": ""}));
    positive(last, "prompt_eval_count");
    positive(last, "eval_count");
    positive(last, "total_duration");
    assert!(server.requests()[0].stream, "stream defaults to true");
}

#[tokio::test]
async fn openai_chat_answers_one_completion_when_not_streaming() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Content("hello there".into()));
    let wire = chat_openai(&server, json!({})).await;
    assert_eq!(wire.status, 200);
    assert_eq!(wire.header("content-type"), Some("application/json"));
    let body = wire.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    positive(&body, "created");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    let total = positive(usage, "prompt_tokens") + positive(usage, "completion_tokens");
    assert_eq!(usage["total_tokens"], total);
    let recorded = &server.requests()[0];
    assert_eq!(recorded.api, Api::OpenAi);
    assert!(!recorded.stream, "stream defaults to false");
    assert_eq!(recorded.authorization.as_deref(), Some("Bearer sk-test"));
}

#[tokio::test]
async fn openai_chat_streams_server_sent_events() {
    let server = ModelServer::start().await.unwrap();
    let text = "a longer answer that arrives in several chunks";
    server.push(Reply::Content(text.into()));
    server.push(Reply::Content(text.into()));

    let wire = chat_openai(&server, json!({"stream": true})).await;
    assert_eq!(wire.status, 200);
    assert_eq!(wire.header("content-type"), Some("text/event-stream"));
    let chunks = sse(&wire.body);
    assert!(chunks.len() > 3, "several chunks: {chunks:?}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (last, content_chunks) = chunks.split_last().unwrap();
    let mut reassembled = String::new();
    for chunk in content_chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        assert!(chunk.get("usage").is_none());
        reassembled.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert_eq!(reassembled, text);
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(server.requests()[0].stream);

    let wire = chat_openai(
        &server,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks = sse(&wire.body);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    positive(&usage_chunk["usage"], "prompt_tokens");
    positive(&usage_chunk["usage"], "completion_tokens");
    assert!(rest.iter().all(|chunk| chunk["usage"].is_null()));
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn replies_come_in_order_then_the_default() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Content("first".into()));
    server.push(Reply::Json(json!({"type": "analysis", "summary": "second"})));
    assert_eq!(content(&chat_ollama(&server, Some(false)).await), "first");
    let second: Value = serde_json::from_str(&content(&chat_openai(&server, json!({})).await)).unwrap();
    assert_eq!(second, json!({"type": "analysis", "summary": "second"}));
    let default: Value = serde_json::from_str(&content(&chat_ollama(&server, Some(false)).await)).unwrap();
    assert_eq!(default, json!({"type": "answer", "summary": "ok"}));
    server.set_default(Reply::Content("changed".into()));
    assert_eq!(content(&chat_openai(&server, json!({})).await), "changed");
    assert_eq!(content(&chat_ollama(&server, Some(false)).await), "changed");
}

#[tokio::test]
async fn status_replies_use_each_apis_error_shape() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Status(500, "boom".into()));
    server.push(Reply::Status(429, "slow down".into()));
    let wire = chat_ollama(&server, None).await;
    assert_eq!(wire.status, 500);
    assert_eq!(wire.json(), json!({"error": "boom"}));
    let wire = chat_openai(&server, json!({"stream": true})).await;
    assert_eq!(wire.status, 429);
    assert_eq!(
        wire.json(),
        json!({"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );
}

#[tokio::test]
async fn unknown_models_are_404_and_listings_follow_models() {
    let server = ModelServer::start().await.unwrap();
    server.models(&["llama3:latest", "qwen"]);
    let mut body = json!({"model": "x", "messages": [], "stream": false});
    let wire = post(&server, "/api/chat", body.clone()).await;
    assert_eq!(wire.status, 404);
    assert_eq!(
        wire.json(),
        json!({"error": "model \"x\" not found, try pulling it first"})
    );
    let wire = post(&server, "/v1/chat/completions", body.clone()).await;
    assert_eq!(wire.status, 404);
    assert_eq!(wire.json()["error"]["code"], "model_not_found");
    assert_eq!(wire.json()["error"]["type"], "invalid_request_error");
    // `llama3` is `llama3:latest`.
    body["model"] = json!("llama3");
    assert_eq!(post(&server, "/api/chat", body).await.status, 200);

    let tags = send(server.address(), "GET", "/api/tags", "").await.unwrap();
    assert_eq!(tags.status, 200);
    let tags = tags.json();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3:latest", "qwen"]);
    let first = &tags["models"][0];
    assert_eq!(first["model"], "llama3:latest");
    assert_eq!(first["digest"].as_str().unwrap().len(), 64);
    assert_eq!(first["details"]["format"], "gguf");
    assert_eq!(first["details"]["quantization_level"], "Q4_0");

    let models = send(server.address(), "GET", "/v1/models", "").await.unwrap();
    assert_eq!(models.status, 200);
    let models = models.json();
    assert_eq!(models["object"], "list");
    assert_eq!(
        models["data"][1],
        json!({"id": "qwen", "object": "model", "created": MODEL_CREATED, "owned_by": "testkit"})
    );
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.last().map(String::as_str), Some("/v1/models"));
    assert_eq!(server.chat_requests().len(), 3);
}

#[tokio::test]
async fn json_schema_can_be_rejected_for_a_json_object_fallback() {
    let server = ModelServer::start().await.unwrap();
    server.reject_json_schema(true);
    server.push(Reply::Content("{}".into()));
    let schema = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {}}}});
    let wire = chat_openai(&server, schema.clone()).await;
    assert_eq!(wire.status, 400);
    assert_eq!(
        wire.json()["error"]["message"],
        "response_format json_schema is not supported"
    );
    assert_eq!(wire.json()["error"]["type"], "invalid_request_error");
    // The rejected call took no scripted reply: the fallback gets it.
    let wire = chat_openai(&server, json!({"response_format": {"type": "json_object"}})).await;
    assert_eq!(wire.status, 200);
    assert_eq!(content(&wire), "{}");
    let recorded = server.chat_requests();
    assert_eq!(recorded[0].body["response_format"]["type"], "json_schema");
    assert_eq!(recorded[1].body["response_format"]["type"], "json_object");

    server.reject_json_schema(false);
    assert_eq!(chat_openai(&server, schema).await.status, 200);
}

#[tokio::test]
async fn bodies_that_are_not_json_are_400() {
    let server = ModelServer::start().await.unwrap();
    let wire = send(server.address(), "POST", "/api/chat", "not json").await.unwrap();
    assert_eq!(wire.status, 400);
    assert!(wire.json()["error"].is_string());
    let wire = send(server.address(), "POST", "/v1/chat/completions", "{")
        .await
        .unwrap();
    assert_eq!(wire.status, 400);
    assert_eq!(wire.json()["error"]["type"], "invalid_request_error");
    let recorded = server.chat_requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].body, Value::Null);
}

#[tokio::test]
async fn a_hanging_request_is_recorded_and_closed_by_stop() {
    let mut server = ModelServer::start().await.unwrap();
    server.push(Reply::Hang);
    let address = server.address();
    let client = tokio::spawn(async move { send(address, "POST", "/api/chat", r#"{"model":"test-model"}"#).await });
    let recorded = server.wait_for_chat_requests(1, WAIT).await.unwrap();
    assert_eq!(recorded[0].body["model"], "test-model");
    assert!(!client.is_finished());
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("stop closes a hanging connection");
    let answer = tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
    assert!(answer.is_err(), "closed without an answer");
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_listens_on_the_same_port() {
    let mut server = ModelServer::start().await.unwrap();
    let url = server.ollama_url();
    assert_eq!(server.openai_url(), format!("{url}/v1"));
    assert_eq!(chat_ollama(&server, Some(false)).await.status, 200);
    server.stop().await;
    let refused = TcpStream::connect(server.address()).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    server.restart().await.unwrap();
    assert_eq!(server.ollama_url(), url);
    assert_eq!(chat_ollama(&server, Some(false)).await.status, 200);
    assert_eq!(server.chat_requests().len(), 2, "recordings survive a restart");
}

#[tokio::test]
async fn wait_for_chat_requests_wakes_on_arrival_and_times_out() {
    let server = ModelServer::start().await.unwrap();
    let address = server.address();
    let waiter = server.wait_for_chat_requests(2, WAIT);
    let sender = async move {
        // A health probe is not a chat request.
        send(address, "GET", "/api/tags", "").await.unwrap();
        for _ in 0..2 {
            send(address, "POST", "/api/chat", r#"{"model":"test-model","stream":false}"#)
                .await
                .unwrap();
        }
    };
    let (recorded, ()) = tokio::join!(waiter, sender);
    let recorded = recorded.unwrap();
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(Recorded::is_chat));
    let error = server
        .wait_for_chat_requests(3, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("received 2"), "{error}");
}

#[tokio::test]
async fn a_delayed_reply_answers_after_its_delay() {
    let server = ModelServer::start().await.unwrap();
    let delay = Duration::from_millis(100);
    server.push(Reply::delayed(delay, Reply::Content("late".into())));
    let started = tokio::time::Instant::now();
    let wire = chat_openai(&server, json!({})).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(content(&wire), "late");
}
