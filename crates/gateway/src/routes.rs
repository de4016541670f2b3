//! The REST face as data: one row per route — HTTP method, path template, the public method it
//! calls, and how its params are built (path captures, typed query parameters, the JSON body).
//! The axum router ([`crate::http`]) and the OpenAPI document ([`crate::openapi`]) are both
//! generated from [`ROUTES`], and every route ends in the same method table as `api.sock`, so a
//! REST call is exactly the socket call with the same params and the same result.

use serde_json::{Map, Value};

/// An HTTP method of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET: reads; params from the path and the query.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
}

impl Verb {
    /// Lower case, as OpenAPI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Delete => "delete",
        }
    }
}

/// The type of a query parameter (query strings are text; the method wants JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// A non-negative integer.
    Int,
}

impl Kind {
    /// The JSON Schema type.
    pub fn schema_type(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Int => "integer",
        }
    }
}

/// One REST route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub verb: Verb,
    /// axum path template: `{name}` captures one segment, `{*name}` the rest of the path.
    pub path: &'static str,
    /// The public method it calls (the socket method of the same name).
    pub method: &'static str,
    /// Query parameters it accepts, with their types.
    pub query: &'static [(&'static str, Kind)],
    /// Whether a JSON object body is read (its fields become params).
    pub body: bool,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
}

const fn route(
    verb: Verb,
    path: &'static str,
    method: &'static str,
    query: &'static [(&'static str, Kind)],
    summary: &'static str,
) -> Route {
    Route {
        verb,
        path,
        method,
        query,
        body: matches!(verb, Verb::Post | Verb::Put),
        summary,
    }
}

use Kind::{Int, Str};
use Verb::{Delete, Get, Post, Put};

const NONE: &[(&str, Kind)] = &[];
const ACTION_FILTERS: &[(&str, Kind)] = &[("status", Str), ("agent_id", Str), ("trace_id", Str), ("limit", Int)];

