//! Actions and approvals (SPEC §8): `pending`, `approve`, `deny`, `actions` (history) with
//! `actions show`, and `policy explain` (a dry run of the decision).

use std::io;

use aiventbus_proto::policy::{ActionRecord, ActionStatus, ActionsListParams, ExplainParams, Explanation};
use anyhow::Context as _;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::agents::resolve_agent_id;
use crate::output::{self, Table};
use crate::{Context, UsageError};

/// Widest one-line summary of an action's parameters in a table.
const SUMMARY_WIDTH: usize = 60;

/// `aibus actions`: the history, or one action with `show`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ActionsArgs {
    #[command(subcommand)]
    command: Option<ActionsCommand>,
    /// Only actions in this state.
    #[arg(long, value_enum, value_name = "S")]
    status: Option<StatusArg>,
    /// Only this agent's: its id (`agt_…`) or its name.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// At most this many [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
}

/// `aibus actions …`.
#[derive(Debug, Subcommand)]
enum ActionsCommand {
    /// Everything recorded about one action.
    Show {
        /// The action id (`act_…`).
        id: String,
    },
}

/// An action status on the command line (the wire spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusArg {
    #[value(name = "waiting_confirmation", alias = "waiting-confirmation", alias = "pending")]
    WaitingConfirmation,
    Approved,
    Executing,
    Succeeded,
    Failed,
    Interrupted,
    Denied,
    Expired,
}

impl From<StatusArg> for ActionStatus {
    fn from(status: StatusArg) -> ActionStatus {
        match status {
            StatusArg::WaitingConfirmation => ActionStatus::WaitingConfirmation,
            StatusArg::Approved => ActionStatus::Approved,
            StatusArg::Executing => ActionStatus::Executing,
            StatusArg::Succeeded => ActionStatus::Succeeded,
            StatusArg::Failed => ActionStatus::Failed,
            StatusArg::Interrupted => ActionStatus::Interrupted,
            StatusArg::Denied => ActionStatus::Denied,
            StatusArg::Expired => ActionStatus::Expired,
        }
    }
}

/// `aibus policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// What policy would decide about an action, and which rule decides; nothing runs.
    Explain(ExplainArgs),
}

/// `aibus policy explain`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["command", "action", "argv"])))]
pub struct ExplainArgs {
    /// The topic of the event that would trigger it (untrusted topics taint the run).
    #[arg(long, value_name = "T")]
    topic: Option<String>,
    /// Weigh this agent's settings (trust, allowed actions): its id or name.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// A shell string, as an agent's `shell_exec {command}` would give it.
    #[arg(long, value_name = "STRING")]
    command: Option<String>,
    /// Any action as JSON: `{"action_type": "file_write", "path": …}`.
    #[arg(long, value_name = "JSON")]
    action: Option<String>,
    /// A program and its arguments after `--`, as `shell_exec {argv}`.
    #[arg(last = true, value_name = "CMD")]
    argv: Vec<String>,
}

/// `aibus pending`.
pub async fn pending(context: &Context) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let actions = client
        .pending_actions(&ActionsListParams::default())
        .await
        .context("actions.pending")?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &serde_json::json!({ "actions": actions }));
    }
    if actions.is_empty() {
        output::note("no action waits for approval");
    }
    output::write_text(&mut out, &pending_table(&actions, aiventbus_rpc::time::now_ms()))
}

/// `aibus approve ID`.
pub async fn approve(context: &Context, id: &str) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let record = client
        .approve(id)
        .await
        .with_context(|| format!("actions.approve {id}"))?;
    decided(context, "approved", &record)
}

/// `aibus deny ID [--reason TEXT]`.
pub async fn deny(context: &Context, id: &str, reason: Option<&str>) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let record = client
        .deny(id, reason)
        .await
        .with_context(|| format!("actions.deny {id}"))?;
    decided(context, "denied", &record)
}

fn decided(context: &Context, verb: &str, record: &ActionRecord) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, record);
    }
    output::write_line(
        &mut out,
        format!(
            "{verb} {} ({} {}); now {}",
            output::one_line(&record.id),
            output::one_line(&record.action_type),
            summary(&record.params, SUMMARY_WIDTH),
            record.status.as_str()
        ),
    )
}

