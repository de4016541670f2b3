//! Memory: semantic, episodic and procedural memories with a scope, an importance and tags, and
//! full-text search over their content (SQLite FTS5, an external-content index that triggers keep
//! in step in the same transaction as every change). Search ranks by relevance, recency and
//! importance; see [`score`]. Writes go through the writer thread and are answered after commit.
//! Past 800 lines only because of its unit tests, which stay beside the code they check.

use aiventbus_proto::methods::{
    LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, Memory, MemoryAddParams, MemoryKind, MemoryListParams, MemorySearchParams,
    MemoryUpdateParams,
};
use rusqlite::types::Value as Sql;
use rusqlite::{OptionalExtension, Row, TransactionBehavior};

use crate::knowledge::{list_limit, source_or};
use crate::schema::{from_sql_int, sql_int};
use crate::store::{Store, StoreError, format_ts};

/// Longest content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Longest scope, in bytes.
pub const MAX_SCOPE_BYTES: usize = 255;
/// Most tags on one memory.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;
/// Importance when none is given.
pub const DEFAULT_IMPORTANCE: f64 = 0.5;
/// Default number of search results.
pub const SEARCH_DEFAULT_LIMIT: u32 = 10;
/// Most search results.
pub const SEARCH_MAX_LIMIT: u32 = 100;
/// Longest search query, in bytes.
pub const MAX_QUERY_BYTES: usize = 1024;
/// The best text matches that recency and importance re-rank; a bound on the work per search.
const CANDIDATES: i64 = 1000;
/// Half-life of the recency weight: 30 days.
const HALF_LIFE_MS: f64 = 30.0 * 24.0 * 3600.0 * 1000.0;

/// The columns [`memory_from_row`] reads, in order.
const MEMORY_COLUMNS: &str = "id, kind, scope, content, importance, tags, source, created_at, updated_at";

fn kind_str(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Semantic => "semantic",
        MemoryKind::Episodic => "episodic",
        MemoryKind::Procedural => "procedural",
    }
}

fn parse_kind(text: &str) -> Option<MemoryKind> {
    match text {
        "semantic" => Some(MemoryKind::Semantic),
        "episodic" => Some(MemoryKind::Episodic),
        "procedural" => Some(MemoryKind::Procedural),
        _ => None,
    }
}

fn bad_column(index: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, what.into())
}

fn memory_from_row(row: &Row<'_>) -> rusqlite::Result<Memory> {
    let kind_text: String = row.get(1)?;
    let kind = parse_kind(&kind_text).ok_or_else(|| bad_column(1, format!("unknown memory kind {kind_text:?}")))?;
    let tags_text: String = row.get(5)?;
    let tags = serde_json::from_str(&tags_text).map_err(|error| bad_column(5, format!("tags: {error}")))?;
    Ok(Memory {
        id: row.get(0)?,
        kind,
        scope: row.get(2)?,
        content: row.get(3)?,
        importance: row.get(4)?,
        tags,
        source: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        score: None,
    })
}

fn validate_scope(field: &str, scope: &str) -> Result<(), StoreError> {
    if scope.is_empty() || scope.len() > MAX_SCOPE_BYTES || scope.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "{field} must be 1-{MAX_SCOPE_BYTES} bytes of printable characters (global, agent:<id>, or your own)"
        )));
    }
    Ok(())
}

fn validate_content(content: &str) -> Result<(), StoreError> {
    if content.is_empty() {
        return Err(StoreError::Invalid("content must not be empty".into()));
    }
    if content.len() > MAX_CONTENT_BYTES {
        return Err(StoreError::Invalid(format!(
            "content is {} bytes; the limit is {MAX_CONTENT_BYTES}",
            content.len()
        )));
    }
    Ok(())
}

fn validate_importance(importance: f64) -> Result<f64, StoreError> {
    if !importance.is_finite() || !(0.0..=1.0).contains(&importance) {
        return Err(StoreError::Invalid(format!(
            "importance must be between 0 and 1, not {importance}"
        )));
    }
    Ok(importance)
}

