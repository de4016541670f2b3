//! The gateway's HTTP face against the real daemon (SPEC §12): every REST route's success and
//! error statuses, authentication and roles, Host and Origin checks, the body limit, login with
//! its rate limit, the webhook, `/metrics`, the OpenAPI document, the dashboard's one-time link,
//! approvals over HTTP, and TLS.

use aiventbus_proto::agents::{AgentKind, AgentSpec, AgentsCreate, RuleSpec, RulesCreate};
use aiventbus_proto::auth::{DashboardLink, Role, SecretSetParams, SecretsSet};
use aiventbus_proto::methods::NoParams;
use aiventbus_testkit::Daemon;
use aiventbus_testkit::model::{ModelServer, Reply};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{self, REPLY_DEADLINE};

/// An HTTP client for one daemon.
struct Http {
    base: String,
    client: reqwest::Client,
}

/// One answer: status, JSON body (`Null` when not JSON), headers.
struct Answer {
    status: StatusCode,
    body: Value,
    headers: HeaderMap,
    text: String,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    // reqwest is built without a default TLS provider: the process picks ring, like the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REPLY_DEADLINE)
}

impl Http {
    fn new(daemon: &Daemon) -> Http {
        Http {
            base: daemon.http_base(),
            client: client_builder().build().expect("http client"),
        }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("HTTP request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            headers,
            text,
        }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
}

/// Asserts an error answer: its status and `{"error": {"code", "message"}}`.
fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status.as_u16(), status, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], code, "{answer:?}");
    assert!(
        answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
}

async fn key(daemon: &Daemon, user: &str, role: Role) -> String {
    daemon.create_api_key(user, role).await.expect("keys.create").key
}

