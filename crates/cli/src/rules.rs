//! Routing rule commands: `aibus rules create|list|get|update|delete`, over the router's rules
//! (SPEC §6).

use std::io;

use aiventbus_client::Client;
use aiventbus_proto::agents::{
    Rule, RuleSpec, RuleUpdateParams, RulesCreate, RulesDelete, RulesGet, RulesList, RulesResult, RulesUpdate,
};
use aiventbus_proto::methods::{IdParams, NoParams};
use aiventbus_proto::{Priority, TopicPattern};
use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::agents::resolve_agent_id;
use crate::events::PriorityArg;
use crate::knowledge::report_delete;
use crate::output::{self, Table};
use crate::{Context, UsageError};

/// `aibus rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Create a rule; prints its id.
    Create(CreateArgs),
    /// List rules in the order they are tried.
    List,
    /// Show one rule.
    Get {
        /// The id (`rule_…`).
        id: String,
    },
    /// Change a rule; only the flags given change.
    Update(UpdateArgs),
    /// Remove a rule.
    Delete {
        /// The id (`rule_…`).
        id: String,
    },
}

/// `aibus rules create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the rule.
    name: String,
    /// Topic pattern to match (`*` one segment, `**` any number), e.g. `user.**`.
    #[arg(long, value_name = "PATTERN")]
    topic: String,
    /// The agent that gets the work: its id (`agt_…`) or its name.
    #[arg(long, value_name = "AGENT")]
    agent: String,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
    #[command(flatten)]
    fields: RuleFields,
}

/// `aibus rules update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The id (`rule_…`).
    id: String,
    /// A new name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A new topic pattern.
    #[arg(long, value_name = "PATTERN")]
    topic: Option<String>,
    /// A new target agent: its id (`agt_…`) or its name.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Let it match again.
    #[arg(long, conflicts_with = "disabled")]
    enabled: bool,
    /// Make it match nothing.
    #[arg(long)]
    disabled: bool,
    #[command(flatten)]
    fields: RuleFields,
}

/// The optional conditions and overrides `create` and `update` share.
#[derive(Debug, Args)]
pub struct RuleFields {
    /// Only events whose semantic type matches this glob (`*` wildcards).
    #[arg(long, value_name = "GLOB")]
    semantic_type: Option<String>,
    /// Only events of at least this priority.
    #[arg(long, value_enum, value_name = "P")]
    min_priority: Option<PriorityArg>,
    /// Only events whose source matches this glob (`*` wildcards), e.g. `user:*`.
    #[arg(long, value_name = "GLOB")]
    source: Option<String>,
    /// Run the agent with this model instead of its own.
    #[arg(long, value_name = "M")]
    model_override: Option<String>,
    /// Token budget for the run instead of the default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    token_budget: Option<u32>,
    /// Rules are tried in ascending order [default: 100].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    order: Option<i64>,
}

impl RuleFields {
    fn spec(&self) -> RuleSpec {
        RuleSpec {
            semantic_type_pattern: self.semantic_type.clone(),
            min_priority: self.min_priority.map(Priority::from),
            source_pattern: self.source.clone(),
            model_override: self.model_override.clone(),
            token_budget_override: self.token_budget,
            priority_order: self.order,
            ..RuleSpec::default()
        }
    }
}

fn check_topic(pattern: &str) -> Result<(), UsageError> {
    TopicPattern::parse(pattern)
        .map(drop)
        .map_err(|error| UsageError(format!("--topic: {error}")))
}

/// The `rules.create` params, with the agent as given (a name is resolved later).
fn create_spec(args: &CreateArgs) -> Result<RuleSpec, UsageError> {
    check_topic(&args.topic)?;
    Ok(RuleSpec {
        name: Some(args.name.clone()),
        topic_pattern: Some(args.topic.clone()),
        agent_id: Some(args.agent.clone()),
        enabled: args.disabled.then_some(false),
        ..args.fields.spec()
    })
}

/// The changed fields for `rules.update` (without the id), with the agent as given.
fn update_spec(args: &UpdateArgs) -> Result<RuleSpec, UsageError> {
    if let Some(topic) = &args.topic {
        check_topic(topic)?;
    }
    let spec = RuleSpec {
        name: args.name.clone(),
        topic_pattern: args.topic.clone(),
        agent_id: args.agent.clone(),
        enabled: match (args.enabled, args.disabled) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        ..args.fields.spec()
    };
    if serde_json::to_value(&spec).is_ok_and(|value| value.as_object().is_some_and(|fields| fields.is_empty())) {
        return Err(UsageError("nothing to change: give at least one field flag".into()));
    }
    Ok(spec)
}

/// Replaces an agent name in the spec by its id.
async fn resolve_agent(client: &Client, spec: &mut RuleSpec) -> anyhow::Result<()> {
    if let Some(agent) = &spec.agent_id {
        spec.agent_id = Some(resolve_agent_id(client, agent).await?);
    }
    Ok(())
}