fn validate_tag(field: &str, tag: &str) -> Result<(), StoreError> {
    let chars = tag.chars().count();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '-');
    if chars == 0 || chars > MAX_TAG_CHARS || !tag.chars().all(allowed) {
        return Err(StoreError::Invalid(format!(
            "{field} {tag:?} must be 1-{MAX_TAG_CHARS} characters of lowercase letters, digits and _ . : -"
        )));
    }
    Ok(())
}

/// Checks tags and drops repeats (keeping the first); the JSON list to store.
fn validate_tags(tags: Vec<String>) -> Result<String, StoreError> {
    if tags.len() > MAX_TAGS {
        return Err(StoreError::Invalid(format!(
            "tags has {} entries; at most {MAX_TAGS} are allowed",
            tags.len()
        )));
    }
    let mut kept: Vec<String> = Vec::with_capacity(tags.len());
    for (index, tag) in tags.into_iter().enumerate() {
        validate_tag(&format!("tags[{index}]"), &tag)?;
        if !kept.contains(&tag) {
            kept.push(tag);
        }
    }
    serde_json::to_string(&kept).map_err(|error| StoreError::Internal(format!("cannot serialize tags: {error}")))
}

/// Turns user text into an FTS5 query that cannot carry FTS5 syntax: the text is cut into words
/// (runs of letters and digits, as the index's tokenizer cuts it), each word becomes a quoted
/// string, and the words are joined with OR so a question finds memories sharing any of its words
/// (those sharing more, and rarer, rank higher). `NEAR(`, `*`, `"`, `-`, `OR` and the like arrive
/// as plain words or separators.
pub fn fts_query(text: &str) -> Result<String, StoreError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(StoreError::Invalid(format!(
            "query is {} bytes; the limit is {MAX_QUERY_BYTES}",
            text.len()
        )));
    }
    let mut words: Vec<String> = Vec::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        let word = word.to_lowercase();
        if !words.contains(&word) {
            words.push(word);
        }
    }
    if words.is_empty() {
        return Err(StoreError::Invalid(format!(
            "query {text:?} has no words to search for"
        )));
    }
    let quoted: Vec<String> = words
        .iter()
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect();
    Ok(quoted.join(" OR "))
}

