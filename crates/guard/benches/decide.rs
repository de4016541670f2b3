//! Criterion benchmarks of `decide`: a typical argv, a compound shell string, a file read, and the
//! shell parser on its own.

use std::hint::black_box;

use aiventbus_guard::{PolicyInput, Request, Settings, decide, shell};
use aiventbus_proto::policy::Decision;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

const COMPOUND: &str =
    "cd ~/project && git pull --rebase && cargo build --release 2>&1 | tail -n 20; echo \"built at $(date +%T)\"";

fn params(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("literal objects"),
    }
}

fn request<'a>(map: &'a Map<String, Value>, action_type: &'a str) -> Request<'a> {
    Request {
        action_type,
        params: map,
        agent: None,
        tainted: false,
        owner: false,
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = std::fs::canonicalize(dir.path()).expect("canonical").join("home");
    std::fs::create_dir_all(home.join("project")).expect("project dir");
    std::fs::write(home.join("notes.txt"), "notes").expect("notes");
    let input = PolicyInput {
        untrusted_topics: vec!["clipboard.**".into(), "webhook.**".into()],
        file_roots: vec!["~".into()],
        builtin_allow: true,
        ..PolicyInput::default()
    };
    let settings = Settings::new(&input, &home, &[home.join(".local/state/aiventbus")]).expect("settings");
    let argv = params(json!({"argv": ["git", "status", "--short"], "cwd": home.join("project")}));
    let verdict = decide(&settings, &request(&argv, "shell_exec"));
    assert_eq!(verdict.decision, Decision::Allow, "{}", verdict.reason);
    c.bench_function("decide/argv_git_status", |b| {
        b.iter(|| decide(&settings, black_box(&request(&argv, "shell_exec"))))
    });

    let compound = params(json!({ "command": COMPOUND }));
    let verdict = decide(&settings, &request(&compound, "shell_exec"));
    assert_eq!(verdict.rule, "shell_string", "{}", verdict.reason);
    c.bench_function("decide/compound_shell_string", |b| {
        b.iter(|| decide(&settings, black_box(&request(&compound, "shell_exec"))))
    });

    let file = params(json!({"path": "~/notes.txt"}));
    let verdict = decide(&settings, &request(&file, "file_read"));
    assert_eq!(verdict.decision, Decision::Allow, "{}", verdict.reason);
    c.bench_function("decide/file_read", |b| {
        b.iter(|| decide(&settings, black_box(&request(&file, "file_read"))))
    });

    c.bench_function("shell/parse_compound", |b| b.iter(|| shell::parse(black_box(COMPOUND))));
}

criterion_group!(decide_benches, benches);
criterion_main!(decide_benches);
