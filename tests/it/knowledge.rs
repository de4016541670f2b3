//! Knowledge and memory through `api.sock` (SPEC §11, §16): facts set, read, listed by prefix and
//! deleted with -32002 for a missing key; the caller recorded as the source; memories added,
//! searched, updated and deleted; both kept across a daemon restart; and the `aibus knowledge` and
//! `aibus memory` commands.

use std::process::Output;
use std::time::Duration;

use aiventbus_client::Client;
use aiventbus_proto::methods::IdParams;
use aiventbus_proto::methods::{
    KeyParams, KnowledgeDelete, KnowledgeGet, KnowledgeList, KnowledgeListParams, KnowledgeSet, KnowledgeSetParams,
    MemoryAdd, MemoryAddParams, MemoryDelete, MemoryGet, MemoryKind, MemoryList, MemoryListParams, MemorySearch,
    MemorySearchParams, MemoryUpdate, MemoryUpdateParams,
};
use aiventbus_testkit::Daemon;
use serde_json::{Value, json};

use crate::support::{self, Raw, own_user_name, rpc_code};

fn set(key: &str, value: Value) -> KnowledgeSetParams {
    KnowledgeSetParams {
        key: key.to_owned(),
        value,
        source: None,
    }
}

fn memory(kind: MemoryKind, scope: &str, content: &str) -> MemoryAddParams {
    MemoryAddParams {
        kind,
        scope: scope.to_owned(),
        content: content.to_owned(),
        importance: None,
        tags: None,
        source: None,
    }
}

fn search(query: &str) -> MemorySearchParams {
    MemorySearchParams {
        query: query.to_owned(),
        scope: None,
        limit: None,
    }
}

