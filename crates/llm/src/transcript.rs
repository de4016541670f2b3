//! Run transcripts in `llm.db`: one row per run (its messages, output, status, timings and token
//! counts), written when the run starts and when it ends; the summaries of recent finished runs
//! feed the next prompts in the same memory scope. The table is capped at [`KEEP_RUNS`] rows.

use rusqlite::params;
use serde_json::Value;

use crate::db::{Db, DbError};

/// Runs kept (a run with its messages is up to ~100 KiB); older ones are pruned as new ones finish.
pub const KEEP_RUNS: i64 = 2_000;

/// What is known when a run starts.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// `run_<ulid>`.
    pub id: String,
    /// The agent.
    pub agent_id: String,
    /// The assignment.
    pub assignment_id: String,
    /// The triggering event.
    pub event_id: String,
    /// Its trace.
    pub trace_id: String,
    /// Its topic.
    pub topic: String,
    /// The agent's memory scope.
    pub memory_scope: String,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct RunFinish {
    /// `completed`, `failed`, `released` or `parse_failure`.
    pub status: &'static str,
    /// The conversation (a JSON array of `{role, content}`).
    pub messages: Value,
    /// The last structured output.
    pub output: Option<Value>,
    /// Its summary.
    pub summary: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// Model rounds.
    pub rounds: u32,
    /// Prompt tokens, all rounds.
    pub prompt_tokens: u64,
    /// Completion tokens, all rounds.
    pub completion_tokens: u64,
}

/// A finished run, as the context engine shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentRun {
    /// The triggering event's topic.
    pub topic: String,
    /// The triggering event.
    pub event_id: String,
    /// What the agent concluded.
    pub summary: String,
    /// When it finished (unix ms).
    pub finished_ms: u64,
}

/// The `runs` table.
#[derive(Clone)]
pub struct Transcripts {
    db: Db,
}

impl Transcripts {
    /// Over an open database.
    pub fn new(db: Db) -> Transcripts {
        Transcripts { db }
    }

    /// Records a started run.
    pub async fn start(&self, run: RunStart) -> Result<(), DbError> {
        self.db
            .run(move |connection| {
                connection.execute(
                    "INSERT INTO runs (id, agent_id, assignment_id, event_id, trace_id, topic, memory_scope, status, started_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8)",
                    params![
                        run.id,
                        run.agent_id,
                        run.assignment_id,
                        run.event_id,
                        run.trace_id,
                        run.topic,
                        run.memory_scope,
                        aiventbus_rpc::time::now_ms() as i64
                    ],
                )?;
                Ok(())
            })
            .await
    }

    /// Records how a run ended and prunes the oldest rows past [`KEEP_RUNS`].
    pub async fn finish(&self, id: &str, finish: RunFinish) -> Result<(), DbError> {
        let id = id.to_owned();
        self.db
            .run(move |connection| {
                let output = finish.output.as_ref().map(Value::to_string);
                connection.execute(
                    "UPDATE runs SET status = ?2, messages = ?3, output = ?4, summary = ?5, error = ?6, rounds = ?7,
                        prompt_tokens = ?8, completion_tokens = ?9, finished_ms = ?10 WHERE id = ?1",
                    params![
                        id,
                        finish.status,
                        finish.messages.to_string(),
                        output,
                        finish.summary,
                        finish.error,
                        finish.rounds,
                        finish.prompt_tokens as i64,
                        finish.completion_tokens as i64,
                        aiventbus_rpc::time::now_ms() as i64
                    ],
                )?;
                connection.execute(
                    "DELETE FROM runs WHERE started_ms < (SELECT started_ms FROM runs ORDER BY started_ms DESC LIMIT 1 OFFSET ?1)",
                    [KEEP_RUNS],
                )?;
                Ok(())
            })
            .await
    }

    /// The newest completed runs in a memory scope, newest first.
    pub async fn recent(&self, memory_scope: &str, limit: u32) -> Result<Vec<RecentRun>, DbError> {
        let scope = memory_scope.to_owned();
        self.db
            .run(move |connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT topic, event_id, summary, finished_ms FROM runs
                     WHERE memory_scope = ?1 AND status = 'completed' AND summary IS NOT NULL
                     ORDER BY finished_ms DESC LIMIT ?2",
                )?;
                let rows = statement.query_map(params![scope, limit], |row| {
                    Ok(RecentRun {
                        topic: row.get(0)?,
                        event_id: row.get(1)?,
                        summary: row.get(2)?,
                        finished_ms: row.get::<_, i64>(3)?.max(0) as u64,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// A run's status and the stored output (tests and diagnostics).
    pub async fn status(&self, id: &str) -> Result<Option<(String, Option<String>)>, DbError> {
        use rusqlite::OptionalExtension;
        let id = id.to_owned();
        self.db
            .run(move |connection| {
                Ok(connection
                    .query_row("SELECT status, output FROM runs WHERE id = ?1", [id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str, scope: &str) -> RunStart {
        RunStart {
            id: id.into(),
            agent_id: "agt_1".into(),
            assignment_id: "asg_1".into(),
            event_id: format!("evt_{id}"),
            trace_id: "tr_1".into(),
            topic: "user.query".into(),
            memory_scope: scope.into(),
        }
    }

    #[tokio::test]
    async fn recent_lists_completed_runs_of_the_scope_newest_first() {
        let transcripts = Transcripts::new(Db::in_memory().unwrap());
        for (id, scope, status) in [
            ("run_a", "agent:agt_1", "completed"),
            ("run_b", "agent:agt_1", "failed"),
            ("run_c", "other", "completed"),
            ("run_d", "agent:agt_1", "completed"),
        ] {
            transcripts.start(start(id, scope)).await.unwrap();
            transcripts
                .finish(
                    id,
                    RunFinish {
                        status,
                        summary: Some(format!("summary of {id}")),
                        messages: Value::Array(vec![]),
                        ..RunFinish::default()
                    },
                )
                .await
                .unwrap();
            // Distinct finish times keep the order well defined.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let recent = transcripts.recent("agent:agt_1", 10).await.unwrap();
        let summaries: Vec<&str> = recent.iter().map(|run| run.summary.as_str()).collect();
        assert_eq!(summaries, ["summary of run_d", "summary of run_a"]);
        let (status, _) = transcripts.status("run_b").await.unwrap().unwrap();
        assert_eq!(status, "failed");
    }
}
