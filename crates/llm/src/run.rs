//! One run of one assignment: `agent.started`, the context, the model rounds (each answer parsed,
//! with one repair turn for bad output), the proposed actions handed to the [`ActionGate`] with
//! executed results fed back for at most `llm.max_iterations` rounds, then `agent.completed` (and
//! the agent's `output_topic`), an episodic memory and the transcript — or `agent.error`,
//! `system.parse_failure`, and how the worker should settle the assignment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aiventbus_proto::Event;
use aiventbus_proto::agents::{ACTION_TYPES, Agent, AgentKind, AgentOutput, Claimed, ProposedAction};
use aiventbus_proto::event::is_reserved;
use aiventbus_proto::methods::{MemoryAdd, MemoryAddParams, MemoryKind};
use aiventbus_rpc::config::LlmConfig;
use serde_json::{Value, json};

use crate::actions::{ActionContext, ActionGate, Outcome};
use crate::agents::{Agents, memory_scope};
use crate::bus::Bus;
use crate::context;
use crate::output;
use crate::providers::{ChatMessage, ChatReply, ChatRequest, Provider, ProviderError, truncate};
use crate::stream::{StreamIds, Streamer};
use crate::suspend::{Resumer, Suspended, Suspensions};
use crate::transcript::{RunFinish, RunStart, Transcripts};

/// Characters of bad output kept in `system.parse_failure`.
const FAILURE_OUTPUT_CHARS: usize = 2000;
/// Importance of a run's episodic memory.
const EPISODE_IMPORTANCE: f64 = 0.3;

/// What every run shares.
pub struct Shared {
    /// `[llm]`.
    pub config: LlmConfig,
    /// The bus.
    pub bus: Bus,
    /// The agents.
    pub agents: Arc<Agents>,
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Run transcripts.
    pub transcripts: Transcripts,
    /// Where proposed actions go.
    pub gate: Arc<dyn ActionGate>,
    /// Runs waiting for a human.
    pub suspensions: Suspensions,
    /// Returns them to the queue once decided.
    pub resumer: Arc<Resumer>,
    /// The MCP tools agents are shown.
    pub tools: crate::tools::Tools,
    /// This process's worker id.
    pub worker: String,
    /// Counters for `system.health`.
    pub stats: Stats,
}

/// Counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Runs started.
    pub started: AtomicU64,
    /// Runs completed.
    pub completed: AtomicU64,
    /// Runs failed.
    pub failed: AtomicU64,
    /// Runs released (provider down, stopping).
    pub released: AtomicU64,
    /// Runs suspended until a human decides.
    pub suspended: AtomicU64,
    /// Suspended runs resumed.
    pub resumed: AtomicU64,
}

/// How the worker settles the assignment.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// `assignments.complete`.
    Completed,
    /// `assignments.fail` with `retry`.
    Failed {
        /// What went wrong.
        error: String,
        /// Whether another attempt may help.
        retry: bool,
    },
    /// `assignments.fail` with `release: true`: the model server is down; no attempt used.
    Released {
        /// Why.
        error: String,
    },
    /// `assignments.suspend`: actions wait for a human; the conversation is saved.
    Suspended {
        /// The actions waited for.
        action_ids: Vec<String>,
    },
}

/// Why a run stopped short.
enum Stop {
    Provider(ProviderError),
    Parse {
        error: String,
        output: String,
    },
    Other {
        error: String,
        retry: bool,
    },
    Suspend {
        records: Vec<Record>,
        results: Vec<Value>,
        waiting: Vec<String>,
    },
}

/// One action as `agent.completed` reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    round: u32,
    action: ProposedAction,
    status: String,
    #[serde(default)]
    action_id: Option<String>,
    #[serde(default)]
    result: Option<Value>,
}

impl Record {
    fn to_json(&self) -> Value {
        let mut value = json!({
            "round": self.round,
            "action_type": self.action.action_type,
            "params": self.action.params,
            "status": self.status,
        });
        if let Some(action_id) = &self.action_id {
            value["action_id"] = json!(action_id);
        }
        if let Some(result) = &self.result {
            value["result"] = result.clone();
        }
        value
    }
}

