//! `aibus query "TEXT"`: asks the agents a question through `query.ask` and streams the answer's
//! summary while the model writes it, from the `agent.stream` events of the query's trace. The
//! model streams the JSON of its structured output, so [`SummaryExtractor`] picks the summary text
//! out of it.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use aiventbus_client::{Client, Error as ClientError, EventStream, StreamItem};
use aiventbus_proto::agents::{QueryAsk, QueryParams, QueryResult};
use aiventbus_proto::{ErrorCode, Event, Method};
use anyhow::Context as _;
use clap::Args;
use serde_json::{Map, Value};

use crate::output;
use crate::summary::SummaryExtractor;
use crate::{Context, UsageError};

/// How long `query.ask` waits when no `--timeout` is given (the daemon's default too).
const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// Extra time the call gets beyond the daemon's own deadline, so the daemon's -32007 (with the
/// trace and pending actions) arrives before our own timeout.
const CALL_MARGIN: Duration = Duration::from_secs(10);
/// How long opening the stream subscription may take.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);
/// After the answer, how long to wait for stream chunks still on their way.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// Spinner frame interval.
const SPINNER_FRAME: Duration = Duration::from_millis(100);
/// `agent.completed` event ids remembered per query (a trace rarely has more than a few runs).
const MAX_COMPLETED: usize = 64;

/// `aibus query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The question; several words are joined with spaces.
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<String>,
    /// Wait at most this many seconds for the answer [default: 120].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
}

/// Runs `aibus query`.
pub async fn run(context: &Context, args: QueryArgs) -> anyhow::Result<()> {
    let text = args.text.join(" ");
    if text.trim().is_empty() {
        return Err(UsageError("the question is empty".into()).into());
    }
    let wait = Duration::from_secs(args.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let trace_id = aiventbus_rpc::ids::prefixed("tr");
    let params = QueryParams {
        text,
        timeout_ms: args.timeout.map(|secs| secs.saturating_mul(1000)),
        trace_id: Some(trace_id.clone()),
    };
    // The SDK gives every call 30 s unless told otherwise; a query may take minutes, so this call
    // gets its own deadline.
    let rpc = context.connect().await?;
    let mut spinner = Spinner::new(io::stderr().is_terminal());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticker = tokio::time::interval(SPINNER_FRAME);

    if context.json {
        let ask = ask(&rpc, &params, wait + CALL_MARGIN);
        tokio::pin!(ask);
        let answer = loop {
            tokio::select! {
                answer = &mut ask => break answer,
                _ = ticker.tick(), if spinner.is_on() => spinner.tick(),
                _ = &mut ctrl_c => {
                    spinner.stop();
                    return Err(interrupted(&trace_id));
                }
            }
        };
        spinner.stop();
        let result = answer.map_err(explain)?;
        return output::write_json(&mut io::stdout().lock(), &result);
    }

    // Subscribe before asking, so no chunk of the answer can slip past.
    let client = context.connect().await?;
    let mut stream = subscribe(&client).await?;
    let mut stream_open = true;
    let mut follow = Follow::new(trace_id.clone());
    let mut out = io::stdout().lock();
    let ask = ask(&rpc, &params, wait + CALL_MARGIN);
    tokio::pin!(ask);
    let answer = loop {
        tokio::select! {
            answer = &mut ask => break answer,
            item = stream.next(), if stream_open => match item {
                Some(Ok(StreamItem::Event(event))) => {
                    let shown = follow.event(&event);
                    if !shown.is_empty() {
                        spinner.stop();
                        output::write_text(&mut out, &printable(&shown))?;
                    }
                }
                // Without the stream the answer still comes, whole, from query.ask.
                Some(Ok(StreamItem::Ended(_))) | None => stream_open = false,
                Some(Err(_)) => {}
            },
            _ = ticker.tick(), if spinner.is_on() => spinner.tick(),
            _ = &mut ctrl_c => {
                spinner.stop();
                if follow.extractor.emitted() {
                    let _ = writeln!(out);
                }
                return Err(interrupted(&trace_id));
            }
        }
    };
    spinner.stop();
    let result = match answer {
        Ok(result) => result,
        Err(error) => {
            if follow.extractor.emitted() {
                output::write_text(&mut out, "\n")?;
            }
            return Err(explain(error));
        }
    };
    // query.ask answers once it has seen agent.completed; chunks published before it may still
    // be on their way to us on the other connection. They are all here once our copy of that
    // agent.completed is.
    if stream_open && !follow.completed(&result.event_id) {
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        while !follow.completed(&result.event_id) {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(StreamItem::Event(event)))) => {
                    let shown = follow.event(&event);
                    if !shown.is_empty() {
                        output::write_text(&mut out, &printable(&shown))?;
                    }
                }
                Ok(Some(Err(_))) => {}
                Ok(Some(Ok(StreamItem::Ended(_))) | None) | Err(_) => break,
            }
        }
    }
    output::write_text(&mut out, &final_text(&follow.extractor, &result))
}