/// A search hit's rank, higher is better, in [0, 1]:
///
/// ```text
/// score = relevance × (0.5 + 0.5 × recency) × (0.5 + 0.5 × importance)
/// relevance  = bm25 / best bm25 of this search         (1 for the best text match; bm25 sign-flipped so higher is better)
/// recency    = 2^(−age / 30 days), age = now − updated_at (1 when just written, ½ after 30 days)
/// importance = the memory's own, 0 to 1
/// ```
///
/// Text relevance leads; an old or unimportant memory keeps at least half its weight on each
/// count, so it can still win on a much better match. Relevance is relative to the best match of
/// the same search because bm25's scale depends on the corpus (a word in most memories scores
/// near zero). The best text match, written just now, with importance 1 scores 1.
pub fn score(bm25: f64, best_bm25: f64, age_ms: u64, importance: f64) -> f64 {
    let relevance = if best_bm25 > 0.0 {
        (bm25 / best_bm25).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let recency = (-(age_ms as f64) / HALF_LIFE_MS).exp2();
    relevance * (0.5 + 0.5 * recency) * (0.5 + 0.5 * importance.clamp(0.0, 1.0))
}

/// One search candidate before its full row is read.
struct Candidate {
    num: i64,
    score: f64,
    /// Breaks ties: the most recently written first.
    rev: i64,
}

impl Store {
    /// Adds a memory; its id (`mem_<ulid>`) once committed.
    pub async fn add_memory(&self, params: MemoryAddParams, default_source: &str) -> Result<String, StoreError> {
        validate_scope("scope", &params.scope)?;
        validate_content(&params.content)?;
        let importance = validate_importance(params.importance.unwrap_or(DEFAULT_IMPORTANCE))?;
        let tags = validate_tags(params.tags.unwrap_or_default())?;
        let source = source_or(params.source, default_source)?;
        let id = aiventbus_rpc::ids::prefixed("mem");
        let kind = kind_str(params.kind);
        let (scope, content) = (params.scope, params.content);
        self.write(move |tx, now_ms| {
            let ts = format_ts(now_ms);
            tx.prepare_cached(
                "INSERT INTO memories (id, kind, scope, content, importance, tags, source, created_at, \
                 updated_at, updated_ms, rev) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, \
                 (SELECT COALESCE(MAX(rev), 0) + 1 FROM memories))",
            )?
            .execute(rusqlite::params![
                id,
                kind,
                scope,
                content,
                importance,
                tags,
                source,
                ts,
                sql_int(now_ms)
            ])?;
            Ok(id)
        })
        .await
    }

    /// One memory; [`StoreError::NotFound`] when there is none with that id.
    pub async fn get_memory(&self, id: &str) -> Result<Memory, StoreError> {
        let id = id.to_owned();
        self.readers()
            .run(move |conn| {
                conn.prepare_cached(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE id = ?1"))?
                    .query_row([&id], memory_from_row)
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound(format!("no memory {id}")))
            })
            .await
    }

    /// Memories matching every given filter, most recently updated first.
    pub async fn list_memories(&self, params: MemoryListParams) -> Result<Vec<Memory>, StoreError> {
        let limit = list_limit(params.limit, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT)?;
        let mut sql = format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE 1");
        let mut values = Vec::new();
        if let Some(scope) = params.scope {
            validate_scope("scope", &scope)?;
            values.push(Sql::Text(scope));
            sql.push_str(&format!(" AND scope = ?{}", values.len()));
        }
        if let Some(kind) = params.kind {
            values.push(Sql::Text(kind_str(kind).to_owned()));
            sql.push_str(&format!(" AND kind = ?{}", values.len()));
        }
        if let Some(tag) = params.tag {
            validate_tag("tag", &tag)?;
            values.push(Sql::Text(tag));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(memories.tags) WHERE value = ?{})",
                values.len()
            ));
        }
        values.push(Sql::Integer(i64::from(limit)));
        sql.push_str(&format!(" ORDER BY rev DESC LIMIT ?{}", values.len()));
        self.readers()
            .run(move |conn| {
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(rusqlite::params_from_iter(values), memory_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Memories whose content shares words with `query`, best first by [`score`], each with its
    /// `score`.
    pub async fn search_memories(&self, params: MemorySearchParams) -> Result<Vec<Memory>, StoreError> {
        let limit = list_limit(params.limit, SEARCH_DEFAULT_LIMIT, SEARCH_MAX_LIMIT)? as usize;
        let query = fts_query(&params.query)?;
        if let Some(scope) = &params.scope {
            validate_scope("scope", scope)?;
        }
        let now_ms = self.now_ms();
        self.readers()
            .run(move |conn| {
                // One snapshot for the candidates and the rows read after ranking them.
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let mut candidates = {
                    let mut sql = String::from(
                        "SELECT m.num, -bm25(memories_fts), m.updated_ms, m.importance, m.rev \
                         FROM memories_fts JOIN memories m ON m.num = memories_fts.rowid \
                         WHERE memories_fts MATCH ?1",
                    );
                    let mut values = vec![Sql::Text(query)];
                    if let Some(scope) = params.scope {
                        values.push(Sql::Text(scope));
                        sql.push_str(" AND m.scope = ?2");
                    }
                    values.push(Sql::Integer(CANDIDATES));
                    sql.push_str(&format!(" ORDER BY bm25(memories_fts) LIMIT ?{}", values.len()));
                    let mut statement = tx.prepare_cached(&sql)?;
                    let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, f64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, f64>(3)?,
                            row.get::<_, i64>(4)?,
                        ))
                    })?;
                    let rows = rows.collect::<Result<Vec<_>, _>>()?;
                    // Rows come best match first.
                    let best = rows.first().map_or(0.0, |row| row.1);
                    rows.into_iter()
                        .map(|(num, bm25, updated_ms, importance, rev)| Candidate {
                            num,
                            score: score(bm25, best, now_ms.saturating_sub(from_sql_int(updated_ms)), importance),
                            rev,
                        })
                        .collect::<Vec<_>>()
                };
                candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.rev.cmp(&a.rev)));
                candidates.truncate(limit);
                let mut statement =
                    tx.prepare_cached(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE num = ?1"))?;
                let mut memories = Vec::with_capacity(candidates.len());
                for candidate in candidates {
                    let mut memory = statement.query_row([candidate.num], memory_from_row)?;
                    memory.score = Some(candidate.score);
                    memories.push(memory);
                }
                Ok(memories)
            })
            .await
    }

    /// Changes a memory's content, importance or tags (at least one); the updated memory.
    pub async fn update_memory(&self, params: MemoryUpdateParams) -> Result<Memory, StoreError> {
        if params.content.is_none() && params.importance.is_none() && params.tags.is_none() {
            return Err(StoreError::Invalid(
                "give at least one of content, importance, tags to change".into(),
            ));
        }
        if let Some(content) = &params.content {
            validate_content(content)?;
        }
        let importance = params.importance.map(validate_importance).transpose()?;
        let tags = params.tags.map(validate_tags).transpose()?;
        let MemoryUpdateParams { id, content, .. } = params;
        self.write(move |tx, now_ms| {
            // Content is only assigned when it changes, so the index is only rewritten then.
            let content_set = if content.is_some() { "content = ?2, " } else { "" };
            let sql = format!(
                "UPDATE memories SET {content_set}importance = COALESCE(?3, importance), \
                 tags = COALESCE(?4, tags), updated_at = ?5, updated_ms = ?6, \
                 rev = (SELECT MAX(rev) + 1 FROM memories) \
                 WHERE id = ?1 RETURNING {MEMORY_COLUMNS}"
            );
            // With content unchanged ?2 is absent from the SQL; its slot still exists (SQLite
            // numbers slots up to the highest), so the same six values bind either way.
            let values = [
                Sql::Text(id.clone()),
                content.map_or(Sql::Null, Sql::Text),
                importance.map_or(Sql::Null, Sql::Real),
                tags.map_or(Sql::Null, Sql::Text),
                Sql::Text(format_ts(now_ms)),
                Sql::Integer(sql_int(now_ms)),
            ];
            let mut statement = tx.prepare_cached(&sql)?;
            statement
                .query_row(rusqlite::params_from_iter(values), memory_from_row)
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("no memory {id}")))
        })
        .await
    }

    /// Removes a memory (and its index entry); false when there was none.
    pub async fn delete_memory(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx, _| {
            Ok(tx
                .prepare_cached("DELETE FROM memories WHERE id = ?1")?
                .execute([&id])?
                > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{T0, open_test};
    use serde_json::json;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn add(kind: MemoryKind, scope: &str, content: &str) -> MemoryAddParams {
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

    fn ids(memories: &[Memory]) -> Vec<&str> {
        memories.iter().map(|memory| memory.id.as_str()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn add_get_list_round_trip() {
        let test = open_test(|_| {});
        let store = &test.store;
        let full = MemoryAddParams {
            importance: Some(0.9),
            tags: Some(vec!["editor".into(), "pref:ui".into(), "editor".into()]),
            source: Some("agent:agt_1".into()),
            ..add(MemoryKind::Semantic, "global", "The user edits with vim.\nLine two ✓")
        };
        let id = store.add_memory(full, "user:alice").await.unwrap();
        assert!(id.starts_with("mem_"), "{id}");
        let memory = store.get_memory(&id).await.unwrap();
        assert_eq!(
            memory,
            Memory {
                id: id.clone(),
                kind: MemoryKind::Semantic,
                scope: "global".into(),
                content: "The user edits with vim.\nLine two ✓".into(),
                importance: 0.9,
                tags: vec!["editor".into(), "pref:ui".into()],
                source: "agent:agt_1".into(),
                created_at: format_ts(T0),
                updated_at: format_ts(T0),
                score: None,
            }
        );
        test.clock.advance(10);
        let second = store
            .add_memory(
                add(MemoryKind::Episodic, "agent:agt_1", "Ran the backup job"),
                "user:alice",
            )
            .await
            .unwrap();
        let stored = store.get_memory(&second).await.unwrap();
        assert_eq!(
            (stored.importance, stored.source.as_str()),
            (DEFAULT_IMPORTANCE, "user:alice")
        );
        assert!(stored.tags.is_empty());
        test.clock.advance(10);
        let third = store
            .add_memory(
                add(MemoryKind::Procedural, "global", "To deploy, run make release"),
                "system",
            )
            .await
            .unwrap();

        let list = |params: MemoryListParams| async move { store.list_memories(params).await.unwrap() };
        let everything = list(MemoryListParams::default()).await;
        assert_eq!(ids(&everything), vec![&third, &second, &id], "newest first");
        let global = MemoryListParams {
            scope: Some("global".into()),
            ..MemoryListParams::default()
        };
        assert_eq!(ids(&list(global).await), vec![&third, &id]);
        let episodic = MemoryListParams {
            kind: Some(MemoryKind::Episodic),
            ..MemoryListParams::default()
        };
        assert_eq!(ids(&list(episodic).await), vec![&second]);
        let tagged = MemoryListParams {
            tag: Some("pref:ui".into()),
            ..MemoryListParams::default()
        };
        assert_eq!(ids(&list(tagged).await), vec![&id]);
        let combined = MemoryListParams {
            scope: Some("global".into()),
            kind: Some(MemoryKind::Procedural),
            limit: Some(1),
            ..MemoryListParams::default()
        };
        assert_eq!(ids(&list(combined).await), vec![&third]);
        let limited = MemoryListParams {
            limit: Some(2),
            ..MemoryListParams::default()
        };
        assert_eq!(ids(&list(limited).await), vec![&third, &second]);

        // Within one millisecond the order is the order of the writes; an update counts as one.
        let touch = MemoryUpdateParams {
            id: second.clone(),
            content: None,
            importance: Some(0.6),
            tags: None,
        };
        store.update_memory(touch).await.unwrap();
        let everything = list(MemoryListParams::default()).await;
        assert_eq!(ids(&everything), vec![&second, &third, &id]);

        let missing = store.get_memory("mem_nothing").await.unwrap_err();
        assert_eq!(missing.code().code(), -32002);
        assert_eq!(missing.to_string(), "no memory mem_nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn validation_names_the_field() {
        let test = open_test(|_| {});
        let store = &test.store;
        let base = || add(MemoryKind::Semantic, "global", "text");
        let cases = [
            (
                MemoryAddParams {
                    scope: String::new(),
                    ..base()
                },
                "scope",
            ),
            (
                MemoryAddParams {
                    scope: "x".repeat(256),
                    ..base()
                },
                "scope",
            ),
            (
                MemoryAddParams {
                    scope: "a\nb".into(),
                    ..base()
                },
                "scope",
            ),
            (
                MemoryAddParams {
                    content: String::new(),
                    ..base()
                },
                "content",
            ),
            (
                MemoryAddParams {
                    content: "x".repeat(MAX_CONTENT_BYTES + 1),
                    ..base()
                },
                "content",
            ),
            (
                MemoryAddParams {
                    importance: Some(1.5),
                    ..base()
                },
                "importance",
            ),
            (
                MemoryAddParams {
                    importance: Some(-0.1),
                    ..base()
                },
                "importance",
            ),
            (
                MemoryAddParams {
                    importance: Some(f64::NAN),
                    ..base()
                },
                "importance",
            ),
            (
                MemoryAddParams {
                    tags: Some(vec!["ok".into(), "Upper".into()]),
                    ..base()
                },
                "tags[1]",
            ),
            (
                MemoryAddParams {
                    tags: Some(vec![String::new()]),
                    ..base()
                },
                "tags[0]",
            ),
            (
                MemoryAddParams {
                    tags: Some(vec!["x".repeat(65)]),
                    ..base()
                },
                "tags[0]",
            ),
            (
                MemoryAddParams {
                    tags: Some(vec!["a b".into()]),
                    ..base()
                },
                "tags[0]",
            ),
            (
                MemoryAddParams {
                    tags: Some((0..=MAX_TAGS).map(|n| format!("t{n}")).collect()),
                    ..base()
                },
                "tags",
            ),
            (
                MemoryAddParams {
                    source: Some("nobody".into()),
                    ..base()
                },
                "source",
            ),
        ];
        for (params, field) in cases {
            let error = store.add_memory(params, "system").await.unwrap_err();
            assert_eq!(error.code().code(), -32602, "{error}");
            assert!(error.to_string().starts_with(field), "{error} should name {field}");
        }
        // The bounds themselves are fine.
        let edge = MemoryAddParams {
            content: "x".repeat(MAX_CONTENT_BYTES),
            importance: Some(1.0),
            tags: Some((0..MAX_TAGS).map(|n| format!("t{n}")).collect()),
            ..base()
        };
        store.add_memory(edge, "system").await.unwrap();
        // The kind is checked when params are read.
        let bad_kind =
            serde_json::from_value::<MemoryAddParams>(json!({"kind": "dream", "scope": "g", "content": "c"}));
        assert!(bad_kind.unwrap_err().to_string().contains("dream"));

        let id = store.add_memory(base(), "system").await.unwrap();
        let update = |content: Option<&str>, importance: Option<f64>, tags: Option<Vec<String>>| MemoryUpdateParams {
            id: id.clone(),
            content: content.map(str::to_owned),
            importance,
            tags,
        };
        for (params, field) in [
            (update(None, None, None), "give at least one"),
            (update(Some(""), None, None), "content"),
            (update(None, Some(2.0), None), "importance"),
            (update(None, None, Some(vec!["BAD".into()])), "tags[0]"),
        ] {
            let error = store.update_memory(params).await.unwrap_err();
            assert_eq!(error.code().code(), -32602, "{error}");
            assert!(error.to_string().starts_with(field), "{error} should name {field}");
        }
        for (params, field) in [
            (
                MemoryListParams {
                    tag: Some("No".into()),
                    ..MemoryListParams::default()
                },
                "tag",
            ),
            (
                MemoryListParams {
                    scope: Some(String::new()),
                    ..MemoryListParams::default()
                },
                "scope",
            ),
            (
                MemoryListParams {
                    limit: Some(0),
                    ..MemoryListParams::default()
                },
                "limit",
            ),
        ] {
            let error = store.list_memories(params).await.unwrap_err();
            assert!(error.to_string().starts_with(field), "{error} should name {field}");
        }
        for (params, field) in [
            (search("   "), "query"),
            (search("!!! --- ***"), "query"),
            (search(&"word ".repeat(300)), "query"),
            (
                MemorySearchParams {
                    limit: Some(SEARCH_MAX_LIMIT + 1),
                    ..search("x")
                },
                "limit",
            ),
        ] {
            let error = store.search_memories(params).await.unwrap_err();
            assert_eq!(error.code().code(), -32602, "{error}");
            assert!(error.to_string().starts_with(field), "{error} should name {field}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn search_ranks_the_relevant_memory_first_and_filters_by_scope() {
        let test = open_test(|_| {});
        let store = &test.store;
        let add_in = |scope: &str, content: &str| {
            let params = add(MemoryKind::Semantic, scope, content);
            async move { store.add_memory(params, "system").await.unwrap() }
        };
        let noise = add_in("global", "The weather was sunny and the garden needed water").await;
        let weak = add_in(
            "global",
            "Meeting notes: we talked about lunch, the office move, holidays, parking and the database once",
        )
        .await;
        let strong = add_in(
            "global",
            "Database backups: the database is backed up nightly; restore the database with pg_restore",
        )
        .await;
        let other_scope = add_in("agent:agt_9", "database database database credentials rotate monthly").await;
        add_in("global", "Cats sleep most of the day").await;

        let found = store.search_memories(search("database backups")).await.unwrap();
        assert_eq!(ids(&found)[0], strong, "{found:#?}");
        assert!(ids(&found).contains(&weak.as_str()));
        assert!(
            !ids(&found).contains(&noise.as_str()),
            "a memory without the words is not a hit"
        );
        let scores: Vec<f64> = found.iter().map(|memory| memory.score.unwrap()).collect();
        assert!(
            scores.windows(2).all(|pair| pair[0] >= pair[1]),
            "best first: {scores:?}"
        );
        assert!(scores.iter().all(|score| *score > 0.0 && *score <= 1.0), "{scores:?}");

        let scoped = MemorySearchParams {
            scope: Some("agent:agt_9".into()),
            ..search("database")
        };
        assert_eq!(ids(&store.search_memories(scoped).await.unwrap()), vec![&other_scope]);
        let global = MemorySearchParams {
            scope: Some("global".into()),
            ..search("database")
        };
        let global = store.search_memories(global).await.unwrap();
        assert!(global.iter().all(|memory| memory.scope == "global"));
        assert_eq!(global.len(), 2);
        let limited = MemorySearchParams {
            limit: Some(1),
            ..search("database")
        };
        assert_eq!(store.search_memories(limited).await.unwrap().len(), 1);
        // Stemming: another form of the word finds it.
        assert_eq!(
            ids(&store.search_memories(search("restoring")).await.unwrap()),
            vec![&strong]
        );
        assert!(store.search_memories(search("zebra")).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fts_syntax_in_a_query_is_plain_text() {
        let test = open_test(|_| {});
        let store = &test.store;
        let id = store
            .add_memory(
                add(MemoryKind::Semantic, "global", "near the lake: a or b, star * rating"),
                "system",
            )
            .await
            .unwrap();
        for query in [
            r#""a OR b" NEAR( *"#,
            "NEAR(lake star, 2)",
            "lake*",
            "-lake",
            "content:lake",
            "^lake",
            "lake AND NOT",
            "(lake",
            "\"unbalanced",
            "lake'; DROP TABLE memories; --",
            "{content}: lake",
            "NOT",
            "AND OR NEAR",
        ] {
            let found = store.search_memories(search(query)).await;
            let found = found.unwrap_or_else(|error| panic!("{query:?}: {error}"));
            if query.to_lowercase().contains("lake") || query.contains("NEAR") || query.contains("OR") {
                assert_eq!(ids(&found), vec![&id], "{query:?}");
            }
        }
        assert_eq!(store.list_memories(MemoryListParams::default()).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn importance_and_recency_influence_rank() {
        let test = open_test(|_| {});
        let store = &test.store;
        let with_importance = |importance: f64| MemoryAddParams {
            importance: Some(importance),
            ..add(MemoryKind::Semantic, "global", "the deploy key lives in the vault")
        };
        let low = store.add_memory(with_importance(0.1), "system").await.unwrap();
        let high = store.add_memory(with_importance(0.9), "system").await.unwrap();
        let medium = store.add_memory(with_importance(0.5), "system").await.unwrap();
        let found = store.search_memories(search("deploy key")).await.unwrap();
        assert_eq!(ids(&found), vec![&high, &medium, &low]);

        // Same text and importance: the more recently updated ranks first, and updating an old
        // memory makes it recent again.
        let test2 = open_test(|_| {});
        let store = &test2.store;
        let plain = || add(MemoryKind::Episodic, "global", "rotated the api token");
        let old = store.add_memory(plain(), "system").await.unwrap();
        test2.clock.advance(60 * DAY_MS);
        let fresh = store.add_memory(plain(), "system").await.unwrap();
        let found = store.search_memories(search("api token")).await.unwrap();
        assert_eq!(ids(&found), vec![&fresh, &old]);
        let (fresh_score, old_score) = (found[0].score.unwrap(), found[1].score.unwrap());
        // 60 days is two half-lives: recency weight 0.5 + 0.5/4 against 1.
        assert!(
            (old_score / fresh_score - 0.625).abs() < 1e-9,
            "{old_score} / {fresh_score}"
        );

        test2.clock.advance(DAY_MS);
        let touched = MemoryUpdateParams {
            id: old.clone(),
            content: None,
            importance: None,
            tags: Some(vec!["touched".into()]),
        };
        store.update_memory(touched).await.unwrap();
        let found = store.search_memories(search("api token")).await.unwrap();
        assert_eq!(ids(&found), vec![&old, &fresh]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_reindexes_and_delete_unindexes() {
        let test = open_test(|_| {});
        let store = &test.store;
        let id = store
            .add_memory(
                add(MemoryKind::Procedural, "global", "restart nginx with systemctl"),
                "system",
            )
            .await
            .unwrap();
        let keep = store
            .add_memory(
                add(MemoryKind::Procedural, "global", "nginx logs are in /var/log"),
                "system",
            )
            .await
            .unwrap();
        test.clock.advance(1000);
        let changed = MemoryUpdateParams {
            id: id.clone(),
            content: Some("reload caddy with its admin api".into()),
            importance: Some(0.8),
            tags: Some(vec!["web".into()]),
        };
        let updated = store.update_memory(changed).await.unwrap();
        assert_eq!(updated.content, "reload caddy with its admin api");
        assert_eq!(
            (updated.importance, updated.tags.clone()),
            (0.8, vec!["web".to_owned()])
        );
        assert_eq!(updated.created_at, format_ts(T0));
        assert_eq!(updated.updated_at, format_ts(T0 + 1000));
        assert_eq!(store.get_memory(&id).await.unwrap(), updated);

        assert!(store.search_memories(search("systemctl")).await.unwrap().is_empty());
        assert_eq!(ids(&store.search_memories(search("nginx")).await.unwrap()), vec![&keep]);
        assert_eq!(ids(&store.search_memories(search("caddy")).await.unwrap()), vec![&id]);

        // Changing only the importance keeps the text findable.
        let importance_only = MemoryUpdateParams {
            id: id.clone(),
            content: None,
            importance: Some(0.2),
            tags: None,
        };
        let updated = store.update_memory(importance_only).await.unwrap();
        assert_eq!((updated.importance, updated.tags), (0.2, vec!["web".to_owned()]));
        assert_eq!(ids(&store.search_memories(search("caddy")).await.unwrap()), vec![&id]);

        let missing = MemoryUpdateParams {
            id: "mem_gone".into(),
            content: Some("x".into()),
            importance: None,
            tags: None,
        };
        assert_eq!(store.update_memory(missing).await.unwrap_err().code().code(), -32002);

        assert!(store.delete_memory(&id).await.unwrap());
        assert!(!store.delete_memory(&id).await.unwrap());
        assert!(store.search_memories(search("caddy")).await.unwrap().is_empty());
        assert_eq!(store.get_memory(&id).await.unwrap_err().code().code(), -32002);
        assert_eq!(ids(&store.search_memories(search("nginx")).await.unwrap()), vec![&keep]);
        // The external-content index agrees with its table.
        let conn = rusqlite::Connection::open(&store.config().path).unwrap();
        conn.execute(
            "INSERT INTO memories_fts (memories_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memories_survive_reopen() {
        let test = open_test(|_| {});
        let id = test
            .store
            .add_memory(
                add(MemoryKind::Semantic, "global", "the printer is on the third floor"),
                "system",
            )
            .await
            .unwrap();
        let before = test.store.get_memory(&id).await.unwrap();
        let test = test.reopen(|_| {}).await;
        assert_eq!(test.store.get_memory(&id).await.unwrap(), before);
        let found = test.store.search_memories(search("printer")).await.unwrap();
        assert_eq!(ids(&found), vec![&id]);
        let changed = MemoryUpdateParams {
            id: id.clone(),
            content: Some("the printer moved to the lobby".into()),
            importance: None,
            tags: None,
        };
        test.store.update_memory(changed).await.unwrap();
        assert_eq!(
            ids(&test.store.search_memories(search("lobby")).await.unwrap()),
            vec![&id]
        );
    }

    #[test]
    fn queries_become_quoted_words() {
        assert_eq!(
            fts_query(r#""a OR b" NEAR( *"#).unwrap(),
            r#""a" OR "or" OR "b" OR "near""#
        );
        assert_eq!(fts_query("Deploy, deploy; DEPLOY").unwrap(), r#""deploy""#);
        assert_eq!(
            fts_query("café_au-lait 42").unwrap(),
            r#""café" OR "au" OR "lait" OR "42""#
        );
        assert!(fts_query("*** ()").is_err());
    }

    #[test]
    fn score_weights() {
        assert_eq!(score(2.0, 2.0, 0, 1.0), 1.0);
        assert_eq!(score(1.0, 2.0, 0, 1.0), 0.5);
        assert_eq!(score(2.0, 2.0, 0, 0.0), 0.5);
        let month = HALF_LIFE_MS as u64;
        assert!((score(2.0, 2.0, month, 1.0) - 0.75).abs() < 1e-12);
        assert!(score(2.0, 2.0, u64::MAX, 0.0) >= 0.25);
        // A corpus where the words are everywhere gives bm25 near zero: relevance still ranks.
        assert_eq!(score(0.0, 0.0, 0, 1.0), 1.0);
    }
}
