//! Agent commands: `aibus agents create|list|get|update|delete|enable|disable|memory`, over the llm
//! service's agents (SPEC §7). Long because an agent has many fields: about half of the file is
//! the tests that follow each flag to its wire field.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aiventbus_client::Client;
use aiventbus_proto::agents::{
    ACTION_TYPES, Agent, AgentKind, AgentMemoryParams, AgentSpec, AgentUpdateParams, AgentsCreate, AgentsDelete,
    AgentsDisable, AgentsEnable, AgentsGet, AgentsList, AgentsMemory, AgentsResult, AgentsUpdate, Trust,
};
use aiventbus_proto::methods::{IdParams, NoParams};
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::knowledge::report_delete;
use crate::output::{self, Table};
use crate::{Context, UsageError};

/// Widest command shown in a listing, in characters.
const COMMAND_WIDTH: usize = 50;

/// `aibus agents …`.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Create an agent; prints its id.
    Create(CreateArgs),
    /// List agents.
    List,
    /// Show one agent.
    Get {
        /// The id (`agt_…`) or the name.
        agent: String,
    },
    /// Change an agent's fields; only the flags given change.
    Update(UpdateArgs),
    /// Remove an agent.
    Delete {
        /// The id (`agt_…`) or the name.
        agent: String,
    },
    /// Let an agent take new work.
    Enable {
        /// The id (`agt_…`) or the name.
        agent: String,
    },
    /// Stop giving an agent new work.
    Disable {
        /// The id (`agt_…`) or the name.
        agent: String,
    },
    /// Show an agent's memories, newest first, or the best matches for --query.
    Memory {
        /// The id (`agt_…`) or the name.
        agent: String,
        /// Search words.
        #[arg(long, value_name = "Q")]
        query: Option<String>,
        /// At most this many memories [default: 20].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
}

/// `aibus agents create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A unique name.
    name: String,
    /// How it runs: a model (`llm`) or a program (`command`).
    #[arg(long, value_enum)]
    kind: KindArg,
    /// Create it disabled (no work until `aibus agents enable`).
    #[arg(long)]
    disabled: bool,
    #[command(flatten)]
    fields: AgentFields,
}

/// `aibus agents update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The id (`agt_…`) or the name.
    agent: String,
    /// A new name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A new kind.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Let it take new work.
    #[arg(long, conflicts_with = "disabled")]
    enabled: bool,
    /// Give it no new work.
    #[arg(long)]
    disabled: bool,
    /// Let it use every allowed action type again (undoes --passive).
    #[arg(long, conflicts_with = "passive")]
    reactive: bool,
    #[command(flatten)]
    fields: AgentFields,
}

/// The flags `create` and `update` share.
#[derive(Debug, Args)]
pub struct AgentFields {
    /// Model provider for llm agents: `ollama` or `openai`.
    #[arg(long, value_name = "P")]
    provider: Option<String>,
    /// Model name on that provider.
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// The system prompt.
    #[arg(long, value_name = "TEXT", conflicts_with = "system_prompt_file")]
    system_prompt: Option<String>,
    /// Read the system prompt from this file (`-`: stdin).
    #[arg(long, value_name = "PATH")]
    system_prompt_file: Option<PathBuf>,
    /// Sampling temperature, 0 to 2 [default: 0.2].
    #[arg(long, value_name = "X", value_parser = parse_temperature)]
    temperature: Option<f64>,
    /// The program of a command agent and its arguments (or give them after `--`).
    #[arg(long = "command", value_name = "ARG", num_args = 1.., conflicts_with = "argv")]
    command: Vec<String>,
    /// The program of a command agent and its arguments, after `--`.
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    argv: Vec<String>,
    /// What it is for.
    #[arg(long, value_name = "D")]
    description: Option<String>,
    /// May only observe and report (log, alert, notify, emit_event, set_knowledge, get_knowledge).
    #[arg(long)]
    passive: bool,
    /// An action type it may propose; repeat for more [default: all].
    #[arg(long = "allow", value_name = "ACTION", value_parser = clap::builder::PossibleValuesParser::new(ACTION_TYPES))]
    allow: Vec<String>,
    /// How one action type is handled, `ACTION=auto|confirm|deny`; repeat for more.
    #[arg(long = "trust", value_name = "ACTION=T", value_parser = parse_trust)]
    trust: Vec<(String, Trust)>,
    /// Runs of this agent at once [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent: Option<u32>,
    /// Memory scope [default: agent:<id>].
    #[arg(long, value_name = "S")]
    memory_scope: Option<String>,
    /// Also publish its answers on this topic.
    #[arg(long, value_name = "T")]
    output_topic: Option<String>,
}

