//! The agents store: validation of `AgentSpec`s, the `agents` table in `llm.db`, and an in-memory
//! copy the worker reads on every claim. Every change bumps a generation counter so the claim
//! loops re-evaluate which agents they may claim for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use aiventbus_proto::agents::{ACTION_TYPES, Agent, AgentKind, AgentSpec};
use aiventbus_proto::event::{is_reserved, validate_topic};
use rusqlite::OptionalExtension;
use tokio::sync::watch;

use crate::db::{Db, DbError};

/// Default sampling temperature.
pub const DEFAULT_TEMPERATURE: f64 = 0.2;
/// Highest `max_concurrent` an agent may ask for.
pub const MAX_AGENT_CONCURRENCY: u32 = 64;
/// Longest agent name.
const MAX_NAME: usize = 128;
/// Longest memory scope (the bus's own limit).
const MAX_SCOPE: usize = 255;

/// Why an agent operation failed; mapped to wire codes in `api`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// -32602, naming the field.
    #[error("{0}")]
    Invalid(String),
    /// -32003.
    #[error("{0}")]
    Conflict(String),
    /// -32002.
    #[error("{0}")]
    NotFound(String),
    /// -32603.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The agents, durable in `llm.db` and cached in memory.
pub struct Agents {
    db: Db,
    providers: BTreeSet<String>,
    cache: RwLock<BTreeMap<String, Agent>>,
    generation: watch::Sender<u64>,
}

