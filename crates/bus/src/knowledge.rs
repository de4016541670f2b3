//! Knowledge: durable key/value facts (`user.pref.editor = "vim"`) with the source that stated them
//! last. Writes go through the store's writer thread and are answered after commit; reads use the
//! read pool. Listing by prefix is a range scan on the key, so `%` and `_` mean nothing special.

use aiventbus_proto::event::validate_source;
use aiventbus_proto::methods::{Fact, KnowledgeListParams, KnowledgeSetParams, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT};
use rusqlite::{OptionalExtension, Row};
use serde_json::Value;

use crate::store::{Store, StoreError, format_ts};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// The columns [`fact_from_row`] reads, in order.
const FACT_COLUMNS: &str = "key, value, source, created_at, updated_at";

/// Whether `byte` may appear in a key: `[A-Za-z0-9_.:/-]`.
fn key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'/' | b'-')
}

/// Checks a key: 1-255 bytes of `[A-Za-z0-9_.:/-]`.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StoreError::Invalid(format!(
            "key must be 1-{MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    check_key_chars("key", key)
}

fn check_key_chars(field: &str, text: &str) -> Result<(), StoreError> {
    match text.chars().find(|c| !c.is_ascii() || !key_byte(*c as u8)) {
        Some(bad) => Err(StoreError::Invalid(format!(
            "{field} {text:?} contains {bad:?}; keys use only letters, digits and _ . : / -"
        ))),
        None => Ok(()),
    }
}

/// The smallest string greater than every string starting with `prefix`, for a range scan.
/// `prefix` holds key characters only, all ASCII below `0x7F`, so bumping its last byte stays
/// ASCII and no key can sit between the bumped prefix and its true successor.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.pop()?;
    bytes.push(last + 1);
    String::from_utf8(bytes).ok()
}

fn fact_from_row(row: &Row<'_>) -> rusqlite::Result<Fact> {
    let text: String = row.get(1)?;
    let value = serde_json::from_str(&text)
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(error)))?;
    Ok(Fact {
        key: row.get(0)?,
        value,
        source: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

/// Serializes a JSON value that must fit in `limit` bytes; `field` names it in the error.
pub(crate) fn bounded_json(field: &str, value: &Value, limit: usize) -> Result<String, StoreError> {
    let text = serde_json::to_string(value)
        .map_err(|error| StoreError::Internal(format!("cannot serialize {field}: {error}")))?;
    if text.len() > limit {
        return Err(StoreError::TooLarge(format!(
            "{field} is {} bytes serialized; the limit is {limit}",
            text.len()
        )));
    }
    Ok(text)
}

/// The source to record: the caller's, checked, else `default_source`.
pub(crate) fn source_or(given: Option<String>, default_source: &str) -> Result<String, StoreError> {
    let source = given.unwrap_or_else(|| default_source.to_owned());
    validate_source(&source).map_err(|message| StoreError::Invalid(format!("source: {message}")))?;
    Ok(source)
}

/// Checks a `limit` against the listing bounds.
pub(crate) fn list_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, StoreError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(StoreError::Invalid(format!(
            "limit must be between 1 and {max}, not {limit}"
        )));
    }
    Ok(limit)
}

impl Store {
    /// Stores or replaces a fact: `created_at` stays, `value`, `source` and `updated_at` are
    /// replaced. The value may be any JSON up to the payload limit. Answered after commit.
    pub async fn set_fact(&self, params: KnowledgeSetParams, default_source: &str) -> Result<Fact, StoreError> {
        validate_key(&params.key)?;
        let value = bounded_json("value", &params.value, self.config().max_payload_bytes)?;
        let source = source_or(params.source, default_source)?;
        let key = params.key;
        self.write(move |tx, now_ms| {
            let ts = format_ts(now_ms);
            let fact = tx
                .prepare_cached(&format!(
                    "INSERT INTO knowledge (key, value, source, created_at, updated_at, rev) \
                     VALUES (?1, ?2, ?3, ?4, ?4, (SELECT COALESCE(MAX(rev), 0) + 1 FROM knowledge)) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, source = excluded.source, \
                     updated_at = excluded.updated_at, rev = excluded.rev \
                     RETURNING {FACT_COLUMNS}"
                ))?
                .query_row(rusqlite::params![key, value, source, ts], fact_from_row)?;
            Ok(fact)
        })
        .await
    }