/// An agent kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A model behind a provider.
    Llm,
    /// A program: the event JSON on stdin, the structured output on stdout.
    Command,
}

impl From<KindArg> for AgentKind {
    fn from(kind: KindArg) -> AgentKind {
        match kind {
            KindArg::Llm => AgentKind::Llm,
            KindArg::Command => AgentKind::Command,
        }
    }
}

fn kind_name(kind: AgentKind) -> &'static str {
    match kind {
        AgentKind::Llm => "llm",
        AgentKind::Command => "command",
    }
}

fn trust_name(trust: Trust) -> &'static str {
    match trust {
        Trust::Auto => "auto",
        Trust::Confirm => "confirm",
        Trust::Deny => "deny",
    }
}

/// `ACTION=auto|confirm|deny`, with a known action type.
pub fn parse_trust(text: &str) -> Result<(String, Trust), String> {
    let Some((action, level)) = text.split_once('=') else {
        return Err(format!("expected ACTION=auto|confirm|deny, got {text:?}"));
    };
    let action = action.trim();
    if !ACTION_TYPES.contains(&action) {
        return Err(format!(
            "unknown action type {action:?}; known: {}",
            ACTION_TYPES.join(", ")
        ));
    }
    let trust = match level.trim() {
        "auto" => Trust::Auto,
        "confirm" => Trust::Confirm,
        "deny" => Trust::Deny,
        other => return Err(format!("unknown trust {other:?}; use auto, confirm or deny")),
    };
    Ok((action.to_owned(), trust))
}

fn parse_temperature(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=2.0).contains(&value) {
        return Err(format!("{value} is outside 0 to 2"));
    }
    Ok(value)
}

impl AgentFields {
    /// The argv from `--command` or from after `--`, if any.
    fn argv(&self) -> Option<Vec<String>> {
        let argv = if self.command.is_empty() {
            &self.argv
        } else {
            &self.command
        };
        (!argv.is_empty()).then(|| argv.clone())
    }

    /// The spec these flags describe, with the system prompt already read (from the flag or the
    /// file). Fields not given stay `None`, so an update leaves them as they are.
    fn spec(&self, system_prompt: Option<String>) -> AgentSpec {
        AgentSpec {
            description: self.description.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            system_prompt,
            temperature: self.temperature,
            command: self.argv(),
            reactive: self.passive.then_some(false),
            allowed_actions: (!self.allow.is_empty()).then(|| self.allow.clone()),
            trust: (!self.trust.is_empty()).then(|| self.trust.iter().cloned().collect::<BTreeMap<_, _>>()),
            max_concurrent: self.max_concurrent,
            memory_scope: self.memory_scope.clone(),
            output_topic: self.output_topic.clone(),
            ..AgentSpec::default()
        }
    }

    /// The system prompt from `--system-prompt`, or read from `--system-prompt-file`.
    fn load_system_prompt(&self) -> anyhow::Result<Option<String>> {
        if let Some(text) = &self.system_prompt {
            return Ok(Some(text.clone()));
        }
        let Some(path) = &self.system_prompt_file else {
            return Ok(None);
        };
        read_text(path).map(Some)
    }
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the system prompt from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read the system prompt from {}", path.display()))
}

/// The `agents.create` params for `aibus agents create`.
fn create_spec(args: &CreateArgs, system_prompt: Option<String>) -> Result<AgentSpec, UsageError> {
    let mut spec = args.fields.spec(system_prompt);
    match (args.kind, &spec.command) {
        (KindArg::Command, None) => {
            return Err(UsageError(
                "a command agent needs its program: --command PROGRAM ARG… or -- PROGRAM ARG…".into(),
            ));
        }
        (KindArg::Llm, Some(_)) => {
            return Err(UsageError(
                "--command and `-- PROGRAM` are for command agents (--kind command)".into(),
            ));
        }
        _ => {}
    }
    spec.name = Some(args.name.clone());
    spec.kind = Some(args.kind.into());
    spec.enabled = args.disabled.then_some(false);
    Ok(spec)
}

