//! Knowledge commands: `aibus knowledge set|get|delete|list` over durable key/value facts.

use std::io;

use aiventbus_proto::methods::{
    DeleteResult, Fact, FactsResult, KeyParams, KnowledgeDelete, KnowledgeGet, KnowledgeList, KnowledgeListParams,
    KnowledgeSet, KnowledgeSetParams,
};
use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use crate::Context;
use crate::output::{self, Table};

/// Widest value shown in a listing, in characters.
const VALUE_WIDTH: usize = 60;

/// `aibus knowledge …`.
#[derive(Debug, Subcommand)]
pub enum KnowledgeCommand {
    /// Store or replace a fact.
    Set {
        /// Key such as `user.pref.editor`: letters, digits and `_ . : / -`.
        key: String,
        /// The value as JSON (`42`, `{"a":1}`, `"text"`); anything that is not JSON is stored as a
        /// string, so `vim` works unquoted.
        value: String,
        /// Who states it: `user:<name>` or `producer:<name>` [default: you].
        #[arg(long, value_name = "S")]
        source: Option<String>,
    },
    /// Show one fact.
    Get {
        /// The key.
        key: String,
    },
    /// Remove a fact.
    Delete {
        /// The key.
        key: String,
    },
    /// List facts, most recently updated first.
    List {
        /// Only keys starting with this.
        prefix: Option<String>,
        /// At most this many facts [default: 100].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5000))]
        limit: Option<u32>,
    },
}

/// A value argument: JSON when it parses as JSON, else the text as a JSON string.
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Runs one knowledge command.
pub async fn run(context: &Context, command: KnowledgeCommand) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        KnowledgeCommand::Set { key, value, source } => {
            let params = KnowledgeSetParams {
                value: parse_value(&value),
                key,
                source,
            };
            let fact = client
                .call::<KnowledgeSet>(&params)
                .await
                .with_context(|| format!("knowledge.set {}", params.key))?;
            if context.json {
                return output::write_json(&mut out, &fact);
            }
            output::write_text(&mut out, &render_fact(&fact))
        }
        KnowledgeCommand::Get { key } => {
            let fact = client
                .call::<KnowledgeGet>(&KeyParams { key: key.clone() })
                .await
                .with_context(|| format!("knowledge.get {key}"))?;
            if context.json {
                return output::write_json(&mut out, &fact);
            }
            output::write_text(&mut out, &render_fact(&fact))
        }
        KnowledgeCommand::Delete { key } => {
            let result = client
                .call::<KnowledgeDelete>(&KeyParams { key: key.clone() })
                .await
                .with_context(|| format!("knowledge.delete {key}"))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            report_delete(&mut out, "fact", &key, &result)
        }
        KnowledgeCommand::List { prefix, limit } => {
            let result = client
                .call::<KnowledgeList>(&KnowledgeListParams { prefix, limit })
                .await
                .context("knowledge.list")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_text(&mut out, &facts_table(&result))
        }
    }
}

/// `deleted <what> <id>`, or a note on stderr when there was nothing to delete (still exit 0, like
/// `rm -f`: the thing is gone either way).
pub fn report_delete(out: &mut impl io::Write, what: &str, id: &str, result: &DeleteResult) -> anyhow::Result<()> {
    if result.deleted {
        output::write_line(out, format_args!("deleted {what} {}", output::one_line(id)))
    } else {
        output::note(format!("no {what} {}; nothing deleted", output::one_line(id)));
        Ok(())
    }
}

fn render_fact(fact: &Fact) -> String {
    format!(
        "key:        {}\nvalue:      {}\nsource:     {}\ncreated_at: {}\nupdated_at: {}\n",
        output::one_line(&fact.key),
        output::one_line(&output::compact(&fact.value)),
        output::one_line(&fact.source),
        output::one_line(&fact.created_at),
        output::one_line(&fact.updated_at),
    )
}

fn facts_table(result: &FactsResult) -> String {
    let mut table = Table::new(&["KEY", "VALUE", "SOURCE", "UPDATED"]);
    for fact in &result.facts {
        table.row(vec![
            fact.key.clone(),
            output::truncate(&output::compact(&fact.value), VALUE_WIDTH),
            fact.source.clone(),
            fact.updated_at.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_or_strings() {
        assert_eq!(parse_value("vim"), json!("vim"));
        assert_eq!(parse_value("\"vim\""), json!("vim"));
        assert_eq!(parse_value("42"), json!(42));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(parse_value(r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(parse_value("{not json"), json!("{not json"));
        assert_eq!(parse_value("007"), json!("007"));
        assert_eq!(parse_value(""), json!(""));
    }

    fn fact(key: &str, value: Value) -> Fact {
        Fact {
            key: key.into(),
            value,
            source: "user:alice".into(),
            created_at: "2026-01-02T03:04:05.678Z".into(),
            updated_at: "2026-01-02T03:04:06.000Z".into(),
        }
    }

    #[test]
    fn facts_render_as_a_block_and_a_table() {
        assert_eq!(
            render_fact(&fact("user.pref.editor", json!("vim"))),
            "key:        user.pref.editor\n\
             value:      \"vim\"\n\
             source:     user:alice\n\
             created_at: 2026-01-02T03:04:05.678Z\n\
             updated_at: 2026-01-02T03:04:06.000Z\n"
        );
        let result = FactsResult {
            facts: vec![fact("a", json!({"x": [1, 2]})), fact("long", json!("y".repeat(100)))],
        };
        let table = facts_table(&result);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "KEY   VALUE                                                         SOURCE      UPDATED"
        );
        assert!(lines[1].starts_with(r#"a     {"x":[1,2]}   "#), "{table}");
        assert!(lines[2].contains(&format!("\"{}…", "y".repeat(58))), "{table}");
    }
}
