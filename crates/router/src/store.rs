//! The router's own database, `<state>/router.db` (SQLite, WAL): the routing rules and the cursor,
//! the last bus seq whose routing is complete. Migrations are recorded in `schema_version`, as in
//! the bus. One connection behind a mutex; async callers reach it through `spawn_blocking`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aiventbus_proto::agents::Rule;
use aiventbus_proto::{ErrorCode, Priority};
use rusqlite::{Connection, ErrorCode as SqliteCode, OptionalExtension, Row, params};

/// Schema steps, applied in order; step `n` (1-based) brings the database to version `n`. Never
/// edit a released step: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: rules and the cursor.
    r#"
    CREATE TABLE rules (
        -- Creation order, stable across VACUUM: the tie-break after priority_order.
        position              INTEGER PRIMARY KEY,
        id                    TEXT NOT NULL UNIQUE,
        name                  TEXT NOT NULL UNIQUE,
        topic_pattern         TEXT NOT NULL,
        semantic_type_pattern TEXT,
        min_priority          TEXT,
        source_pattern        TEXT,
        agent_id              TEXT NOT NULL,
        model_override        TEXT,
        token_budget_override INTEGER,
        priority_order        INTEGER NOT NULL,
        enabled               INTEGER NOT NULL,
        created_at            TEXT NOT NULL,
        updated_at            TEXT NOT NULL
    );
    -- One row once the router has chosen where to start following the bus.
    CREATE TABLE cursor (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL
    );
    "#,
];

const RULE_COLUMNS: &str = "id, name, topic_pattern, semantic_type_pattern, min_priority, source_pattern, \
    agent_id, model_override, token_budget_override, priority_order, enabled, created_at, updated_at";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another rule has that name (-32003).
    #[error("{0}")]
    Conflict(String),
    /// The database failed (-32603, logged).
    #[error("router store: {0}")]
    Internal(String),
}

impl StoreError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Internal(error.to_string())
    }
}

/// The router's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating when missing) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let at =
            |what: &str, error: rusqlite::Error| StoreError::Internal(format!("{}: {what}: {error}", path.display()));
        let mut connection = Connection::open(path).map_err(|error| at("cannot open", error))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|error| at("cannot set busy_timeout", error))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|error| at("cannot enable WAL", error))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "{}: the router store needs WAL mode, the file system gave {mode}",
                path.display()
            )));
        }
        connection
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
            .map_err(|error| at("cannot configure", error))?;
        migrate(&mut connection).map_err(|error| StoreError::Internal(format!("{}: {error}", path.display())))?;
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Every use is one statement or one transaction: a panic cannot leave a half-done change.
        self.connection.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last routed seq; `None` before the router ever chose where to start.
    pub fn cursor(&self) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> = self
            .lock()
            .query_row("SELECT seq FROM cursor WHERE id = 1", [], |row| row.get(0))
            .optional()?;
        Ok(seq.map(|seq| u64::try_from(seq).unwrap_or(0)))
    }

    /// Records that routing is complete up to and including `seq`.
    pub fn set_cursor(&self, seq: u64) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).map_err(|_| StoreError::Internal(format!("seq {seq} is out of range")))?;
        self.lock().execute(
            "INSERT INTO cursor (id, seq) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
            [seq],
        )?;
        Ok(())
    }

    /// Every rule in evaluation order: ascending `priority_order`, then creation.
    pub fn rules(&self) -> Result<Vec<Rule>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM rules ORDER BY priority_order, position"
        ))?;
        let rules = statement.query_map([], rule_from_row)?;
        Ok(rules.collect::<Result<_, _>>()?)
    }

    /// One rule by id, or else by name.
    pub fn rule(&self, id_or_name: &str) -> Result<Option<Rule>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM rules WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
        ))?;
        Ok(statement.query_row([id_or_name], rule_from_row).optional()?)
    }

    /// Stores a new rule; a taken name is a conflict.
    pub fn insert_rule(&self, rule: &Rule) -> Result<(), StoreError> {
        self.lock()
            .execute(
                &format!(
                    "INSERT INTO rules ({RULE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    rule.id,
                    rule.name,
                    rule.topic_pattern,
                    rule.semantic_type_pattern,
                    rule.min_priority.map(Priority::as_str),
                    rule.source_pattern,
                    rule.agent_id,
                    rule.model_override,
                    rule.token_budget_override,
                    rule.priority_order,
                    rule.enabled,
                    rule.created_at,
                    rule.updated_at,
                ],
            )
            .map_err(|error| name_conflict(error, &rule.name))?;
        Ok(())
    }

    /// Replaces the stored rule with `rule.id`; false when there is none.
    pub fn update_rule(&self, rule: &Rule) -> Result<bool, StoreError> {
        let changed = self
            .lock()
            .execute(
                "UPDATE rules SET name = ?2, topic_pattern = ?3, semantic_type_pattern = ?4, min_priority = ?5, \
                 source_pattern = ?6, agent_id = ?7, model_override = ?8, token_budget_override = ?9, \
                 priority_order = ?10, enabled = ?11, updated_at = ?12 WHERE id = ?1",
                params![
                    rule.id,
                    rule.name,
                    rule.topic_pattern,
                    rule.semantic_type_pattern,
                    rule.min_priority.map(Priority::as_str),
                    rule.source_pattern,
                    rule.agent_id,
                    rule.model_override,
                    rule.token_budget_override,
                    rule.priority_order,
                    rule.enabled,
                    rule.updated_at,
                ],
            )
            .map_err(|error| name_conflict(error, &rule.name))?;
        Ok(changed > 0)
    }

    /// Removes a rule; false when there was none.
    pub fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().execute("DELETE FROM rules WHERE id = ?1", [id])? > 0)
    }
}

