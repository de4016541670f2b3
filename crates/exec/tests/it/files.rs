//! File actions: confined to the roots at execution time, and refused when a link changed where a
//! path leads since policy decided.

use serde_json::json;

use crate::{Harness, Setup, message};

#[tokio::test]
async fn write_read_and_delete_inside_a_root() {
    let mut setup = Setup::default();
    setup.exec.max_file_read = 8;
    let harness = Harness::start(setup).await;
    let path = harness.root.join("notes.txt");

    let (_, result) = harness
        .execute("file_write", json!({"path": path, "content": "hello, world"}))
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["bytes_written"], 12);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello, world");

    let (_, result) = harness.execute("file_read", json!({"path": path})).await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["content"], "hello, w");
    assert_eq!(result.result["truncated"], true);
    assert_eq!(result.result["size"], 12);

    std::fs::write(harness.root.join("bytes"), b"\xff\xfe").unwrap();
    let (_, result) = harness
        .execute("file_read", json!({"path": harness.root.join("bytes")}))
        .await;
    assert_eq!(result.result["content_b64"], "//4=");

    let (_, result) = harness.execute("file_delete", json!({"path": path})).await;
    assert!(result.ok, "{}", result.result);
    assert!(!path.exists());

    let (_, result) = harness.execute("file_delete", json!({"path": harness.root})).await;
    assert!(!result.ok, "a root was deleted: {}", result.result);
    assert!(harness.root.is_dir());
    let (_, result) = harness.execute("file_read", json!({})).await;
    assert!(message(&result).starts_with("path"));
}

#[tokio::test]
async fn paths_outside_the_roots_are_refused_at_execution() {
    let harness = Harness::new().await;
    let outside = harness.home.join("outside.txt");
    std::fs::write(&outside, "private").unwrap();
    let (_, result) = harness.execute("file_read", json!({"path": outside})).await;
    assert!(message(&result).contains("refused at execution"), "{}", result.result);

    let (_, result) = harness
        .execute(
            "file_write",
            json!({"path": harness.home.join("new.txt"), "content": "x"}),
        )
        .await;
    assert!(message(&result).contains("refused at execution"));
    assert!(!harness.home.join("new.txt").exists());

    // A link inside a root that leads out of it.
    std::os::unix::fs::symlink(&outside, harness.root.join("escape")).unwrap();
    let (_, result) = harness
        .execute("file_read", json!({"path": harness.root.join("escape")}))
        .await;
    assert!(message(&result).contains("refused at execution"), "{}", result.result);
    let (_, result) = harness
        .execute(
            "file_read",
            json!({"path": format!("{}/../outside.txt", harness.root.display())}),
        )
        .await;
    assert!(message(&result).contains("refused at execution"), "{}", result.result);
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "private");
}

#[tokio::test]
async fn a_link_swapped_after_the_decision_is_refused() {
    let harness = Harness::new().await;
    let decided = harness.root.join("report.txt");
    std::fs::write(&decided, "the report").unwrap();
    let other = harness.root.join("other.txt");
    std::fs::write(&other, "something else").unwrap();
    let resolved = decided.canonicalize().unwrap();

    // As decided: fine.
    let (_, result) = harness
        .execute("file_read", json!({"path": decided, "resolved_path": resolved}))
        .await;
    assert_eq!(result.result["content"], "the report");

    // The file is replaced by a link to another file (inside the root, so only the recorded
    // decision can tell).
    std::fs::remove_file(&decided).unwrap();
    std::os::unix::fs::symlink(&other, &decided).unwrap();
    for action_type in ["file_read", "file_delete"] {
        let (_, result) = harness
            .execute(action_type, json!({"path": decided, "resolved_path": resolved}))
            .await;
        assert!(
            message(&result).contains("now resolves to"),
            "{action_type}: {}",
            result.result
        );
    }
    let (_, result) = harness
        .execute(
            "file_write",
            json!({"path": decided, "resolved_path": resolved, "content": "overwritten"}),
        )
        .await;
    assert!(message(&result).contains("now resolves to"));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "something else");
}
