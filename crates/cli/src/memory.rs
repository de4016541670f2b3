//! Memory commands: `aibus memory add|get|list|search|update|delete`.

use std::io;

use aiventbus_proto::methods::{
    IdParams, MemoriesResult, Memory, MemoryAdd, MemoryAddParams, MemoryDelete, MemoryGet, MemoryKind, MemoryList,
    MemoryListParams, MemorySearch, MemorySearchParams, MemoryUpdate, MemoryUpdateParams,
};
use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use crate::knowledge::report_delete;
use crate::output::{self, Table};
use crate::{Context, UsageError};

/// Widest content shown in a listing, in characters.
const CONTENT_WIDTH: usize = 60;

/// `aibus memory …`.
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Add a memory.
    Add {
        /// The text to remember.
        content: String,
        /// What kind of memory.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// `global`, `agent:<id>` or your own scope.
        #[arg(long, value_name = "S")]
        scope: String,
        /// 0 to 1 [default: 0.5].
        #[arg(long, value_name = "X")]
        importance: Option<f64>,
        /// A tag (lowercase letters, digits and `_ . : -`); repeat for more.
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
    },
    /// Show one memory.
    Get {
        /// The id (`mem_…`).
        id: String,
    },
    /// List memories, most recently updated first.
    List {
        /// Only this scope.
        #[arg(long, value_name = "S")]
        scope: Option<String>,
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Only memories with this tag.
        #[arg(long, value_name = "T")]
        tag: Option<String>,
        /// At most this many memories [default: 100].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5000))]
        limit: Option<u32>,
    },
    /// Full-text search, best first (relevance, recency and importance).
    Search {
        /// Words to look for.
        query: String,
        /// Only this scope.
        #[arg(long, value_name = "S")]
        scope: Option<String>,
        /// At most this many results [default: 10].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: Option<u32>,
    },
    /// Change a memory's content, importance or tags.
    Update {
        /// The id (`mem_…`).
        id: String,
        /// New text.
        #[arg(long, value_name = "TEXT")]
        content: Option<String>,
        /// New importance, 0 to 1.
        #[arg(long, value_name = "X")]
        importance: Option<f64>,
        /// Replace the tags with these; repeat for more.
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Remove every tag.
        #[arg(long, conflicts_with = "tags")]
        clear_tags: bool,
    },
    /// Remove a memory.
    Delete {
        /// The id (`mem_…`).
        id: String,
    },
}

/// A memory kind on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Facts and concepts.
    Semantic,
    /// Things that happened.
    Episodic,
    /// How to do things.
    Procedural,
}

impl From<KindArg> for MemoryKind {
    fn from(kind: KindArg) -> MemoryKind {
        match kind {
            KindArg::Semantic => MemoryKind::Semantic,
            KindArg::Episodic => MemoryKind::Episodic,
            KindArg::Procedural => MemoryKind::Procedural,
        }
    }
}

fn kind_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Semantic => "semantic",
        MemoryKind::Episodic => "episodic",
        MemoryKind::Procedural => "procedural",
    }
}

/// Runs one memory command.
pub async fn run(context: &Context, command: MemoryCommand) -> anyhow::Result<()> {
    if let MemoryCommand::Update {
        content: None,
        importance: None,
        tags,
        clear_tags: false,
        ..
    } = &command
    {
        if tags.is_empty() {
            return Err(UsageError("give at least one of --content, --importance, --tag, --clear-tags".into()).into());
        }
    }
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        MemoryCommand::Add {
            content,
            kind,
            scope,
            importance,
            tags,
        } => {
            let params = MemoryAddParams {
                kind: kind.into(),
                scope,
                content,
                importance,
                tags: (!tags.is_empty()).then_some(tags),
                source: None,
            };
            let result = client.call::<MemoryAdd>(&params).await.context("memory.add")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_line(&mut out, output::one_line(&result.id))
        }
        MemoryCommand::Get { id } => {
            let memory = client
                .call::<MemoryGet>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("memory.get {id}"))?;
            if context.json {
                return output::write_json(&mut out, &memory);
            }
            output::write_text(&mut out, &render_memory(&memory))
        }
        MemoryCommand::List {
            scope,
            kind,
            tag,
            limit,
        } => {
            let params = MemoryListParams {
                scope,
                kind: kind.map(MemoryKind::from),
                tag,
                limit,
            };
            let result = client.call::<MemoryList>(&params).await.context("memory.list")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_text(&mut out, &memories_table(&result))
        }
        MemoryCommand::Search { query, scope, limit } => {
            let params = MemorySearchParams { query, scope, limit };
            let result = client.call::<MemorySearch>(&params).await.context("memory.search")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_text(&mut out, &search_table(&result))
        }
        MemoryCommand::Update {
            id,
            content,
            importance,
            tags,
            clear_tags,
        } => {
            let params = MemoryUpdateParams {
                id: id.clone(),
                content,
                importance,
                tags: (clear_tags || !tags.is_empty()).then_some(tags),
            };
            let memory = client
                .call::<MemoryUpdate>(&params)
                .await
                .with_context(|| format!("memory.update {id}"))?;
            if context.json {
                return output::write_json(&mut out, &memory);
            }
            output::write_text(&mut out, &render_memory(&memory))
        }
        MemoryCommand::Delete { id } => {
            let result = client
                .call::<MemoryDelete>(&IdParams { id: id.clone() })
                .await
                .with_context(|| format!("memory.delete {id}"))?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            report_delete(&mut out, "memory", &id, &result)
        }
    }
}