/// Every REST route. Paths follow the reference AI Event Bus; bodies are SPEC §16's params.
pub static ROUTES: &[Route] = &[
    // Events and topics.
    route(
        Post,
        "/api/v1/events",
        "events.publish",
        NONE,
        "Publish an event; answers once it is committed",
    ),
    route(
        Get,
        "/api/v1/events",
        "events.list",
        &[
            ("topic", Str),
            ("pattern", Str),
            ("status", Str),
            ("trace_id", Str),
            ("after_seq", Int),
            ("limit", Int),
        ],
        "Events in seq order, filtered",
    ),
    route(
        Get,
        "/api/v1/events/trace/{trace_id}",
        "events.trace",
        NONE,
        "Every event of a trace",
    ),
    route(Get, "/api/v1/events/{id}", "events.get", NONE, "One event"),
    route(
        Get,
        "/api/v1/events/{id}/chain",
        "events.chain",
        NONE,
        "An event with its ancestors, root first",
    ),
    route(Get, "/api/v1/topics", "topics.list", NONE, "Topics seen, with counts"),
    // Agents.
    route(Get, "/api/v1/agents", "agents.list", NONE, "Every agent"),
    route(Post, "/api/v1/agents", "agents.create", NONE, "Create an agent"),
    route(
        Get,
        "/api/v1/agents/{id}",
        "agents.get",
        NONE,
        "One agent (by id or name)",
    ),
    route(
        Put,
        "/api/v1/agents/{id}",
        "agents.update",
        NONE,
        "Change an agent's fields",
    ),
    route(Delete, "/api/v1/agents/{id}", "agents.delete", NONE, "Delete an agent"),
    route(
        Post,
        "/api/v1/agents/{id}/enable",
        "agents.enable",
        NONE,
        "Enable an agent",
    ),
    route(
        Post,
        "/api/v1/agents/{id}/disable",
        "agents.disable",
        NONE,
        "Disable an agent",
    ),
    route(
        Get,
        "/api/v1/agents/{id}/memory",
        "agents.memory",
        &[("query", Str), ("limit", Int)],
        "An agent's memories, newest first or searched",
    ),
    // Routing rules.
    route(
        Get,
        "/api/v1/routing-rules",
        "rules.list",
        NONE,
        "Every rule in evaluation order",
    ),
    route(Post, "/api/v1/routing-rules", "rules.create", NONE, "Create a rule"),
    route(Get, "/api/v1/routing-rules/{id}", "rules.get", NONE, "One rule"),
    route(Put, "/api/v1/routing-rules/{id}", "rules.update", NONE, "Change a rule"),
    route(
        Delete,
        "/api/v1/routing-rules/{id}",
        "rules.delete",
        NONE,
        "Delete a rule",
    ),
    // Assignments.
    route(
        Get,
        "/api/v1/assignments",
        "assignments.list",
        &[("status", Str), ("agent_id", Str), ("event_id", Str), ("limit", Int)],
        "Assignments, newest first",
    ),
    route(
        Post,
        "/api/v1/assignments/cancel-pending",
        "assignments.cancel_pending",
        NONE,
        "Cancel pending assignments (of one agent, or all)",
    ),
    // Actions and policy.
    route(
        Get,
        "/api/v1/actions/pending",
        "actions.pending",
        ACTION_FILTERS,
        "Actions waiting for a human",
    ),
    route(
        Get,
        "/api/v1/actions/history",
        "actions.history",
        ACTION_FILTERS,
        "Past and present actions",
    ),
    route(
        Post,
        "/api/v1/actions/deny-pending",
        "actions.deny_pending",
        NONE,
        "Deny every waiting action",
    ),
    route(
        Post,
        "/api/v1/actions/explain",
        "policy.explain",
        NONE,
        "What policy would decide (a dry run)",
    ),
    route(Get, "/api/v1/actions/{id}", "actions.get", NONE, "One action"),
    route(
        Post,
        "/api/v1/actions/{id}/approve",
        "actions.approve",
        NONE,
        "Approve a waiting action",
    ),
    route(
        Post,
        "/api/v1/actions/{id}/deny",
        "actions.deny",
        NONE,
        "Deny a waiting action",
    ),
    // Knowledge.
    route(
        Get,
        "/api/v1/knowledge",
        "knowledge.list",
        &[("prefix", Str), ("limit", Int)],
        "Facts by key prefix",
    ),
    route(
        Post,
        "/api/v1/knowledge",
        "knowledge.set",
        NONE,
        "Store a fact ({key, value})",
    ),
    route(Get, "/api/v1/knowledge/{*key}", "knowledge.get", NONE, "One fact"),
    route(
        Put,
        "/api/v1/knowledge/{*key}",
        "knowledge.set",
        NONE,
        "Store a fact ({value})",
    ),
    route(
        Delete,
        "/api/v1/knowledge/{*key}",
        "knowledge.delete",
        NONE,
        "Delete a fact",
    ),
    // Memories.
    route(
        Get,
        "/api/v1/memories",
        "memory.list",
        &[("scope", Str), ("kind", Str), ("tag", Str), ("limit", Int)],
        "Memories, newest first",
    ),
    route(Post, "/api/v1/memories", "memory.add", NONE, "Add a memory"),
    route(
        Get,
        "/api/v1/memories/search",
        "memory.search",
        &[("query", Str), ("scope", Str), ("limit", Int)],
        "Full-text search",
    ),
    route(Get, "/api/v1/memories/{id}", "memory.get", NONE, "One memory"),
    route(Put, "/api/v1/memories/{id}", "memory.update", NONE, "Change a memory"),
    route(
        Delete,
        "/api/v1/memories/{id}",
        "memory.delete",
        NONE,
        "Delete a memory",
    ),
    // Sessions, human-input requests, inbox.
    route(
        Get,
        "/api/v1/sessions",
        "sessions.list",
        &[("state", Str)],
        "Agent sessions",
    ),
    route(
        Post,
        "/api/v1/sessions",
        "sessions.register",
        NONE,
        "Register an agent session",
    ),
    route(
        Post,
        "/api/v1/sessions/{session_id}/heartbeat",
        "sessions.heartbeat",
        NONE,
        "A session is alive",
    ),
    route(
        Put,
        "/api/v1/sessions/{session_id}/state",
        "sessions.set_state",
        NONE,
        "Set a session's state",
    ),
    route(
        Get,
        "/api/v1/requests",
        "requests.list",
        &[("status", Str), ("session_id", Str), ("limit", Int)],
        "Human-input requests",
    ),
    route(
        Post,
        "/api/v1/requests",
        "requests.create",
        NONE,
        "Ask a human (X-Idempotency-Key honoured)",
    ),
    route(Get, "/api/v1/requests/{id}", "requests.get", NONE, "One request"),
    route(
        Post,
        "/api/v1/requests/{id}/respond",
        "requests.respond",
        NONE,
        "Answer a request (X-Idempotency-Key honoured)",
    ),
    route(
        Post,
        "/api/v1/requests/{id}/dismiss",
        "requests.dismiss",
        NONE,
        "Dismiss a request",
    ),
    route(
        Get,
        "/api/v1/inbox/{session_id}",
        "inbox.poll",
        &[("timeout_ms", Int)],
        "A session's messages; waits up to timeout_ms for one",
    ),
    route(
        Post,
        "/api/v1/inbox/{session_id}/{message_id}/ack",
        "inbox.ack",
        NONE,
        "Acknowledge a message",
    ),
    // The owner's commands.
    route(
        Post,
        "/api/v1/exec",
        "exec.run",
        NONE,
        "Run a command (admin); output follows as exec.* events",
    ),
    route(Get, "/api/v1/exec/{run_id}", "exec.get", NONE, "One process run"),
    route(
        Post,
        "/api/v1/exec/{run_id}/cancel",
        "exec.cancel",
        NONE,
        "Kill a run's process group",
    ),
    // Queries.
    route(
        Post,
        "/api/v1/query",
        "query.ask",
        NONE,
        "Ask the agents; answers with the final response",
    ),
    // Producers and cron.
    route(
        Get,
        "/api/v1/producers",
        "producers.list",
        NONE,
        "Producers and their capabilities",
    ),
    route(
        Post,
        "/api/v1/producers/{name}/enable",
        "producers.enable",
        NONE,
        "Turn a producer on",
    ),
    route(
        Post,
        "/api/v1/producers/{name}/disable",
        "producers.disable",
        NONE,
        "Turn a producer off",
    ),
    route(Get, "/api/v1/cron", "cron.list", NONE, "Cron jobs"),
    route(Post, "/api/v1/cron", "cron.add", NONE, "Add a cron job"),
    route(Delete, "/api/v1/cron/{name}", "cron.remove", NONE, "Remove a cron job"),
    // People, keys, secrets.
    route(Get, "/api/v1/users", "users.list", NONE, "Every user"),
    route(
        Put,
        "/api/v1/users/{user}/role",
        "users.set_role",
        NONE,
        "Change a user's role",
    ),
    route(
        Put,
        "/api/v1/users/{user}/password",
        "users.set_password",
        NONE,
        "Set a user's password",
    ),
    route(
        Delete,
        "/api/v1/users/{user}",
        "users.delete",
        NONE,
        "Delete a user, their keys and sessions",
    ),
    route(
        Get,
        "/api/v1/keys",
        "keys.list",
        &[("user", Str)],
        "API keys (never the keys themselves)",
    ),
    route(
        Delete,
        "/api/v1/keys/{key_id}",
        "keys.revoke",
        NONE,
        "Revoke an API key",
    ),
    route(
        Get,
        "/api/v1/secrets",
        "secrets.list",
        NONE,
        "Names of the stored secrets",
    ),
    route(
        Put,
        "/api/v1/secrets/{*name}",
        "secrets.set",
        NONE,
        "Store a secret ({value})",
    ),
    route(
        Delete,
        "/api/v1/secrets/{*name}",
        "secrets.delete",
        NONE,
        "Delete a secret",
    ),
    // The daemon.
    route(
        Get,
        "/api/v1/system/status",
        "system.status",
        NONE,
        "Services, bus and model providers",
    ),
    route(
        Get,
        "/api/v1/system/services",
        "system.services",
        NONE,
        "The supervised services",
    ),
    route(
        Get,
        "/api/v1/system/version",
        "system.version",
        NONE,
        "Daemon and protocol versions",
    ),
];

