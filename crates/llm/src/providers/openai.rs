//! The OpenAI-compatible chat API (llama.cpp, vLLM, LM Studio, cloud APIs): `POST
//! {base}/chat/completions` with `stream: true` and `response_format` json_schema; the reply is
//! server-sent events (`data: {…}` lines, then `data: [DONE]`). A server that refuses json_schema
//! (HTTP 400 naming response_format) is asked once more with `json_object`, and the provider
//! remembers to use that from then on.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    ChatReply, ChatRequest, MAX_RESPONSE, Provider, ProviderError, error_body, estimate_tokens, read_capped,
    status_error, transport,
};

/// How the answer's shape is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{type: json_schema, json_schema: {name, schema, strict: false}}`.
    JsonSchema,
    /// `{type: json_object}`: any JSON object (the schema is still in the system prompt).
    JsonObject,
}

/// The request body.
pub fn body(request: &ChatRequest, format: Format) -> Value {
    let response_format = match format {
        Format::JsonSchema => json!({
            "type": "json_schema",
            "json_schema": {"name": "agent_output", "schema": request.schema, "strict": false},
        }),
        Format::JsonObject => json!({"type": "json_object"}),
    };
    let mut body = json!({
        "model": request.model,
        "messages": request.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": request.temperature,
        "response_format": response_format,
    });
    if let Some(max) = request.max_tokens {
        body["max_tokens"] = json!(max);
    }
    body
}

/// Whether a 400's body complains about the response format.
fn refuses_schema(body: &str) -> bool {
    let lower = body.to_ascii_lowercase();
    lower.contains("response_format") || lower.contains("json_schema")
}

/// One chat call (with the json_object fallback).
pub async fn chat(
    provider: &Provider,
    request: &ChatRequest,
    chunks: &mpsc::Sender<String>,
) -> Result<ChatReply, ProviderError> {
    let url = format!("{}/chat/completions", provider.base_url);
    let mut format = if provider.json_object_only.load(Ordering::Relaxed) {
        Format::JsonObject
    } else {
        Format::JsonSchema
    };
    let response = loop {
        let response = provider
            .request(reqwest::Method::POST, &url)
            .json(&body(request, format))
            .send()
            .await
            .map_err(|error| transport(&error))?;
        let status = response.status();
        if status.is_success() {
            break response;
        }
        let text = error_body(response).await;
        if status == reqwest::StatusCode::BAD_REQUEST && format == Format::JsonSchema && refuses_schema(&text) {
            provider.remember_json_object_only();
            format = Format::JsonObject;
            continue;
        }
        return Err(status_error(status, &text));
    };
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        // A server that ignores `stream` answers with one completion object.
        let body = read_capped(response, MAX_RESPONSE).await?;
        let reply = whole(&body, request)?;
        if !reply.content.is_empty() {
            let _ = chunks.send(reply.content.clone()).await;
        }
        return Ok(reply);
    }
    super::read_stream(response, Parser::default(), request, chunks).await
}

/// A non-streamed completion.
fn whole(body: &[u8], request: &ChatRequest) -> Result<ChatReply, ProviderError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ProviderError::Failed(format!("unreadable completion: {error}")))?;
    let content = value["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| ProviderError::Failed("completion without choices[0].message.content".into()))?
        .to_owned();
    let prompt_estimate = request.messages.iter().map(|m| estimate_tokens(&m.content)).sum();
    Ok(ChatReply {
        prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(prompt_estimate),
        completion_tokens: value["usage"]["completion_tokens"]
            .as_u64()
            .unwrap_or_else(|| estimate_tokens(&content)),
        content,
    })
}

/// The SSE stream's state.
#[derive(Debug, Default)]
pub struct Parser {
    content: String,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    finished: bool,
    /// `data: [DONE]` arrived.
    pub done: bool,
}