async fn subscribe(client: &Client) -> anyhow::Result<EventStream> {
    let patterns = vec!["agent.stream".to_owned(), "agent.completed".to_owned()];
    match tokio::time::timeout(SUBSCRIBE_DEADLINE, client.subscribe(patterns, None)).await {
        Ok(subscribed) => Ok(subscribed.context("events.subscribe agent.stream")?),
        Err(_) => anyhow::bail!("the daemon did not answer events.subscribe within {SUBSCRIBE_DEADLINE:?}"),
    }
}

async fn ask(rpc: &Client, params: &QueryParams, deadline: Duration) -> Result<QueryResult, ClientError> {
    let raw = serde_json::value::to_raw_value(params).map_err(|error| ClientError::Protocol(error.to_string()))?;
    let answer = rpc.call_raw_with_timeout(QueryAsk::NAME, Some(raw), deadline).await?;
    serde_json::from_str(answer.get()).map_err(|error| ClientError::Protocol(format!("query.ask result: {error}")))
}

fn interrupted(trace_id: &str) -> anyhow::Error {
    anyhow::anyhow!("interrupted; the query goes on in the daemon (see 'aibus trace {trace_id}')")
}

/// What to tell the user for a failed `query.ask`: the two expected failures get their own
/// message (exit 1); everything else keeps the client error, so a daemon that is down exits 3.
fn explain(error: ClientError) -> anyhow::Error {
    let Some(answer) = error.rpc() else {
        return anyhow::Error::new(error).context("query.ask");
    };
    match ErrorCode::from_code(answer.code) {
        Some(ErrorCode::NotFound) => anyhow::anyhow!(
            "no agent answers queries: no rule sends user.query to an agent. Create both, for example:\n  \
             aibus agents create assistant --kind llm --provider ollama --model llama3.2\n  \
             aibus rules create ask --topic 'user.**' --agent assistant"
        ),
        Some(ErrorCode::Expired) => anyhow::anyhow!(timeout_message(&answer.message, answer.data.as_ref())),
        _ => anyhow::Error::new(error).context("query.ask"),
    }
}

/// The daemon's own words (it knows the deadline it applied, which may be shorter than asked),
/// then what the run waits for and where to look.
fn timeout_message(message: &str, data: Option<&Value>) -> String {
    let mut text = output::one_line(message);
    let field = |name: &str| data.and_then(|data| data.get(name));
    let pending: Vec<String> = field("pending_actions")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .map(|id| id.as_str().map_or_else(|| output::compact(id), output::one_line))
                .collect()
        })
        .unwrap_or_default();
    if !pending.is_empty() {
        text.push_str(&format!("; the run waits for approval of {}", pending.join(", ")));
    }
    if let Some(trace_id) = field("trace_id").and_then(Value::as_str) {
        text.push_str(&format!(
            "\n  see what happened: aibus trace {}",
            output::one_line(trace_id)
        ));
    }
    text
}