fn name_conflict(error: rusqlite::Error, name: &str) -> StoreError {
    match &error {
        rusqlite::Error::SqliteFailure(failure, Some(message))
            if failure.code == SqliteCode::ConstraintViolation && message.contains("rules.name") =>
        {
            StoreError::Conflict(format!("name: a rule named {name:?} already exists"))
        }
        _ => StoreError::from(error),
    }
}

fn rule_from_row(row: &Row<'_>) -> rusqlite::Result<Rule> {
    let min_priority: Option<String> = row.get(4)?;
    let min_priority = match min_priority {
        Some(text) => Some(Priority::parse(&text).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("unknown priority {text:?}").into(),
            )
        })?),
        None => None,
    };
    Ok(Rule {
        id: row.get(0)?,
        name: row.get(1)?,
        topic_pattern: row.get(2)?,
        semantic_type_pattern: row.get(3)?,
        min_priority,
        source_pattern: row.get(5)?,
        agent_id: row.get(6)?,
        model_override: row.get(7)?,
        token_budget_override: row.get(8)?,
        priority_order: row.get(9)?,
        enabled: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

/// Applies every migration step the database has not seen yet; refuses a newer schema.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TEXT NOT NULL
         )",
    )?;
    let have: i64 = connection.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |row| {
        row.get(0)
    })?;
    let have = usize::try_from(have).unwrap_or(0);
    if have > MIGRATIONS.len() {
        return Err(StoreError::Internal(format!(
            "schema version {have} is newer than this build's {}; use a newer aiventbus-router",
            MIGRATIONS.len()
        )));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(have) {
        let version = index + 1;
        let tx = connection.transaction()?;
        tx.execute_batch(step)
            .map_err(|error| StoreError::Internal(format!("schema migration {version} failed: {error}")))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![version as i64, aiventbus_rpc::time::now_rfc3339()],
        )?;
        tx.commit()?;
        tracing::info!(version, "router store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, name: &str, order: i64) -> Rule {
        Rule {
            id: id.into(),
            name: name.into(),
            topic_pattern: "fs.**".into(),
            semantic_type_pattern: Some("file*".into()),
            min_priority: Some(Priority::High),
            source_pattern: Some("producer:*".into()),
            agent_id: "agt_1".into(),
            model_override: Some("llama3".into()),
            token_budget_override: Some(4000),
            priority_order: order,
            enabled: true,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn bare(id: &str, name: &str, order: i64) -> Rule {
        Rule {
            semantic_type_pattern: None,
            min_priority: None,
            source_pattern: None,
            model_override: None,
            token_budget_override: None,
            ..rule(id, name, order)
        }
    }

    #[test]
    fn crud_round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("router.db")).unwrap();
        let full = rule("rule_a", "a", 10);
        let plain = bare("rule_b", "b", 10);
        store.insert_rule(&full).unwrap();
        store.insert_rule(&plain).unwrap();
        assert_eq!(store.rule("rule_a").unwrap().as_ref(), Some(&full));
        assert_eq!(store.rule("b").unwrap().as_ref(), Some(&plain), "found by name");
        assert_eq!(store.rule("rule_zz").unwrap(), None);

        let mut changed = full.clone();
        changed.name = "a2".into();
        changed.enabled = false;
        changed.min_priority = None;
        changed.updated_at = "2026-01-02T00:00:00.000Z".into();
        assert!(store.update_rule(&changed).unwrap());
        assert_eq!(store.rule("rule_a").unwrap().as_ref(), Some(&changed));
        assert!(!store.update_rule(&bare("rule_missing", "m", 1)).unwrap());

        assert!(store.delete_rule("rule_a").unwrap());
        assert!(!store.delete_rule("rule_a").unwrap());
        assert_eq!(store.rules().unwrap(), vec![plain]);
    }

    #[test]
    fn rules_list_in_priority_then_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("router.db")).unwrap();
        // Ids that sort against creation order: the tie-break must be creation, not id.
        for (id, name, order) in [
            ("rule_z", "first_at_100", 100),
            ("rule_y", "late", 200),
            ("rule_x", "second_at_100", 100),
            ("rule_w", "early", -5),
        ] {
            store.insert_rule(&bare(id, name, order)).unwrap();
        }
        let names: Vec<String> = store.rules().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["early", "first_at_100", "second_at_100", "late"]);
    }

    #[test]
    fn duplicate_names_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("router.db")).unwrap();
        store.insert_rule(&bare("rule_a", "same", 1)).unwrap();
        let error = store.insert_rule(&bare("rule_b", "same", 1)).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Conflict);
        assert!(error.to_string().starts_with("name:"), "{error}");
        store.insert_rule(&bare("rule_c", "other", 1)).unwrap();
        let error = store.update_rule(&bare("rule_c", "same", 1)).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Conflict);
        // A duplicate id is not a name conflict.
        let error = store.insert_rule(&bare("rule_a", "third", 1)).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Internal);
    }

    #[test]
    fn rules_and_cursor_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.db");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.cursor().unwrap(), None, "a new store has not chosen a start");
            store.set_cursor(0).unwrap();
            assert_eq!(store.cursor().unwrap(), Some(0));
            store.set_cursor(41).unwrap();
            store.set_cursor(42).unwrap();
            store.insert_rule(&rule("rule_a", "a", 1)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.cursor().unwrap(), Some(42));
        assert_eq!(store.rules().unwrap(), vec![rule("rule_a", "a", 1)]);
        let versions: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM schema_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64, "migrations ran once");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.db");
        Store::open(&path)
            .unwrap()
            .lock()
            .execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (99, 'later')",
                [],
            )
            .unwrap();
        let error = Store::open(&path).err().expect("newer schema accepted");
        assert!(error.to_string().contains("newer"), "{error}");
    }
}
