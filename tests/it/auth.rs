//! Capability tokens on the internal sockets (SPEC §3, §4): nothing happens before `auth.hello`,
//! garbage, forged and foreign tokens are refused, a real token is held to its scope, and a holder
//! can narrow a token but not widen it.

use std::time::Duration;

use aiventbus_proto::methods::ListParams;
use aiventbus_rpc::token::{Key, Minter, attenuate};
use aiventbus_testkit::{Daemon, process_alive};
use serde_json::{Value, json};

use crate::support::{self, Raw};

fn code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

fn gateway_token(daemon: &Daemon, audience: &str) -> String {
    let path = daemon.paths.creds_dir("gateway").join(format!("token.{audience}"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn far_future_ms() -> u64 {
    aiventbus_rpc::time::now_ms() + 3_600_000
}

async fn assert_nothing_published(daemon: &Daemon, topic: &str) {
    let client = daemon.client().await.expect("client");
    let events = client
        .list(&ListParams {
            topic: Some(topic.into()),
            ..Default::default()
        })
        .await
        .expect("events.list");
    assert!(events.is_empty(), "an unauthenticated call published {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_happens_before_a_valid_hello() {
    let daemon = support::start().await;
    let publish = json!({"topic": "auth.probe", "payload": {}});
    for service in ["bus", "init", "gateway"] {
        let mut conn = Raw::connect(&daemon.paths.socket(service)).await;
        let reply = conn.call(1, "events.publish", publish.clone()).await;
        assert_eq!(code(&reply), -32001, "{service}: {reply}");
        let reply = conn.call(2, "system.health", json!({})).await;
        assert_eq!(code(&reply), -32001, "{service}: {reply}");

        let forged = Minter::new(service, &Key::generate().expect("key").audience_key(service)).mint(
            "gateway",
            &["*"],
            far_future_ms(),
        );
        for token in ["", "garbage", "v1.abc.def", forged.as_str()] {
            let reply = conn.call(3, "auth.hello", json!({"token": token})).await;
            assert_eq!(code(&reply), -32001, "{service}: hello with {token:?}: {reply}");
            // A refused hello leaves the connection unauthenticated.
            let reply = conn.call(4, "events.publish", publish.clone()).await;
            assert_eq!(code(&reply), -32001, "{service} after a bad hello: {reply}");
        }
        let reply = conn.call(5, "auth.hello", json!({})).await;
        assert!(
            [-32602, -32001].contains(&code(&reply)),
            "{service}: hello without a token: {reply}"
        );
    }
    assert_nothing_published(&daemon, "auth.probe").await;
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_daemons_tokens_are_refused() {
    let (ours, theirs) = tokio::join!(support::start(), support::start());
    for audience in ["init", "bus"] {
        let foreign = gateway_token(&theirs, audience);
        let mut conn = Raw::connect(&ours.paths.socket(audience)).await;
        let reply = conn.call(1, "auth.hello", json!({"token": foreign})).await;
        assert_eq!(code(&reply), -32001, "{audience}: {reply}");
        let reply = conn
            .call(2, "events.publish", json!({"topic": "auth.foreign", "payload": {}}))
            .await;
        assert_eq!(code(&reply), -32001, "{audience}: {reply}");

        // The same token works where it belongs.
        let mut home = Raw::connect(&theirs.paths.socket(audience)).await;
        let reply = home
            .call(1, "auth.hello", json!({"token": gateway_token(&theirs, audience)}))
            .await;
        assert_eq!(reply["result"]["subject"], "gateway", "{reply}");
        assert_eq!(reply["result"]["audience"], audience, "{reply}");
    }
    assert_nothing_published(&ours, "auth.foreign").await;
    support::shut_down(ours).await;
    support::shut_down(theirs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_held_to_its_scope() {
    let daemon = support::start().await;
    let token = gateway_token(&daemon, "init");
    let mut conn = Raw::connect(&daemon.paths.socket("init")).await;
    let hello = conn.call(1, "auth.hello", json!({"token": token})).await;
    assert_eq!(hello["result"]["subject"], "gateway", "{hello}");
    assert_eq!(hello["result"]["audience"], "init", "{hello}");
    let services = conn.call(2, "system.services", json!({})).await;
    assert!(services["result"]["services"].is_array(), "{services}");

    // Outside the scope: refused, and init keeps running.
    let shutdown = conn.call(3, "system.shutdown", json!({})).await;
    assert_eq!(code(&shutdown), -32001, "{shutdown}");
    let again = conn.call(4, "system.services", json!({})).await;
    assert!(
        again["result"]["services"].is_array(),
        "the connection stopped working: {again}"
    );
    let init_pid = daemon.init_pid().expect("init pid");
    assert!(process_alive(init_pid), "init is gone after a refused shutdown");
    let client = daemon.client().await.expect("client");
    let all_running = client.services().await.expect("system.services").services;
    assert!(
        all_running.iter().all(|s| s.state == "running"),
        "services stopping after a refused shutdown: {all_running:?}"
    );
    client.version().await.expect("api.sock still answers");

    // The gateway's bus token cannot publish into reserved namespaces.
    let mut bus = Raw::connect(&daemon.paths.socket("bus")).await;
    let hello = bus
        .call(1, "auth.hello", json!({"token": gateway_token(&daemon, "bus")}))
        .await;
    assert!(hello["result"].is_object(), "{hello}");
    let reserved = bus
        .call(2, "events.publish", json!({"topic": "system.forged", "payload": {}}))
        .await;
    assert_eq!(code(&reserved), -32602, "{reserved}");

    // Narrowed to system.health: that still works, what it allowed before does not.
    let narrowed = attenuate(&token, "scope=system.health").expect("attenuate");
    let mut narrow = Raw::connect(&daemon.paths.socket("init")).await;
    let hello = narrow.call(1, "auth.hello", json!({"token": narrowed})).await;
    assert!(hello["result"].is_object(), "the narrowed token was refused: {hello}");
    let services = narrow.call(2, "system.services", json!({})).await;
    assert_eq!(code(&services), -32001, "{services}");
    let health = narrow.call(3, "system.health", json!({})).await;
    assert_eq!(health["result"]["status"], "ok", "{health}");

    // Narrowing never widens: a later `scope=*` caveat does not bring system.services back.
    let rewidened = attenuate(&narrowed, "scope=*").expect("attenuate");
    let mut wide = Raw::connect(&daemon.paths.socket("init")).await;
    let hello = wide.call(1, "auth.hello", json!({"token": rewidened})).await;
    assert!(hello["result"].is_object(), "{hello}");
    let services = wide.call(2, "system.services", json!({})).await;
    assert_eq!(code(&services), -32001, "{services}");

    // An already expired narrowing is refused at hello.
    let expired = attenuate(&token, "exp=1").expect("attenuate");
    let mut late = Raw::connect(&daemon.paths.socket("init")).await;
    let hello = late.call(1, "auth.hello", json!({"token": expired})).await;
    assert_eq!(code(&hello), -32001, "{hello}");

    // Still nothing stopped.
    tokio::time::timeout(Duration::from_secs(30), client.version())
        .await
        .expect("deadline")
        .expect("api.sock still answers");
    support::shut_down(daemon).await;
}