/// The changed fields for `aibus agents update` (without the id).
fn update_spec(args: &UpdateArgs, system_prompt: Option<String>) -> Result<AgentSpec, UsageError> {
    let mut spec = args.fields.spec(system_prompt);
    spec.name = args.name.clone();
    spec.kind = args.kind.map(AgentKind::from);
    spec.enabled = match (args.enabled, args.disabled) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    if args.reactive {
        spec.reactive = Some(true);
    }
    if serde_json::to_value(&spec).is_ok_and(|value| value.as_object().is_some_and(|fields| fields.is_empty())) {
        return Err(UsageError("nothing to change: give at least one field flag".into()));
    }
    Ok(spec)
}

/// The agent id for an id or a name: ids (`agt_…`) are used as they are, names are looked up.
pub async fn resolve_agent_id(client: &Client, agent: &str) -> anyhow::Result<String> {
    if agent.starts_with("agt_") {
        return Ok(agent.to_owned());
    }
    let found = client
        .call::<AgentsGet>(&IdParams { id: agent.to_owned() })
        .await
        .with_context(|| format!("agents.get {agent}"))?;
    Ok(found.id)
}

/// Runs one agents command.
pub async fn run(context: &Context, command: AgentsCommand) -> anyhow::Result<()> {
    // Flag mistakes and unreadable files are reported before anything is sent.
    let prepared = match &command {
        AgentsCommand::Create(args) => Some(create_spec(args, args.fields.load_system_prompt()?)?),
        AgentsCommand::Update(args) => Some(update_spec(args, args.fields.load_system_prompt()?)?),
        _ => None,
    };
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        AgentsCommand::Create(args) => {
            let spec = prepared.unwrap_or_default();
            let result = client
                .call::<AgentsCreate>(&spec)
                .await
                .with_context(|| format!("agents.create {}", args.name))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_line(&mut out, output::one_line(&result.id))
        }
        AgentsCommand::List => {
            let result = client.call::<AgentsList>(&NoParams {}).await.context("agents.list")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_text(&mut out, &agents_table(&result))
        }
        AgentsCommand::Get { agent } => {
            let found = client
                .call::<AgentsGet>(&IdParams { id: agent.clone() })
                .await
                .with_context(|| format!("agents.get {agent}"))?;
            if context.json {
                return output::write_json(&mut out, &found);
            }
            output::write_text(&mut out, &render_agent(&found))
        }
        AgentsCommand::Update(args) => {
            let mut spec = prepared.unwrap_or_default();
            let id = resolve_agent_id(&client, &args.agent).await?;
            if let Some(trust) = spec.trust.take() {
                // One --trust changes one action type; the others keep what they had.
                let current = client
                    .call::<AgentsGet>(&IdParams { id: id.clone() })
                    .await
                    .with_context(|| format!("agents.get {id}"))?;
                spec.trust = Some(merge_trust(current.trust, trust));
            }
            let updated = client
                .call::<AgentsUpdate>(&AgentUpdateParams { id: id.clone(), spec })
                .await
                .with_context(|| format!("agents.update {id}"))?;
            if context.json {
                return output::write_json(&mut out, &updated);
            }
            output::write_text(&mut out, &render_agent(&updated))
        }
        AgentsCommand::Delete { agent } => {
            let id = resolve_agent_id(&client, &agent).await?;
            let result = client
                .call::<AgentsDelete>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("agents.delete {id}"))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            report_delete(&mut out, "agent", &id, &result)
        }
        AgentsCommand::Enable { agent } => {
            let id = resolve_agent_id(&client, &agent).await?;
            let updated = client
                .call::<AgentsEnable>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("agents.enable {id}"))?;
            if context.json {
                return output::write_json(&mut out, &updated);
            }
            output::write_line(&mut out, switched_line(&updated))
        }
        AgentsCommand::Disable { agent } => {
            let id = resolve_agent_id(&client, &agent).await?;
            let updated = client
                .call::<AgentsDisable>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("agents.disable {id}"))?;
            if context.json {
                return output::write_json(&mut out, &updated);
            }
            output::write_line(&mut out, switched_line(&updated))
        }
        AgentsCommand::Memory { agent, query, limit } => {
            let id = resolve_agent_id(&client, &agent).await?;
            let searched = query.is_some();
            let result = client
                .call::<AgentsMemory>(&AgentMemoryParams {
                    id: id.clone(),
                    query,
                    limit,
                })
                .await
                .with_context(|| format!("agents.memory {id}"))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            let table = if searched {
                crate::memory::search_table(&result)
            } else {
                crate::memory::memories_table(&result)
            };
            output::write_text(&mut out, &table)
        }
    }
}