/// Runs one rules command.
pub async fn run(context: &Context, command: RulesCommand) -> anyhow::Result<()> {
    // Flag mistakes are reported before anything is sent.
    let prepared = match &command {
        RulesCommand::Create(args) => Some(create_spec(args)?),
        RulesCommand::Update(args) => Some(update_spec(args)?),
        _ => None,
    };
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        RulesCommand::Create(args) => {
            let mut spec = prepared.unwrap_or_default();
            resolve_agent(&client, &mut spec).await?;
            let result = client
                .call::<RulesCreate>(&spec)
                .await
                .with_context(|| format!("rules.create {}", args.name))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_line(&mut out, output::one_line(&result.id))
        }
        RulesCommand::List => {
            let result = client.call::<RulesList>(&NoParams {}).await.context("rules.list")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_text(&mut out, &rules_table(&result))
        }
        RulesCommand::Get { id } => {
            let rule = client
                .call::<RulesGet>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("rules.get {id}"))?;
            if context.json {
                return output::write_json(&mut out, &rule);
            }
            output::write_text(&mut out, &render_rule(&rule))
        }
        RulesCommand::Update(args) => {
            let mut spec = prepared.unwrap_or_default();
            resolve_agent(&client, &mut spec).await?;
            let rule = client
                .call::<RulesUpdate>(&RuleUpdateParams {
                    id: args.id.clone(),
                    spec,
                })
                .await
                .with_context(|| format!("rules.update {}", args.id))?;
            if context.json {
                return output::write_json(&mut out, &rule);
            }
            output::write_text(&mut out, &render_rule(&rule))
        }
        RulesCommand::Delete { id } => {
            let result = client
                .call::<RulesDelete>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("rules.delete {id}"))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            report_delete(&mut out, "rule", &id, &result)
        }
    }
}

fn rules_table(result: &RulesResult) -> String {
    let mut table = Table::new(&["ORDER", "NAME", "ID", "TOPIC", "AGENT", "ENABLED"]);
    for rule in &result.rules {
        table.row(vec![
            rule.priority_order.to_string(),
            rule.name.clone(),
            rule.id.clone(),
            rule.topic_pattern.clone(),
            rule.agent_id.clone(),
            if rule.enabled { "yes" } else { "no" }.to_owned(),
        ]);
    }
    table.render()
}

