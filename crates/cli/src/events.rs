//! Event commands: `publish`, `tail` (follows across reconnects without duplicates or gaps),
//! `events` (a listing) and `trace` (a trace as a tree).

use std::io::{self, Read};
use std::time::Duration;

use aiventbus_client::{Client, EventStream, StreamItem};
use aiventbus_proto::methods::{EventsResult, ListParams, PublishParams};
use aiventbus_proto::{ErrorObject, EventStatus, Priority, TopicPattern, event::validate_topic};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use crate::output::{self, Table};
use crate::{Context, UsageError};

/// First pause before `tail` reconnects.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between `tail` reconnects.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long a (re)subscribe may take before it counts as failed.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// `aibus publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Dotted topic, e.g. `demo.hello`.
    topic: String,
    /// The payload: a JSON object, or `-` to read it from stdin [default: {}].
    payload: Option<String>,
    /// Urgency [default: medium].
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// Copies with the same topic and key inside the dedupe window are stored as `deduped`.
    #[arg(long, value_name = "KEY")]
    dedupe_key: Option<String>,
    /// The event this one reacts to (`evt_…`); the trace is inherited from it.
    #[arg(long, value_name = "EVT")]
    parent: Option<String>,
    /// Put the event in this trace (`tr_…`).
    #[arg(long, value_name = "TR")]
    trace_id: Option<String>,
    /// Classification for routing rules.
    #[arg(long, value_name = "S")]
    semantic_type: Option<String>,
    /// Ties the event to an action, request or run.
    #[arg(long, value_name = "C")]
    correlation_id: Option<String>,
}

/// An event priority on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PriorityArg {
    Low,
    Medium,
    High,
    Critical,
}

impl From<PriorityArg> for Priority {
    fn from(priority: PriorityArg) -> Priority {
        match priority {
            PriorityArg::Low => Priority::Low,
            PriorityArg::Medium => Priority::Medium,
            PriorityArg::High => Priority::High,
            PriorityArg::Critical => Priority::Critical,
        }
    }
}

/// `aibus tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Topic patterns (`*` one segment, `**` any number) [default: **].
    patterns: Vec<String>,
    /// Replay from this seq (inclusive) before going live; without it, start live.
    #[arg(long, value_name = "N")]
    from_seq: Option<u64>,
}

/// `aibus events`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this exact topic.
    #[arg(long, value_name = "T")]
    topic: Option<String>,
    /// Only topics matching this pattern.
    #[arg(long, value_name = "P")]
    pattern: Option<String>,
    /// Only events with this status.
    #[arg(long, value_enum, value_name = "S")]
    status: Option<StatusArg>,
    /// Only events after this seq (exclusive).
    #[arg(long, value_name = "N")]
    after_seq: Option<u64>,
    /// At most this many events [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5000))]
    limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Published,
    Deduped,
    Failed,
}

impl From<StatusArg> for EventStatus {
    fn from(status: StatusArg) -> EventStatus {
        match status {
            StatusArg::Published => EventStatus::Published,
            StatusArg::Deduped => EventStatus::Deduped,
            StatusArg::Failed => EventStatus::Failed,
        }
    }
}

