//! Structured output: the JSON schema agents are asked for, and the parser that reads an
//! `AgentOutput` out of what a model wrote — tolerating code fences and prose around the object
//! (the first balanced JSON object that parses is used) and parameters nested under `params`
//! (normalized to flat).

use aiventbus_proto::agents::{AgentOutput, ProposedAction};
use serde_json::{Map, Value, json};

/// The JSON schema of `AgentOutput`, with `action_type` limited to `allowed`.
pub fn schema(allowed: &[&str]) -> Value {
    let action = if allowed.is_empty() {
        json!({"type": "object"})
    } else {
        json!({
            "type": "object",
            "properties": {"action_type": {"type": "string", "enum": allowed}},
            "required": ["action_type"],
        })
    };
    let mut actions = json!({"type": "array", "items": action});
    if allowed.is_empty() {
        actions["maxItems"] = json!(0);
    }
    json!({
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "summary": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "proposed_actions": actions,
        },
        "required": ["type", "summary"],
    })
}

/// Reads the output from a model's text: the first balanced JSON object that is a valid output.
pub fn parse(text: &str) -> Result<AgentOutput, String> {
    let mut first_error = None;
    for candidate in objects(text) {
        let Ok(value) = serde_json::from_str::<Value>(candidate) else {
            continue;
        };
        match from_value(value) {
            Ok(output) => return Ok(output),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        if text.trim().is_empty() {
            "the answer is empty".to_owned()
        } else {
            "no JSON object found in the answer".to_owned()
        }
    }))
}

/// Reads the output from a program's stdout: exactly one JSON object.
pub fn parse_strict(text: &str) -> Result<AgentOutput, String> {
    let value: Value =
        serde_json::from_str(text.trim()).map_err(|error| format!("stdout is not one JSON object: {error}"))?;
    from_value(value)
}

/// Checks and normalizes a parsed value.
pub fn from_value(value: Value) -> Result<AgentOutput, String> {
    let Value::Object(mut object) = value else {
        return Err("the answer must be a JSON object".into());
    };
    let kind = match object.remove("type") {
        Some(Value::String(kind)) if !kind.trim().is_empty() => kind,
        None | Some(Value::Null) => "answer".to_owned(),
        Some(other) => return Err(format!("type must be a word, got {other}")),
    };
    let summary = match object.remove("summary") {
        Some(Value::String(summary)) => summary,
        None => return Err("summary is missing".into()),
        Some(other) => return Err(format!("summary must be a string, got {other}")),
    };
    let confidence = match object.remove("confidence") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => match number.as_f64() {
            Some(value) if (0.0..=1.0).contains(&value) => Some(value),
            _ => return Err(format!("confidence must be from 0 to 1, got {number}")),
        },
        Some(other) => return Err(format!("confidence must be a number, got {other}")),
    };
    let actions = match object.remove("proposed_actions").or_else(|| object.remove("actions")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(actions)) => actions,
        Some(other) => return Err(format!("proposed_actions must be an array, got {other}")),
    };
    let proposed_actions = actions
        .into_iter()
        .enumerate()
        .map(|(index, action)| action_from_value(action).map_err(|error| format!("proposed_actions[{index}]: {error}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AgentOutput {
        kind,
        summary,
        confidence,
        proposed_actions,
    })
}

/// One action: `action_type` (or `type`) plus parameters, flat or nested under `params`.
fn action_from_value(value: Value) -> Result<ProposedAction, String> {
    let Value::Object(mut object) = value else {
        return Err("an action must be an object".into());
    };
    let action_type = match object.remove("action_type").or_else(|| object.remove("type")) {
        Some(Value::String(action_type)) if !action_type.is_empty() => action_type,
        _ => return Err("action_type is missing".into()),
    };
    let mut params = Map::new();
    let nested = match object.remove("params").or_else(|| object.remove("parameters")) {
        Some(Value::Object(nested)) => nested,
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(format!("params must be an object, got {other}")),
    };
    params.extend(object);
    // Nested parameters are what the model meant when it used both.
    params.extend(nested);
    Ok(ProposedAction { action_type, params })
}