/// What is printed once the answer is in: the summary when none was streamed (command agents do
/// not stream), or when what was streamed is not the final summary (another agent answered
/// first, or the output was repaired); then one line per proposed action.
fn final_text(extractor: &SummaryExtractor, result: &QueryResult) -> String {
    let mut text = String::new();
    if !extractor.emitted() {
        text.push_str(&printable(&result.summary));
        text.push('\n');
    } else if extractor.summary() == result.summary {
        text.push('\n');
    } else {
        text.push('\n');
        text.push_str(&printable(&result.summary));
        text.push('\n');
    }
    for line in action_lines(&result.response) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// `→ action_type {params}` for each proposed action in an agent's output.
fn action_lines(response: &Value) -> Vec<String> {
    let Some(actions) = response.get("proposed_actions").and_then(Value::as_array) else {
        return Vec::new();
    };
    actions
        .iter()
        .map(|action| {
            let Some(fields) = action.as_object() else {
                return format!("→ {}", output::compact(action));
            };
            let action_type = fields.get("action_type").and_then(Value::as_str).unwrap_or("?");
            let mut params: Map<String, Value> = fields
                .iter()
                .filter(|(key, _)| key.as_str() != "action_type")
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            // Parameters may come nested under `params` (SPEC §7): show them flat.
            if params.len() == 1 {
                if let Some(Value::Object(nested)) = params.get("params") {
                    params = nested.clone();
                }
            }
            if params.is_empty() {
                format!("→ {}", output::one_line(action_type))
            } else {
                format!("→ {} {}", output::one_line(action_type), output::compact(&params))
            }
        })
        .collect()
}

/// Answer text for the terminal: line breaks and tabs stay, other control characters (escape
/// sequences a model might produce) are written as escapes.
fn printable(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A one-line spinner on stderr while nothing has been printed; off when stderr is not a terminal.
struct Spinner {
    on: bool,
    drawn: bool,
    frame: usize,
    started: tokio::time::Instant,
}

impl Spinner {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    fn new(on: bool) -> Spinner {
        Spinner {
            on,
            drawn: false,
            frame: 0,
            started: tokio::time::Instant::now(),
        }
    }

    fn is_on(&self) -> bool {
        self.on
    }

    fn tick(&mut self) {
        if !self.on {
            return;
        }
        let glyph = Self::FRAMES[self.frame % Self::FRAMES.len()];
        self.frame = self.frame.wrapping_add(1);
        let seconds = self.started.elapsed().as_secs();
        // A closed stderr is no reason to fail the query.
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r{glyph} waiting for the answer ({seconds}s)");
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Clears the line and stays off.
    fn stop(&mut self) {
        if self.on && self.drawn {
            let mut stderr = io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
        self.on = false;
    }
}

/// The `agent.stream` and `agent.completed` events of one query's trace, turned into summary
/// text. The stream of the first run that streams is followed; others in the trace (several
/// agents, or runs of child events) are ignored.
struct Follow {
    trace_id: String,
    assignment_id: Option<String>,
    extractor: SummaryExtractor,
    completed: Vec<String>,
}

impl Follow {
    fn new(trace_id: String) -> Follow {
        Follow {
            trace_id,
            assignment_id: None,
            extractor: SummaryExtractor::new(),
            completed: Vec::new(),
        }
    }

    /// Takes one event; returns the summary text it adds (often nothing).
    fn event(&mut self, event: &Event) -> String {
        if event.trace_id != self.trace_id {
            return String::new();
        }
        let field = |name: &str| event.payload.get(name).and_then(Value::as_str);
        match event.topic.as_str() {
            "agent.stream" => {
                let (Some(assignment_id), Some(chunk)) = (field("assignment_id"), field("chunk")) else {
                    return String::new();
                };
                match &self.assignment_id {
                    Some(followed) if followed != assignment_id => return String::new(),
                    Some(_) => {}
                    None => self.assignment_id = Some(assignment_id.to_owned()),
                }
                self.extractor.push(chunk)
            }
            "agent.completed" => {
                if let Some(event_id) = field("event_id") {
                    if self.completed.len() < MAX_COMPLETED {
                        self.completed.push(event_id.to_owned());
                    }
                }
                String::new()
            }
            _ => String::new(),
        }
    }

    /// Whether `agent.completed` for this event has been seen.
    fn completed(&self, event_id: &str) -> bool {
        self.completed.iter().any(|seen| seen == event_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::event;
    use crate::summary::tests::extract;
    use serde_json::json;

    fn stream_event(trace: &str, assignment: &str, chunk: &str) -> Event {
        let mut streamed = event(1, "evt_s", None);
        streamed.topic = "agent.stream".into();
        streamed.trace_id = trace.into();
        streamed.payload = json!({"assignment_id": assignment, "agent_id": "agt_1", "chunk": chunk})
            .as_object()
            .cloned()
            .unwrap_or_default();
        streamed
    }

    #[test]
    fn follow_takes_one_run_of_its_own_trace() {
        let mut follow = Follow::new("tr_q".into());
        assert_eq!(
            follow.event(&stream_event("tr_other", "asg_x", r#"{"summary":"no"#)),
            ""
        );
        assert_eq!(follow.event(&stream_event("tr_q", "asg_a", r#"{"summary":"He"#)), "He");
        assert_eq!(follow.event(&stream_event("tr_q", "asg_b", r#"{"summary":"Other"#)), "");
        assert_eq!(follow.event(&stream_event("tr_q", "asg_a", r#"llo"}"#)), "llo");
        assert_eq!(follow.extractor.summary(), "Hello");

        let mut done = event(2, "evt_c", None);
        done.topic = "agent.completed".into();
        done.trace_id = "tr_q".into();
        done.payload = json!({"event_id": "evt_q", "assignment_id": "asg_a", "summary": "Hello"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(!follow.completed("evt_q"));
        assert_eq!(follow.event(&done), "");
        assert!(follow.completed("evt_q"));
        assert!(!follow.completed("evt_other"));
    }

    fn result(summary: &str, response: Value) -> QueryResult {
        QueryResult {
            event_id: "evt_q".into(),
            trace_id: "tr_q".into(),
            summary: summary.into(),
            response,
        }
    }

    #[test]
    fn the_summary_is_printed_once() {
        let answer = result("It is 4.", json!({"type": "answer", "summary": "It is 4."}));
        // Nothing streamed (a command agent): the summary from the result.
        assert_eq!(final_text(&SummaryExtractor::new(), &answer), "It is 4.\n");
        // All streamed: only the line end.
        let (_, streamed) = extract(&[r#"{"summary":"It is 4."}"#]);
        assert_eq!(final_text(&streamed, &answer), "\n");
        // Streamed something else (another run answered first): the real answer follows.
        let (_, partial) = extract(&[r#"{"summary":"It i"#]);
        assert_eq!(final_text(&partial, &answer), "\nIt is 4.\n");
        // Escape sequences from a model are not sent to the terminal raw.
        let hostile = result("a\u{1b}[2Jb\nc", json!({}));
        assert_eq!(final_text(&SummaryExtractor::new(), &hostile), "a\\u{1b}[2Jb\nc\n");
    }

    #[test]
    fn proposed_actions_follow_one_per_line() {
        let answer = result(
            "Cleaning up.",
            json!({
                "type": "answer",
                "summary": "Cleaning up.",
                "proposed_actions": [
                    {"action_type": "shell_exec", "argv": ["rm", "-r", "/tmp/x"], "cwd": "/tmp"},
                    {"action_type": "notify", "params": {"title": "Done", "message": "ok"}},
                    {"action_type": "log"},
                    "odd"
                ]
            }),
        );
        assert_eq!(
            final_text(&SummaryExtractor::new(), &answer),
            "Cleaning up.\n\
             → shell_exec {\"argv\":[\"rm\",\"-r\",\"/tmp/x\"],\"cwd\":\"/tmp\"}\n\
             → notify {\"message\":\"ok\",\"title\":\"Done\"}\n\
             → log\n\
             → \"odd\"\n"
        );
        assert!(action_lines(&json!({"proposed_actions": []})).is_empty());
        assert!(action_lines(&json!("not an object")).is_empty());
    }

    #[test]
    fn expected_failures_get_their_own_messages_and_exit_statuses() {
        use aiventbus_proto::ErrorObject;

        let none = explain(ClientError::Rpc(ErrorObject::new(
            ErrorCode::NotFound,
            "no agent takes user.query",
        )));
        let text = crate::render_error(&none, &crate::Daemon::Local(std::path::Path::new("/s")));
        assert!(text.contains("aibus agents create"), "{text}");
        assert!(text.contains("aibus rules create ask --topic 'user.**'"), "{text}");
        assert_eq!(crate::exit_status(&none), crate::Exit::Failure);

        let late = explain(ClientError::Rpc(
            ErrorObject::new(ErrorCode::Expired, "no answer within 30000 ms").with_data(json!({
                "event_id": "evt_q", "trace_id": "tr_q", "pending_actions": ["act_1", "act_2"]
            })),
        ));
        let text = crate::render_error(&late, &crate::Daemon::Local(std::path::Path::new("/s")));
        assert_eq!(
            text,
            "error: no answer within 30000 ms; the run waits for approval of act_1, act_2\n  \
             see what happened: aibus trace tr_q"
        );
        assert_eq!(crate::exit_status(&late), crate::Exit::Failure);
        assert_eq!(timeout_message("late", None), "late");

        let down = explain(ClientError::Unavailable("refused".into()));
        assert_eq!(crate::exit_status(&down), crate::Exit::NotRunning);
        let failed = explain(ClientError::Rpc(ErrorObject::new(
            ErrorCode::Unavailable,
            "the agent could not answer",
        )));
        assert_eq!(crate::exit_status(&failed), crate::Exit::Failure);
        assert!(
            crate::render_error(&failed, &crate::Daemon::Local(std::path::Path::new("/s")))
                .starts_with("error: query.ask: ")
        );
    }

    #[test]
    fn printable_keeps_lines_and_escapes_the_rest() {
        assert_eq!(printable("a\nb\tc"), "a\nb\tc");
        assert_eq!(printable("a\rb\u{7}"), "a\\rb\\u{7}");
    }
}
