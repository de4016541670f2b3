//! Human input (SPEC §8): `aibus requests list|show|answer|dismiss` for the questions agent
//! sessions ask, and `aibus sessions` for the sessions themselves.

use std::io::{self, Read};

use aiventbus_proto::policy::{
    DismissParams, RequestInfo, RequestStatus, RequestsListParams, RespondParams, SessionInfo, SessionState,
    SessionsListParams,
};
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::actions::age;
use crate::output::{self, Table};
use crate::{Context, UsageError};

/// Widest question shown in the listing.
const QUESTION_WIDTH: usize = 60;

/// `aibus requests …`.
#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Requests, oldest first.
    List {
        /// Only requests in this state.
        #[arg(long, value_enum, value_name = "S")]
        status: Option<RequestStatusArg>,
        /// Only this session's (`ses_…`).
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// At most this many [default: 100].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// One request with its whole question.
    Show {
        /// The request id (`req_…`).
        id: String,
    },
    /// Answer a pending request; the answer lands in its session's inbox.
    Answer {
        /// The request id (`req_…`).
        id: String,
        /// The answer; several words are joined with spaces; `-` reads it from stdin.
        #[arg(required = true, value_name = "TEXT")]
        text: Vec<String>,
    },
    /// Dismiss a pending request; it can no longer be answered.
    Dismiss {
        /// The request id (`req_…`).
        id: String,
        /// Why, for the session.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

/// A request state on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RequestStatusArg {
    /// Waiting for an answer.
    Pending,
    /// Answered.
    Answered,
    /// Dismissed.
    Dismissed,
}

impl From<RequestStatusArg> for RequestStatus {
    fn from(status: RequestStatusArg) -> RequestStatus {
        match status {
            RequestStatusArg::Pending => RequestStatus::Pending,
            RequestStatusArg::Answered => RequestStatus::Answered,
            RequestStatusArg::Dismissed => RequestStatus::Dismissed,
        }
    }
}

fn request_status_name(status: RequestStatus) -> &'static str {
    match status {
        RequestStatus::Pending => "pending",
        RequestStatus::Answered => "answered",
        RequestStatus::Dismissed => "dismissed",
    }
}

/// `aibus sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Only sessions in this state.
    #[arg(long, value_enum, value_name = "S")]
    state: Option<SessionStateArg>,
}

/// A session state on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SessionStateArg {
    /// Busy.
    Working,
    /// Has a pending request.
    #[value(name = "waiting_for_input", alias = "waiting-for-input")]
    WaitingForInput,
    /// Finished.
    Done,
    /// Failed.
    Error,
    /// Silent for 120 s.
    Offline,
}

impl From<SessionStateArg> for SessionState {
    fn from(state: SessionStateArg) -> SessionState {
        match state {
            SessionStateArg::Working => SessionState::Working,
            SessionStateArg::WaitingForInput => SessionState::WaitingForInput,
            SessionStateArg::Done => SessionState::Done,
            SessionStateArg::Error => SessionState::Error,
            SessionStateArg::Offline => SessionState::Offline,
        }
    }
}

fn session_state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Working => "working",
        SessionState::WaitingForInput => "waiting_for_input",
        SessionState::Done => "done",
        SessionState::Error => "error",
        SessionState::Offline => "offline",
    }
}