/// Every balanced `{…}` span in `text`, in order of its opening brace (strings and escapes
/// respected, so braces inside JSON strings do not count).
fn objects(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < bytes.len() {
            let open = start + bytes[start..].iter().position(|&b| b == b'{')?;
            start = open + 1;
            if let Some(end) = balanced_end(&bytes[open..]) {
                return Some(&text[open..open + end]);
            }
        }
        None
    })
}

/// Length of the balanced object starting at `bytes[0] == b'{'`, if it closes.
fn balanced_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (index, &byte) in bytes.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(index + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(action_type: &str, params: Value) -> ProposedAction {
        ProposedAction {
            action_type: action_type.into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn parses_a_table_of_shapes() {
        let plain = AgentOutput {
            kind: "answer".into(),
            summary: "It is 4.".into(),
            confidence: None,
            proposed_actions: vec![],
        };
        let cases: Vec<(&str, AgentOutput)> = vec![
            (r#"{"type":"answer","summary":"It is 4."}"#, plain.clone()),
            (
                "```json\n{\"type\":\"answer\",\"summary\":\"It is 4.\"}\n```",
                plain.clone(),
            ),
            (
                "Sure! Here is my answer: {\"type\": \"answer\", \"summary\": \"It is 4.\"} Hope it helps {:}",
                plain.clone(),
            ),
            ("Note {not json} then {\"summary\":\"It is 4.\"}", plain.clone()),
            (
                r#"{"type":"analysis","summary":"a {brace} \"quoted\" }","confidence":0.5}"#,
                AgentOutput {
                    kind: "analysis".into(),
                    summary: "a {brace} \"quoted\" }".into(),
                    confidence: Some(0.5),
                    proposed_actions: vec![],
                },
            ),
            (
                r#"{"type":"answer","summary":"s","proposed_actions":[
                    {"action_type":"emit_event","topic":"note.x","payload":{"a":1}},
                    {"action_type":"notify","params":{"title":"t","message":"m"}},
                    {"type":"log","parameters":{"message":"hi"}}]}"#,
                AgentOutput {
                    kind: "answer".into(),
                    summary: "s".into(),
                    confidence: None,
                    proposed_actions: vec![
                        action("emit_event", json!({"topic": "note.x", "payload": {"a": 1}})),
                        action("notify", json!({"title": "t", "message": "m"})),
                        action("log", json!({"message": "hi"})),
                    ],
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_output() {
        for (text, needle) in [
            ("", "empty"),
            ("I think the answer is four.", "no JSON object"),
            (r#"{"type":"answer"}"#, "summary is missing"),
            (r#"{"type":"answer","summary":"x","confidence":7}"#, "confidence"),
            (
                r#"{"summary":"x","proposed_actions":[{"topic":"a"}]}"#,
                "proposed_actions[0]: action_type",
            ),
            (
                r#"{"summary":"x","proposed_actions":"none"}"#,
                "proposed_actions must be an array",
            ),
            (r#"{"type":"answer","summary":"unterminated"#, "no JSON object"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn strict_parsing_wants_exactly_one_object() {
        assert!(parse_strict("  {\"type\":\"a\",\"summary\":\"b\"}\n").is_ok());
        assert!(parse_strict("here: {\"type\":\"a\",\"summary\":\"b\"}").is_err());
        assert!(parse_strict("{\"type\":\"a\",\"summary\":\"b\"} {}").is_err());
    }

    #[test]
    fn schema_limits_action_types() {
        let limited = schema(&["log", "notify"]);
        assert_eq!(
            limited["properties"]["proposed_actions"]["items"]["properties"]["action_type"]["enum"],
            json!(["log", "notify"])
        );
        assert_eq!(limited["required"], json!(["type", "summary"]));
        assert_eq!(schema(&[])["properties"]["proposed_actions"]["maxItems"], 0);
    }
}