/// `aibus actions …`.
pub async fn actions(context: &Context, args: ActionsArgs) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    if let Some(ActionsCommand::Show { id }) = args.command {
        let record = client.action(&id).await.with_context(|| format!("actions.get {id}"))?;
        if context.json {
            return output::write_json(&mut out, &record);
        }
        return output::write_text(&mut out, &action_details(&record, aiventbus_rpc::time::now_ms()));
    }
    let params = ActionsListParams {
        status: args.status.map(ActionStatus::from),
        agent_id: match &args.agent {
            Some(agent) => Some(resolve_agent_id(&client, agent).await?),
            None => None,
        },
        trace_id: None,
        limit: args.limit,
    };
    let actions = client.action_history(&params).await.context("actions.history")?;
    if context.json {
        return output::write_json(&mut out, &serde_json::json!({ "actions": actions }));
    }
    output::write_text(&mut out, &history_table(&actions, aiventbus_rpc::time::now_ms()))
}

/// `aibus policy …`.
pub async fn policy(context: &Context, command: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Explain(args) = command;
    let action = explained_action(&args)?;
    if let Some(topic) = &args.topic {
        aiventbus_proto::event::validate_topic(topic).map_err(|error| UsageError(format!("--topic: {error}")))?;
    }
    let client = context.connect().await?;
    let agent_id = match &args.agent {
        Some(agent) => Some(resolve_agent_id(&client, agent).await?),
        None => None,
    };
    let params = ExplainParams {
        action,
        topic: args.topic.clone(),
        agent_id,
        agent: None,
    };
    let explanation = client.explain(&params).await.context("policy.explain")?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &explanation);
    }
    output::write_text(&mut out, &explanation_text(&explanation))
}

/// The action `policy explain` asks about, from exactly one of argv, `--command`, `--action`.
fn explained_action(args: &ExplainArgs) -> Result<Map<String, Value>, UsageError> {
    let mut action = Map::new();
    if let Some(json) = &args.action {
        action = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(UsageError("--action must be a JSON object".into())),
            Err(error) => return Err(UsageError(format!("--action is not valid JSON: {error}"))),
        };
        match action.get("action_type") {
            Some(Value::String(kind)) if !kind.is_empty() => {}
            _ => {
                return Err(UsageError(
                    "--action needs an \"action_type\" field, e.g. {\"action_type\": \"shell_exec\", \"argv\": [\"ls\"]}"
                        .into(),
                ));
            }
        }
        return Ok(action);
    }
    action.insert("action_type".into(), Value::from("shell_exec"));
    if let Some(command) = &args.command {
        if command.trim().is_empty() {
            return Err(UsageError("--command is empty".into()));
        }
        action.insert("command".into(), Value::from(command.as_str()));
    } else {
        if args.argv.is_empty() {
            return Err(UsageError("give a command after --, or --command, or --action".into()));
        }
        action.insert("argv".into(), Value::from(args.argv.clone()));
    }
    Ok(action)
}

fn explanation_text(explanation: &Explanation) -> String {
    let mut text = format!(
        "decision: {}\nrule:     {}\nreason:   {}\ntainted:  {}\n",
        explanation.decision.as_str(),
        output::one_line(&explanation.rule),
        output::one_line(&explanation.reason),
        if explanation.tainted { "yes" } else { "no" }
    );
    if !explanation.commands.is_empty() {
        text.push_str("commands:\n");
        for command in &explanation.commands {
            text.push_str(&format!("  {}\n", output::one_line(&shell_join(command))));
        }
    }
    text
}