/// Parses a payload argument: it must be a JSON object.
pub fn parse_payload(text: &str) -> Result<Map<String, Value>, UsageError> {
    if text.trim().is_empty() {
        return Err(UsageError(
            "the payload is empty; it must be a JSON object such as {}".into(),
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(UsageError(format!(
            "the payload must be a JSON object, not {}",
            json_kind(&other)
        ))),
        Err(error) => Err(UsageError(format!("the payload is not valid JSON: {error}"))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_payload(argument: Option<&str>) -> anyhow::Result<Map<String, Value>> {
    match argument {
        None => Ok(Map::new()),
        Some("-") => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the payload from stdin")?;
            Ok(parse_payload(&text)?)
        }
        Some(text) => Ok(parse_payload(text)?),
    }
}

/// `aibus publish TOPIC [JSON]`.
pub async fn publish(context: &Context, args: PublishArgs) -> anyhow::Result<()> {
    validate_topic(&args.topic).map_err(UsageError)?;
    let payload = read_payload(args.payload.as_deref())?;
    let params = PublishParams {
        topic: args.topic,
        payload: Some(Value::Object(payload)),
        priority: args.priority.map(Priority::from),
        semantic_type: args.semantic_type,
        dedupe_key: args.dedupe_key,
        trace_id: args.trace_id,
        parent_event: args.parent,
        correlation_id: args.correlation_id,
        ..PublishParams::default()
    };
    let client = context.connect().await?;
    let result = client
        .publish(&params)
        .await
        .with_context(|| format!("publishing to {}", params.topic))?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &result);
    }
    output::write_line(
        &mut out,
        format_args!(
            "{} seq={} trace={} status={}",
            result.id,
            result.seq,
            result.trace_id,
            result.status.as_str()
        ),
    )
}

/// Where a followed subscription resumes, and which deliveries are repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resume {
    /// `--from-seq`, used until an event has been seen.
    from_seq: Option<u64>,
    /// The highest seq printed so far.
    last_seen: Option<u64>,
}

impl Resume {
    fn new(from_seq: Option<u64>) -> Resume {
        Resume {
            from_seq,
            last_seen: None,
        }
    }

    /// The `from_seq` for the next subscribe: just after the last event printed, else the
    /// original `--from-seq`, else live.
    fn next_from_seq(&self) -> Option<u64> {
        match self.last_seen {
            Some(seq) => Some(seq.saturating_add(1)),
            None => self.from_seq,
        }
    }

    /// Whether an event should be printed; records it when so. Deliveries are at least once, so
    /// a resumed subscription may repeat what was already printed.
    fn accept(&mut self, seq: u64) -> bool {
        let floor = self.next_from_seq().unwrap_or(0);
        if seq < floor {
            return false;
        }
        self.last_seen = Some(seq);
        true
    }
}

/// Doubling pauses from 100 ms to 2 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: RECONNECT_FIRST }
    }

    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RECONNECT_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = RECONNECT_FIRST;
    }
}

async fn subscribe(client: &Client, patterns: &[String], from_seq: Option<u64>) -> anyhow::Result<EventStream> {
    match tokio::time::timeout(SUBSCRIBE_DEADLINE, client.subscribe(patterns.to_vec(), from_seq)).await {
        Ok(subscribed) => Ok(subscribed?),
        Err(_) => anyhow::bail!("the daemon did not answer events.subscribe within {SUBSCRIBE_DEADLINE:?}"),
    }
}

fn describe_end(error: &ErrorObject) -> String {
    format!(
        "the daemon ended the subscription: {} (code {})",
        error.message, error.code
    )
}

fn describe_resume(from_seq: Option<u64>) -> String {
    match from_seq {
        Some(seq) => format!("from seq {seq}"),
        None => "live".to_owned(),
    }
}

/// `aibus tail [PATTERN…] [--from-seq N]`.
pub async fn tail(context: &Context, args: TailArgs) -> anyhow::Result<()> {
    let patterns = if args.patterns.is_empty() {
        vec!["**".to_owned()]
    } else {
        args.patterns
    };
    for pattern in &patterns {
        TopicPattern::parse(pattern).map_err(UsageError)?;
    }
    let mut resume = Resume::new(args.from_seq);
    let client = context.connect().await?;
    let mut stream = subscribe(&client, &patterns, resume.next_from_seq()).await?;
    // A live follow starts at a known position, so a reconnect before the first event loses nothing.
    if resume.from_seq.is_none() {
        resume.from_seq = stream.next_seq();
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut backoff = Backoff::new();
    let mut out = io::stdout().lock();
    loop {
        let reason = loop {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                item = stream.next() => match item {
                    Some(Ok(StreamItem::Event(event))) => {
                        backoff.reset();
                        if !resume.accept(event.seq) {
                            continue;
                        }
                        if context.json {
                            output::write_line(&mut out, output::compact(&event))?;
                        } else {
                            output::write_line(&mut out, output::event_line(&event))?;
                        }
                    }
                    Some(Ok(StreamItem::Ended(error))) => break describe_end(&error),
                    // Cannot happen with a daemon of the same protocol version; say so rather
                    // than stop following.
                    Some(Err(error)) => output::note(format!("an event could not be read: {error}")),
                    None => break "the connection to the daemon was lost".to_owned(),
                },
            }
        };
        output::note(format!("{reason}; reconnecting"));
        let mut last_failure = String::new();
        stream = loop {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                _ = tokio::time::sleep(backoff.next()) => {}
            }
            let from_seq = resume.next_from_seq();
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                subscribed = subscribe(&client, &patterns, from_seq) => match subscribed {
                    Ok(stream) => {
                        output::note(format!("resubscribed ({})", describe_resume(from_seq)));
                        break stream;
                    }
                    Err(error) => {
                        let failure = format!("{error:#}");
                        if failure != last_failure {
                            output::note(format!("cannot resubscribe yet: {failure}; retrying"));
                            last_failure = failure;
                        }
                    }
                },
            }
        };
    }
}