/// Routes that may wait long (long polls, queries): their deadline is at least this.
pub const LONG_ROUTE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Whether a route waits on something that may take minutes.
pub fn is_long(method: &str) -> bool {
    matches!(method, "inbox.poll" | "query.ask")
}

/// Methods whose params take `idempotency_key`, which the `X-Idempotency-Key` header fills.
pub fn takes_idempotency_key(method: &str) -> bool {
    matches!(method, "requests.create" | "requests.respond" | "requests.dismiss")
}

/// Why params could not be built; the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub String);

/// Builds a method's params: the body's fields, then path captures and query parameters (which
/// must not contradict the body). `body` is the raw request body (empty for none).
pub fn build_params(
    route: &Route,
    captures: &[(String, String)],
    query: &[(String, String)],
    body: &[u8],
    idempotency_key: Option<&str>,
) -> Result<Map<String, Value>, ParamError> {
    let mut params = if route.body && !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(ParamError("body: must be a JSON object".into())),
            Err(error) => return Err(ParamError(format!("body: invalid JSON: {error}"))),
        }
    } else {
        Map::new()
    };
    for (name, value) in captures {
        insert(&mut params, name, Value::String(value.clone()), "path")?;
    }
    for (name, text) in query {
        let Some((_, kind)) = route.query.iter().find(|(allowed, _)| allowed == name) else {
            let known: Vec<&str> = route.query.iter().map(|(name, _)| *name).collect();
            return Err(ParamError(if known.is_empty() {
                format!("query parameter {name:?}: this route takes none")
            } else {
                format!("query parameter {name:?} is unknown; known: {}", known.join(", "))
            }));
        };
        let value = match kind {
            Kind::Str => Value::String(text.clone()),
            Kind::Int => text
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| ParamError(format!("query parameter {name:?}: expected a non-negative integer")))?,
        };
        insert(&mut params, name, value, "query")?;
    }
    if let Some(key) = idempotency_key
        && takes_idempotency_key(route.method)
    {
        insert(
            &mut params,
            "idempotency_key",
            Value::String(key.to_owned()),
            "X-Idempotency-Key",
        )?;
    }
    Ok(params)
}