/// Runs one requests command.
pub async fn run(context: &Context, command: RequestsCommand) -> anyhow::Result<()> {
    // An answer read from stdin is read before anything is sent.
    let answer = match &command {
        RequestsCommand::Answer { text, .. } => Some(answer_text(text, &mut io::stdin().lock())?),
        _ => None,
    };
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        RequestsCommand::List { status, session, limit } => {
            let params = RequestsListParams {
                status: status.map(RequestStatus::from),
                session_id: session,
                limit,
            };
            let requests = client.requests(&params).await.context("requests.list")?;
            if context.json {
                return output::write_json(&mut out, &serde_json::json!({ "requests": requests }));
            }
            output::write_text(&mut out, &requests_table(&requests, aiventbus_rpc::time::now_ms()))
        }
        RequestsCommand::Show { id } => {
            let request = client
                .request(&id)
                .await
                .with_context(|| format!("requests.get {id}"))?;
            if context.json {
                return output::write_json(&mut out, &request);
            }
            output::write_text(&mut out, &request_details(&request))
        }
        RequestsCommand::Answer { id, .. } => {
            let params = RespondParams {
                id: id.clone(),
                response_text: answer.unwrap_or_default(),
                ..RespondParams::default()
            };
            let request = client
                .respond(&params)
                .await
                .with_context(|| format!("requests.respond {id}"))?;
            if context.json {
                return output::write_json(&mut out, &request);
            }
            output::write_line(&mut out, format!("answered {}", output::one_line(&request.request_id)))
        }
        RequestsCommand::Dismiss { id, reason } => {
            let params = DismissParams {
                id: id.clone(),
                reason,
                ..DismissParams::default()
            };
            let request = client
                .dismiss(&params)
                .await
                .with_context(|| format!("requests.dismiss {id}"))?;
            if context.json {
                return output::write_json(&mut out, &request);
            }
            output::write_line(&mut out, format!("dismissed {}", output::one_line(&request.request_id)))
        }
    }
}

/// The answer from the words given, or from `stdin` for `-`.
fn answer_text(words: &[String], stdin: &mut impl Read) -> anyhow::Result<String> {
    let text = if words == ["-"] {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .context("cannot read the answer from stdin")?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        words.join(" ")
    };
    if text.trim().is_empty() {
        return Err(UsageError("the answer is empty".into()).into());
    }
    Ok(text)
}

/// `aibus sessions`.
pub async fn sessions(context: &Context, args: SessionsArgs) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let params = SessionsListParams {
        state: args.state.map(SessionState::from),
    };
    let sessions = client.sessions(&params).await.context("sessions.list")?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &serde_json::json!({ "sessions": sessions }));
    }
    output::write_text(&mut out, &sessions_table(&sessions, aiventbus_rpc::time::now_ms()))
}

fn requests_table(requests: &[RequestInfo], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "STATUS", "PRIORITY", "SESSION", "TITLE", "QUESTION", "AGE"]);
    for request in requests {
        table.row(vec![
            request.request_id.clone(),
            request_status_name(request.status).to_owned(),
            request.priority.as_str().to_owned(),
            request.session_id.clone(),
            request.title.clone(),
            output::truncate(&output::one_line(&request.question), QUESTION_WIDTH),
            age(&request.created_at, now_ms),
        ]);
    }
    table.render()
}

fn request_details(request: &RequestInfo) -> String {
    let mut text = format!(
        "id:       {}\nstatus:   {}\npriority: {}\nsession:  {}\ncreated:  {}\ntitle:    {}\n",
        output::one_line(&request.request_id),
        request_status_name(request.status),
        request.priority.as_str(),
        output::one_line(&request.session_id),
        output::one_line(&request.created_at),
        output::one_line(&request.title),
    );
    if let Some(context) = &request.context {
        text.push_str(&format!("context:  {}\n", output::compact(context)));
    }
    if let Some(by) = &request.decided_by {
        text.push_str(&format!("by:       {}\n", output::one_line(by)));
    }
    if let Some(at) = &request.resolved_at {
        text.push_str(&format!("resolved: {}\n", output::one_line(at)));
    }
    text.push_str("\nquestion:\n");
    text.push_str(&indent(&request.question));
    if let Some(answer) = &request.response_text {
        text.push_str("\nanswer:\n");
        text.push_str(&indent(answer));
    }
    text
}

/// Every line indented by two spaces, control characters other than line breaks escaped.
fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {}\n", output::one_line(line)))
        .collect()
}