/// The agent's trust map with `changes` applied on top.
fn merge_trust(mut current: BTreeMap<String, Trust>, changes: BTreeMap<String, Trust>) -> BTreeMap<String, Trust> {
    current.extend(changes);
    current
}

fn switched_line(agent: &Agent) -> String {
    format!(
        "agent {} ({}) {}",
        output::one_line(&agent.name),
        output::one_line(&agent.id),
        if agent.enabled { "enabled" } else { "disabled" }
    )
}

/// A command line for display: arguments with spaces or quotes are single-quoted.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What an agent runs: `provider/model` for llm agents, the command line for command agents.
fn runs(agent: &Agent) -> String {
    match agent.kind {
        AgentKind::Llm => format!(
            "{}/{}",
            agent.provider.as_deref().unwrap_or("-"),
            agent.model.as_deref().unwrap_or("-")
        ),
        AgentKind::Command => agent.command.as_deref().map_or_else(|| "-".to_owned(), display_argv),
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn agents_table(result: &AgentsResult) -> String {
    let mut table = Table::new(&["NAME", "ID", "KIND", "MODEL/COMMAND", "ENABLED"]);
    for agent in &result.agents {
        table.row(vec![
            agent.name.clone(),
            agent.id.clone(),
            kind_name(agent.kind).to_owned(),
            output::truncate(&runs(agent), COMMAND_WIDTH),
            yes_no(agent.enabled).to_owned(),
        ]);
    }
    table.render()
}

/// The fields, then the system prompt (if any) after a blank line.
fn render_agent(agent: &Agent) -> String {
    let or_dash = |value: Option<&str>| output::one_line(value.unwrap_or("-"));
    let allowed = match &agent.allowed_actions {
        Some(actions) => actions.join(", "),
        None => "all".to_owned(),
    };
    let trust = if agent.trust.is_empty() {
        "defaults".to_owned()
    } else {
        agent
            .trust
            .iter()
            .map(|(action, trust)| format!("{action}={}", trust_name(*trust)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let default_scope = format!("agent:{}", agent.id);
    let mut text = format!(
        "id:              {}\nname:            {}\ndescription:     {}\nkind:            {}\n",
        output::one_line(&agent.id),
        output::one_line(&agent.name),
        output::one_line(&agent.description),
        kind_name(agent.kind),
    );
    match agent.kind {
        AgentKind::Llm => text.push_str(&format!(
            "provider:        {}\nmodel:           {}\ntemperature:     {}\n",
            or_dash(agent.provider.as_deref()),
            or_dash(agent.model.as_deref()),
            agent.temperature,
        )),
        AgentKind::Command => text.push_str(&format!(
            "command:         {}\n",
            output::one_line(&agent.command.as_deref().map_or_else(|| "-".to_owned(), display_argv))
        )),
    }
    text.push_str(&format!(
        "enabled:         {}\nreactive:        {}\nallowed_actions: {}\ntrust:           {}\n\
         max_concurrent:  {}\nmemory_scope:    {}\noutput_topic:    {}\ncreated_at:      {}\nupdated_at:      {}\n",
        yes_no(agent.enabled),
        yes_no(agent.reactive),
        output::one_line(&allowed),
        output::one_line(&trust),
        agent.max_concurrent,
        or_dash(Some(agent.memory_scope.as_deref().unwrap_or(&default_scope))),
        or_dash(agent.output_topic.as_deref()),
        output::one_line(&agent.created_at),
        output::one_line(&agent.updated_at),
    ));
    if let Some(prompt) = agent.system_prompt.as_deref().filter(|prompt| !prompt.is_empty()) {
        text.push_str("\nsystem prompt:\n");
        for line in prompt.lines() {
            text.push_str("  ");
            text.push_str(&output::one_line(line));
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: AgentsCommand,
    }

    fn parse(args: &[&str]) -> AgentsCommand {
        let argv = std::iter::once("agents").chain(args.iter().copied());
        match Harness::try_parse_from(argv) {
            Ok(harness) => harness.command,
            Err(error) => panic!("{args:?}: {error}"),
        }
    }

    fn parse_error(args: &[&str]) -> String {
        let argv = std::iter::once("agents").chain(args.iter().copied());
        match Harness::try_parse_from(argv) {
            Ok(harness) => panic!("{args:?} parsed: {harness:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn created(args: &[&str]) -> Result<serde_json::Value, UsageError> {
        let AgentsCommand::Create(create) = parse(args) else {
            panic!("not create")
        };
        let prompt = create.fields.load_system_prompt().expect("prompt");
        create_spec(&create, prompt).map(|spec| serde_json::to_value(spec).expect("json"))
    }

    fn updated(args: &[&str]) -> Result<(String, serde_json::Value), UsageError> {
        let AgentsCommand::Update(update) = parse(args) else {
            panic!("not update")
        };
        let spec = update_spec(&update, update.fields.load_system_prompt().expect("prompt"))?;
        let params = AgentUpdateParams {
            id: update.agent.clone(),
            spec,
        };
        Ok((update.agent, serde_json::to_value(params).expect("json")))
    }

    #[test]
    fn a_minimal_llm_agent_sends_only_what_was_given() {
        assert_eq!(
            created(&["create", "helper", "--kind", "llm"]).expect("spec"),
            json!({"name": "helper", "kind": "llm"})
        );
    }

    #[test]
    fn every_create_flag_lands_in_its_field() {
        let spec = created(&[
            "create",
            "ops",
            "--kind",
            "llm",
            "--provider",
            "ollama",
            "--model",
            "llama3.2",
            "--system-prompt",
            "Be brief.",
            "--temperature",
            "0.7",
            "--description",
            "watches things",
            "--disabled",
            "--passive",
            "--allow",
            "notify",
            "--allow",
            "log",
            "--trust",
            "notify=auto",
            "--trust",
            "shell_exec=deny",
            "--trust",
            "notify=confirm",
            "--max-concurrent",
            "3",
            "--memory-scope",
            "team:ops",
            "--output-topic",
            "ops.answers",
        ])
        .expect("spec");
        assert_eq!(
            spec,
            json!({
                "name": "ops",
                "kind": "llm",
                "description": "watches things",
                "provider": "ollama",
                "model": "llama3.2",
                "system_prompt": "Be brief.",
                "temperature": 0.7,
                "enabled": false,
                "reactive": false,
                "allowed_actions": ["notify", "log"],
                "trust": {"notify": "confirm", "shell_exec": "deny"},
                "max_concurrent": 3,
                "memory_scope": "team:ops",
                "output_topic": "ops.answers",
            })
        );
    }

    #[test]
    fn command_argv_comes_from_the_flag_or_after_the_double_dash() {
        assert_eq!(
            created(&["create", "c", "--kind", "command", "--command", "python3", "agent.py"]).expect("spec")["command"],
            json!(["python3", "agent.py"])
        );
        // After `--`, hyphenated arguments belong to the program, not to aibus.
        assert_eq!(
            created(&[
                "create",
                "c",
                "--kind",
                "command",
                "--description",
                "d",
                "--",
                "prog",
                "--verbose",
                "-x"
            ])
            .expect("spec"),
            json!({"name": "c", "kind": "command", "description": "d", "command": ["prog", "--verbose", "-x"]})
        );
        // Flags after --command values still belong to aibus.
        let spec = created(&[
            "create",
            "c",
            "--kind",
            "command",
            "--command",
            "prog",
            "a",
            "--disabled",
        ])
        .expect("spec");
        assert_eq!(spec["command"], json!(["prog", "a"]));
        assert_eq!(spec["enabled"], json!(false));
        let error = parse_error(&["create", "c", "--kind", "command", "--command", "a", "--", "b"]);
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn kinds_and_programs_must_agree() {
        let error = created(&["create", "c", "--kind", "command"]).expect_err("no program");
        assert!(error.0.contains("needs its program"), "{}", error.0);
        let error = created(&["create", "c", "--kind", "llm", "--", "prog"]).expect_err("llm with program");
        assert!(error.0.contains("command agents"), "{}", error.0);
    }

    #[test]
    fn the_system_prompt_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prompt.txt");
        std::fs::write(&path, "You answer.\nBriefly.\n").expect("write");
        let path = path.to_str().expect("utf-8 path");
        let spec = created(&["create", "a", "--kind", "llm", "--system-prompt-file", path]).expect("spec");
        assert_eq!(spec["system_prompt"], json!("You answer.\nBriefly.\n"));

        let AgentsCommand::Create(create) =
            parse(&["create", "a", "--kind", "llm", "--system-prompt-file", "/no/such"])
        else {
            panic!("not create")
        };
        let error = create.fields.load_system_prompt().expect_err("missing file");
        assert!(format!("{error:#}").contains("/no/such"), "{error:#}");
        let error = parse_error(&[
            "create",
            "a",
            "--kind",
            "llm",
            "--system-prompt",
            "x",
            "--system-prompt-file",
            path,
        ]);
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn trust_parses_action_and_level() {
        assert_eq!(
            parse_trust("shell_exec=confirm"),
            Ok(("shell_exec".into(), Trust::Confirm))
        );
        assert_eq!(parse_trust("notify=auto"), Ok(("notify".into(), Trust::Auto)));
        assert_eq!(
            parse_trust("file_delete = deny"),
            Ok(("file_delete".into(), Trust::Deny))
        );
        assert!(
            parse_trust("shell_exec")
                .expect_err("no =")
                .contains("ACTION=auto|confirm|deny")
        );
        assert!(
            parse_trust("launch=auto")
                .expect_err("unknown")
                .contains("unknown action type")
        );
        assert!(
            parse_trust("notify=maybe")
                .expect_err("bad level")
                .contains("unknown trust")
        );
        assert!(
            parse_trust("notify=")
                .expect_err("empty level")
                .contains("unknown trust")
        );
        let error = parse_error(&["create", "a", "--kind", "llm", "--trust", "notify=yes"]);
        assert!(error.contains("unknown trust"), "{error}");
    }

    #[test]
    fn bad_flag_values_are_usage_errors() {
        let error = parse_error(&["create", "a", "--kind", "llm", "--allow", "launch_missiles"]);
        assert!(error.contains("launch_missiles"), "{error}");
        let error = parse_error(&["create", "a", "--kind", "llm", "--temperature", "3"]);
        assert!(error.contains("outside 0 to 2"), "{error}");
        let error = parse_error(&["create", "a", "--kind", "llm", "--max-concurrent", "0"]);
        assert!(error.contains("0"), "{error}");
        let error = parse_error(&["create", "a", "--kind", "robot"]);
        assert!(error.contains("robot"), "{error}");
        let error = parse_error(&["create", "a"]);
        assert!(error.contains("--kind"), "{error}");
    }

    #[test]
    fn update_sends_only_the_changed_fields() {
        let (id, params) = updated(&["update", "agt_1", "--model", "qwen3", "--enabled", "--reactive"]).expect("spec");
        assert_eq!(id, "agt_1");
        assert_eq!(
            params,
            json!({"id": "agt_1", "model": "qwen3", "enabled": true, "reactive": true})
        );
        let (_, params) = updated(&["update", "helper", "--name", "helper2", "--disabled", "--passive"]).expect("spec");
        assert_eq!(
            params,
            json!({"id": "helper", "name": "helper2", "enabled": false, "reactive": false})
        );
        let (_, params) = updated(&["update", "agt_1", "--kind", "command", "--", "./run.sh", "-v"]).expect("spec");
        assert_eq!(
            params,
            json!({"id": "agt_1", "kind": "command", "command": ["./run.sh", "-v"]})
        );
        let error = updated(&["update", "agt_1"]).expect_err("nothing to change");
        assert!(error.0.contains("nothing to change"), "{}", error.0);
        let error = parse_error(&["update", "agt_1", "--enabled", "--disabled"]);
        assert!(error.contains("cannot be used with"), "{error}");
        let error = parse_error(&["update", "agt_1", "--reactive", "--passive"]);
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn trust_changes_merge_into_the_current_map() {
        let current = BTreeMap::from([
            ("notify".to_owned(), Trust::Auto),
            ("shell_exec".to_owned(), Trust::Deny),
        ]);
        let changes = BTreeMap::from([
            ("shell_exec".to_owned(), Trust::Confirm),
            ("log".to_owned(), Trust::Auto),
        ]);
        assert_eq!(
            merge_trust(current, changes),
            BTreeMap::from([
                ("log".to_owned(), Trust::Auto),
                ("notify".to_owned(), Trust::Auto),
                ("shell_exec".to_owned(), Trust::Confirm),
            ])
        );
    }

    pub(crate) fn agent(name: &str, kind: AgentKind) -> Agent {
        Agent {
            id: format!("agt_{name}"),
            name: name.to_owned(),
            description: "answers questions".into(),
            kind,
            provider: (kind == AgentKind::Llm).then(|| "ollama".to_owned()),
            model: (kind == AgentKind::Llm).then(|| "llama3.2".to_owned()),
            system_prompt: None,
            temperature: 0.2,
            command: (kind == AgentKind::Command).then(|| vec!["python3".into(), "my agent.py".into(), "--x".into()]),
            enabled: true,
            reactive: true,
            allowed_actions: None,
            trust: BTreeMap::new(),
            max_concurrent: 1,
            memory_scope: None,
            output_topic: None,
            created_at: "2026-01-02T03:04:05.678Z".into(),
            updated_at: "2026-01-02T03:04:06.000Z".into(),
        }
    }

    #[test]
    fn the_listing_shows_model_or_command() {
        let mut off = agent("cmd", AgentKind::Command);
        off.enabled = false;
        let result = AgentsResult {
            agents: vec![agent("helper", AgentKind::Llm), off],
        };
        assert_eq!(
            agents_table(&result),
            "NAME    ID          KIND     MODEL/COMMAND              ENABLED\n\
             helper  agt_helper  llm      ollama/llama3.2            yes\n\
             cmd     agt_cmd     command  python3 'my agent.py' --x  no\n"
        );
    }

    #[test]
    fn argv_display_quotes_what_a_shell_would_split() {
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' there", "", "a=b"].map(String::from).into();
        assert_eq!(display_argv(&argv), r#"sh -c 'echo '\''hi'\'' there' '' a=b"#);
    }

    #[test]
    fn one_agent_renders_as_a_block() {
        let mut helper = agent("helper", AgentKind::Llm);
        helper.system_prompt = Some("Line one.\nLine two.".into());
        helper.trust = BTreeMap::from([("shell_exec".to_owned(), Trust::Confirm)]);
        helper.allowed_actions = Some(vec!["notify".into(), "shell_exec".into()]);
        assert_eq!(
            render_agent(&helper),
            "id:              agt_helper\n\
             name:            helper\n\
             description:     answers questions\n\
             kind:            llm\n\
             provider:        ollama\n\
             model:           llama3.2\n\
             temperature:     0.2\n\
             enabled:         yes\n\
             reactive:        yes\n\
             allowed_actions: notify, shell_exec\n\
             trust:           shell_exec=confirm\n\
             max_concurrent:  1\n\
             memory_scope:    agent:agt_helper\n\
             output_topic:    -\n\
             created_at:      2026-01-02T03:04:05.678Z\n\
             updated_at:      2026-01-02T03:04:06.000Z\n\
             \n\
             system prompt:\n  Line one.\n  Line two.\n"
        );
        let command = render_agent(&agent("cmd", AgentKind::Command));
        assert!(
            command.contains("kind:            command\ncommand:         python3 'my agent.py' --x\n"),
            "{command}"
        );
        assert!(
            command.contains("allowed_actions: all\ntrust:           defaults\n"),
            "{command}"
        );
        assert!(!command.contains("provider"), "{command}");
        assert_eq!(
            switched_line(&agent("cmd", AgentKind::Command)),
            "agent cmd (agt_cmd) enabled"
        );
    }
}