/// A word as a POSIX shell would need it written to read it back as one word.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// An argv as one shell line.
pub fn shell_join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|word| shell_quote(word.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line saying what an action would do: the command line (argv quoted, or the shell string),
/// the path, the URL, the topic… at most `width` characters.
pub fn summary(params: &Map<String, Value>, width: usize) -> String {
    // Parameters may come nested under `params` (SPEC §7).
    let params = match params.get("params") {
        Some(Value::Object(nested)) if params.len() == 1 => nested,
        _ => params,
    };
    let text = |name: &str| params.get(name).and_then(Value::as_str);
    let line = if let Some(argv) = params.get("argv").and_then(Value::as_array) {
        let words: Vec<String> = argv
            .iter()
            .map(|word| word.as_str().map_or_else(|| output::compact(word), str::to_owned))
            .collect();
        shell_join(&words)
    } else if let Some(command) = text("command") {
        command.to_owned()
    } else if let Some(url) = text("url") {
        match text("method") {
            Some(method) => format!("{} {url}", method.to_ascii_uppercase()),
            None => url.to_owned(),
        }
    } else if let Some(path) = text("path") {
        match params.get("content").and_then(Value::as_str) {
            Some(content) => format!("{path} ({} bytes)", content.len()),
            None => path.to_owned(),
        }
    } else if let Some(topic) = text("topic") {
        topic.to_owned()
    } else if let (Some(tool), Some(method)) = (text("tool"), text("method")) {
        format!("{tool}.{method}")
    } else if let Some(title) = text("title") {
        match text("message") {
            Some(message) => format!("{title}: {message}"),
            None => title.to_owned(),
        }
    } else if let Some(key) = text("key") {
        key.to_owned()
    } else if let Some(message) = text("message") {
        message.to_owned()
    } else if params.is_empty() {
        String::new()
    } else {
        output::compact(params)
    };
    output::truncate(&output::one_line(&line), width)
}

/// How long ago `ts` was, briefly: `42s`, `5m`, `3h`, `2d`; `-` when unreadable.
pub fn age(ts: &str, now_ms: u64) -> String {
    match aiventbus_rpc::time::parse_rfc3339_ms(ts) {
        Some(then) => span(now_ms.saturating_sub(then)),
        None => "-".to_owned(),
    }
}

/// When `ts` comes: `in 23h`, or `expired` once past; `-` when there is none.
pub fn until(ts: Option<&str>, now_ms: u64) -> String {
    match ts.and_then(aiventbus_rpc::time::parse_rfc3339_ms) {
        Some(then) if then > now_ms => format!("in {}", span(then - now_ms)),
        Some(_) => "expired".to_owned(),
        None => "-".to_owned(),
    }
}

fn span(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn agent_cell(record: &ActionRecord) -> String {
    record.agent_id.clone().unwrap_or_else(|| "-".to_owned())
}

fn pending_table(actions: &[ActionRecord], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "AGENT", "TYPE", "SUMMARY", "AGE", "EXPIRES"]);
    for action in actions {
        table.row(vec![
            action.id.clone(),
            agent_cell(action),
            action.action_type.clone(),
            summary(&action.params, SUMMARY_WIDTH),
            age(&action.created_at, now_ms),
            until(action.expires_at.as_deref(), now_ms),
        ]);
    }
    table.render()
}

fn history_table(actions: &[ActionRecord], now_ms: u64) -> String {
    let mut table = Table::new(&["ID", "STATUS", "TYPE", "AGENT", "SUMMARY", "RULE", "AGE"]);
    for action in actions {
        table.row(vec![
            action.id.clone(),
            action.status.as_str().to_owned(),
            action.action_type.clone(),
            agent_cell(action),
            summary(&action.params, SUMMARY_WIDTH),
            action.rule.clone(),
            age(&action.created_at, now_ms),
        ]);
    }
    table.render()
}

