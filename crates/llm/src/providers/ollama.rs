//! Ollama's chat API: `POST {base}/api/chat` with `stream: true` and the answer's JSON schema as
//! `format`; the reply is NDJSON, one object per line, the last with `done: true` and the real
//! token counts (`prompt_eval_count`, `eval_count`).

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ChatReply, ChatRequest, Provider, ProviderError, error_body, estimate_tokens, status_error, transport};

/// How long Ollama keeps the model loaded after a call.
const KEEP_ALIVE: &str = "5m";

/// The request body.
pub fn body(request: &ChatRequest) -> Value {
    let mut options = json!({ "temperature": request.temperature });
    if let Some(max) = request.max_tokens {
        options["num_predict"] = json!(max);
    }
    json!({
        "model": request.model,
        "messages": request.messages,
        "stream": true,
        "format": request.schema,
        "options": options,
        "keep_alive": KEEP_ALIVE,
    })
}

/// One chat call.
pub async fn chat(
    provider: &Provider,
    request: &ChatRequest,
    chunks: &mpsc::Sender<String>,
) -> Result<ChatReply, ProviderError> {
    let url = format!("{}/api/chat", provider.base_url);
    let response = provider
        .request(reqwest::Method::POST, &url)
        .json(&body(request))
        .send()
        .await
        .map_err(|error| transport(&error))?;
    let status = response.status();
    if !status.is_success() {
        return Err(status_error(status, &error_body(response).await));
    }
    super::read_stream(response, Parser::default(), request, chunks).await
}

/// The NDJSON stream's state.
#[derive(Debug, Default)]
pub struct Parser {
    content: String,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// The last line (`done: true`) arrived.
    pub done: bool,
}

impl Parser {
    /// Reads one line; returns the text it adds.
    pub fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|error| ProviderError::Failed(format!("unreadable stream line ({error}): {line:.200}")))?;
        if let Some(error) = value.get("error") {
            let message = error.as_str().map_or_else(|| error.to_string(), str::to_owned);
            return Err(ProviderError::Failed(message));
        }
        if value["done"].as_bool() == Some(true) {
            self.done = true;
            self.prompt_tokens = value["prompt_eval_count"].as_u64();
            self.completion_tokens = value["eval_count"].as_u64();
        }
        match value["message"]["content"].as_str() {
            Some(text) if !text.is_empty() => {
                self.content.push_str(text);
                Ok(Some(text.to_owned()))
            }
            _ => Ok(None),
        }
    }

    /// The reply once the stream ended; a stream cut before `done` means the server went away.
    pub fn finish(self, request: &ChatRequest) -> Result<ChatReply, ProviderError> {
        if !self.done {
            return Err(ProviderError::Down("the stream ended before done".into()));
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
            model: "smollm2".into(),
            messages: vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hi")],
            temperature: 0.2,
            max_tokens: Some(64),
            schema: json!({"type": "object"}),
        }
    }

    #[test]
    fn body_has_the_schema_as_format_and_options() {
        let body = body(&request());
        assert_eq!(body["stream"], true);
        assert_eq!(body["format"], json!({"type": "object"}));
        assert_eq!(body["options"], json!({"temperature": 0.2, "num_predict": 64}));
        assert_eq!(body["keep_alive"], "5m");
        assert_eq!(body["messages"][1], json!({"role": "user", "content": "hi"}));
    }

    #[test]
    fn stream_lines_accumulate_with_real_counts() {
        let mut parser = Parser::default();
        let first = parser
            .line(r#"{"message":{"role":"assistant","content":"{\"a\""},"done":false}"#)
            .unwrap();
        assert_eq!(first.as_deref(), Some("{\"a\""));
        parser
            .line(r#"{"message":{"role":"assistant","content":":1}"},"done":false}"#)
            .unwrap();
        parser
            .line(r#"{"message":{"role":"assistant","content":""},"done":true,"prompt_eval_count":31,"eval_count":7}"#)
            .unwrap();
        let reply = parser.finish(&request()).unwrap();
        assert_eq!(reply.content, "{\"a\":1}");
        assert_eq!((reply.prompt_tokens, reply.completion_tokens), (31, 7));
    }

    #[test]
    fn a_cut_stream_is_down_and_an_error_line_fails() {
        let mut parser = Parser::default();
        parser.line(r#"{"message":{"content":"x"},"done":false}"#).unwrap();
        assert!(matches!(parser.finish(&request()), Err(ProviderError::Down(_))));
        let mut parser = Parser::default();
        assert!(matches!(
            parser.line(r#"{"error":"model not loaded"}"#),
            Err(ProviderError::Failed(message)) if message == "model not loaded"
        ));
    }
}