fn render_rule(rule: &Rule) -> String {
    let or_dash = |value: Option<&str>| output::one_line(value.unwrap_or("-"));
    format!(
        "id:                    {}\nname:                  {}\ntopic_pattern:         {}\nagent_id:              {}\n\
         semantic_type_pattern: {}\nmin_priority:          {}\nsource_pattern:        {}\n\
         model_override:        {}\ntoken_budget_override: {}\npriority_order:        {}\nenabled:               {}\n\
         created_at:            {}\nupdated_at:            {}\n",
        output::one_line(&rule.id),
        output::one_line(&rule.name),
        output::one_line(&rule.topic_pattern),
        output::one_line(&rule.agent_id),
        or_dash(rule.semantic_type_pattern.as_deref()),
        rule.min_priority.map_or("-", Priority::as_str),
        or_dash(rule.source_pattern.as_deref()),
        or_dash(rule.model_override.as_deref()),
        rule.token_budget_override
            .map_or_else(|| "-".to_owned(), |budget| budget.to_string()),
        rule.priority_order,
        if rule.enabled { "yes" } else { "no" },
        output::one_line(&rule.created_at),
        output::one_line(&rule.updated_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: RulesCommand,
    }

    fn parse(args: &[&str]) -> Result<RulesCommand, String> {
        let argv = std::iter::once("rules").chain(args.iter().copied());
        Harness::try_parse_from(argv)
            .map(|harness| harness.command)
            .map_err(|error| error.to_string())
    }

    fn spec_json(args: &[&str]) -> Result<serde_json::Value, String> {
        let spec = match parse(args)? {
            RulesCommand::Create(create) => create_spec(&create),
            RulesCommand::Update(update) => update_spec(&update),
            other => panic!("{other:?}"),
        };
        spec.map(|spec| serde_json::to_value(spec).expect("json"))
            .map_err(|error| error.0)
    }

    #[test]
    fn a_minimal_rule_names_topic_and_agent() {
        assert_eq!(
            spec_json(&["create", "ask", "--topic", "user.**", "--agent", "helper"]),
            Ok(json!({"name": "ask", "topic_pattern": "user.**", "agent_id": "helper"}))
        );
    }

    #[test]
    fn every_create_flag_lands_in_its_field() {
        assert_eq!(
            spec_json(&[
                "create",
                "alerts",
                "--topic",
                "security.*",
                "--agent",
                "agt_1",
                "--semantic-type",
                "auth.*",
                "--min-priority",
                "high",
                "--source",
                "producer:*",
                "--model-override",
                "qwen3:8b",
                "--token-budget",
                "4000",
                "--order",
                "-5",
                "--disabled",
            ]),
            Ok(json!({
                "name": "alerts",
                "topic_pattern": "security.*",
                "semantic_type_pattern": "auth.*",
                "min_priority": "high",
                "source_pattern": "producer:*",
                "agent_id": "agt_1",
                "model_override": "qwen3:8b",
                "token_budget_override": 4000,
                "priority_order": -5,
                "enabled": false,
            }))
        );
    }

    #[test]
    fn bad_patterns_and_values_are_usage_errors() {
        let error = spec_json(&["create", "r", "--topic", "User.Query", "--agent", "a"]).expect_err("bad pattern");
        assert!(error.starts_with("--topic: "), "{error}");
        let error = spec_json(&["update", "rule_1", "--topic", "a..b"]).expect_err("bad pattern");
        assert!(error.contains("empty segment"), "{error}");
        let error = parse(&["create", "r", "--agent", "a"]).expect_err("no topic");
        assert!(error.contains("--topic"), "{error}");
        let error = parse(&[
            "create",
            "r",
            "--topic",
            "x",
            "--agent",
            "a",
            "--min-priority",
            "urgent",
        ])
        .expect_err("bad priority");
        assert!(error.contains("urgent"), "{error}");
        let error =
            parse(&["create", "r", "--topic", "x", "--agent", "a", "--token-budget", "0"]).expect_err("zero budget");
        assert!(error.contains("token-budget"), "{error}");
    }

    #[test]
    fn update_sends_only_the_changed_fields() {
        assert_eq!(
            spec_json(&["update", "rule_1", "--order", "10", "--enabled"]),
            Ok(json!({"priority_order": 10, "enabled": true}))
        );
        assert_eq!(
            spec_json(&[
                "update",
                "rule_1",
                "--agent",
                "agt_2",
                "--topic",
                "user.query",
                "--disabled"
            ]),
            Ok(json!({"agent_id": "agt_2", "topic_pattern": "user.query", "enabled": false}))
        );
        let RulesCommand::Update(update) = parse(&["update", "rule_1", "--name", "n"]).expect("parses") else {
            panic!("not update")
        };
        let params = RuleUpdateParams {
            id: update.id.clone(),
            spec: update_spec(&update).expect("spec"),
        };
        assert_eq!(
            serde_json::to_value(params).expect("json"),
            json!({"id": "rule_1", "name": "n"})
        );
        let error = spec_json(&["update", "rule_1"]).expect_err("nothing");
        assert!(error.contains("nothing to change"), "{error}");
        let error = parse(&["update", "rule_1", "--enabled", "--disabled"]).expect_err("both");
        assert!(error.contains("cannot be used with"), "{error}");
    }

    fn rule(order: i64, name: &str, enabled: bool) -> Rule {
        Rule {
            id: format!("rule_{name}"),
            name: name.to_owned(),
            topic_pattern: "user.**".into(),
            semantic_type_pattern: None,
            min_priority: None,
            source_pattern: None,
            agent_id: "agt_helper".into(),
            model_override: None,
            token_budget_override: None,
            priority_order: order,
            enabled,
            created_at: "2026-01-02T03:04:05.678Z".into(),
            updated_at: "2026-01-02T03:04:06.000Z".into(),
        }
    }

    #[test]
    fn the_listing_is_in_order_with_the_listed_columns() {
        let result = RulesResult {
            rules: vec![rule(-1, "first", true), rule(100, "ask", false)],
        };
        assert_eq!(
            rules_table(&result),
            "ORDER  NAME   ID          TOPIC    AGENT       ENABLED\n\
             -1     first  rule_first  user.**  agt_helper  yes\n\
             100    ask    rule_ask    user.**  agt_helper  no\n"
        );
    }

    #[test]
    fn one_rule_renders_as_a_block() {
        let mut detailed = rule(5, "ask", true);
        detailed.min_priority = Some(Priority::High);
        detailed.token_budget_override = Some(2000);
        detailed.source_pattern = Some("user:*".into());
        assert_eq!(
            render_rule(&detailed),
            "id:                    rule_ask\n\
             name:                  ask\n\
             topic_pattern:         user.**\n\
             agent_id:              agt_helper\n\
             semantic_type_pattern: -\n\
             min_priority:          high\n\
             source_pattern:        user:*\n\
             model_override:        -\n\
             token_budget_override: 2000\n\
             priority_order:        5\n\
             enabled:               yes\n\
             created_at:            2026-01-02T03:04:05.678Z\n\
             updated_at:            2026-01-02T03:04:06.000Z\n"
        );
    }
}