    /// One fact; [`StoreError::NotFound`] when the key is not set.
    pub async fn get_fact(&self, key: &str) -> Result<Fact, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.readers()
            .run(move |conn| {
                conn.prepare_cached(&format!("SELECT {FACT_COLUMNS} FROM knowledge WHERE key = ?1"))?
                    .query_row([&key], fact_from_row)
                    .optional()?
                    .ok_or_else(|| StoreError::NotFound(format!("no fact {key}")))
            })
            .await
    }

    /// Removes a fact; false when there was none.
    pub async fn delete_fact(&self, key: &str) -> Result<bool, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.write(move |tx, _| {
            Ok(tx
                .prepare_cached("DELETE FROM knowledge WHERE key = ?1")?
                .execute([&key])?
                > 0)
        })
        .await
    }

    /// Facts whose key starts with `prefix` (all when absent), most recently updated first.
    pub async fn list_facts(&self, params: KnowledgeListParams) -> Result<Vec<Fact>, StoreError> {
        let limit = list_limit(params.limit, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT)?;
        let prefix = params.prefix.filter(|prefix| !prefix.is_empty());
        if let Some(prefix) = &prefix {
            if prefix.len() > MAX_KEY_BYTES {
                return Err(StoreError::Invalid(format!(
                    "prefix must be at most {MAX_KEY_BYTES} bytes, not {}",
                    prefix.len()
                )));
            }
            check_key_chars("prefix", prefix)?;
        }
        self.readers()
            .run(move |conn| {
                let limit = i64::from(limit);
                let order = "ORDER BY rev DESC LIMIT";
                let facts = match prefix.as_deref().map(|prefix| (prefix, prefix_end(prefix))) {
                    Some((start, Some(end))) => {
                        let mut statement = conn.prepare_cached(&format!(
                            "SELECT {FACT_COLUMNS} FROM knowledge WHERE key >= ?1 AND key < ?2 {order} ?3"
                        ))?;
                        let rows = statement.query_map(rusqlite::params![start, end, limit], fact_from_row)?;
                        rows.collect::<Result<Vec<_>, _>>()?
                    }
                    _ => {
                        let mut statement =
                            conn.prepare_cached(&format!("SELECT {FACT_COLUMNS} FROM knowledge {order} ?1"))?;
                        let rows = statement.query_map([limit], fact_from_row)?;
                        rows.collect::<Result<Vec<_>, _>>()?
                    }
                };
                Ok(facts)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{T0, open_test};
    use serde_json::json;

    fn set(key: &str, value: Value) -> KnowledgeSetParams {
        KnowledgeSetParams {
            key: key.to_owned(),
            value,
            source: None,
        }
    }

    fn keys(facts: &[Fact]) -> Vec<&str> {
        facts.iter().map(|fact| fact.key.as_str()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_get_delete_round_trip_and_upsert_keeps_created_at() {
        let test = open_test(|_| {});
        let store = &test.store;
        let value = json!({"name": "vim", "args": ["-u", "NONE"], "n": 1.5, "ok": true, "none": null});
        let first = store
            .set_fact(set("user.pref.editor", value.clone()), "user:alice")
            .await
            .unwrap();
        assert_eq!(first.value, value);
        assert_eq!(first.source, "user:alice");
        assert_eq!(
            (first.created_at.as_str(), first.updated_at.as_str()),
            (&*format_ts(T0), &*format_ts(T0))
        );
        assert_eq!(store.get_fact("user.pref.editor").await.unwrap(), first);

        test.clock.advance(5_000);
        let given = KnowledgeSetParams {
            source: Some("agent:agt_1".into()),
            ..set("user.pref.editor", json!("emacs"))
        };
        let second = store.set_fact(given, "user:alice").await.unwrap();
        assert_eq!(second.value, json!("emacs"));
        assert_eq!(second.source, "agent:agt_1", "the source is replaced");
        assert_eq!(second.created_at, format_ts(T0), "created_at is kept");
        assert_eq!(second.updated_at, format_ts(T0 + 5_000));
        assert_eq!(store.get_fact("user.pref.editor").await.unwrap(), second);

        assert!(store.delete_fact("user.pref.editor").await.unwrap());
        assert!(!store.delete_fact("user.pref.editor").await.unwrap());
        let missing = store.get_fact("user.pref.editor").await.unwrap_err();
        assert_eq!(missing.code().code(), -32002);
        assert_eq!(missing.to_string(), "no fact user.pref.editor");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefix_listing_is_literal_and_newest_first() {
        let test = open_test(|_| {});
        let store = &test.store;
        for key in ["a_b.1", "a_b.2", "axb.1", "a-b", "aab", "ab", "a_c", "b.1"] {
            store.set_fact(set(key, json!(key)), "system").await.unwrap();
            test.clock.advance(10);
        }
        let list = |prefix: &str, limit: Option<u32>| {
            let params = KnowledgeListParams {
                prefix: Some(prefix.to_owned()),
                limit,
            };
            async move { store.list_facts(params).await.unwrap() }
        };
        // `_` is an ordinary character, not a LIKE wildcard; `%` cannot be in a key, so a prefix
        // holding one is refused rather than matching everything.
        assert_eq!(keys(&list("a_", None).await), vec!["a_c", "a_b.2", "a_b.1"]);
        assert_eq!(keys(&list("a_b.", None).await), vec!["a_b.2", "a_b.1"]);
        assert_eq!(keys(&list("a", Some(2)).await), vec!["a_c", "ab"]);
        let percent = KnowledgeListParams {
            prefix: Some("a%".into()),
            limit: None,
        };
        let error = store.list_facts(percent).await.unwrap_err();
        assert_eq!(error.code().code(), -32602);
        assert!(error.to_string().starts_with("prefix"), "{error}");
        assert!(list("zzz", None).await.is_empty());
        let all = store.list_facts(KnowledgeListParams::default()).await.unwrap();
        assert_eq!(keys(&all)[0], "b.1");
        assert_eq!(all.len(), 8);
        // Updating a fact moves it to the front.
        store.set_fact(set("a_b.1", json!(2)), "system").await.unwrap();
        assert_eq!(keys(&list("a_b", None).await), vec!["a_b.1", "a_b.2"]);
        // Within one millisecond the order is still the order of the writes.
        for key in ["same.b", "same.a", "same.c", "same.b"] {
            store.set_fact(set(key, json!(0)), "system").await.unwrap();
        }
        assert_eq!(keys(&list("same.", None).await), vec!["same.b", "same.c", "same.a"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn validation_names_the_field() {
        let test = open_test(|config| config.max_payload_bytes = 100);
        let store = &test.store;
        let cases = [
            (set("", json!(1)), "key"),
            (set(&"k".repeat(256), json!(1)), "key"),
            (set("has space", json!(1)), "key"),
            (set("ünïcode", json!(1)), "key"),
            (set("a%b", json!(1)), "key"),
            (
                KnowledgeSetParams {
                    source: Some("robot:x".into()),
                    ..set("ok", json!(1))
                },
                "source",
            ),
        ];
        for (params, field) in cases {
            let error = store.set_fact(params, "system").await.unwrap_err();
            assert_eq!(error.code().code(), -32602, "{error}");
            assert!(error.to_string().starts_with(field), "{error} should name {field}");
        }
        let too_large = store
            .set_fact(set("big", json!("x".repeat(200))), "system")
            .await
            .unwrap_err();
        assert_eq!(too_large.code().code(), -32006);
        assert!(too_large.to_string().starts_with("value"), "{too_large}");
        for (params, field) in [
            (
                KnowledgeListParams {
                    prefix: Some("a b".into()),
                    limit: None,
                },
                "prefix",
            ),
            (
                KnowledgeListParams {
                    prefix: None,
                    limit: Some(0),
                },
                "limit",
            ),
            (
                KnowledgeListParams {
                    prefix: None,
                    limit: Some(LIST_MAX_LIMIT + 1),
                },
                "limit",
            ),
        ] {
            let error = store.list_facts(params).await.unwrap_err();
            assert!(error.to_string().starts_with(field), "{error} should name {field}");
        }
        // The longest key and every allowed character are fine.
        let odd = format!("A-z_0.9:/{}", "k".repeat(MAX_KEY_BYTES - 9));
        store.set_fact(set(&odd, json!(null)), "system").await.unwrap();
        assert_eq!(store.get_fact(&odd).await.unwrap().value, Value::Null);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn facts_survive_reopen() {
        let test = open_test(|_| {});
        let fact = test
            .store
            .set_fact(set("keep.me", json!([1, 2])), "user:bob")
            .await
            .unwrap();
        let test = test.reopen(|_| {}).await;
        assert_eq!(test.store.get_fact("keep.me").await.unwrap(), fact);
    }

    #[test]
    fn prefix_end_bumps_the_last_byte() {
        assert_eq!(prefix_end("a_").as_deref(), Some("a`"));
        assert_eq!(prefix_end("user.z").as_deref(), Some("user.{"));
        assert_eq!(prefix_end(""), None);
    }
}
