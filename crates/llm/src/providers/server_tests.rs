//! Providers against the testkit's scripted model server: request bodies, streaming in both
//! dialects, the json_schema → json_object fallback, error classification and health probing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_rpc::config::ProviderConfig;
use aiventbus_testkit::model::{Api, ModelServer, Reply};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{ChatMessage, ChatRequest, Provider, ProviderError};

fn provider(name: &str, base_url: String, api_key_env: Option<&str>, timeout: Duration) -> Provider {
    let config = ProviderConfig {
        base_url,
        api_key_env: api_key_env.map(str::to_owned),
        kind: None,
    };
    Provider::new(name, &config, timeout).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        messages: vec![
            ChatMessage::new("system", "answer in JSON"),
            ChatMessage::new("user", "hi"),
        ],
        temperature: 0.2,
        max_tokens: None,
        schema: crate::output::schema(&["log"]),
    }
}

/// Calls the provider and collects the streamed chunks.
async fn chat(provider: &Provider) -> (Result<super::ChatReply, ProviderError>, Vec<String>) {
    let (sender, mut receiver) = mpsc::channel(1024);
    let result = provider.chat(&request(), &sender).await;
    drop(sender);
    let mut chunks = Vec::new();
    while let Some(chunk) = receiver.recv().await {
        chunks.push(chunk);
    }
    (result, chunks)
}

#[tokio::test]
async fn ollama_streams_ndjson_with_real_counts() {
    let server = ModelServer::start().await.unwrap();
    let answer = json!({"type": "answer", "summary": "Paris is the capital of France."});
    server.push(Reply::Json(answer.clone()));
    let ollama = provider("ollama", server.ollama_url(), None, Duration::from_secs(10));
    let (reply, chunks) = chat(&ollama).await;
    let reply = reply.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reply.content).unwrap(),
        answer
    );
    assert!(chunks.len() > 1, "expected a streamed answer, got {chunks:?}");
    assert_eq!(chunks.concat(), reply.content);
    assert!(reply.prompt_tokens > 0 && reply.completion_tokens > 0);

    let recorded = server.chat_requests();
    assert_eq!(recorded.len(), 1);
    let body = &recorded[0].body;
    assert_eq!((recorded[0].api, recorded[0].stream), (Api::Ollama, true));
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["format"], crate::output::schema(&["log"]));
    assert_eq!(body["options"]["temperature"], 0.2);
    assert_eq!(body["keep_alive"], "5m");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "answer in JSON"})
    );
    assert_eq!(ollama.probe().await.unwrap(), ["test-model"]);
}

#[tokio::test]
async fn openai_streams_sse_with_usage_and_the_api_key() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Content("{\"type\":\"answer\",\"summary\":\"four\"}".into()));
    // HOME is always set: it stands in for an API key variable without touching the environment.
    let openai = provider("openai", server.openai_url(), Some("HOME"), Duration::from_secs(10));
    let (reply, chunks) = chat(&openai).await;
    let reply = reply.unwrap();
    assert_eq!(reply.content, "{\"type\":\"answer\",\"summary\":\"four\"}");
    assert!(chunks.len() > 1);
    assert!(reply.prompt_tokens > 0 && reply.completion_tokens > 0);
    let recorded = &server.chat_requests()[0];
    assert_eq!((recorded.api, recorded.stream), (Api::OpenAi, true));
    assert_eq!(recorded.body["response_format"]["type"], "json_schema");
    assert_eq!(recorded.body["response_format"]["json_schema"]["name"], "agent_output");
    let home = std::env::var("HOME").unwrap();
    assert_eq!(
        recorded.authorization.as_deref(),
        Some(format!("Bearer {home}").as_str())
    );
    assert_eq!(openai.probe().await.unwrap(), ["test-model"]);
}

#[tokio::test]
async fn openai_falls_back_to_json_object_once_and_remembers() {
    let server = ModelServer::start().await.unwrap();
    server.reject_json_schema(true);
    let openai = provider("openai", server.openai_url(), None, Duration::from_secs(10));
    let (reply, _) = chat(&openai).await;
    let content: serde_json::Value = serde_json::from_str(&reply.unwrap().content).unwrap();
    assert_eq!(content, json!({"type": "answer", "summary": "ok"}));
    let (reply, _) = chat(&openai).await;
    assert!(reply.is_ok());
    let formats: Vec<String> = server
        .chat_requests()
        .iter()
        .map(|r| {
            r.body["response_format"]["type"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(formats, ["json_schema", "json_object", "json_object"]);
}

#[tokio::test]
async fn failures_are_classified() {
    let mut server = ModelServer::start().await.unwrap();
    let ollama = provider("ollama", server.ollama_url(), None, Duration::from_millis(800));
    server.push(Reply::Status(503, "overloaded".into()));
    assert!(matches!(chat(&ollama).await.0, Err(ProviderError::Down(_))));
    server.push(Reply::Status(400, "bad options".into()));
    assert_eq!(
        chat(&ollama).await.0,
        Err(ProviderError::Rejected("HTTP 400: bad options".into()))
    );
    server.push(Reply::Status(429, "slow down".into()));
    assert!(matches!(chat(&ollama).await.0, Err(ProviderError::Failed(_))));
    server.push(Reply::Hang);
    assert!(matches!(chat(&ollama).await.0, Err(ProviderError::Down(why)) if why.contains("timed out")));
    server.stop().await;
    assert!(matches!(chat(&ollama).await.0, Err(ProviderError::Down(why)) if why.contains("connect")));
    assert!(!ollama.is_up());
    let unknown = ChatRequest {
        model: "nope".into(),
        ..request()
    };
    server.restart().await.unwrap();
    let (sender, _receiver) = mpsc::channel(16);
    assert!(matches!(
        ollama.chat(&unknown, &sender).await,
        Err(ProviderError::Rejected(_))
    ));
}

#[tokio::test]
async fn health_goes_down_and_comes_back() {
    let mut server = ModelServer::start().await.unwrap();
    let providers = super::from_config(
        &BTreeMap::from([(
            "ollama".to_owned(),
            ProviderConfig {
                base_url: server.ollama_url(),
                api_key_env: None,
                kind: None,
            },
        )]),
        Duration::from_secs(5),
    )
    .unwrap();
    let ollama: Arc<Provider> = providers["ollama"].clone();
    let (generation, mut changes) = watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let monitor = tokio::spawn(crate::health::monitor(ollama.clone(), generation, shutdown.clone()));
    let wait_until = |up: bool, changes: &mut watch::Receiver<u64>| {
        let ollama = ollama.clone();
        let mut changes = changes.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(15), async {
                while ollama.is_up() != up {
                    changes.changed().await.unwrap();
                }
            })
            .await
            .unwrap_or_else(|_| panic!("provider never became up={up}"));
        }
    };
    wait_until(true, &mut changes).await;
    assert_eq!(ollama.health.status().models, ["test-model"]);

    server.stop().await;
    // A failed call marks it down at once; probes then find it gone.
    let (sender, _receiver) = mpsc::channel(16);
    assert!(ollama.chat(&request(), &sender).await.is_err());
    wait_until(false, &mut changes).await;
    let status = ollama.health.status();
    assert!(!status.reachable && status.why.is_some(), "{status:?}");

    server.restart().await.unwrap();
    wait_until(true, &mut changes).await;
    assert!(ollama.health.status().reachable);
    shutdown.cancel();
    monitor.await.unwrap();
}
