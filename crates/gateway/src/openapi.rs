//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the same route table the
//! router is built from ([`crate::routes::ROUTES`]), so it lists exactly the routes that exist —
//! each with its public method (`operationId`, `x-method`), the role it needs (`x-role`), its path
//! and typed query parameters, and the error statuses of SPEC §12.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::http::{authenticate, json_response};
use crate::roles::required_role;
use crate::routes::{ROUTES, Verb, captures};

/// The handler (any authenticated user).
pub async fn serve(State(app): State<Arc<App>>, request: Request) -> Response {
    if let Err(response) = authenticate(&app, request.headers()) {
        return response;
    }
    json_response(StatusCode::OK, document(&app.listening().base_url()).to_string())
}

/// The OpenAPI path of an axum template: `{*key}` → `{key}`.
pub fn openapi_path(template: &str) -> String {
    template.replace("{*", "{")
}

/// The document for a gateway reachable at `server`.
pub fn document(server: &str) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids = HashSet::new();
    for route in ROUTES {
        let mut parameters: Vec<Value> = captures(route.path)
            .into_iter()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(route.query.iter().map(|(name, kind)| {
            json!({"name": name, "in": "query", "required": false, "schema": {"type": kind.schema_type()}})
        }));
        let namespace = route.method.split('.').next().unwrap_or_default();
        let mut operation_id = route.method.to_owned();
        if !operation_ids.insert(operation_id.clone()) {
            operation_id = format!("{}.{}", route.method, route.verb.as_str());
            operation_ids.insert(operation_id.clone());
        }
        let mut operation = json!({
            "operationId": operation_id,
            "summary": route.summary,
            "tags": [namespace],
            "x-method": route.method,
            "x-role": required_role(route.method).map(|role| role.as_str()),
            "parameters": parameters,
            "responses": responses("The method's result, as on api.sock"),
        });
        if route.body {
            operation["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "description": format!("The params of {} (path and query values are merged in)", route.method),
                }}},
            });
        }
        paths
            .entry(openapi_path(route.path))
            .or_default()
            .insert(route.verb.as_str().to_owned(), operation);
    }
    let extra = [
        (
            "/api/v1/webhook/{path}",
            Verb::Post,
            "webhook.receive",
            "Publish webhook.<path> (X-Signature-256 when a secret webhook:<path> exists, else a token)",
        ),
        (
            "/atp/auth/login",
            Verb::Post,
            "auth.login",
            "Log in: {identity, credential} → {token, expires_at, session_id}",
        ),
        (
            "/login",
            Verb::Get,
            "dashboard.login",
            "Redeem a one-time dashboard link (sets the session cookie)",
        ),
        ("/healthz", Verb::Get, "healthz", "Liveness (no token)"),
        ("/metrics", Verb::Get, "metrics", "Prometheus text from every service"),
        ("/api/v1/openapi.json", Verb::Get, "openapi", "This document"),
    ];
    for (path, verb, operation_id, summary) in extra {
        let mut operation = json!({
            "operationId": operation_id,
            "summary": summary,
            "tags": ["gateway"],
            "responses": responses("OK"),
        });
        let parameters = captures(path)
            .into_iter()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect::<Vec<_>>();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if matches!(path, "/healthz" | "/login" | "/atp/auth/login") {
            operation["security"] = json!([]);
        }
        paths
            .entry(path.to_owned())
            .or_default()
            .insert(verb.as_str().to_owned(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "aiventbus",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST face of the aiventbus gateway. Every route calls the public method named in \
                            x-method with the same params and answers the same result as api.sock.",
        },
        "servers": [{"url": server}],
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (aib_…) or an ATP session token"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": crate::app::SESSION_COOKIE},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "enum": [
                                "invalid_params", "unauthorized", "forbidden", "not_found", "conflict",
                                "too_large", "rate_limited", "unavailable", "timeout", "internal"
                            ]},
                            "message": {"type": "string"},
                            "data": {},
                        },
                    }},
                },
            },
        },
    })
}

fn responses(ok: &str) -> Value {
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "200": {"description": ok, "content": {"application/json": {"schema": {}}}},
        "400": error("invalid_params: the message names the field"),
        "401": error("unauthorized: no valid token"),
        "403": error("forbidden: the role does not suffice, or a cross-site Origin"),
        "404": error("not_found"),
        "409": error("conflict"),
        "413": error("too_large: the body exceeds gateway.max_body or the event the bus limit"),
        "421": error("invalid_params: the Host is not a name of this gateway"),
        "429": error("rate_limited"),
        "503": error("unavailable: the owning service is down"),
        "504": error("timeout"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let document = document("http://127.0.0.1:8420");
        let paths = document["paths"].as_object().unwrap();
        for route in ROUTES {
            let operation = &paths[&openapi_path(route.path)][route.verb.as_str()];
            assert_eq!(operation["x-method"], route.method, "{}", route.path);
        }
        let ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| operation["operationId"].as_str().unwrap())
            .collect();
        let unique: HashSet<&&str> = ids.iter().collect();
        assert_eq!(ids.len(), unique.len(), "operationIds repeat");
        assert_eq!(paths["/api/v1/knowledge/{key}"]["get"]["parameters"][0]["name"], "key");
        assert_eq!(
            paths["/api/v1/events"]["get"]["parameters"][4]["schema"]["type"],
            "integer"
        );
    }
}