fn action_details(record: &ActionRecord, now_ms: u64) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("id", record.id.clone()),
        ("type", record.action_type.clone()),
        ("status", record.status.as_str().to_owned()),
        ("summary", summary(&record.params, 200)),
        ("agent", agent_cell(record)),
    ];
    let optional = [
        ("event", &record.event_id),
        ("trace", &record.trace_id),
        ("run", &record.exec_run_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            lines.push((name, value.clone()));
        }
    }
    lines.push((
        "decision",
        format!(
            "{} by rule {}: {}",
            record.decision.as_str(),
            record.rule,
            record.reason
        ),
    ));
    lines.push(("tainted", if record.tainted { "yes" } else { "no" }.to_owned()));
    lines.push((
        "created",
        format!("{} ({} ago)", record.created_at, age(&record.created_at, now_ms)),
    ));
    if let Some(expires_at) = &record.expires_at {
        if record.status == ActionStatus::WaitingConfirmation {
            lines.push(("expires", format!("{expires_at} ({})", until(Some(expires_at), now_ms))));
        }
    }
    if let Some(by) = &record.decided_by {
        let mut decided = format!("by {by}");
        if let Some(via) = &record.decided_via {
            decided.push_str(&format!(" via {via}"));
        }
        if let Some(at) = &record.decided_at {
            decided.push_str(&format!(" at {at}"));
        }
        lines.push(("decided", decided));
    }
    if let Some(reason) = &record.denial_reason {
        lines.push(("denied for", reason.clone()));
    }
    lines.push(("params", output::compact(&record.params)));
    if let Some(result) = &record.result {
        lines.push(("result", output::compact(result)));
    }
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    lines
        .into_iter()
        .map(|(name, value)| format!("{:<width$} {}\n", format!("{name}:"), output::one_line(&value)))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aiventbus_proto::policy::Decision;
    use clap::Parser;
    use serde_json::json;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Actions(ActionsArgs),
        #[command(subcommand)]
        Policy(PolicyCommand),
    }

    /// 2026-01-02T03:04:05.000Z in unix ms.
    pub(crate) const NOW: u64 = 1_767_323_045_000;

    pub(crate) fn record(id: &str, action_type: &str, params: Value) -> ActionRecord {
        ActionRecord {
            id: id.into(),
            action_type: action_type.into(),
            params: params.as_object().cloned().unwrap_or_default(),
            status: ActionStatus::WaitingConfirmation,
            agent_id: Some("agt_ops".into()),
            event_id: Some("evt_1".into()),
            trace_id: Some("tr_1".into()),
            run_id: None,
            assignment_id: None,
            tainted: false,
            decision: Decision::Confirm,
            rule: "trust.shell_exec".into(),
            reason: "shell_exec needs confirmation".into(),
            created_at: "2026-01-02T03:03:05.000Z".into(),
            updated_at: "2026-01-02T03:03:05.000Z".into(),
            expires_at: Some("2026-01-03T03:03:05.000Z".into()),
            decided_by: None,
            decided_at: None,
            decided_via: None,
            denial_reason: None,
            result: None,
            exec_run_id: None,
        }
    }

    #[test]
    fn words_are_quoted_only_when_a_shell_would_need_it() {
        assert_eq!(shell_join(&["ls", "-la", "/tmp/x"]), "ls -la /tmp/x");
        assert_eq!(
            shell_join(&["sh", "-c", "echo out; exit 3"]),
            "sh -c 'echo out; exit 3'"
        );
        assert_eq!(shell_join(&["echo", "it's", ""]), r"echo 'it'\''s' ''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn summaries_name_what_the_action_touches() {
        let cases = [
            (json!({"argv": ["rm", "-r", "my dir"]}), "rm -r 'my dir'"),
            (json!({"command": "ls | wc -l"}), "ls | wc -l"),
            (json!({"params": {"argv": ["true"]}}), "true"),
            (json!({"path": "/tmp/a", "content": "hello"}), "/tmp/a (5 bytes)"),
            (json!({"path": "/tmp/a"}), "/tmp/a"),
            (
                json!({"method": "post", "url": "https://x.test/hook"}),
                "POST https://x.test/hook",
            ),
            (json!({"topic": "demo.done", "payload": {}}), "demo.done"),
            (json!({"title": "Hi", "message": "there"}), "Hi: there"),
            (json!({"tool": "fs", "method": "read", "params": {}}), "fs.read"),
            (json!({"key": "user.pref"}), "user.pref"),
            (json!({"odd": 1}), r#"{"odd":1}"#),
            (json!({"command": "a\nb"}), r"a\nb"),
        ];
        for (params, expected) in cases {
            let params = params.as_object().cloned().unwrap_or_default();
            assert_eq!(summary(&params, 60), expected, "{params:?}");
        }
        let long = json!({"command": "x".repeat(100)})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(summary(&long, 10).chars().count(), 10);
    }

    #[test]
    fn ages_and_expiries_are_short() {
        assert_eq!(age("2026-01-02T03:04:00.000Z", NOW), "5s");
        assert_eq!(age("2026-01-02T02:04:05.000Z", NOW), "1h");
        assert_eq!(age("2025-12-30T03:04:05.000Z", NOW), "3d");
        assert_eq!(age("yesterday", NOW), "-");
        assert_eq!(until(Some("2026-01-02T03:14:05.000Z"), NOW), "in 10m");
        assert_eq!(until(Some("2026-01-02T03:00:00.000Z"), NOW), "expired");
        assert_eq!(until(None, NOW), "-");
    }

    #[test]
    fn the_pending_table_has_one_line_per_action() {
        let mut owner = record("act_2", "file_write", json!({"path": "/tmp/x", "content": "abc"}));
        owner.agent_id = None;
        owner.expires_at = None;
        let actions = vec![
            record("act_1", "shell_exec", json!({"argv": ["sh", "-c", "echo hi"]})),
            owner,
        ];
        assert_eq!(
            pending_table(&actions, NOW),
            "ID     AGENT    TYPE        SUMMARY           AGE  EXPIRES\n\
             act_1  agt_ops  shell_exec  sh -c 'echo hi'   1m   in 23h\n\
             act_2  -        file_write  /tmp/x (3 bytes)  1m   -\n"
        );
        assert_eq!(pending_table(&[], NOW), "ID  AGENT  TYPE  SUMMARY  AGE  EXPIRES\n");
    }

    #[test]
    fn history_and_details_show_the_decision() {
        let mut done = record("act_1", "shell_exec", json!({"argv": ["true"]}));
        done.status = ActionStatus::Denied;
        done.decided_by = Some("user:alice".into());
        done.decided_via = Some("api.sock".into());
        done.decided_at = Some("2026-01-02T03:04:00.000Z".into());
        done.denial_reason = Some("not now".into());
        assert_eq!(
            history_table(std::slice::from_ref(&done), NOW),
            "ID     STATUS  TYPE        AGENT    SUMMARY  RULE              AGE\n\
             act_1  denied  shell_exec  agt_ops  true     trust.shell_exec  1m\n"
        );
        let details = action_details(&done, NOW);
        assert!(
            details.starts_with("id:         act_1\ntype:       shell_exec\nstatus:     denied\n"),
            "{details}"
        );
        assert!(
            details.contains("decision:   confirm by rule trust.shell_exec: shell_exec needs confirmation\n"),
            "{details}"
        );
        assert!(
            details.contains("decided:    by user:alice via api.sock at 2026-01-02T03:04:00.000Z\n"),
            "{details}"
        );
        assert!(details.contains("denied for: not now\n"), "{details}");
        assert!(
            !details.contains("expires"),
            "a decided action does not expire: {details}"
        );
        assert!(details.ends_with("params:     {\"argv\":[\"true\"]}\n"), "{details}");
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        let mut argv = vec!["aibus"];
        argv.extend_from_slice(args);
        Harness::try_parse_from(argv).map(|harness| harness.command)
    }

    fn explain_args(args: &[&str]) -> ExplainArgs {
        let mut argv = vec!["policy", "explain"];
        argv.extend_from_slice(args);
        match parse(&argv) {
            Ok(Top::Policy(PolicyCommand::Explain(args))) => args,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn explain_takes_exactly_one_action() {
        let argv = explain_args(&["--topic", "clipboard.text", "--", "rm", "-rf", "/"]);
        assert_eq!(argv.topic.as_deref(), Some("clipboard.text"));
        assert_eq!(
            Value::Object(explained_action(&argv).expect("argv")),
            json!({"action_type": "shell_exec", "argv": ["rm", "-rf", "/"]})
        );
        let command = explain_args(&["--command", "curl x | sh"]);
        assert_eq!(
            Value::Object(explained_action(&command).expect("command")),
            json!({"action_type": "shell_exec", "command": "curl x | sh"})
        );
        let action = explain_args(&["--action", r#"{"action_type":"file_read","path":"/etc/passwd"}"#]);
        assert_eq!(
            Value::Object(explained_action(&action).expect("action")),
            json!({"action_type": "file_read", "path": "/etc/passwd"})
        );
        for bad in [r#"{"path": "/x"}"#, "[1]", "{nope"] {
            let error = explained_action(&explain_args(&["--action", bad])).expect_err(bad);
            assert!(error.0.contains("--action"), "{bad}: {error}");
        }
        // None, or two at once, is a usage error from clap (exit 2).
        assert!(parse(&["policy", "explain"]).is_err());
        assert!(parse(&["policy", "explain", "--command", "ls", "--", "ls"]).is_err());
    }

    #[test]
    fn explanations_list_the_commands_found() {
        let explanation = Explanation {
            decision: aiventbus_proto::policy::Decision::Deny,
            rule: "deny.rm_recursive_root".into(),
            reason: "removes the home directory".into(),
            tainted: true,
            commands: vec![vec!["ls".into()], vec!["rm".into(), "-rf".into(), "~".into()]],
        };
        assert_eq!(
            explanation_text(&explanation),
            "decision: deny\nrule:     deny.rm_recursive_root\nreason:   removes the home directory\n\
             tainted:  yes\ncommands:\n  ls\n  rm -rf '~'\n"
        );
    }

    #[test]
    fn actions_history_flags_and_show_parse() {
        match parse(&["actions", "--status", "pending", "--agent", "ops", "--limit", "5"]) {
            Ok(Top::Actions(args)) => {
                assert_eq!(args.status, Some(StatusArg::WaitingConfirmation));
                assert_eq!(args.agent.as_deref(), Some("ops"));
                assert_eq!(args.limit, Some(5));
                assert!(args.command.is_none());
            }
            other => panic!("{other:?}"),
        }
        match parse(&["actions", "show", "act_1"]) {
            Ok(Top::Actions(ActionsArgs {
                command: Some(ActionsCommand::Show { id }),
                ..
            })) => assert_eq!(id, "act_1"),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["actions", "--limit", "0"]).is_err());
        for status in StatusArg::value_variants() {
            let wire = serde_json::to_value(ActionStatus::from(*status)).expect("json");
            let name = status.to_possible_value().expect("visible");
            assert_eq!(wire, Value::from(name.get_name()), "{status:?}");
        }
    }
}
