//! `http_request` against local servers: private addresses are refused when named directly, when
//! reached through a redirect, and when a name resolves to them — unless `private_allow` says so.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;

use crate::fake::{HttpServer, Route};
use crate::{Harness, Setup, message};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An "allowed" server reached by a name that `private_allow` lists, and a "secret" one that must
/// stay out of reach.
async fn servers() -> (HttpServer, HttpServer) {
    let allowed = HttpServer::start().await;
    let secret = HttpServer::start().await;
    secret.route("/secret", Route::ok("the secret"));
    allowed.route("/hello", Route::ok("hello there"));
    allowed.route(
        "/to-literal",
        Route::redirect(&format!("http://127.0.0.1:{}/secret", secret.port)),
    );
    allowed.route(
        "/to-name",
        Route::redirect(&format!("http://sneaky.test:{}/secret", secret.port)),
    );
    allowed.route("/to-hello", Route::redirect("/hello"));
    allowed.route("/loop", Route::redirect("/loop"));
    (allowed, secret)
}

fn setup(private_allow: &[&str]) -> Setup {
    let mut setup = Setup {
        private_allow: private_allow.iter().map(|entry| (*entry).to_owned()).collect(),
        fixed_hosts: HashMap::from([
            ("allowed.test".to_owned(), vec![LOOPBACK]),
            ("sneaky.test".to_owned(), vec![LOOPBACK]),
        ]),
        ..Setup::default()
    };
    setup.exec.http_max_body = 5;
    setup
}

#[tokio::test]
async fn private_addresses_are_refused_directly_by_redirect_and_by_name() {
    let (allowed, secret) = servers().await;
    let harness = Harness::start(setup(&["allowed.test"])).await;
    let get = |url: String| json!({"method": "GET", "url": url});

    let (_, result) = harness
        .execute(
            "http_request",
            get(format!("http://allowed.test:{}/hello", allowed.port)),
        )
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["status"], 200);
    assert_eq!(result.result["body"], "hello");
    assert_eq!(result.result["truncated"], true);
    assert_eq!(result.result["headers"]["content-type"], "text/plain");

    let (_, result) = harness
        .execute(
            "http_request",
            get(format!("http://allowed.test:{}/to-hello", allowed.port)),
        )
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["redirects"].as_array().unwrap().len(), 1);

    for url in [
        format!("http://127.0.0.1:{}/secret", secret.port),
        format!("http://localhost:{}/secret", secret.port),
        format!("http://sneaky.test:{}/secret", secret.port),
        format!("http://allowed.test:{}/to-literal", allowed.port),
        format!("http://allowed.test:{}/to-name", allowed.port),
    ] {
        let (_, result) = harness.execute("http_request", get(url.clone())).await;
        assert!(
            message(&result).contains("refused at execution"),
            "{url}: {}",
            result.result
        );
    }
    assert_eq!(secret.hits("/secret"), 0, "a refused address was reached");

    let (_, result) = harness
        .execute(
            "http_request",
            get(format!("http://allowed.test:{}/loop", allowed.port)),
        )
        .await;
    assert!(message(&result).contains("redirects"), "{}", result.result);
    let (_, result) = harness
        .execute("http_request", json!({"method": "GET", "url": "file:///etc/passwd"}))
        .await;
    assert!(!result.ok);
}

#[tokio::test]
async fn private_allow_opens_an_address() {
    let (_, secret) = servers().await;
    let harness = Harness::start(setup(&["127.0.0.1"])).await;
    let (_, result) = harness
        .execute(
            "http_request",
            json!({"method": "GET", "url": format!("http://127.0.0.1:{}/secret", secret.port)}),
        )
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["status"], 200);
    assert_eq!(secret.hits("/secret"), 1);
    let (_, result) = harness
        .execute(
            "http_request",
            json!({"method": "GET", "url": format!("http://127.0.0.1:{}/missing", secret.port)}),
        )
        .await;
    assert!(!result.ok, "a 404 is not ok");
    assert_eq!(result.result["status"], 404);
}