fn insert(params: &mut Map<String, Value>, name: &str, value: Value, from: &str) -> Result<(), ParamError> {
    match params.get(name) {
        Some(existing) if *existing != value => Err(ParamError(format!(
            "{name}: the body says {existing} but the {from} says {value}"
        ))),
        _ => {
            params.insert(name.to_owned(), value);
            Ok(())
        }
    }
}

/// The parameter names captured by a path template, in order.
pub fn captures(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| name.trim_start_matches('*'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn find(method: &str) -> &'static Route {
        ROUTES.iter().find(|route| route.method == method).unwrap()
    }

    #[test]
    fn every_route_is_unique_and_calls_a_public_method() {
        let mut seen = HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.verb, route.path)),
                "{:?} {} twice",
                route.verb,
                route.path
            );
            assert!(route.path.starts_with("/api/v1/"), "{}", route.path);
            assert!(
                crate::roles::required_role(route.method).is_some(),
                "{} is not callable remotely",
                route.method
            );
        }
    }

    #[test]
    fn params_come_from_body_path_and_typed_query() {
        let route = find("events.list");
        let params = build_params(
            route,
            &[],
            &[("after_seq".into(), "5".into()), ("pattern".into(), "a.*".into())],
            b"",
            None,
        )
        .unwrap();
        assert_eq!(
            Value::Object(params),
            serde_json::json!({"after_seq": 5, "pattern": "a.*"})
        );

        let error = build_params(route, &[], &[("after_seq".into(), "x".into())], b"", None).unwrap_err();
        assert!(error.0.contains("after_seq"), "{}", error.0);
        let error = build_params(route, &[], &[("bogus".into(), "1".into())], b"", None).unwrap_err();
        assert!(error.0.contains("bogus"), "{}", error.0);

        let route = find("actions.deny");
        let params = build_params(
            route,
            &[("id".into(), "act_1".into())],
            &[],
            br#"{"reason":"no"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            Value::Object(params),
            serde_json::json!({"id": "act_1", "reason": "no"})
        );
        let error = build_params(route, &[("id".into(), "act_1".into())], &[], br#"{"id":"act_2"}"#, None).unwrap_err();
        assert!(error.0.starts_with("id:"), "{}", error.0);
        let error = build_params(route, &[], &[], b"[1]", None).unwrap_err();
        assert!(error.0.starts_with("body:"), "{}", error.0);
        let error = build_params(route, &[], &[], b"{", None).unwrap_err();
        assert!(error.0.starts_with("body:"), "{}", error.0);

        let route = find("requests.respond");
        let params = build_params(route, &[("id".into(), "req_1".into())], &[], b"{}", Some("k1")).unwrap();
        assert_eq!(params["idempotency_key"], "k1");
    }

    #[test]
    fn the_protocol_doc_lists_every_route() {
        let doc = include_str!("../../../docs/protocol.md");
        for route in ROUTES {
            let row = format!(
                "| `{} {}` | `{}` |",
                route.verb.as_str().to_uppercase(),
                route.path,
                route.method
            );
            assert!(doc.contains(&row), "docs/protocol.md lacks {row}");
        }
    }

    #[test]
    fn captures_name_params() {
        assert_eq!(captures("/api/v1/knowledge/{*key}"), ["key"]);
        assert_eq!(
            captures("/api/v1/inbox/{session_id}/{message_id}/ack"),
            ["session_id", "message_id"]
        );
    }
}