// ---------------------------------------------------------------- every route

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_answer_with_the_socket_results_and_proper_errors() {
    let daemon = support::start().await;
    let http = Http::new(&daemon);
    let admin = key(&daemon, "root-admin", Role::Admin).await;
    let admin = admin.as_str();

    // Events: publish, get, list, chain, trace, topics.
    let published = http
        .post(
            "/api/v1/events",
            admin,
            json!({"topic": "demo.created", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(published.status, 200, "{published:?}");
    let id = published.body["id"].as_str().unwrap().to_owned();
    let trace = published.body["trace_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("evt_") && trace.starts_with("tr_"), "{published:?}");
    assert_eq!(published.body["status"], "published");
    let child = http
        .post(
            "/api/v1/events",
            admin,
            json!({"topic": "demo.followed", "parent_event": id, "payload": {}}),
        )
        .await;
    assert_eq!(child.status, 200, "{child:?}");
    let child_id = child.body["id"].as_str().unwrap().to_owned();
    let event = http.get(&format!("/api/v1/events/{id}"), admin).await;
    assert_eq!(event.status, 200);
    assert_eq!(event.body["id"], id.as_str(), "the event itself, not a wrapper");
    assert_eq!(event.body["source"], "user:root-admin", "{event:?}");
    assert_eq!(event.body["payload"], json!({"n": 1}));
    let listed = http.get("/api/v1/events?pattern=demo.*&limit=10", admin).await;
    let topics: Vec<&str> = listed.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["demo.created", "demo.followed"], "{listed:?}");
    let after = http
        .get(
            &format!("/api/v1/events?topic=demo.created&after_seq={}", published.body["seq"]),
            admin,
        )
        .await;
    assert_eq!(after.body["events"], json!([]), "{after:?}");
    let chain = http.get(&format!("/api/v1/events/{child_id}/chain"), admin).await;
    assert_eq!(chain.body["events"].as_array().unwrap().len(), 2, "{chain:?}");
    let traced = http.get(&format!("/api/v1/events/trace/{trace}"), admin).await;
    assert!(traced.body["events"].as_array().unwrap().len() >= 2, "{traced:?}");
    let topics = http.get("/api/v1/topics", admin).await;
    assert!(
        topics.body["topics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["topic"] == "demo.created"),
        "{topics:?}"
    );
    // Event errors: 404, 400 naming the field, reserved namespace, bad JSON, bad query.
    assert_error(
        &http.get("/api/v1/events/evt_01NOSUCHEVENT0000000000000", admin).await,
        404,
        "not_found",
    );
    let bad = http.post("/api/v1/events", admin, json!({"topic": "Bad Topic"})).await;
    assert_error(&bad, 400, "invalid_params");
    assert!(
        bad.body["error"]["message"].as_str().unwrap().contains("topic"),
        "{bad:?}"
    );
    let bad = http.post("/api/v1/events", admin, json!({"payload": {}})).await;
    assert!(
        bad.body["error"]["message"].as_str().unwrap().contains("topic"),
        "{bad:?}"
    );
    assert_error(
        &http
            .post("/api/v1/events", admin, json!({"topic": "system.fake"}))
            .await,
        400,
        "invalid_params",
    );
    let not_json = http
        .send(http.request(Method::POST, "/api/v1/events", Some(admin)).body("{nope"))
        .await;
    assert_error(&not_json, 400, "invalid_params");
    let array = http
        .send(http.request(Method::POST, "/api/v1/events", Some(admin)).body("[1]"))
        .await;
    assert_error(&array, 400, "invalid_params");
    let bad_query = http.get("/api/v1/events?limit=many", admin).await;
    assert_error(&bad_query, 400, "invalid_params");
    assert!(bad_query.text.contains("limit"), "{bad_query:?}");
    assert_error(
        &http.get("/api/v1/events?colour=red", admin).await,
        400,
        "invalid_params",
    );

    // Agents and rules: CRUD, enable/disable, memory, duplicate name → 409.
    let agent = http
        .post(
            "/api/v1/agents",
            admin,
            json!({"name": "helper", "kind": "command", "command": ["cat"]}),
        )
        .await;
    assert_eq!(agent.status, 200, "{agent:?}");
    let agent_id = agent.body["id"].as_str().unwrap().to_owned();
    assert_error(
        &http
            .post(
                "/api/v1/agents",
                admin,
                json!({"name": "helper", "kind": "command", "command": ["cat"]}),
            )
            .await,
        409,
        "conflict",
    );
    assert_error(
        &http
            .post(
                "/api/v1/agents",
                admin,
                json!({"name": "x", "kind": "llm", "provider": "nope", "model": "m"}),
            )
            .await,
        400,
        "invalid_params",
    );
    assert_eq!(
        http.get(&format!("/api/v1/agents/{agent_id}"), admin).await.body["name"],
        "helper"
    );
    let updated = http
        .call(
            Method::PUT,
            &format!("/api/v1/agents/{agent_id}"),
            Some(admin),
            Some(json!({"description": "echoes"})),
        )
        .await;
    assert_eq!(updated.body["description"], "echoes", "{updated:?}");
    let disabled = http
        .post(&format!("/api/v1/agents/{agent_id}/disable"), admin, json!({}))
        .await;
    assert_eq!(disabled.body["enabled"], false, "{disabled:?}");
    let enabled = http
        .post(&format!("/api/v1/agents/{agent_id}/enable"), admin, json!({}))
        .await;
    assert_eq!(enabled.body["enabled"], true, "{enabled:?}");
    let memory = http
        .get(&format!("/api/v1/agents/{agent_id}/memory?limit=5"), admin)
        .await;
    assert!(memory.body["memories"].is_array(), "{memory:?}");
    let agents = http.get("/api/v1/agents", admin).await;
    assert_eq!(agents.body["agents"].as_array().unwrap().len(), 1, "{agents:?}");
    assert_error(&http.get("/api/v1/agents/agt_nosuch", admin).await, 404, "not_found");

    let rule = http
        .post(
            "/api/v1/routing-rules",
            admin,
            json!({"name": "r1", "topic_pattern": "demo.**", "agent_id": agent_id}),
        )
        .await;
    assert_eq!(rule.status, 200, "{rule:?}");
    let rule_id = rule.body["id"].as_str().unwrap().to_owned();
    let rule_path = format!("/api/v1/routing-rules/{rule_id}");
    assert_eq!(http.get(&rule_path, admin).await.body["topic_pattern"], "demo.**");
    let changed = http
        .call(Method::PUT, &rule_path, Some(admin), Some(json!({"enabled": false})))
        .await;
    assert_eq!(changed.body["enabled"], false, "{changed:?}");
    assert_eq!(
        http.get("/api/v1/routing-rules", admin).await.body["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_error(
        &http.post("/api/v1/routing-rules", admin, json!({"name": "r2"})).await,
        400,
        "invalid_params",
    );
    let deleted = http.call(Method::DELETE, &rule_path, Some(admin), None).await;
    assert_eq!(deleted.body["deleted"], true, "{deleted:?}");
    assert_error(&http.get(&rule_path, admin).await, 404, "not_found");

    // Assignments.
    let assignments = http.get("/api/v1/assignments?limit=5", admin).await;
    assert!(assignments.body["assignments"].is_array(), "{assignments:?}");
    let cancelled = http.post("/api/v1/assignments/cancel-pending", admin, json!({})).await;
    assert!(cancelled.body["cancelled"].is_u64(), "{cancelled:?}");
    let deleted = http
        .call(Method::DELETE, &format!("/api/v1/agents/{agent_id}"), Some(admin), None)
        .await;
    assert_eq!(deleted.body["deleted"], true, "{deleted:?}");

    // Knowledge: keys with dots and slashes in the path.
    let set = http
        .call(
            Method::PUT,
            "/api/v1/knowledge/user.pref/editor",
            Some(admin),
            Some(json!({"value": "vim"})),
        )
        .await;
    assert_eq!(set.body["key"], "user.pref/editor", "{set:?}");
    assert_eq!(set.body["source"], "user:root-admin", "{set:?}");
    let set = http
        .post(
            "/api/v1/knowledge",
            admin,
            json!({"key": "user.pref.shell", "value": "zsh"}),
        )
        .await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(
        http.get("/api/v1/knowledge/user.pref/editor", admin).await.body["value"],
        "vim"
    );
    let facts = http.get("/api/v1/knowledge?prefix=user.pref", admin).await;
    assert_eq!(facts.body["facts"].as_array().unwrap().len(), 2, "{facts:?}");
    let mismatch = http
        .call(
            Method::PUT,
            "/api/v1/knowledge/a.b",
            Some(admin),
            Some(json!({"key": "c.d", "value": 1})),
        )
        .await;
    assert_error(&mismatch, 400, "invalid_params");
    let gone = http
        .call(Method::DELETE, "/api/v1/knowledge/user.pref/editor", Some(admin), None)
        .await;
    assert_eq!(gone.body["deleted"], true);
    assert_error(
        &http.get("/api/v1/knowledge/user.pref/editor", admin).await,
        404,
        "not_found",
    );

    // Memories.
    let added = http
        .post(
            "/api/v1/memories",
            admin,
            json!({"kind": "semantic", "scope": "global", "content": "the printer is on floor three"}),
        )
        .await;
    let memory_id = added.body["id"].as_str().unwrap().to_owned();
    assert!(memory_id.starts_with("mem_"), "{added:?}");
    let found = http.get("/api/v1/memories/search?query=printer", admin).await;
    assert_eq!(found.body["memories"][0]["id"], memory_id.as_str(), "{found:?}");
    let changed = http
        .call(
            Method::PUT,
            &format!("/api/v1/memories/{memory_id}"),
            Some(admin),
            Some(json!({"importance": 0.9})),
        )
        .await;
    assert_eq!(changed.body["importance"], 0.9, "{changed:?}");
    assert_eq!(
        http.get(&format!("/api/v1/memories/{memory_id}"), admin).await.status,
        200
    );
    assert_eq!(
        http.get("/api/v1/memories?scope=global", admin).await.body["memories"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_error(
        &http
            .post(
                "/api/v1/memories",
                admin,
                json!({"kind": "dream", "scope": "g", "content": "x"}),
            )
            .await,
        400,
        "invalid_params",
    );
    let gone = http
        .call(
            Method::DELETE,
            &format!("/api/v1/memories/{memory_id}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(gone.body["deleted"], true);

    // The daemon.
    let status = http.get("/api/v1/system/status", admin).await;
    assert!(
        status.body["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "gateway"),
        "{status:?}"
    );
    let services = http.get("/api/v1/system/services", admin).await;
    assert!(services.body["services"].is_array(), "{services:?}");
    let version = http.get("/api/v1/system/version", admin).await;
    assert!(version.body["protocol"].is_u64(), "{version:?}");

    // Actions, sessions, requests, inbox (policy).
    let pending = http.get("/api/v1/actions/pending", admin).await;
    assert_eq!(pending.body["actions"], json!([]), "{pending:?}");
    assert!(http.get("/api/v1/actions/history?limit=5", admin).await.body["actions"].is_array());
    assert_error(&http.get("/api/v1/actions/act_nosuch", admin).await, 404, "not_found");
    assert_error(
        &http.post("/api/v1/actions/act_nosuch/approve", admin, json!({})).await,
        404,
        "not_found",
    );
    assert_error(
        &http.get("/api/v1/actions/pending?status=sideways", admin).await,
        400,
        "invalid_params",
    );
    let denied = http
        .post("/api/v1/actions/deny-pending", admin, json!({"reason": "tidy"}))
        .await;
    assert_eq!(denied.body["denied"], 0, "{denied:?}");
    let explained = http
        .post(
            "/api/v1/actions/explain",
            admin,
            json!({"action": {"action_type": "shell_exec", "command": "rm -rf /"}}),
        )
        .await;
    assert_eq!(explained.body["decision"], "deny", "{explained:?}");

    let session = http
        .post("/api/v1/sessions", admin, json!({"display_name": "builder"}))
        .await;
    let session_id = session.body["session_id"].as_str().unwrap().to_owned();
    let beat = http
        .post(&format!("/api/v1/sessions/{session_id}/heartbeat"), admin, json!({}))
        .await;
    assert_eq!(beat.body["session_id"], session_id.as_str(), "{beat:?}");
    let state = http
        .call(
            Method::PUT,
            &format!("/api/v1/sessions/{session_id}/state"),
            Some(admin),
            Some(json!({"state": "working"})),
        )
        .await;
    assert_eq!(state.body["state"], "working", "{state:?}");
    let created = http
        .send(
            http.request(Method::POST, "/api/v1/requests", Some(admin))
                .header("X-Idempotency-Key", "create-1")
                .json(&json!({"session_id": session_id, "title": "Deploy?", "question": "Ship it?"})),
        )
        .await;
    let request_id = created.body["request_id"].as_str().unwrap().to_owned();
    let again = http
        .send(
            http.request(Method::POST, "/api/v1/requests", Some(admin))
                .header("X-Idempotency-Key", "create-1")
                .json(&json!({"session_id": session_id, "title": "Deploy?", "question": "Ship it?"})),
        )
        .await;
    assert_eq!(
        again.body["request_id"],
        request_id.as_str(),
        "the same key is the same request"
    );
    let other = http
        .send(
            http.request(Method::POST, "/api/v1/requests", Some(admin))
                .header("X-Idempotency-Key", "create-1")
                .json(&json!({"session_id": session_id, "title": "Other", "question": "?"})),
        )
        .await;
    assert_error(&other, 409, "conflict");
    assert_eq!(
        http.get(&format!("/api/v1/requests/{request_id}"), admin).await.body["status"],
        "pending"
    );
    let listed = http.get("/api/v1/requests?status=pending", admin).await;
    assert_eq!(listed.body["requests"].as_array().unwrap().len(), 1, "{listed:?}");
    let answered = http
        .post(
            &format!("/api/v1/requests/{request_id}/respond"),
            admin,
            json!({"response_text": "yes"}),
        )
        .await;
    assert_eq!(answered.body["status"], "answered", "{answered:?}");
    assert_eq!(answered.body["decided_by"], "user:root-admin", "{answered:?}");
    assert_error(
        &http
            .post(&format!("/api/v1/requests/{request_id}/dismiss"), admin, json!({}))
            .await,
        409,
        "conflict",
    );
    let inbox = http
        .get(&format!("/api/v1/inbox/{session_id}?timeout_ms=0"), admin)
        .await;
    let message = &inbox.body["messages"][0];
    assert_eq!(message["type"], "input_response", "{inbox:?}");
    let message_id = message["message_id"].as_str().unwrap().to_owned();
    let acked = http
        .post(
            &format!("/api/v1/inbox/{session_id}/{message_id}/ack"),
            admin,
            json!({}),
        )
        .await;
    assert_eq!(acked.body["acked"], true, "{acked:?}");
    let sessions = http.get("/api/v1/sessions", admin).await;
    assert_eq!(
        sessions.body["sessions"][0]["session_id"],
        session_id.as_str(),
        "{sessions:?}"
    );

    // The owner's commands (admin over HTTP).
    let run = http.post("/api/v1/exec", admin, json!({"argv": ["true"]})).await;
    assert_eq!(run.status, 200, "{run:?}");
    let run_id = run.body["run_id"].as_str().unwrap().to_owned();
    assert!(http.get(&format!("/api/v1/exec/{run_id}"), admin).await.body["argv"].is_array());
    let cancelled = http
        .post(&format!("/api/v1/exec/{run_id}/cancel"), admin, json!({}))
        .await;
    assert!(cancelled.body["cancelled"].is_boolean(), "{cancelled:?}");
    assert_error(&http.get("/api/v1/exec/run_nosuch", admin).await, 404, "not_found");

    // Query: without a rule for user.query, 404 at once.
    assert_error(
        &http.post("/api/v1/query", admin, json!({"text": "hi"})).await,
        404,
        "not_found",
    );

    // Producers and cron: the routes exist, the service does not run yet.
    assert_error(&http.get("/api/v1/producers", admin).await, 503, "unavailable");
    assert_error(
        &http.post("/api/v1/producers/clipboard/enable", admin, json!({})).await,
        503,
        "unavailable",
    );
    assert_error(
        &http.post("/api/v1/producers/clipboard/disable", admin, json!({})).await,
        503,
        "unavailable",
    );
    assert_error(&http.get("/api/v1/cron", admin).await, 503, "unavailable");
    assert_error(
        &http.post("/api/v1/cron", admin, json!({"name": "x"})).await,
        503,
        "unavailable",
    );
    assert_error(
        &http.call(Method::DELETE, "/api/v1/cron/x", Some(admin), None).await,
        503,
        "unavailable",
    );

    // Users, keys, secrets.
    let viewer = daemon.create_api_key("vic", Role::Viewer).await.unwrap();
    let users = http.get("/api/v1/users", admin).await;
    assert!(
        users.body["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "vic"),
        "{users:?}"
    );
    let promoted = http
        .call(
            Method::PUT,
            "/api/v1/users/vic/role",
            Some(admin),
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(promoted.body["role"], "operator", "{promoted:?}");
    let short = http
        .call(
            Method::PUT,
            "/api/v1/users/vic/password",
            Some(admin),
            Some(json!({"password": "short"})),
        )
        .await;
    assert_error(&short, 400, "invalid_params");
    assert!(short.text.contains("password"), "{short:?}");
    let password = http
        .call(
            Method::PUT,
            "/api/v1/users/vic/password",
            Some(admin),
            Some(json!({"password": "a long enough passphrase"})),
        )
        .await;
    assert_eq!(password.body["has_password"], true, "{password:?}");
    assert_error(
        &http
            .call(
                Method::PUT,
                "/api/v1/users/nobody/role",
                Some(admin),
                Some(json!({"role": "admin"})),
            )
            .await,
        404,
        "not_found",
    );
    let keys = http.get("/api/v1/keys?user=vic", admin).await;
    assert_eq!(keys.body["keys"][0]["key_id"], viewer.key_id.as_str(), "{keys:?}");
    assert!(!keys.text.contains(&viewer.key), "keys are never shown again");
    let secret = http
        .call(
            Method::PUT,
            "/api/v1/secrets/provider:openai",
            Some(admin),
            Some(json!({"value": "sk-very-secret"})),
        )
        .await;
    assert_eq!(secret.body["name"], "provider:openai", "{secret:?}");
    let secrets = http.get("/api/v1/secrets", admin).await;
    assert_eq!(secrets.body["secrets"][0]["name"], "provider:openai", "{secrets:?}");
    assert!(!secrets.text.contains("sk-very-secret"), "values are never returned");
    let gone = http
        .call(Method::DELETE, "/api/v1/secrets/provider:openai", Some(admin), None)
        .await;
    assert_eq!(gone.body["deleted"], true, "{gone:?}");
    let revoked = http
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{}", viewer.key_id),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(revoked.body["revoked"], true, "{revoked:?}");
    assert_error(&http.get("/api/v1/events", &viewer.key).await, 401, "unauthorized");
    let deleted = http.call(Method::DELETE, "/api/v1/users/vic", Some(admin), None).await;
    assert_eq!(deleted.body["deleted"], true, "{deleted:?}");

    // Unknown routes and methods.
    assert_error(&http.get("/api/v1/nothing-here", admin).await, 404, "not_found");
    let wrong_method = http.call(Method::PATCH, "/api/v1/events", Some(admin), None).await;
    assert_eq!(wrong_method.status, 405, "{wrong_method:?}");
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- authentication and roles

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_needs_a_token_and_roles_apply() {
    let daemon = support::start().await;
    let http = Http::new(&daemon);
    let viewer = key(&daemon, "vera", Role::Viewer).await;
    let operator = key(&daemon, "otto", Role::Operator).await;

    // No token, a made-up token, a malformed header.
    let none = http.call(Method::GET, "/api/v1/events", None, None).await;
    assert_error(&none, 401, "unauthorized");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert_error(&http.get("/api/v1/events", "aib_made-up").await, 401, "unauthorized");
    let basic = http
        .send(
            http.request(Method::GET, "/api/v1/events", None)
                .header("Authorization", "Basic dXNlcjpwYXNz"),
        )
        .await;
    assert_error(&basic, 401, "unauthorized");
    assert_error(
        &http.call(Method::GET, "/metrics", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &http.call(Method::GET, "/api/v1/openapi.json", None, None).await,
        401,
        "unauthorized",
    );
    assert_error(
        &http
            .call(Method::POST, "/api/v1/webhook/ci", None, Some(json!({})))
            .await,
        401,
        "unauthorized",
    );
    // /healthz needs none.
    let health = http.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((health.status.as_u16(), &health.body), (200, &json!({"status": "ok"})));

    // Viewers read; publishing, approving and configuring are refused with 403.
    assert_eq!(http.get("/api/v1/events", &viewer).await.status, 200);
    assert_error(
        &http.post("/api/v1/events", &viewer, json!({"topic": "a.b"})).await,
        403,
        "forbidden",
    );
    let approve = http
        .post("/api/v1/actions/act_whatever/approve", &viewer, json!({}))
        .await;
    assert_error(&approve, 403, "forbidden");
    assert!(approve.text.contains("operator"), "{approve:?}");
    assert_error(
        &http.post("/api/v1/actions/deny-pending", &viewer, json!({})).await,
        403,
        "forbidden",
    );
    // Operators publish and decide, but do not configure agents, users or commands.
    assert_eq!(
        http.post("/api/v1/events", &operator, json!({"topic": "a.b"}))
            .await
            .status,
        200
    );
    assert_error(
        &http
            .post("/api/v1/actions/act_whatever/approve", &operator, json!({}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &http
            .post(
                "/api/v1/agents",
                &operator,
                json!({"name": "x", "kind": "command", "command": ["cat"]}),
            )
            .await,
        403,
        "forbidden",
    );
    assert_error(&http.get("/api/v1/users", &operator).await, 403, "forbidden");
    assert_error(
        &http.post("/api/v1/exec", &operator, json!({"argv": ["true"]})).await,
        403,
        "forbidden",
    );

    // The OpenAPI document lists every route.
    let document = http.get("/api/v1/openapi.json", &viewer).await;
    assert_eq!(document.body["openapi"], "3.1.0");
    let paths = document.body["paths"].as_object().unwrap();
    for (path, verb) in [
        ("/api/v1/events", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/events/{id}", "get"),
        ("/api/v1/events/{id}/chain", "get"),
        ("/api/v1/events/trace/{trace_id}", "get"),
        ("/api/v1/topics", "get"),
        ("/api/v1/agents", "post"),
        ("/api/v1/agents/{id}", "put"),
        ("/api/v1/agents/{id}/enable", "post"),
        ("/api/v1/agents/{id}/disable", "post"),
        ("/api/v1/agents/{id}/memory", "get"),
        ("/api/v1/routing-rules", "get"),
        ("/api/v1/routing-rules/{id}", "delete"),
        ("/api/v1/actions/pending", "get"),
        ("/api/v1/actions/history", "get"),
        ("/api/v1/actions/{id}/approve", "post"),
        ("/api/v1/actions/{id}/deny", "post"),
        ("/api/v1/actions/deny-pending", "post"),
        ("/api/v1/assignments/cancel-pending", "post"),
        ("/api/v1/knowledge/{key}", "get"),
        ("/api/v1/memories", "post"),
        ("/api/v1/producers", "get"),
        ("/api/v1/cron", "get"),
        ("/api/v1/webhook/{path}", "post"),
        ("/api/v1/system/status", "get"),
        ("/api/v1/sessions", "post"),
        ("/api/v1/requests/{id}/respond", "post"),
        ("/api/v1/inbox/{session_id}", "get"),
        ("/metrics", "get"),
        ("/healthz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|item| item.get(verb)).is_some(),
            "{verb} {path} missing"
        );
    }
    let operations: usize = paths.values().map(|item| item.as_object().unwrap().len()).sum();
    assert!(operations >= 70, "{operations} operations");
    // Every documented GET without captures answers (no route is documented but missing).
    for (path, item) in paths {
        if item.get("get").is_some() && !path.contains('{') && path != "/api/v1/openapi.json" {
            let answer = http.get(path, &viewer).await;
            assert_ne!(answer.status, 404, "GET {path}: {answer:?}");
        }
    }
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- Host, Origin, limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_origin_and_body_limit_are_enforced() {
    let daemon = support::start_with_config("[gateway]\nmax_body = \"4KiB\"\n").await;
    let http = Http::new(&daemon);
    let operator = key(&daemon, "olga", Role::Operator).await;
    let port = http.base.rsplit(':').next().unwrap().to_owned();

    // DNS rebinding: a foreign Host is refused before anything runs.
    let rebound = http
        .send(
            http.request(Method::GET, "/api/v1/events", Some(&operator))
                .header("Host", format!("evil.example:{port}")),
        )
        .await;
    assert_error(&rebound, 421, "invalid_params");
    let no_port = http
        .send(http.request(Method::GET, "/healthz", None).header("Host", "localhost"))
        .await;
    assert_eq!(no_port.status, 421, "{no_port:?}");
    let by_name = http
        .send(
            http.request(Method::GET, "/healthz", None)
                .header("Host", format!("localhost:{port}")),
        )
        .await;
    assert_eq!(by_name.status, 200, "{by_name:?}");

    // Cross-site state changes are refused; same-origin and Origin-less ones pass.
    let publish = |origin: Option<String>| {
        let mut request = http
            .request(Method::POST, "/api/v1/events", Some(&operator))
            .json(&json!({"topic": "origin.test"}));
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request
    };
    let cross = http.send(publish(Some("https://evil.example".into()))).await;
    assert_error(&cross, 403, "forbidden");
    assert_error(&http.send(publish(Some("null".into()))).await, 403, "forbidden");
    assert_eq!(
        http.send(publish(Some(format!("http://127.0.0.1:{port}"))))
            .await
            .status,
        200
    );
    assert_eq!(
        http.send(publish(Some(format!("http://localhost:{port}"))))
            .await
            .status,
        200
    );
    assert_eq!(http.send(publish(None)).await.status, 200);
    let stored = http.get("/api/v1/events?topic=origin.test", &operator).await;
    assert_eq!(
        stored.body["events"].as_array().unwrap().len(),
        3,
        "the refused ones never ran"
    );
    // A cross-site read is answered (it changes nothing) but without any CORS header.
    let read = http
        .send(
            http.request(Method::GET, "/api/v1/topics", Some(&operator))
                .header("Origin", "https://evil.example"),
        )
        .await;
    assert_eq!(read.status, 200);
    assert!(
        !read
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{:?}",
        read.headers
    );
    // Security headers on every response, errors included.
    for answer in [&read, &cross, &rebound] {
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer");
        assert_eq!(answer.headers["x-frame-options"], "DENY");
    }

    // A body over gateway.max_body → 413, and the gateway keeps serving.
    let big = "x".repeat(8 * 1024);
    let too_large = http
        .post(
            "/api/v1/events",
            &operator,
            json!({"topic": "big.one", "payload": {"blob": big}}),
        )
        .await;
    assert_error(&too_large, 413, "too_large");
    let small = http
        .post(
            "/api/v1/events",
            &operator,
            json!({"topic": "big.one", "payload": {"blob": "ok"}}),
        )
        .await;
    assert_eq!(small.status, 200, "{small:?}");
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atp_login_fails_alike_and_brute_force_is_rate_limited() {
    let daemon = support::start().await;
    let http = Http::new(&daemon);
    let alice = daemon.create_api_key("alice", Role::Operator).await.unwrap();
    let login = |identity: &str, credential: &str| {
        http.request(Method::POST, "/atp/auth/login", None)
            .json(&json!({"identity": identity, "credential": credential}))
    };

    let ok = http.send(login("alice", &alice.key)).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let token = ok.body["token"].as_str().unwrap().to_owned();
    assert!(ok.body["session_id"].as_str().unwrap().starts_with("atp_"), "{ok:?}");
    assert!(ok.body["expires_at"].as_str().unwrap().ends_with('Z'), "{ok:?}");
    // The session token works as a bearer token on REST too.
    assert_eq!(
        http.post("/api/v1/events", &token, json!({"topic": "login.ok"}))
            .await
            .status,
        200
    );

    // Unknown user and wrong key: the same status and the same body.
    let unknown = http.send(login("mallory", &alice.key)).await;
    let wrong = http.send(login("alice", "aib_not-the-key")).await;
    assert_error(&unknown, 401, "unauthorized");
    assert_eq!((unknown.status, &unknown.text), (wrong.status, &wrong.text));
    let malformed = http
        .send(
            http.request(Method::POST, "/atp/auth/login", None)
                .json(&json!({"user": "alice"})),
        )
        .await;
    assert_error(&malformed, 400, "invalid_params");

    // Three more failures make five from this address: the next attempt is refused, even with
    // the right key, until the window passes.
    for _ in 0..3 {
        assert_eq!(http.send(login("alice", "wrong password here")).await.status, 401);
    }
    let limited = http.send(login("alice", &alice.key)).await;
    assert_error(&limited, 429, "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The limit is on logins only: the issued token keeps working.
    assert_eq!(http.get("/api/v1/topics", &token).await.status, 200);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_log_in_and_the_dashboard_link_works_once() {
    let daemon = support::start().await;
    let http = Http::new(&daemon);
    let admin = key(&daemon, "ada", Role::Admin).await;
    let set = http
        .call(
            Method::PUT,
            "/api/v1/users/ada/password",
            Some(&admin),
            Some(json!({"password": "correct horse battery staple"})),
        )
        .await;
    assert_eq!(set.status, 200, "{set:?}");
    let login = http
        .send(
            http.request(Method::POST, "/atp/auth/login", None)
                .json(&json!({"identity": "ada", "credential": "correct horse battery staple"})),
        )
        .await;
    assert_eq!(login.status, 200, "{login:?}");

    // The one-time link from api.sock sets an HttpOnly SameSite=Strict cookie and redirects.
    let client = daemon.client().await.unwrap();
    let link = client.call::<DashboardLink>(&NoParams {}).await.unwrap();
    assert!(
        link.url.starts_with(&format!("{}/login?code=", http.base)),
        "{}",
        link.url
    );
    let first = http.send(http.client.get(&link.url)).await;
    assert_eq!(first.status, 303, "{first:?}");
    assert_eq!(first.headers["location"], "/");
    let cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    for part in ["aiventbus_session=ads_", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "no Secure flag without TLS: {cookie}");
    let second = http.send(http.client.get(&link.url)).await;
    assert_error(&second, 401, "unauthorized");

    // The cookie authenticates (as the owner, an admin) and is still held to the Origin rule.
    let session = cookie.split(';').next().unwrap().to_owned();
    let read = http
        .send(
            http.request(Method::GET, "/api/v1/users", None)
                .header("Cookie", &session),
        )
        .await;
    assert_eq!(read.status, 200, "{read:?}");
    let port = http.base.rsplit(':').next().unwrap();
    let same_site = http
        .send(
            http.request(Method::POST, "/api/v1/events", None)
                .header("Cookie", &session)
                .header("Origin", format!("http://127.0.0.1:{port}"))
                .json(&json!({"topic": "dashboard.click"})),
        )
        .await;
    assert_eq!(same_site.status, 200, "{same_site:?}");
    assert_eq!(same_site.body["status"], "published");
    let forged = http
        .send(
            http.request(Method::POST, "/api/v1/events", None)
                .header("Cookie", &session)
                .header("Origin", "https://evil.example")
                .json(&json!({"topic": "dashboard.click"})),
        )
        .await;
    assert_error(&forged, 403, "forbidden");
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- webhook

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_publish_untrusted_events_and_check_signatures() {
    let daemon = support::start().await;
    let http = Http::new(&daemon);
    let operator = key(&daemon, "hooker", Role::Operator).await;
    let viewer = key(&daemon, "watcher", Role::Viewer).await;

    let event_of = |answer: &Answer| answer.body["id"].as_str().unwrap().to_owned();
    let object = http
        .post("/api/v1/webhook/ci/build", &operator, json!({"ok": true}))
        .await;
    assert_eq!(object.status, 200, "{object:?}");
    let array = http.post("/api/v1/webhook/ci/build", &operator, json!([1, 2])).await;
    let text = http
        .send(
            http.request(Method::POST, "/api/v1/webhook/ci/build", Some(&operator))
                .header("Content-Type", "text/plain")
                .body("plain words"),
        )
        .await;
    for (answer, payload) in [
        (&object, json!({"ok": true})),
        (&array, json!({"items": [1, 2]})),
        (&text, json!({"raw": "plain words"})),
    ] {
        let event = http
            .get(&format!("/api/v1/events/{}", event_of(answer)), &operator)
            .await;
        assert_eq!(event.body["topic"], "webhook.ci.build", "{event:?}");
        assert_eq!(event.body["source"], "webhook:ci/build", "{event:?}");
        assert_eq!(event.body["payload"], payload, "{event:?}");
    }
    assert_error(
        &http.post("/api/v1/webhook/ci/build", &viewer, json!({})).await,
        403,
        "forbidden",
    );
    assert_error(
        &http.post("/api/v1/webhook/Bad..Path", &operator, json!({})).await,
        400,
        "invalid_params",
    );

    // With a secret for the path, the HMAC signature is required (and enough on its own).
    let client = daemon.client().await.unwrap();
    client
        .call::<SecretsSet>(&SecretSetParams {
            name: "webhook:github".into(),
            value: "hook-secret".into(),
        })
        .await
        .unwrap();
    let body = br#"{"action":"opened"}"#;
    let signature = format!("sha256={}", hmac_hex(b"hook-secret", body));
    let signed = http
        .send(
            http.request(Method::POST, "/api/v1/webhook/github", None)
                .header("X-Signature-256", &signature)
                .body(body.to_vec()),
        )
        .await;
    assert_eq!(signed.status, 200, "{signed:?}");
    let event = http
        .get(&format!("/api/v1/events/{}", event_of(&signed)), &operator)
        .await;
    assert_eq!(event.body["payload"], json!({"action": "opened"}));
    let unsigned = http
        .send(
            http.request(Method::POST, "/api/v1/webhook/github", Some(&operator))
                .body(body.to_vec()),
        )
        .await;
    assert_error(&unsigned, 401, "unauthorized");
    let tampered = http
        .send(
            http.request(Method::POST, "/api/v1/webhook/github", None)
                .header("X-Signature-256", &signature)
                .body(br#"{"action":"closed"}"#.to_vec()),
        )
        .await;
    assert_error(&tampered, 401, "unauthorized");
    let stored = http.get("/api/v1/events?topic=webhook.github", &operator).await;
    assert_eq!(stored.body["events"].as_array().unwrap().len(), 1, "{stored:?}");
    support::shut_down(daemon).await;
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    // HMAC-SHA256 by its definition (RFC 2104), so the test does not share the gateway's code.
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&inner_key).chain_update(body).finalize();
    let outer = Sha256::new().chain_update(&outer_key).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_gather_every_service() {
    let daemon = support::start().await;
    let http = Http::new(&daemon);
    let viewer = key(&daemon, "prom", Role::Viewer).await;
    assert_eq!(
        http.get("/api/v1/events/evt_01NOSUCHEVENT0000000000000", &viewer)
            .await
            .status,
        404
    );
    let metrics = http.get("/metrics", &viewer).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text;
    for service in ["bus", "llm", "router", "policy", "exec"] {
        assert!(
            text.contains(&format!("aiventbus_up{{service=\"{service}\"}} 1")),
            "{service}:\n{text}"
        );
        assert!(
            text.contains(&format!("aiventbus_rpc_requests_total{{service=\"{service}\"")),
            "{service}:\n{text}"
        );
    }
    assert!(
        text.contains("aiventbus_rpc_requests_total{service=\"bus\",method=\"events.get\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "aiventbus_http_requests_total{service=\"gateway\",route=\"/api/v1/events/{id}\",status=\"4xx\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("aiventbus_http_request_duration_seconds_bucket{service=\"gateway\""),
        "{text}"
    );
    assert!(
        !text.contains("evt_01NOSUCH"),
        "label values are route templates, not paths"
    );
    for line in text.lines() {
        assert!(
            line.starts_with("aiventbus_")
                || line.starts_with("# HELP aiventbus_")
                || line.starts_with("# TYPE aiventbus_"),
            "{line}"
        );
    }
    assert_eq!(
        text.matches("# TYPE aiventbus_up gauge").count(),
        1,
        "each family declared once"
    );
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- approvals and queries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_over_http_record_who_and_query_timeouts_name_the_waiting_action() {
    let server = ModelServer::start().await.unwrap();
    let config = format!("[providers.ollama]\nbase_url = \"{}\"\n", server.ollama_url());
    let daemon = support::start_with_config(&config).await;
    let client = daemon.client().await.unwrap();
    let http = Http::new(&daemon);
    let viewer = key(&daemon, "vince", Role::Viewer).await;
    let operator = key(&daemon, "opal", Role::Operator).await;
    let agent = client
        .call::<AgentsCreate>(&AgentSpec {
            name: Some("actor".into()),
            kind: Some(AgentKind::Llm),
            provider: Some("ollama".into()),
            model: Some("test-model".into()),
            ..AgentSpec::default()
        })
        .await
        .unwrap()
        .id;
    client
        .call::<RulesCreate>(&RuleSpec {
            name: Some("queries".into()),
            topic_pattern: Some("user.query".into()),
            agent_id: Some(agent.clone()),
            ..RuleSpec::default()
        })
        .await
        .unwrap();
    server.push(Reply::Json(json!({
        "type": "action",
        "summary": "listing",
        "proposed_actions": [{"action_type": "shell_exec", "argv": ["sh", "-c", "echo approved-over-http"]}],
    })));

    // The run waits for approval, so the query times out naming the waiting action (the model
    // answers at once; the deadline only has to outlast a run on a busy machine).
    let query = http
        .post(
            "/api/v1/query",
            &operator,
            json!({"text": "please run it", "timeout_ms": 15000}),
        )
        .await;
    assert_error(&query, 504, "timeout");
    let waiting: Vec<String> = query.body["error"]["data"]["pending_actions"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let [action_id] = waiting.as_slice() else {
        panic!("expected the one waiting action in the timeout's data: {query:?}");
    };
    let action_id = action_id.clone();
    assert!(action_id.starts_with("act_"), "{query:?}");

    let approve = format!("/api/v1/actions/{action_id}/approve");
    assert_error(&http.post(&approve, &viewer, json!({})).await, 403, "forbidden");
    let approved = http
        .post(
            &approve,
            &operator,
            json!({"decided_by": "user:someone-else", "via": "atp"}),
        )
        .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.body["id"], action_id.as_str());
    assert_eq!(
        approved.body["decided_by"], "user:opal",
        "the client's value is replaced: {approved:?}"
    );
    assert_eq!(approved.body["decided_via"], "http", "{approved:?}");
    assert_error(&http.post(&approve, &operator, json!({})).await, 409, "conflict");
    assert_error(
        &http
            .post(
                &format!("/api/v1/actions/{action_id}/deny"),
                &operator,
                json!({"reason": "late"}),
            )
            .await,
        409,
        "conflict",
    );
    let record = http.get(&format!("/api/v1/actions/{action_id}"), &viewer).await;
    assert_eq!(record.body["decided_by"], "user:opal", "{record:?}");
    support::shut_down(daemon).await;
}

// ---------------------------------------------------------------- TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listen_without_tls_refuses_to_start() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("config.toml");
    std::fs::write(&config, "[gateway]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let output = tokio::process::Command::new(aiventbus_testkit::binary("aiventbus-gateway"))
        .env("AIVENTBUS_RUNTIME_DIR", root.path().join("run"))
        .env("AIVENTBUS_STATE_DIR", root.path().join("state"))
        .env("AIVENTBUS_CONFIG", &config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .output();
    let output = tokio::time::timeout(REPLY_DEADLINE, output)
        .await
        .expect("the gateway exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without TLS"),
        "{stderr}"
    );
    assert!(stderr.contains("gateway.tls_cert"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_with_the_configured_certificate() {
    if !support::on_path("openssl") {
        eprintln!("skipped: openssl is not installed, so no test certificate can be made");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key_file.display()
    );
    let daemon = support::start_with_config(&config).await;
    let base = daemon.http_base();
    assert!(base.starts_with("https://localhost:"), "{base}");
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let client = client_builder().tls_certs_only([root]).build().unwrap();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["strict-transport-security"], "max-age=31536000");
    // Plain HTTP on the TLS port gets nowhere.
    let plain = client_builder()
        .build()
        .unwrap()
        .get(base.replace("https://", "http://") + "/healthz")
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    // The dashboard link points at the certificate's name, and its cookie is Secure.
    let link = daemon
        .client()
        .await
        .unwrap()
        .call::<DashboardLink>(&NoParams {})
        .await
        .unwrap();
    assert!(link.url.starts_with(&format!("{base}/login?code=")), "{}", link.url);
    let redeemed = client.get(&link.url).send().await.unwrap();
    assert_eq!(redeemed.status(), 303);
    let cookie = redeemed.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
    support::shut_down(daemon).await;
}