/// `aibus events`.
pub async fn list(context: &Context, args: ListArgs) -> anyhow::Result<()> {
    if let Some(pattern) = &args.pattern {
        TopicPattern::parse(pattern).map_err(UsageError)?;
    }
    let params = ListParams {
        topic: args.topic,
        pattern: args.pattern,
        status: args.status.map(EventStatus::from),
        trace_id: None,
        after_seq: args.after_seq,
        limit: args.limit,
    };
    let client = context.connect().await?;
    let events = client.list(&params).await.context("events.list")?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &EventsResult { events });
    }
    output::write_text(&mut out, &events_table(&events.iter().collect::<Vec<_>>()))
}

fn events_table(events: &[&aiventbus_proto::Event]) -> String {
    let mut table = Table::new(&["SEQ", "TS", "TOPIC", "SOURCE", "STATUS", "ID"]);
    for event in events {
        table.row(vec![
            event.seq.to_string(),
            event.ts.clone(),
            event.topic.clone(),
            event.source.clone(),
            event.status.as_str().to_owned(),
            event.id.clone(),
        ]);
    }
    table.render()
}

/// `aibus trace TRACE_ID`.
pub async fn trace(context: &Context, trace_id: &str) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let result = client
        .trace(trace_id)
        .await
        .with_context(|| format!("events.trace {trace_id}"))?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &result);
    }
    if result.events.is_empty() {
        output::note(format!("trace {trace_id} has no events"));
        return Ok(());
    }
    let mut text = output::trace_tree(&result.events).join("\n");
    text.push('\n');
    output::write_text(&mut out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::event;

    #[test]
    fn payload_objects_parse() {
        let object = parse_payload(r#"{"a": 1, "b": {"c": [true]}}"#).expect("an object");
        assert_eq!(object.get("a"), Some(&Value::from(1)));
        assert!(parse_payload("{}").expect("empty object").is_empty());
    }

    #[test]
    fn non_objects_are_usage_errors_naming_the_problem() {
        for (text, said) in [
            ("[1, 2]", "not an array"),
            ("\"x\"", "not a string"),
            ("3", "not a number"),
            ("null", "not null"),
            ("true", "not a boolean"),
            ("{\"a\": ", "not valid JSON"),
            ("{a: 1}", "not valid JSON"),
            ("", "empty"),
            ("  \n", "empty"),
        ] {
            let error = parse_payload(text).expect_err(text);
            assert!(error.0.contains(said), "{text:?}: {}", error.0);
        }
    }

    #[test]
    fn resume_never_repeats_or_skips() {
        let mut live = Resume::new(None);
        assert_eq!(live.next_from_seq(), None);
        assert!(live.accept(5));
        assert!(live.accept(6));
        assert_eq!(live.next_from_seq(), Some(7));
        // A resumed subscription repeating what was printed is filtered.
        assert!(!live.accept(6));
        assert!(live.accept(7));

        let mut replay = Resume::new(Some(3));
        assert_eq!(replay.next_from_seq(), Some(3));
        assert!(!replay.accept(2));
        assert_eq!(replay.next_from_seq(), Some(3), "nothing seen yet: keep --from-seq");
        assert!(replay.accept(3));
        assert!(replay.accept(9), "later seqs of other topics are not gaps");
        assert_eq!(replay.next_from_seq(), Some(10));

        let mut zero = Resume::new(Some(0));
        assert!(zero.accept(1));
        assert_eq!(zero.next_from_seq(), Some(2));
    }

    #[test]
    fn backoff_doubles_to_two_seconds() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), RECONNECT_FIRST);
    }

    #[test]
    fn events_table_has_the_listed_columns() {
        let a = event(1, "evt_a", None);
        let b = event(12, "evt_b", Some("evt_a"));
        assert_eq!(
            events_table(&[&a, &b]),
            "SEQ  TS                        TOPIC     SOURCE      STATUS     ID\n\
             1    2026-01-02T03:04:05.678Z  demo.t1   user:alice  published  evt_a\n\
             12   2026-01-02T03:04:05.678Z  demo.t12  user:alice  published  evt_b\n"
        );
    }
}