async fn search_ids(client: &Client, params: MemorySearchParams) -> Vec<String> {
    let result = client.call::<MemorySearch>(&params).await.expect("memory.search");
    result.memories.into_iter().map(|memory| memory.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_round_trip_with_the_caller_as_source() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let me = format!("user:{}", own_user_name());

    let value = json!({"name": "vim", "flags": ["-u", "NONE"], "version": 9.1});
    let fact = client
        .call::<KnowledgeSet>(&set("user.pref.editor", value.clone()))
        .await
        .expect("knowledge.set");
    assert_eq!((fact.key.as_str(), &fact.value), ("user.pref.editor", &value));
    assert_eq!(fact.source, me, "the source defaults to the connecting user");
    let got = client
        .call::<KnowledgeGet>(&KeyParams {
            key: "user.pref.editor".into(),
        })
        .await
        .expect("knowledge.get");
    assert_eq!(got, fact);

    // Upsert: a named user source is kept, created_at stays.
    let replaced = client
        .call::<KnowledgeSet>(&KnowledgeSetParams {
            source: Some("user:bob".into()),
            ..set("user.pref.editor", json!("emacs"))
        })
        .await
        .expect("knowledge.set again");
    assert_eq!(
        (replaced.value.clone(), replaced.source.as_str()),
        (json!("emacs"), "user:bob")
    );
    assert_eq!(replaced.created_at, fact.created_at);
    // Service kinds of source are the daemon's own.
    let (code, message) = rpc_code(
        client
            .call::<KnowledgeSet>(&KnowledgeSetParams {
                source: Some("agent:agt_x".into()),
                ..set("user.pref.shell", json!("zsh"))
            })
            .await,
    );
    assert_eq!(code, -32602, "{message}");
    assert!(message.starts_with("source"), "{message}");

    for (key, value) in [
        ("user.pref.shell", json!("fish")),
        ("user_pref", json!(1)),
        ("host.name", json!("box")),
    ] {
        client
            .call::<KnowledgeSet>(&set(key, value))
            .await
            .expect("knowledge.set");
    }
    let listed = client
        .call::<KnowledgeList>(&KnowledgeListParams {
            prefix: Some("user.pref.".into()),
            limit: None,
        })
        .await
        .expect("knowledge.list");
    let keys: Vec<&str> = listed.facts.iter().map(|fact| fact.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["user.pref.shell", "user.pref.editor"],
        "newest first, prefix literal"
    );
    let all = client
        .call::<KnowledgeList>(&KnowledgeListParams::default())
        .await
        .expect("knowledge.list");
    assert_eq!(all.facts.len(), 4);

    let deleted = client
        .call::<KnowledgeDelete>(&KeyParams {
            key: "user.pref.editor".into(),
        })
        .await
        .expect("knowledge.delete");
    assert!(deleted.deleted);
    let (code, message) = rpc_code(
        client
            .call::<KnowledgeGet>(&KeyParams {
                key: "user.pref.editor".into(),
            })
            .await,
    );
    assert_eq!((code, message.as_str()), (-32002, "no fact user.pref.editor"));
    let again = client
        .call::<KnowledgeDelete>(&KeyParams {
            key: "user.pref.editor".into(),
        })
        .await
        .expect("knowledge.delete again");
    assert!(!again.deleted);

    // On the wire, byte for byte: errors name the field; a value over the payload limit is -32006.
    let mut raw = Raw::connect(&daemon.paths.api_socket()).await;
    let cases = [
        ("knowledge.get", json!({"key": "nope"}), -32002, "no fact nope"),
        ("knowledge.set", json!({"key": "bad key", "value": 1}), -32602, "key"),
        ("knowledge.set", json!({"key": "k"}), -32602, "value"),
        (
            "knowledge.set",
            json!({"key": "k", "value": "x".repeat(300 * 1024)}),
            -32006,
            "value",
        ),
        ("knowledge.list", json!({"prefix": "%"}), -32602, "prefix"),
        ("knowledge.list", json!({"limit": 0}), -32602, "limit"),
    ];
    for (id, (method, params, code, said)) in cases.into_iter().enumerate() {
        let reply = raw.call(id as u64 + 1, method, params.clone()).await;
        assert_eq!(reply["error"]["code"], code, "{method} {params}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(said),
            "{method} {params}: {message} should name {said}"
        );
    }
    raw.assert_answers(100).await;
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_are_added_searched_updated_and_deleted() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let add = |params: MemoryAddParams| {
        let client = client.clone();
        async move { client.call::<MemoryAdd>(&params).await.expect("memory.add").id }
    };
    let backups = add(MemoryAddParams {
        importance: Some(0.9),
        tags: Some(vec!["ops".into(), "db".into()]),
        ..memory(
            MemoryKind::Procedural,
            "global",
            "Database backups run nightly; restore the database with pg_restore",
        )
    })
    .await;
    assert!(backups.starts_with("mem_"), "{backups}");
    let lunch = add(memory(
        MemoryKind::Episodic,
        "global",
        "Lunch with the database team on Friday",
    ))
    .await;
    let agent = add(memory(
        MemoryKind::Semantic,
        "agent:agt_7",
        "The database password rotates monthly",
    ))
    .await;

    let stored = client
        .call::<MemoryGet>(&IdParams { id: backups.clone() })
        .await
        .expect("memory.get");
    assert_eq!(stored.source, format!("user:{}", own_user_name()));
    assert_eq!((stored.kind, stored.importance), (MemoryKind::Procedural, 0.9));
    assert_eq!(stored.tags, vec!["ops".to_owned(), "db".to_owned()]);
    assert_eq!(stored.score, None);

    let found = client
        .call::<MemorySearch>(&search("how do I restore the database backups?"))
        .await
        .expect("memory.search");
    assert_eq!(found.memories[0].id, backups, "{:#?}", found.memories);
    assert!(
        found
            .memories
            .iter()
            .all(|memory| memory.score.is_some_and(|s| s > 0.0))
    );
    let scoped = search_ids(
        &client,
        MemorySearchParams {
            scope: Some("agent:agt_7".into()),
            ..search("database")
        },
    )
    .await;
    assert_eq!(scoped, vec![agent.clone()]);
    // FTS5 syntax in the query is plain text.
    for query in [
        r#""a OR b" NEAR( *"#,
        "database*",
        "-database",
        "scope:global",
        "((database",
    ] {
        client
            .call::<MemorySearch>(&search(query))
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e}"));
    }
    let (code, message) = rpc_code(client.call::<MemorySearch>(&search("*** !!!")).await);
    assert_eq!(code, -32602, "{message}");
    assert!(message.starts_with("query"), "{message}");

    let listed = client
        .call::<MemoryList>(&MemoryListParams {
            tag: Some("ops".into()),
            ..MemoryListParams::default()
        })
        .await
        .expect("memory.list");
    assert_eq!(listed.memories.len(), 1);
    let global = client
        .call::<MemoryList>(&MemoryListParams {
            scope: Some("global".into()),
            ..MemoryListParams::default()
        })
        .await
        .expect("memory.list");
    let ids: Vec<&str> = global.memories.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec![lunch.as_str(), backups.as_str()], "newest first");

    let updated = client
        .call::<MemoryUpdate>(&MemoryUpdateParams {
            id: lunch.clone(),
            content: Some("Dinner with the platform team on Saturday".into()),
            importance: Some(0.2),
            tags: None,
        })
        .await
        .expect("memory.update");
    assert_eq!(updated.content, "Dinner with the platform team on Saturday");
    assert_eq!(updated.importance, 0.2);
    assert!(!search_ids(&client, search("lunch")).await.contains(&lunch));
    assert_eq!(search_ids(&client, search("dinner")).await, vec![lunch.clone()]);

    let deleted = client
        .call::<MemoryDelete>(&IdParams { id: backups.clone() })
        .await
        .expect("memory.delete");
    assert!(deleted.deleted);
    assert!(search_ids(&client, search("pg_restore")).await.is_empty());
    let (code, _) = rpc_code(client.call::<MemoryGet>(&IdParams { id: backups.clone() }).await);
    assert_eq!(code, -32002);
    let (code, message) = rpc_code(
        client
            .call::<MemoryAdd>(&MemoryAddParams {
                importance: Some(1.5),
                ..memory(MemoryKind::Semantic, "global", "x")
            })
            .await,
    );
    assert_eq!(code, -32602);
    assert!(message.starts_with("importance"), "{message}");
    let mut raw = Raw::connect(&daemon.paths.api_socket()).await;
    let reply = raw
        .call(
            1,
            "memory.add",
            json!({"kind": "dream", "scope": "global", "content": "x"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert!(
        reply["error"]["message"].as_str().unwrap_or_default().contains("kind"),
        "{reply}"
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_and_memory_survive_a_daemon_restart() {
    let mut daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let fact = client
        .call::<KnowledgeSet>(&set("restart.kept", json!({"n": 1})))
        .await
        .expect("knowledge.set");
    let id = client
        .call::<MemoryAdd>(&memory(
            MemoryKind::Semantic,
            "global",
            "the spare key is under the blue pot",
        ))
        .await
        .expect("memory.add")
        .id;
    let before = client
        .call::<MemoryGet>(&IdParams { id: id.clone() })
        .await
        .expect("memory.get");
    drop(client);

    let code = tokio::task::block_in_place(|| daemon.stop(Duration::from_secs(30))).expect("stop");
    assert_eq!(code, Some(0), "init did not exit 0:\n{}", daemon.init_output());
    tokio::task::block_in_place(|| daemon.launch()).unwrap_or_else(|e| panic!("relaunch: {e:#}"));

    let client = daemon.client().await.expect("client after relaunch");
    let got = client
        .call::<KnowledgeGet>(&KeyParams {
            key: "restart.kept".into(),
        })
        .await
        .expect("knowledge.get after restart");
    assert_eq!(got, fact);
    let after = client
        .call::<MemoryGet>(&IdParams { id: id.clone() })
        .await
        .expect("memory.get");
    assert_eq!(after, before);
    assert_eq!(search_ids(&client, search("blue pot")).await, vec![id]);
    support::shut_down(daemon).await;
}

fn aibus(daemon: &Daemon, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| daemon.aibus(args))
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok_stdout(daemon: &Daemon, args: &[&str]) -> String {
    let output = aibus(daemon, args);
    assert_eq!(output.status.code(), Some(0), "aibus {args:?}: {}", describe(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ok_json(daemon: &Daemon, args: &[&str]) -> Value {
    let text = ok_stdout(daemon, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("aibus {args:?}: not one JSON document ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_knowledge_and_memory_commands() {
    let daemon = support::start().await;

    // A value that is not JSON is a string; JSON is JSON.
    let fact = ok_json(&daemon, &["knowledge", "set", "user.pref.editor", "vim", "--json"]);
    assert_eq!(fact["value"], "vim");
    assert_eq!(fact["source"], format!("user:{}", own_user_name()));
    ok_stdout(
        &daemon,
        &[
            "knowledge",
            "set",
            "user.pref.font",
            r#"{"size": 12}"#,
            "--source",
            "user:carol",
        ],
    );
    let got = ok_json(&daemon, &["knowledge", "get", "user.pref.font", "--json"]);
    assert_eq!(
        (got["value"].clone(), got["source"].clone()),
        (json!({"size": 12}), json!("user:carol"))
    );
    let text = ok_stdout(&daemon, &["knowledge", "get", "user.pref.editor"]);
    assert!(text.contains("value:      \"vim\""), "{text}");
    ok_stdout(&daemon, &["knowledge", "set", "other.key", "1"]);

    let listed = ok_json(&daemon, &["knowledge", "list", "user.pref", "--json"]);
    let keys: Vec<&str> = listed["facts"]
        .as_array()
        .unwrap_or_else(|| panic!("no facts in {listed}"))
        .iter()
        .filter_map(|fact| fact["key"].as_str())
        .collect();
    assert_eq!(keys, vec!["user.pref.font", "user.pref.editor"]);
    let table = ok_stdout(&daemon, &["knowledge", "list", "--limit", "1"]);
    assert!(table.starts_with("KEY"), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("other.key"), "{table}");

    assert!(ok_stdout(&daemon, &["knowledge", "delete", "user.pref.editor"]).contains("deleted"));
    let missing = aibus(&daemon, &["knowledge", "get", "user.pref.editor"]);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("-32002"),
        "{}",
        describe(&missing)
    );
    let gone = ok_json(&daemon, &["knowledge", "delete", "user.pref.editor", "--json"]);
    assert_eq!(gone["deleted"], false);
    let refused = aibus(&daemon, &["knowledge", "set", "bad key", "1"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));

    let added = ok_json(
        &daemon,
        &[
            "memory",
            "add",
            "Rotate the TLS certificates every quarter",
            "--kind",
            "procedural",
            "--scope",
            "global",
            "--importance",
            "0.8",
            "--tag",
            "ops",
            "--tag",
            "tls",
            "--json",
        ],
    );
    let id = added["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {added}"))
        .to_owned();
    let other = ok_stdout(
        &daemon,
        &[
            "memory",
            "add",
            "Met Dana about the roadmap",
            "--kind",
            "episodic",
            "--scope",
            "team",
        ],
    );
    let other = other.trim().to_owned();
    assert!(other.starts_with("mem_"), "{other}");

    let shown = ok_json(&daemon, &["memory", "get", &id, "--json"]);
    assert_eq!(
        (shown["kind"].clone(), shown["importance"].clone()),
        (json!("procedural"), json!(0.8))
    );
    assert_eq!(shown["tags"], json!(["ops", "tls"]));
    let found = ok_json(&daemon, &["memory", "search", "certificates tls", "--json"]);
    assert_eq!(found["memories"][0]["id"], id.as_str(), "{found}");
    assert!(
        found["memories"][0]["score"].as_f64().is_some_and(|s| s > 0.0),
        "{found}"
    );
    let table = ok_stdout(&daemon, &["memory", "search", "roadmap", "--scope", "team"]);
    assert!(table.starts_with("SCORE"), "{table}");
    assert!(table.contains(&other), "{table}");
    let tagged = ok_json(&daemon, &["memory", "list", "--tag", "tls", "--json"]);
    assert_eq!(tagged["memories"].as_array().map(Vec::len), Some(1), "{tagged}");
    let episodic = ok_stdout(&daemon, &["memory", "list", "--kind", "episodic"]);
    assert!(episodic.contains(&other) && !episodic.contains(&id), "{episodic}");

    let updated = ok_json(
        &daemon,
        &[
            "memory",
            "update",
            &id,
            "--content",
            "Renew the SSH host keys yearly",
            "--clear-tags",
            "--json",
        ],
    );
    assert_eq!(updated["tags"], json!([]));
    assert_eq!(updated["importance"], 0.8);
    let stale = ok_json(&daemon, &["memory", "search", "certificates", "--json"]);
    assert_eq!(stale["memories"], json!([]), "{stale}");
    let usage = aibus(&daemon, &["memory", "update", &id]);
    assert_eq!(usage.status.code(), Some(2), "{}", describe(&usage));
    let usage = aibus(&daemon, &["memory", "add", "x", "--kind", "dream", "--scope", "g"]);
    assert_eq!(usage.status.code(), Some(2), "{}", describe(&usage));

    assert!(ok_stdout(&daemon, &["memory", "delete", &id]).contains("deleted"));
    let missing = aibus(&daemon, &["memory", "get", &id]);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    support::shut_down(daemon).await;
}