/// What one round's actions came to.
#[derive(Default)]
struct Round {
    /// Results (and denials) to feed back to the model.
    results: Vec<Value>,
    /// Actions waiting for a human.
    waiting: Vec<String>,
}

/// A suspended run being continued.
struct Resumed {
    records: Vec<Record>,
    results: Vec<Value>,
}

fn results_message(results: Vec<Value>) -> ChatMessage {
    ChatMessage::new(
        "user",
        format!(
            "Results of your actions:\n{}\nAnswer again with the same JSON object. Propose further actions only if \
             they are still needed; otherwise use \"proposed_actions\": [].",
            Value::Array(results)
        ),
    )
}

/// What a finished run produced.
struct Done {
    output: AgentOutput,
    records: Vec<Record>,
}

/// One run in progress.
pub struct Run<'a> {
    shared: &'a Shared,
    agent: &'a Agent,
    event: Arc<Event>,
    assignment_id: String,
    attempts: (u32, u32),
    model_override: Option<String>,
    token_budget: Option<u32>,
    /// `run_<ulid>`.
    pub id: String,
    source: String,
    messages: Vec<ChatMessage>,
    rounds: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    started: Instant,
}

impl<'a> Run<'a> {
    /// A run of `claimed` by `agent`.
    pub fn new(shared: &'a Shared, agent: &'a Agent, claimed: &Claimed) -> Run<'a> {
        Run {
            shared,
            agent,
            event: Arc::new(claimed.event.clone()),
            assignment_id: claimed.assignment.id.clone(),
            attempts: (claimed.assignment.attempts, claimed.assignment.max_attempts),
            model_override: claimed.assignment.model_override.clone(),
            token_budget: claimed.assignment.token_budget_override,
            id: aiventbus_rpc::ids::prefixed("run"),
            source: format!("agent:{}", agent.id),
            messages: Vec::new(),
            rounds: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            started: Instant::now(),
        }
    }

    fn base(&self) -> serde_json::Map<String, Value> {
        let value = json!({
            "agent_id": self.agent.id,
            "event_id": self.event.id,
            "assignment_id": self.assignment_id,
            "run_id": self.id,
        });
        value.as_object().cloned().unwrap_or_default()
    }

    async fn report(&self, topic: &str, extra: Value) {
        let mut payload = self.base();
        if let Value::Object(extra) = extra {
            payload.extend(extra);
        }
        let source = if topic.starts_with("system.") {
            "system"
        } else {
            &self.source
        };
        self.shared
            .bus
            .report(&self.event, topic, source, Value::Object(payload))
            .await;
    }

    /// Runs to the end and says how to settle the assignment.
    pub async fn execute(&mut self) -> Ending {
        let resumed = match self.agent.kind {
            AgentKind::Llm => self.resume().await,
            AgentKind::Command => None,
        };
        if resumed.is_none() {
            self.begin().await;
        }
        let streamer = Streamer::start(
            self.shared.bus.clone(),
            self.event.clone(),
            StreamIds {
                agent_id: self.agent.id.clone(),
                assignment_id: self.assignment_id.clone(),
                run_id: self.id.clone(),
            },
            self.shared.config.stream_coalesce,
        );
        let result = match self.agent.kind {
            AgentKind::Llm => self.llm(streamer.sender(), resumed).await,
            AgentKind::Command => self.command().await,
        };
        // Every chunk is published before the run's final event.
        streamer.finish().await;
        let ending = match result {
            Ok(done) => self.completed(done).await,
            Err(stop) => self.stopped(stop).await,
        };
        if !matches!(ending, Ending::Suspended { .. } | Ending::Released { .. })
            && let Err(error) = self.shared.suspensions.remove(&self.assignment_id).await
        {
            tracing::warn!(run = %self.id, %error, "suspension record not removed");
        }
        ending
    }

    /// A saved suspension of this assignment whose actions are all decided: the run continues
    /// with its id, conversation and counters, and the decisions as results.
    async fn resume(&mut self) -> Option<Resumed> {
        let saved = match self.shared.suspensions.get(&self.assignment_id).await {
            Ok(saved) => saved?,
            Err(error) => {
                tracing::warn!(assignment = %self.assignment_id, %error, "cannot read the suspended run; starting over");
                return None;
            }
        };
        let decided = match self.shared.resumer.decided(&saved.waiting).await {
            Ok(Some(decided)) => decided,
            Ok(None) | Err(_) => {
                // Claimed before every decision is final (resumed by hand?): start over cleanly.
                tracing::warn!(assignment = %self.assignment_id, "suspended run claimed before its actions were decided");
                return None;
            }
        };
        let Suspended {
            run_id,
            messages,
            rounds,
            prompt_tokens,
            completion_tokens,
            records,
            mut results,
            ..
        } = saved;
        self.id = run_id;
        self.messages = messages;
        self.rounds = rounds;
        self.prompt_tokens = prompt_tokens;
        self.completion_tokens = completion_tokens;
        let mut records: Vec<Record> = records
            .into_iter()
            .filter_map(|record| serde_json::from_value(record).ok())
            .collect();
        for record in &decided {
            results.push(crate::suspend::result_of(record));
            if let Some(entry) = records
                .iter_mut()
                .find(|entry| entry.action_id.as_deref() == Some(record.id.as_str()))
            {
                entry.status = record.status.as_str().to_owned();
                entry.result = record.result.clone();
            }
        }
        self.shared.stats.resumed.fetch_add(1, Ordering::Relaxed);
        self.report(
            "agent.resumed",
            json!({"action_ids": decided.iter().map(|record| record.id.clone()).collect::<Vec<_>>()}),
        )
        .await;
        Some(Resumed { records, results })
    }

    /// `agent.started` and the transcript row of a new run.
    async fn begin(&mut self) {
        self.shared.stats.started.fetch_add(1, Ordering::Relaxed);
        self.report("agent.started", json!({})).await;
        let start = RunStart {
            id: self.id.clone(),
            agent_id: self.agent.id.clone(),
            assignment_id: self.assignment_id.clone(),
            event_id: self.event.id.clone(),
            trace_id: self.event.trace_id.clone(),
            topic: self.event.topic.clone(),
            memory_scope: memory_scope(self.agent),
        };
        if let Err(error) = self.shared.transcripts.start(start).await {
            tracing::warn!(run = %self.id, %error, "transcript not written");
        }
    }

    async fn llm(
        &mut self,
        chunks: &tokio::sync::mpsc::Sender<String>,
        resumed: Option<Resumed>,
    ) -> Result<Done, Stop> {
        let provider = self.provider()?;
        let allowed = context::allowed_actions(self.agent);
        let schema = output::schema(&allowed);
        let mut records = match resumed {
            Some(Resumed { records, results }) => {
                self.messages.push(results_message(results));
                records
            }
            None => {
                let scope = memory_scope(self.agent);
                let mut sources =
                    context::gather(&self.shared.bus.client, &self.shared.transcripts, &self.event, &scope).await;
                if allowed.contains(&"tool_call") {
                    sources.tools = self.shared.tools.list().await;
                }
                let budgets = context::budgets(self.shared.config.context_tokens, self.token_budget);
                self.messages = context::messages(self.agent, &allowed, &self.event, &sources, &budgets);
                Vec::new()
            }
        };
        let max = self.shared.config.max_iterations;
        loop {
            self.rounds += 1;
            let output = self.ask(&provider, &schema, chunks).await?;
            let Round { results, waiting } = self.actions(&output, &allowed, &mut records).await;
            if !waiting.is_empty() {
                return Err(Stop::Suspend {
                    records,
                    results,
                    waiting,
                });
            }
            let executed = results;
            if executed.is_empty() {
                return Ok(Done { output, records });
            }
            if self.rounds >= max {
                self.report(
                    "system.tool_loop_exhausted",
                    json!({"rounds": self.rounds, "max_iterations": max}),
                )
                .await;
                return Ok(Done { output, records });
            }
            self.messages.push(results_message(executed));
        }
    }

    fn provider(&self) -> Result<Arc<Provider>, Stop> {
        let name = self.agent.provider.as_deref().unwrap_or_default();
        self.shared.providers.get(name).cloned().ok_or_else(|| Stop::Other {
            error: format!("provider {name:?} is not configured"),
            retry: false,
        })
    }

    /// One model round: the answer, parsed, with one repair turn when it is not valid output.
    async fn ask(
        &mut self,
        provider: &Provider,
        schema: &Value,
        chunks: &tokio::sync::mpsc::Sender<String>,
    ) -> Result<AgentOutput, Stop> {
        let reply = self.chat(provider, schema, chunks).await?;
        self.messages.push(ChatMessage::new("assistant", reply.content.clone()));
        let error = match output::parse(&reply.content) {
            Ok(output) => return Ok(output),
            Err(error) => error,
        };
        tracing::debug!(run = %self.id, %error, "unparseable output; asking for a repair");
        self.messages.push(ChatMessage::new(
            "user",
            format!(
                "Your answer could not be used: {error}. Answer again with only the JSON object described in the \
                 system prompt: no prose, no code fences."
            ),
        ));
        let repaired = self.chat(provider, schema, chunks).await?;
        self.messages
            .push(ChatMessage::new("assistant", repaired.content.clone()));
        output::parse(&repaired.content).map_err(|error| Stop::Parse {
            error,
            output: repaired.content,
        })
    }

    async fn chat(
        &mut self,
        provider: &Provider,
        schema: &Value,
        chunks: &tokio::sync::mpsc::Sender<String>,
    ) -> Result<ChatReply, Stop> {
        let request = ChatRequest {
            model: self
                .model_override
                .clone()
                .or_else(|| self.agent.model.clone())
                .unwrap_or_default(),
            messages: self.messages.clone(),
            temperature: self.agent.temperature,
            max_tokens: None,
            schema: schema.clone(),
        };
        let reply = provider.chat(&request, chunks).await.map_err(Stop::Provider)?;
        self.prompt_tokens += reply.prompt_tokens;
        self.completion_tokens += reply.completion_tokens;
        Ok(reply)
    }

    async fn command(&mut self) -> Result<Done, Stop> {
        let argv = self.agent.command.clone().unwrap_or_default();
        let input = serde_json::to_vec(&*self.event).unwrap_or_default();
        self.rounds = 1;
        let stdout = crate::command::run(&argv, input, self.shared.config.request_timeout)
            .await
            .map_err(|error| Stop::Other {
                error: format!("command agent: {error}"),
                retry: true,
            })?;
        self.messages = vec![ChatMessage::new("assistant", stdout.clone())];
        let output = output::parse_strict(&stdout).map_err(|error| Stop::Parse { error, output: stdout })?;
        let allowed = context::allowed_actions(self.agent);
        let mut records = Vec::new();
        // A command agent answers once: nothing is fed back, so it does not wait for decisions.
        self.actions(&output, &allowed, &mut records).await;
        Ok(Done { output, records })
    }

    /// Hands each proposed action to the gate; returns the results to feed back and the actions
    /// waiting for a human.
    async fn actions(&mut self, output: &AgentOutput, allowed: &[&str], records: &mut Vec<Record>) -> Round {
        let mut round = Round::default();
        let context = ActionContext {
            agent: self.agent,
            event: &self.event,
            run_id: &self.id,
            assignment_id: &self.assignment_id,
        };
        for action in &output.proposed_actions {
            let kind = action.action_type.as_str();
            let (status, action_id, result) = if !ACTION_TYPES.contains(&kind) {
                self.report("system.unknown_action", json!({"action_type": kind})).await;
                ("unknown", None, None)
            } else if !allowed.contains(&kind) {
                let reason = format!("{kind} is not allowed for this agent");
                self.report("system.action_denied", json!({"action_type": kind, "reason": reason}))
                    .await;
                round
                    .results
                    .push(json!({"action_type": kind, "ok": false, "denied": {"by": "policy", "reason": reason}}));
                ("denied", None, Some(json!({"error": {"message": reason}})))
            } else {
                match self.shared.gate.handle(&context, action).await {
                    Outcome::Executed { action_id, ok, result } => {
                        round
                            .results
                            .push(json!({"action_type": kind, "action_id": action_id, "ok": ok, "result": result}));
                        (if ok { "executed" } else { "failed" }, action_id, Some(result))
                    }
                    Outcome::Denied {
                        action_id,
                        rule,
                        reason,
                    } => {
                        round.results.push(json!({
                            "action_type": kind,
                            "action_id": action_id,
                            "ok": false,
                            "denied": {"by": "policy", "rule": rule, "reason": reason},
                        }));
                        ("denied", Some(action_id), Some(json!({"error": {"message": reason}})))
                    }
                    Outcome::Waiting { action_id } => {
                        round.waiting.push(action_id.clone());
                        ("waiting_confirmation", Some(action_id), None)
                    }
                }
            };
            records.push(Record {
                round: self.rounds,
                action: action.clone(),
                status: status.to_owned(),
                action_id,
                result,
            });
        }
        round
    }

    async fn completed(&self, done: Done) -> Ending {
        let Done { output, records } = done;
        let output_json = serde_json::to_value(&output).unwrap_or(Value::Null);
        let proposed: Vec<&ProposedAction> = records.iter().map(|record| &record.action).collect();
        self.report(
            "agent.completed",
            json!({
                "summary": output.summary,
                "type": output.kind,
                "confidence": output.confidence,
                "proposed_actions": proposed,
                "actions": records.iter().map(Record::to_json).collect::<Vec<_>>(),
                "output": output_json,
                "rounds": self.rounds,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "duration_ms": self.started.elapsed().as_millis() as u64,
            }),
        )
        .await;
        self.publish_outputs(&output_json).await;
        self.remember(&output, &records).await;
        self.finish_transcript(RunFinish {
            status: "completed",
            output: Some(output_json),
            summary: Some(output.summary.clone()),
            ..RunFinish::default()
        })
        .await;
        self.shared.stats.completed.fetch_add(1, Ordering::Relaxed);
        Ending::Completed
    }

    /// The output to the agent's `output_topic` and the event's own, each a child of the event.
    async fn publish_outputs(&self, output: &Value) {
        let mut topics: Vec<&str> = Vec::new();
        for topic in [self.agent.output_topic.as_deref(), self.event.output_topic.as_deref()]
            .into_iter()
            .flatten()
        {
            // The event's output_topic comes from whoever published it: never into a reserved namespace.
            if !is_reserved(topic) && !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        for topic in topics {
            let mut payload = self.base();
            payload.insert("output".into(), output.clone());
            payload.insert("summary".into(), output["summary"].clone());
            if let Err(error) = self
                .shared
                .bus
                .publish_child(&self.event, topic, &self.source, Value::Object(payload))
                .await
            {
                tracing::warn!(run = %self.id, topic, %error, "output topic not published");
            }
        }
    }

    /// The run distilled into an episodic memory by template (no model call).
    async fn remember(&self, output: &AgentOutput, records: &[Record]) {
        let actions = if records.is_empty() {
            "none".to_owned()
        } else {
            records
                .iter()
                .map(|record| format!("{} ({})", record.action.action_type, record.status))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let content = format!(
            "On {} ({}): {}. Actions: {actions}.",
            self.event.topic,
            self.event.id,
            output.summary.trim_end_matches('.')
        );
        let params = MemoryAddParams {
            kind: MemoryKind::Episodic,
            scope: format!("agent:{}", self.agent.id),
            content: truncate(&content, 4000),
            importance: Some(EPISODE_IMPORTANCE),
            tags: Some(vec!["run".into(), self.event.topic.clone()]),
            source: Some(self.source.clone()),
        };
        if let Err(error) = self.shared.bus.client.call::<MemoryAdd>(&params).await {
            tracing::warn!(run = %self.id, %error, "episodic memory not stored");
        }
    }

    async fn stopped(&self, stop: Stop) -> Ending {
        let (ending, status) = match stop {
            Stop::Provider(ProviderError::Down(why)) => (
                Ending::Released {
                    error: format!("model server unavailable: {why}"),
                },
                "released",
            ),
            Stop::Provider(error @ ProviderError::Rejected(_)) => (
                Ending::Failed {
                    error: error.to_string(),
                    retry: false,
                },
                "failed",
            ),
            Stop::Provider(error @ ProviderError::Failed(_)) => (
                Ending::Failed {
                    error: error.to_string(),
                    retry: true,
                },
                "failed",
            ),
            Stop::Parse { error, output } => {
                self.report(
                    "system.parse_failure",
                    json!({"error": error, "output": truncate(&output, FAILURE_OUTPUT_CHARS)}),
                )
                .await;
                (
                    Ending::Failed {
                        error: format!("unparseable output: {error}"),
                        retry: false,
                    },
                    "parse_failure",
                )
            }
            Stop::Other { error, retry } => (Ending::Failed { error, retry }, "failed"),
            Stop::Suspend {
                records,
                results,
                waiting,
            } => return self.suspend(records, results, waiting).await,
        };
        self.settle_failure(&ending, status).await;
        ending
    }

    /// Saves the conversation and reports `agent.waiting`; the worker suspends the assignment.
    async fn suspend(&self, records: Vec<Record>, results: Vec<Value>, waiting: Vec<String>) -> Ending {
        let state = Suspended {
            run_id: self.id.clone(),
            assignment_id: self.assignment_id.clone(),
            messages: self.messages.clone(),
            rounds: self.rounds,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            records: records
                .iter()
                .filter_map(|record| serde_json::to_value(record).ok())
                .collect(),
            results,
            waiting: waiting.clone(),
        };
        if let Err(error) = self.shared.suspensions.save(&state).await {
            // Without the saved conversation the run cannot continue later: fail it (retried).
            let ending = Ending::Failed {
                error: format!("could not save the suspended run: {error}"),
                retry: true,
            };
            self.settle_failure(&ending, "failed").await;
            return ending;
        }
        self.report("agent.waiting", json!({"action_ids": waiting})).await;
        self.finish_transcript(RunFinish {
            status: "suspended",
            ..RunFinish::default()
        })
        .await;
        self.shared.stats.suspended.fetch_add(1, Ordering::Relaxed);
        Ending::Suspended { action_ids: waiting }
    }

    /// `agent.error` (for failures, not releases), the transcript and the counters.
    async fn settle_failure(&self, ending: &Ending, status: &'static str) {
        match ending {
            Ending::Failed { error, retry } => {
                let last = !retry || self.attempts.0 >= self.attempts.1;
                tracing::info!(run = %self.id, agent = %self.agent.id, %error, retry, "run failed");
                self.report("agent.error", json!({"error": error, "final": last})).await;
                self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            Ending::Released { error } => {
                tracing::info!(run = %self.id, agent = %self.agent.id, %error, "run released");
                self.shared.stats.released.fetch_add(1, Ordering::Relaxed);
            }
            Ending::Completed | Ending::Suspended { .. } => {}
        }
        let error = match ending {
            Ending::Failed { error, .. } | Ending::Released { error } => Some(error.clone()),
            Ending::Completed | Ending::Suspended { .. } => None,
        };
        self.finish_transcript(RunFinish {
            status,
            error,
            ..RunFinish::default()
        })
        .await;
    }

    /// Settles a run the worker cut short (deadline, shutdown).
    pub async fn abandon(&self, ending: &Ending) {
        let status = match ending {
            Ending::Released { .. } => "released",
            _ => "failed",
        };
        self.settle_failure(ending, status).await;
    }

    async fn finish_transcript(&self, mut finish: RunFinish) {
        finish.messages = serde_json::to_value(&self.messages).unwrap_or(Value::Null);
        finish.rounds = self.rounds;
        finish.prompt_tokens = self.prompt_tokens;
        finish.completion_tokens = self.completion_tokens;
        if let Err(error) = self.shared.transcripts.finish(&self.id, finish).await {
            tracing::warn!(run = %self.id, %error, "transcript not written");
        }
    }
}