fn sessions_table(sessions: &[SessionInfo], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "NAME", "STATE", "PENDING", "LAST SEEN"]);
    for session in sessions {
        table.row(vec![
            session.session_id.clone(),
            session.display_name.clone(),
            session_state_name(session.state).to_owned(),
            session.pending_requests.to_string(),
            format!("{} ago", age(&session.last_seen, now_ms)),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::tests::NOW;
    use aiventbus_proto::Priority;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: RequestsCommand,
    }

    fn request(id: &str, status: RequestStatus) -> RequestInfo {
        RequestInfo {
            request_id: id.into(),
            session_id: "ses_1".into(),
            title: "Deploy?".into(),
            question: "Shall I deploy\nto production now?".into(),
            priority: Priority::High,
            context: None,
            status,
            response_text: None,
            decided_by: None,
            created_at: "2026-01-02T03:02:05.000Z".into(),
            resolved_at: None,
        }
    }

    #[test]
    fn the_listing_keeps_one_line_per_request() {
        let requests = vec![
            request("req_1", RequestStatus::Pending),
            request("req_2", RequestStatus::Dismissed),
        ];
        assert_eq!(
            requests_table(&requests, NOW),
            "ID     STATUS     PRIORITY  SESSION  TITLE    QUESTION                            AGE\n\
             req_1  pending    high      ses_1    Deploy?  Shall I deploy\\nto production now?  2m\n\
             req_2  dismissed  high      ses_1    Deploy?  Shall I deploy\\nto production now?  2m\n"
        );
    }

    #[test]
    fn details_show_the_question_and_answer_whole() {
        let mut answered = request("req_1", RequestStatus::Answered);
        answered.response_text = Some("yes, go".into());
        answered.decided_by = Some("user:alice".into());
        let text = request_details(&answered);
        assert!(
            text.starts_with("id:       req_1\nstatus:   answered\npriority: high\n"),
            "{text}"
        );
        assert!(text.contains("by:       user:alice\n"), "{text}");
        assert!(
            text.ends_with("question:\n  Shall I deploy\n  to production now?\n\nanswer:\n  yes, go\n"),
            "{text}"
        );
    }

    #[test]
    fn sessions_show_state_and_pending_count() {
        let session = SessionInfo {
            session_id: "ses_1".into(),
            display_name: "claude in ~/src".into(),
            state: SessionState::WaitingForInput,
            pending_requests: 2,
            last_seen: "2026-01-02T03:04:00.000Z".into(),
            created_at: "2026-01-02T03:00:00.000Z".into(),
            metadata: None,
        };
        assert_eq!(
            sessions_table(&[session], NOW),
            "ID     NAME             STATE              PENDING  LAST SEEN\n\
             ses_1  claude in ~/src  waiting_for_input  2        5s ago\n"
        );
    }

    #[test]
    fn answers_come_from_words_or_stdin() {
        let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            answer_text(&words(&["yes", "go"]), &mut &b""[..]).expect("words"),
            "yes go"
        );
        assert_eq!(
            answer_text(&words(&["-"]), &mut &b"from\nstdin\n"[..]).expect("stdin"),
            "from\nstdin"
        );
        let empty = answer_text(&words(&["  "]), &mut &b""[..]).expect_err("empty");
        assert!(empty.downcast_ref::<UsageError>().is_some());
        let parsed = Harness::try_parse_from(["r", "answer", "req_1", "ship", "it"]).expect("parses");
        assert!(
            matches!(parsed.command, RequestsCommand::Answer { ref id, ref text } if id == "req_1" && text.len() == 2)
        );
        assert!(Harness::try_parse_from(["r", "answer", "req_1"]).is_err());
        let parsed = Harness::try_parse_from(["r", "list", "--status", "answered"]).expect("parses");
        assert!(matches!(
            parsed.command,
            RequestsCommand::List {
                status: Some(RequestStatusArg::Answered),
                ..
            }
        ));
    }

    #[test]
    fn state_names_match_the_wire() {
        for status in RequestStatusArg::value_variants() {
            let wire = serde_json::to_value(RequestStatus::from(*status)).expect("json");
            assert_eq!(
                wire,
                serde_json::Value::from(request_status_name(RequestStatus::from(*status)))
            );
        }
        for state in SessionStateArg::value_variants() {
            let wire = serde_json::to_value(SessionState::from(*state)).expect("json");
            let name = state.to_possible_value().expect("visible");
            assert_eq!(wire, serde_json::Value::from(name.get_name()));
            assert_eq!(session_state_name(SessionState::from(*state)), name.get_name());
        }
    }
}
