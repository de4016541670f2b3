//! Rendering for the terminal, without colours: aligned tables, one-line event summaries, the trace
//! tree, JSON documents, and notes on stderr.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::io::{self, Write};

use aiventbus_proto::Event;
use anyhow::Context as _;
use serde::Serialize;

/// Columns separated by two spaces, each as wide as its widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|cell| one_line(&cell)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if index > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Keeps a daemon-supplied string on one line: control characters are written as escapes.
pub fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `text` cut to `max_chars` characters, ending in `…` when something was cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Compact JSON of any wire value.
pub fn compact<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|error| format!("<unprintable: {error}>"))
}

/// `tail`'s line: `<seq> <ts> <topic> <source> <payload JSON compact>`.
pub fn event_line(event: &Event) -> String {
    format!(
        "{} {} {} {} {}",
        event.seq,
        one_line(&event.ts),
        one_line(&event.topic),
        one_line(&event.source),
        compact(&event.payload)
    )
}

/// The events of a trace as a tree by `parent_event`: roots first in seq order, each followed by
/// its children (in seq order), indented two spaces per depth; each line `seq topic id status`.
/// An event whose parent is not in the list counts as a root; events caught in a parent cycle are
/// shown once, from the first of them.
pub fn trace_tree(events: &[Event]) -> Vec<String> {
    let mut ordered: Vec<&Event> = events.iter().collect();
    ordered.sort_by_key(|event| event.seq);
    let ids: HashSet<&str> = ordered.iter().map(|event| event.id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&Event>> = HashMap::new();
    let mut roots = Vec::new();
    for event in &ordered {
        match event.parent_event.as_deref() {
            Some(parent) if parent != event.id && ids.contains(parent) => {
                children.entry(parent).or_default().push(event);
            }
            _ => roots.push(*event),
        }
    }
    let mut lines = Vec::with_capacity(ordered.len());
    let mut shown: HashSet<&str> = HashSet::new();
    let starts = roots.into_iter().chain(ordered.iter().copied());
    for start in starts {
        let mut stack = vec![(start, 0usize)];
        while let Some((event, depth)) = stack.pop() {
            if !shown.insert(event.id.as_str()) {
                continue;
            }
            lines.push(format!(
                "{}{} {} {} {}",
                "  ".repeat(depth),
                event.seq,
                one_line(&event.topic),
                one_line(&event.id),
                event.status.as_str()
            ));
            if let Some(kids) = children.get(event.id.as_str()) {
                stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
            }
        }
    }
    lines
}

/// Writes one pretty-printed JSON document.
pub fn write_json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).context("cannot write JSON to stdout")?;
    writeln!(out).context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

/// Writes text to stdout as is.
pub fn write_text(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    out.write_all(text.as_bytes()).context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

/// Writes one line to stdout and flushes it (so pipes see it at once).
pub fn write_line(out: &mut impl Write, line: impl Display) -> anyhow::Result<()> {
    writeln!(out, "{line}").context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")
}

/// A line on stderr; a closed stderr is not worth failing over.
pub fn stderr_line(message: &str) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// A note on stderr while a command goes on (`aibus: …`).
pub fn note(message: impl Display) {
    stderr_line(&format!("aibus: {message}"));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aiventbus_proto::{EventStatus, Priority};

    pub(crate) fn event(seq: u64, id: &str, parent: Option<&str>) -> Event {
        Event {
            id: id.to_owned(),
            seq,
            ts: "2026-01-02T03:04:05.678Z".to_owned(),
            topic: format!("demo.t{seq}"),
            payload: serde_json::Map::new(),
            source: "user:alice".to_owned(),
            priority: Priority::Medium,
            semantic_type: None,
            dedupe_key: None,
            dedupe_count: 1,
            duplicate_of: None,
            trace_id: "tr_1".to_owned(),
            parent_event: parent.map(str::to_owned),
            correlation_id: None,
            output_topic: None,
            context_refs: Vec::new(),
            memory_scope: None,
            expires_at: None,
            depth: 0,
            status: EventStatus::Published,
        }
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["SEQ", "TOPIC", "ID"]);
        table.row(vec!["1".into(), "demo.hello".into(), "evt_a".into()]);
        table.row(vec!["12345".into(), "x".into(), "evt_bb".into()]);
        assert_eq!(
            table.render(),
            "SEQ    TOPIC       ID\n\
             1      demo.hello  evt_a\n\
             12345  x           evt_bb\n"
        );
    }

    #[test]
    fn tables_pad_short_rows_and_escape_newlines() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["line\nbreak".into()]);
        assert_eq!(table.render(), "A            B\nline\\nbreak\n");
        assert_eq!(Table::new(&["ONLY"]).render(), "ONLY\n");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 5), "short");
        assert_eq!(truncate("longer", 5), "long…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn event_lines_are_compact() {
        let mut e = event(7, "evt_7", None);
        e.payload.insert("a".into(), serde_json::json!([1, {"b": "c d"}]));
        assert_eq!(
            event_line(&e),
            r#"7 2026-01-02T03:04:05.678Z demo.t7 user:alice {"a":[1,{"b":"c d"}]}"#
        );
    }

    #[test]
    fn trace_tree_orders_and_indents() {
        // Given out of order: the tree must not depend on the order the daemon sends.
        let events = vec![
            event(4, "evt_d", Some("evt_b")),
            event(1, "evt_a", None),
            event(3, "evt_c", Some("evt_a")),
            event(2, "evt_b", Some("evt_a")),
            event(5, "evt_e", Some("evt_a")),
            event(6, "evt_f", Some("evt_missing")),
        ];
        assert_eq!(
            trace_tree(&events),
            vec![
                "1 demo.t1 evt_a published",
                "  2 demo.t2 evt_b published",
                "    4 demo.t4 evt_d published",
                "  3 demo.t3 evt_c published",
                "  5 demo.t5 evt_e published",
                "6 demo.t6 evt_f published",
            ]
        );
    }

    #[test]
    fn trace_tree_survives_cycles() {
        let events = vec![
            event(1, "evt_a", Some("evt_b")),
            event(2, "evt_b", Some("evt_a")),
            event(3, "evt_c", Some("evt_c")),
        ];
        let lines = trace_tree(&events);
        assert_eq!(
            lines,
            vec![
                "3 demo.t3 evt_c published",
                "1 demo.t1 evt_a published",
                "  2 demo.t2 evt_b published",
            ]
        );
    }
}