/// The fields, then a blank line and the content (control characters other than line breaks
/// escaped).
fn render_memory(memory: &Memory) -> String {
    let mut text = format!(
        "id:         {}\nkind:       {}\nscope:      {}\nimportance: {}\ntags:       {}\nsource:     {}\n\
         created_at: {}\nupdated_at: {}\n",
        output::one_line(&memory.id),
        kind_name(memory.kind),
        output::one_line(&memory.scope),
        memory.importance,
        output::one_line(&memory.tags.join(", ")),
        output::one_line(&memory.source),
        output::one_line(&memory.created_at),
        output::one_line(&memory.updated_at),
    );
    if let Some(score) = memory.score {
        text.push_str(&format!("score:      {score:.3}\n"));
    }
    text.push('\n');
    for line in memory.content.lines() {
        text.push_str(&output::one_line(line));
        text.push('\n');
    }
    text
}

pub(crate) fn memories_table(result: &MemoriesResult) -> String {
    let mut table = Table::new(&["ID", "KIND", "SCOPE", "IMPORTANCE", "TAGS", "UPDATED", "CONTENT"]);
    for memory in &result.memories {
        table.row(vec![
            memory.id.clone(),
            kind_name(memory.kind).to_owned(),
            memory.scope.clone(),
            format!("{:.2}", memory.importance),
            memory.tags.join(","),
            memory.updated_at.clone(),
            output::truncate(&output::one_line(&memory.content), CONTENT_WIDTH),
        ]);
    }
    table.render()
}

pub(crate) fn search_table(result: &MemoriesResult) -> String {
    let mut table = Table::new(&["SCORE", "ID", "KIND", "SCOPE", "CONTENT"]);
    for memory in &result.memories {
        table.row(vec![
            memory
                .score
                .map_or_else(|| "-".to_owned(), |score| format!("{score:.3}")),
            memory.id.clone(),
            kind_name(memory.kind).to_owned(),
            memory.scope.clone(),
            output::truncate(&output::one_line(&memory.content), CONTENT_WIDTH),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(score: Option<f64>) -> Memory {
        Memory {
            id: "mem_1".into(),
            kind: MemoryKind::Procedural,
            scope: "global".into(),
            content: "step one\nstep two\u{1b}[31m".into(),
            importance: 0.75,
            tags: vec!["ops".into(), "deploy".into()],
            source: "user:alice".into(),
            created_at: "2026-01-02T03:04:05.678Z".into(),
            updated_at: "2026-01-02T03:04:05.678Z".into(),
            score,
        }
    }

    #[test]
    fn a_memory_renders_fields_then_content() {
        assert_eq!(
            render_memory(&memory(Some(0.51234))),
            "id:         mem_1\n\
             kind:       procedural\n\
             scope:      global\n\
             importance: 0.75\n\
             tags:       ops, deploy\n\
             source:     user:alice\n\
             created_at: 2026-01-02T03:04:05.678Z\n\
             updated_at: 2026-01-02T03:04:05.678Z\n\
             score:      0.512\n\
             \n\
             step one\n\
             step two\\u{1b}[31m\n"
        );
    }

    #[test]
    fn listings_have_one_line_per_memory() {
        let listed = memories_table(&MemoriesResult {
            memories: vec![memory(None)],
        });
        assert_eq!(
            listed,
            "ID     KIND        SCOPE   IMPORTANCE  TAGS        UPDATED                   CONTENT\n\
             mem_1  procedural  global  0.75        ops,deploy  2026-01-02T03:04:05.678Z  step one\\nstep two\\u{1b}[31m\n"
        );
        let found = search_table(&MemoriesResult {
            memories: vec![memory(Some(0.9))],
        });
        assert_eq!(
            found,
            "SCORE  ID     KIND        SCOPE   CONTENT\n\
             0.900  mem_1  procedural  global  step one\\nstep two\\u{1b}[31m\n"
        );
    }
}