impl Parser {
    /// Reads one SSE line; returns the text it adds.
    pub fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        let Some(data) = line.strip_prefix("data:") else {
            // Comments (`: keep-alive`), `event:` and `id:` lines, blank separators.
            return Ok(None);
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if data.is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|error| ProviderError::Failed(format!("unreadable event ({error}): {data:.200}")))?;
        if let Some(error) = value.get("error") {
            let message = error["message"]
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(ProviderError::Failed(message));
        }
        if let Some(usage) = value.get("usage").filter(|usage| usage.is_object()) {
            self.prompt_tokens = usage["prompt_tokens"].as_u64().or(self.prompt_tokens);
            self.completion_tokens = usage["completion_tokens"].as_u64().or(self.completion_tokens);
        }
        let choice = &value["choices"][0];
        if choice["finish_reason"].is_string() {
            self.finished = true;
        }
        match choice["delta"]["content"].as_str() {
            Some(text) if !text.is_empty() => {
                self.content.push_str(text);
                Ok(Some(text.to_owned()))
            }
            _ => Ok(None),
        }
    }

    /// The reply once the stream ended; a stream cut before it finished means the server went away.
    pub fn finish(self, request: &ChatRequest) -> Result<ChatReply, ProviderError> {
        if !self.done && !self.finished {
            return Err(ProviderError::Down("the stream ended before [DONE]".into()));
        }
        let prompt_estimate = request.messages.iter().map(|m| estimate_tokens(&m.content)).sum();
        Ok(ChatReply {
            prompt_tokens: self.prompt_tokens.unwrap_or(prompt_estimate),
            completion_tokens: self.completion_tokens.unwrap_or_else(|| estimate_tokens(&self.content)),
            content: self.content,
        })
    }
}

impl super::StreamParser for Parser {
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        Parser::line(self, line)
    }

    fn done(&self) -> bool {
        self.done
    }

    fn finish(self, request: &ChatRequest) -> Result<ChatReply, ProviderError> {
        Parser::finish(self, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatMessage;

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::new("user", "hello there")],
            temperature: 0.5,
            max_tokens: None,
            schema: json!({"type": "object", "required": ["summary"]}),
        }
    }

    #[test]
    fn body_asks_for_the_schema_or_any_object() {
        let schema = body(&request(), Format::JsonSchema);
        assert_eq!(schema["stream"], true);
        assert_eq!(schema["response_format"]["type"], "json_schema");
        assert_eq!(schema["response_format"]["json_schema"]["name"], "agent_output");
        assert_eq!(schema["response_format"]["json_schema"]["strict"], false);
        assert_eq!(
            schema["response_format"]["json_schema"]["schema"]["required"],
            json!(["summary"])
        );
        assert!(schema.get("max_tokens").is_none());
        let object = body(&request(), Format::JsonObject);
        assert_eq!(object["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn sse_deltas_accumulate_with_usage() {
        let mut parser = Parser::default();
        assert_eq!(parser.line(": keep-alive").unwrap(), None);
        let text = parser
            .line(r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"{\"x\""}}]}"#)
            .unwrap();
        assert_eq!(text.as_deref(), Some("{\"x\""));
        parser
            .line(r#"data: {"choices":[{"index":0,"delta":{"content":":2}"},"finish_reason":"stop"}]}"#)
            .unwrap();
        parser
            .line(r#"data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#)
            .unwrap();
        parser.line("data: [DONE]").unwrap();
        assert!(parser.done);
        let reply = parser.finish(&request()).unwrap();
        assert_eq!(reply.content, "{\"x\":2}");
        assert_eq!((reply.prompt_tokens, reply.completion_tokens), (12, 3));
    }

    #[test]
    fn a_cut_stream_is_down_and_estimates_fill_missing_usage() {
        let mut parser = Parser::default();
        parser
            .line(r#"data: {"choices":[{"delta":{"content":"ab"}}]}"#)
            .unwrap();
        assert!(matches!(parser.finish(&request()), Err(ProviderError::Down(_))));
        let mut parser = Parser::default();
        parser
            .line(r#"data: {"choices":[{"delta":{"content":"abcdefgh"},"finish_reason":"stop"}]}"#)
            .unwrap();
        let reply = parser.finish(&request()).unwrap();
        assert_eq!((reply.prompt_tokens, reply.completion_tokens), (3, 2));
        assert!(refuses_schema(
            r#"{"error":{"message":"response_format type json_schema is not supported"}}"#
        ));
        assert!(!refuses_schema(r#"{"error":{"message":"model not found"}}"#));
    }
}