impl Agents {
    /// Loads every agent; `providers` are the names an `llm` agent may use.
    pub async fn load(db: Db, providers: BTreeSet<String>, generation: watch::Sender<u64>) -> Result<Agents, DbError> {
        let rows = db
            .run(|connection| {
                let mut statement = connection.prepare("SELECT body FROM agents")?;
                let bodies = statement
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                bodies
                    .iter()
                    .map(|body| serde_json::from_str::<Agent>(body).map_err(|e| DbError::Corrupt(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let cache = rows.into_iter().map(|agent| (agent.id.clone(), agent)).collect();
        Ok(Agents {
            db,
            providers,
            cache: RwLock::new(cache),
            generation,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Agent>> {
        // Writers replace whole entries: a panic elsewhere cannot leave one half-written.
        self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Agent>> {
        self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// The provider names an agent may use, sorted.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().cloned().collect()
    }

    /// One agent by id, from memory.
    pub fn by_id(&self, id: &str) -> Option<Agent> {
        self.read().get(id).cloned()
    }

    /// One agent by id or name.
    pub fn find(&self, id_or_name: &str) -> Result<Agent, AgentError> {
        let cache = self.read();
        cache
            .get(id_or_name)
            .or_else(|| cache.values().find(|agent| agent.name == id_or_name))
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("no agent {id_or_name:?}")))
    }

    /// Every agent, by name.
    pub fn list(&self) -> Vec<Agent> {
        let mut agents: Vec<Agent> = self.read().values().cloned().collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    /// Creates an agent from a full spec.
    pub async fn create(&self, spec: AgentSpec) -> Result<Agent, AgentError> {
        let now = aiventbus_rpc::time::now_rfc3339();
        let agent = build(&spec, None, &self.providers, &now)?;
        self.check_name_free(&agent)?;
        let stored = agent.clone();
        self.db
            .run(move |connection| {
                let body = serde_json::to_string(&stored).map_err(|e| DbError::Corrupt(e.to_string()))?;
                connection.execute(
                    "INSERT INTO agents (id, name, body, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![stored.id, stored.name, body, aiventbus_rpc::time::now_ms() as i64],
                )?;
                Ok(())
            })
            .await
            .map_err(name_conflict(&agent.name))?;
        self.write().insert(agent.id.clone(), agent.clone());
        self.bump();
        Ok(agent)
    }

    /// Changes the given fields of an agent (validated as a whole afterwards).
    pub async fn update(&self, id_or_name: &str, spec: AgentSpec) -> Result<Agent, AgentError> {
        let current = self.find(id_or_name)?;
        let now = aiventbus_rpc::time::now_rfc3339();
        let agent = build(&spec, Some(&current), &self.providers, &now)?;
        self.check_name_free(&agent)?;
        self.save(agent).await
    }

    /// Enables or disables an agent.
    pub async fn set_enabled(&self, id_or_name: &str, enabled: bool) -> Result<Agent, AgentError> {
        let mut agent = self.find(id_or_name)?;
        if agent.enabled == enabled {
            return Ok(agent);
        }
        agent.enabled = enabled;
        agent.updated_at = aiventbus_rpc::time::now_rfc3339();
        self.save(agent).await
    }

    /// Removes an agent; false when there was none.
    pub async fn delete(&self, id_or_name: &str) -> Result<bool, AgentError> {
        let agent = match self.find(id_or_name) {
            Ok(agent) => agent,
            Err(AgentError::NotFound(_)) => return Ok(false),
            Err(other) => return Err(other),
        };
        let id = agent.id.clone();
        self.db
            .run(move |connection| Ok(connection.execute("DELETE FROM agents WHERE id = ?1", [id])?))
            .await?;
        self.write().remove(&agent.id);
        self.bump();
        Ok(true)
    }

    fn check_name_free(&self, agent: &Agent) -> Result<(), AgentError> {
        if self
            .read()
            .values()
            .any(|other| other.name == agent.name && other.id != agent.id)
        {
            return Err(AgentError::Conflict(format!(
                "name: an agent named {:?} already exists",
                agent.name
            )));
        }
        Ok(())
    }

    async fn save(&self, agent: Agent) -> Result<Agent, AgentError> {
        let stored = agent.clone();
        let changed = self
            .db
            .run(move |connection| {
                let body = serde_json::to_string(&stored).map_err(|e| DbError::Corrupt(e.to_string()))?;
                Ok(connection.execute(
                    "UPDATE agents SET name = ?2, body = ?3 WHERE id = ?1",
                    rusqlite::params![stored.id, stored.name, body],
                )?)
            })
            .await
            .map_err(name_conflict(&agent.name))?;
        if changed == 0 {
            return Err(AgentError::NotFound(format!("no agent {:?}", agent.id)));
        }
        self.write().insert(agent.id.clone(), agent.clone());
        self.bump();
        Ok(agent)
    }
}

fn name_conflict(name: &str) -> impl FnOnce(DbError) -> AgentError + '_ {
    move |error| match &error {
        DbError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
            if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            AgentError::Conflict(format!("name: an agent named {name:?} already exists"))
        }
        _ => AgentError::Db(error),
    }
}

/// Whether `id` exists in the table (tests and start-up checks).
pub async fn stored(db: &Db, id: &str) -> Result<bool, DbError> {
    let id = id.to_owned();
    db.run(move |connection| {
        Ok(connection
            .query_row("SELECT 1 FROM agents WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    })
    .await
}

/// The memory scope of an agent: its own, else `agent:<id>`.
pub fn memory_scope(agent: &Agent) -> String {
    agent
        .memory_scope
        .clone()
        .unwrap_or_else(|| format!("agent:{}", agent.id))
}

/// Merges `spec` over `current` (or the defaults) and checks the result, naming every bad field.
pub fn build(
    spec: &AgentSpec,
    current: Option<&Agent>,
    providers: &BTreeSet<String>,
    now: &str,
) -> Result<Agent, AgentError> {
    let mut problems = Vec::new();
    let name = spec.name.clone().or_else(|| current.map(|a| a.name.clone()));
    let kind = spec.kind.or_else(|| current.map(|a| a.kind));
    let name = match name {
        None => {
            problems.push("name: is required".to_owned());
            String::new()
        }
        Some(name) => {
            if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
                problems.push(format!("name: must be 1-{MAX_NAME} printable characters"));
            } else if name.starts_with("agt_") {
                problems.push("name: must not start with agt_ (ids do)".to_owned());
            }
            name
        }
    };
    let kind = kind.unwrap_or_else(|| {
        problems.push("kind: is required (\"llm\" or \"command\")".to_owned());
        AgentKind::Llm
    });
    let pick = |new: &Option<String>, old: Option<&Option<String>>| new.clone().or_else(|| old.cloned().flatten());
    let provider = pick(&spec.provider, current.map(|a| &a.provider));
    let model = pick(&spec.model, current.map(|a| &a.model));
    let command = spec.command.clone().or_else(|| current.and_then(|a| a.command.clone()));
    match kind {
        AgentKind::Llm => {
            match &provider {
                None => problems.push("provider: is required for an llm agent".to_owned()),
                Some(name) if !providers.contains(name) => problems.push(format!(
                    "provider: unknown provider {name:?} (known: {})",
                    providers.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(_) => {}
            }
            match &model {
                Some(model) if !model.trim().is_empty() => {}
                _ => problems.push("model: is required for an llm agent".to_owned()),
            }
        }
        AgentKind::Command => match command.as_deref() {
            None | Some([]) => problems.push("command: is required for a command agent (an argv array)".to_owned()),
            Some([program, ..]) => {
                if let Err(problem) = check_program(program) {
                    problems.push(format!("command: {problem}"));
                }
            }
        },
    }
    let temperature = spec
        .temperature
        .or_else(|| current.map(|a| a.temperature))
        .unwrap_or(DEFAULT_TEMPERATURE);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        problems.push(format!("temperature: must be from 0 to 2, got {temperature}"));
    }
    let allowed_actions = spec
        .allowed_actions
        .clone()
        .or_else(|| current.and_then(|a| a.allowed_actions.clone()));
    for action in allowed_actions.iter().flatten() {
        if !ACTION_TYPES.contains(&action.as_str()) {
            problems.push(format!("allowed_actions: unknown action type {action:?}"));
        }
    }
    let trust = spec
        .trust
        .clone()
        .or_else(|| current.map(|a| a.trust.clone()))
        .unwrap_or_default();
    for action in trust.keys() {
        if !ACTION_TYPES.contains(&action.as_str()) {
            problems.push(format!("trust: unknown action type {action:?}"));
        }
    }
    let max_concurrent = spec
        .max_concurrent
        .or_else(|| current.map(|a| a.max_concurrent))
        .unwrap_or(1);
    if !(1..=MAX_AGENT_CONCURRENCY).contains(&max_concurrent) {
        problems.push(format!(
            "max_concurrent: must be from 1 to {MAX_AGENT_CONCURRENCY}, got {max_concurrent}"
        ));
    }
    let memory_scope = pick(&spec.memory_scope, current.map(|a| &a.memory_scope));
    if let Some(scope) = &memory_scope
        && (scope.is_empty() || scope.len() > MAX_SCOPE || scope.chars().any(char::is_control))
    {
        problems.push(format!("memory_scope: must be 1-{MAX_SCOPE} printable bytes"));
    }
    let output_topic = pick(&spec.output_topic, current.map(|a| &a.output_topic));
    if let Some(topic) = &output_topic {
        if let Err(problem) = validate_topic(topic) {
            problems.push(format!("output_topic: {problem}"));
        } else if is_reserved(topic) {
            problems.push(format!("output_topic: {topic:?} is in a reserved namespace"));
        }
    }
    if !problems.is_empty() {
        return Err(AgentError::Invalid(problems.join("; ")));
    }
    Ok(Agent {
        id: current.map_or_else(|| aiventbus_rpc::ids::prefixed("agt"), |a| a.id.clone()),
        name,
        description: spec
            .description
            .clone()
            .or_else(|| current.map(|a| a.description.clone()))
            .unwrap_or_default(),
        kind,
        provider: if kind == AgentKind::Llm { provider } else { None },
        model: if kind == AgentKind::Llm { model } else { None },
        system_prompt: pick(&spec.system_prompt, current.map(|a| &a.system_prompt)),
        temperature,
        command: if kind == AgentKind::Command { command } else { None },
        enabled: spec.enabled.or_else(|| current.map(|a| a.enabled)).unwrap_or(true),
        reactive: spec.reactive.or_else(|| current.map(|a| a.reactive)).unwrap_or(true),
        allowed_actions,
        trust,
        max_concurrent,
        memory_scope,
        output_topic,
        created_at: current.map_or_else(|| now.to_owned(), |a| a.created_at.clone()),
        updated_at: now.to_owned(),
    })
}

/// A program must be an absolute path or a name found on `PATH`.
fn check_program(program: &str) -> Result<(), String> {
    if program.is_empty() {
        return Err("the program (first element) is empty".into());
    }
    let path = Path::new(program);
    if path.is_absolute() {
        return Ok(());
    }
    if program.contains('/') {
        return Err(format!(
            "{program:?} is a relative path; give an absolute path or a name on PATH"
        ));
    }
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    if found {
        Ok(())
    } else {
        Err(format!("{program:?} is not on PATH; give an absolute path"))
    }
}

/// Shared handle.
pub type SharedAgents = Arc<Agents>;

#[cfg(test)]
mod tests {
    use super::*;
    use aiventbus_proto::agents::Trust;

    fn providers() -> BTreeSet<String> {
        ["ollama".to_owned(), "openai".to_owned()].into()
    }

    async fn store() -> Agents {
        let (generation, _) = watch::channel(0);
        Agents::load(Db::in_memory().unwrap(), providers(), generation)
            .await
            .unwrap()
    }

    fn llm(name: &str) -> AgentSpec {
        AgentSpec {
            name: Some(name.into()),
            kind: Some(AgentKind::Llm),
            provider: Some("ollama".into()),
            model: Some("smollm2".into()),
            ..AgentSpec::default()
        }
    }

    fn invalid(result: Result<Agent, AgentError>) -> String {
        match result {
            Err(AgentError::Invalid(message)) => message,
            other => panic!("expected invalid params, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn create_applies_defaults_and_finds_by_id_or_name() {
        let agents = store().await;
        let agent = agents.create(llm("helper")).await.unwrap();
        assert!(agent.id.starts_with("agt_"));
        assert_eq!(agent.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(agent.max_concurrent, 1);
        assert!(agent.enabled && agent.reactive);
        assert_eq!(agents.find("helper").unwrap().id, agent.id);
        assert_eq!(agents.find(&agent.id).unwrap().name, "helper");
        assert!(matches!(agents.find("nobody"), Err(AgentError::NotFound(_))));
        assert_eq!(memory_scope(&agent), format!("agent:{}", agent.id));
    }

    #[tokio::test]
    async fn duplicate_names_conflict_on_create_and_rename() {
        let agents = store().await;
        agents.create(llm("a")).await.unwrap();
        let b = agents.create(llm("b")).await.unwrap();
        assert!(matches!(agents.create(llm("a")).await, Err(AgentError::Conflict(_))));
        let rename = AgentSpec {
            name: Some("a".into()),
            ..AgentSpec::default()
        };
        assert!(matches!(
            agents.update(&b.id, rename).await,
            Err(AgentError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn validation_names_each_field() {
        let agents = store().await;
        let message = invalid(
            agents
                .create(AgentSpec {
                    provider: Some("mystery".into()),
                    temperature: Some(3.0),
                    allowed_actions: Some(vec!["launch_missiles".into()]),
                    trust: Some([("teleport".to_owned(), Trust::Auto)].into()),
                    max_concurrent: Some(0),
                    output_topic: Some("system.x".into()),
                    ..llm("x")
                })
                .await,
        );
        for field in [
            "provider",
            "temperature",
            "allowed_actions",
            "trust",
            "max_concurrent",
            "output_topic",
        ] {
            assert!(message.contains(field), "{field} missing from {message}");
        }
        let message = invalid(
            agents
                .create(AgentSpec {
                    name: Some("c".into()),
                    kind: Some(AgentKind::Command),
                    command: Some(vec!["./relative".into()]),
                    ..AgentSpec::default()
                })
                .await,
        );
        assert!(message.starts_with("command:"), "{message}");
        let message = invalid(
            agents
                .create(AgentSpec {
                    name: Some("c".into()),
                    kind: Some(AgentKind::Command),
                    command: Some(vec![]),
                    ..AgentSpec::default()
                })
                .await,
        );
        assert!(message.starts_with("command:"), "{message}");
        let ok = agents
            .create(AgentSpec {
                name: Some("c".into()),
                kind: Some(AgentKind::Command),
                command: Some(vec!["sh".into(), "-c".into(), "true".into()]),
                ..AgentSpec::default()
            })
            .await
            .unwrap();
        assert_eq!(ok.provider, None);
        let message = invalid(
            agents
                .create(AgentSpec {
                    model: None,
                    ..llm("no-model")
                })
                .await,
        );
        assert!(message.contains("model: is required"), "{message}");
    }

    #[tokio::test]
    async fn update_is_partial_and_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llm.db");
        let (generation, mut seen) = watch::channel(0);
        let agents = Agents::load(Db::open(&path).unwrap(), providers(), generation)
            .await
            .unwrap();
        let agent = agents.create(llm("helper")).await.unwrap();
        let updated = agents
            .update(
                "helper",
                AgentSpec {
                    temperature: Some(1.5),
                    system_prompt: Some("be brief".into()),
                    ..AgentSpec::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((updated.temperature, updated.model.as_deref()), (1.5, Some("smollm2")));
        assert_eq!(updated.created_at, agent.created_at);
        let disabled = agents.set_enabled(&agent.id, false).await.unwrap();
        assert!(!disabled.enabled);
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        drop(agents);

        let (generation, _) = watch::channel(0);
        let agents = Agents::load(Db::open(&path).unwrap(), providers(), generation)
            .await
            .unwrap();
        let reloaded = agents.find("helper").unwrap();
        assert_eq!(reloaded, disabled);
        assert!(agents.delete("helper").await.unwrap());
        assert!(!agents.delete("helper").await.unwrap());
        assert!(!stored(&agents.db, &agent.id).await.unwrap());
    }
}
