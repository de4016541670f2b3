//! Follows the JSON of an agent's structured output as the model streams it, in chunks cut
//! anywhere, and gives out the text of the top-level `"summary"` string as it arrives (escapes,
//! `\uXXXX` and surrogate pairs decoded across chunk boundaries).

/// Deepest JSON nesting followed; deeper output is not streamed (`aibus query` prints the summary
/// from the final answer instead).
const MAX_DEPTH: usize = 128;

/// Open containers of the JSON being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// What the string being read is.
#[derive(Debug)]
enum Role {
    /// A key; its text is kept (at most 16 characters: enough to tell `summary`).
    Key(String),
    /// The top-level `summary` value: its text is given out.
    Summary,
    /// Anything else: only its end matters.
    Other,
}

/// Where an escape inside a string stands.
#[derive(Debug, Clone, Copy)]
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and `digits` hex digits worth `value`.
    Unicode {
        value: u32,
        digits: u8,
    },
}

/// A string being read.
#[derive(Debug)]
struct JsonString {
    role: Role,
    escape: Escape,
    /// A `\uD800`–`\uDBFF` escape waiting for its low half.
    high_surrogate: Option<u32>,
}

/// Follows JSON documents arriving in pieces and gives out the text of each document's top-level
/// `"summary"` string as it arrives. Text before a document (code fences, prose) is skipped; a
/// later document (the next round of a tool loop) starts its summary on a new line. Nested
/// `summary` keys (inside `proposed_actions`) and strings that merely contain the word are not
/// taken for it.
#[derive(Debug)]
pub struct SummaryExtractor {
    /// Open containers of the current document; empty between documents.
    stack: Vec<Container>,
    /// In an object: the next string is a key.
    expect_key: bool,
    /// The last top-level key read was `summary`.
    summary_key: bool,
    /// A `:` followed the top-level `summary` key: the next value is the summary.
    summary_value_next: bool,
    /// The current document's summary has started (a second `summary` key is ignored).
    document_has_summary: bool,
    /// The current document's summary has given out text.
    document_emitted: bool,
    /// Inside a string.
    string: Option<JsonString>,
    /// The summary of the latest document that has one, so far.
    summary: String,
    /// Any summary text given out yet.
    emitted: bool,
    /// Nesting past [`MAX_DEPTH`]: nothing more is followed.
    lost: bool,
}

impl Default for SummaryExtractor {
    fn default() -> Self {
        SummaryExtractor::new()
    }
}

impl SummaryExtractor {
    /// Before any input.
    pub fn new() -> SummaryExtractor {
        SummaryExtractor {
            stack: Vec::new(),
            expect_key: false,
            summary_key: false,
            summary_value_next: false,
            document_has_summary: false,
            document_emitted: false,
            string: None,
            summary: String::new(),
            emitted: false,
            lost: false,
        }
    }

    /// The latest document's summary as read so far (decoded).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Whether any summary text has been given out.
    pub fn emitted(&self) -> bool {
        self.emitted
    }

    /// Takes the next chunk; returns the summary text it completes (decoded), possibly empty.
    pub fn push(&mut self, chunk: &str) -> String {
        let mut shown = String::new();
        if self.lost {
            return shown;
        }
        for c in chunk.chars() {
            if self.string.is_some() {
                self.string_char(c, &mut shown);
            } else {
                self.structural_char(c);
                if self.lost {
                    break;
                }
            }
        }
        shown
    }

    fn structural_char(&mut self, c: char) {
        let Some(&top) = self.stack.last() else {
            // Between documents: wait for the next object.
            if c == '{' {
                self.stack.push(Container::Object);
                self.expect_key = true;
                self.summary_key = false;
                self.summary_value_next = false;
                self.document_has_summary = false;
                self.document_emitted = false;
            }
            return;
        };
        match c {
            ' ' | '\t' | '\n' | '\r' => {}
            '"' => {
                let role = if top == Container::Object && self.expect_key {
                    Role::Key(String::new())
                } else if self.summary_value_next && !self.document_has_summary {
                    self.document_has_summary = true;
                    self.summary.clear();
                    Role::Summary
                } else {
                    Role::Other
                };
                self.summary_value_next = false;
                self.string = Some(JsonString {
                    role,
                    escape: Escape::None,
                    high_surrogate: None,
                });
            }
            '{' | '[' => {
                self.summary_value_next = false;
                if self.stack.len() >= MAX_DEPTH {
                    self.lost = true;
                    return;
                }
                let container = if c == '{' { Container::Object } else { Container::Array };
                self.stack.push(container);
                self.expect_key = container == Container::Object;
            }
            '}' | ']' => {
                self.summary_value_next = false;
                self.stack.pop();
                self.expect_key = false;
            }
            ',' => {
                self.summary_value_next = false;
                self.expect_key = top == Container::Object;
            }
            ':' => {
                self.expect_key = false;
                self.summary_value_next = self.stack.len() == 1 && self.summary_key;
                self.summary_key = false;
            }
            // A number, true, false or null: a value that is not a string.
            _ => self.summary_value_next = false,
        }
    }

    fn string_char(&mut self, c: char, shown: &mut String) {
        let Some(string) = self.string.as_mut() else {
            return;
        };
        match string.escape {
            Escape::None => match c {
                '"' => self.end_string(shown),
                '\\' => string.escape = Escape::Backslash,
                _ => self.decoded(c, shown),
            },
            Escape::Backslash => {
                string.escape = Escape::None;
                match c {
                    'u' => string.escape = Escape::Unicode { value: 0, digits: 0 },
                    'b' => self.decoded('\u{8}', shown),
                    'f' => self.decoded('\u{c}', shown),
                    'n' => self.decoded('\n', shown),
                    'r' => self.decoded('\r', shown),
                    't' => self.decoded('\t', shown),
                    // `\"`, `\\`, `\/`, and anything a lenient model writes after a backslash.
                    _ => self.decoded(c, shown),
                }
            }
            Escape::Unicode { value, digits } => match c.to_digit(16) {
                Some(digit) => {
                    let value = value * 16 + digit;
                    if digits == 3 {
                        string.escape = Escape::None;
                        self.code_unit(value, shown);
                    } else {
                        string.escape = Escape::Unicode {
                            value,
                            digits: digits + 1,
                        };
                    }
                }
                None => {
                    // A broken `\u` escape: mark it and read the character normally (it may be
                    // the closing quote).
                    string.escape = Escape::None;
                    self.decoded(char::REPLACEMENT_CHARACTER, shown);
                    self.string_char(c, shown);
                }
            },
        }
    }

    /// One UTF-16 code unit from a `\u` escape: surrogate halves are paired up across escapes.
    fn code_unit(&mut self, unit: u32, shown: &mut String) {
        let Some(string) = self.string.as_mut() else {
            return;
        };
        match unit {
            0xD800..=0xDBFF => {
                let unpaired = string.high_surrogate.replace(unit).is_some();
                if unpaired {
                    self.emit(char::REPLACEMENT_CHARACTER, shown);
                }
            }
            0xDC00..=0xDFFF => match string.high_surrogate.take() {
                Some(high) => {
                    let scalar = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
                    self.emit(char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER), shown);
                }
                None => self.emit(char::REPLACEMENT_CHARACTER, shown),
            },
            _ => self.decoded(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER), shown),
        }
    }

    /// A decoded character that is not a low surrogate: a pending high one was unpaired.
    fn decoded(&mut self, c: char, shown: &mut String) {
        if let Some(string) = self.string.as_mut() {
            if string.high_surrogate.take().is_some() {
                self.emit(char::REPLACEMENT_CHARACTER, shown);
            }
        }
        self.emit(c, shown);
    }

    fn emit(&mut self, c: char, shown: &mut String) {
        let Some(string) = self.string.as_mut() else {
            return;
        };
        match &mut string.role {
            Role::Key(key) => {
                if key.chars().count() < 16 {
                    key.push(c);
                }
            }
            Role::Summary => {
                if !self.document_emitted {
                    if self.emitted {
                        shown.push('\n');
                    }
                    self.document_emitted = true;
                    self.emitted = true;
                }
                self.summary.push(c);
                shown.push(c);
            }
            Role::Other => {}
        }
    }

    fn end_string(&mut self, shown: &mut String) {
        if let Some(string) = self.string.as_mut() {
            if string.high_surrogate.take().is_some() {
                self.emit(char::REPLACEMENT_CHARACTER, shown);
            }
        }
        let Some(string) = self.string.take() else {
            return;
        };
        if let Role::Key(key) = string.role {
            self.expect_key = false;
            if self.stack.len() == 1 {
                self.summary_key = key == "summary";
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Feeds `chunks` and returns everything given out.
    fn feed(extractor: &mut SummaryExtractor, chunks: &[&str]) -> String {
        chunks.iter().map(|chunk| extractor.push(chunk)).collect()
    }

    pub(crate) fn extract(chunks: &[&str]) -> (String, SummaryExtractor) {
        let mut extractor = SummaryExtractor::new();
        let shown = feed(&mut extractor, chunks);
        (shown, extractor)
    }

    /// The document's `summary` as serde_json reads it.
    fn expected_summary(document: &str) -> String {
        let value: Value = serde_json::from_str(document).expect("test document is JSON");
        value["summary"].as_str().expect("a summary").to_owned()
    }

    /// Every split of `document` into two and into three chunks (at character boundaries) gives
    /// out exactly the summary serde_json reads.
    fn assert_all_splits(document: &str) {
        let expected = expected_summary(document);
        let bounds: Vec<usize> = document
            .char_indices()
            .map(|(index, _)| index)
            .chain([document.len()])
            .collect();
        for &i in &bounds {
            let (shown, extractor) = extract(&[&document[..i], &document[i..]]);
            assert_eq!(shown, expected, "split at {i} of {document}");
            assert_eq!(extractor.summary(), expected);
            assert_eq!(extractor.emitted(), !expected.is_empty());
        }
        for (a, &i) in bounds.iter().enumerate() {
            for &j in &bounds[a..] {
                let (shown, _) = extract(&[&document[..i], &document[i..j], &document[j..]]);
                assert_eq!(shown, expected, "split at {i} and {j} of {document}");
            }
        }
        let chars: Vec<String> = document.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(extract(&pieces).0, expected, "one character at a time");
    }

    #[test]
    fn a_whole_document_gives_its_summary() {
        let (shown, extractor) = extract(&[r#"{"type":"answer","summary":"It is 4.","confidence":0.9}"#]);
        assert_eq!(shown, "It is 4.");
        assert_eq!(extractor.summary(), "It is 4.");
        assert!(extractor.emitted());
    }

    #[test]
    fn escapes_decode_at_every_chunk_boundary() {
        assert_all_splits(
            r#"{"type": "answer", "summary" :  "Quote \" slash \\ \/ tab\tnew\nline é\u00e9 \u65e5本 😀\ud83d\ude00 \u0041\b\f\r end", "confidence": 1}"#,
        );
    }

    #[test]
    fn look_alikes_of_the_summary_key_are_skipped_at_every_boundary() {
        // Actions before the summary carry nested "summary" keys; a string value holds the
        // quoted word; an array holds it too; escapes spell the real key.
        assert_all_splits(
            r#"{"proposed_actions": [{"action_type": "emit_event", "topic": "x.y", "payload": {"summary": "NOT THIS", "n": [1, {"summary": "nor this"}]}}], "type": "\"summary\": \"no\"", "list": ["summary", "summary"], "summarys": "no", "summ\u0061ry": "Yes \u2014 this one.", "summary_2": "no"}"#,
        );
    }

    #[test]
    fn a_surrogate_pair_split_between_escapes_joins_up() {
        let document = r#"{"summary":"a\uD83D\uDE00b"}"#;
        for split in 0..document.len() {
            let (shown, _) = extract(&[&document[..split], &document[split..]]);
            assert_eq!(shown, "a😀b", "split at {split}");
        }
    }

    #[test]
    fn lone_surrogates_and_broken_escapes_become_replacement_characters() {
        assert_eq!(extract(&[r#"{"summary":"a\ud83db"}"#]).0, "a\u{fffd}b");
        assert_eq!(extract(&[r#"{"summary":"a\ude00b"}"#]).0, "a\u{fffd}b");
        assert_eq!(extract(&[r#"{"summary":"a\ud83d\ud83d\ude00"}"#]).0, "a\u{fffd}😀");
        assert_eq!(extract(&[r#"{"summary":"a\ud83d\n"}"#]).0, "a\u{fffd}\n");
        assert_eq!(extract(&[r#"{"summary":"end\ud83d"}"#]).0, "end\u{fffd}");
        // A broken \u escape does not swallow the closing quote.
        let (shown, extractor) = extract(&[r#"{"summary":"x\u12"}, "type": "t"}"#]);
        assert_eq!(shown, "x\u{fffd}");
        assert_eq!(extractor.summary(), "x\u{fffd}");
        assert_eq!(extract(&[r#"{"summary":"q\qz"}"#]).0, "qqz");
    }

    #[test]
    fn text_around_documents_is_skipped() {
        let (shown, _) = extract(&["Sure! ```json\n", "{\"summary\": \"Done.\"}\n```"]);
        assert_eq!(shown, "Done.");
    }

    #[test]
    fn later_documents_start_on_a_new_line() {
        let (shown, extractor) = extract(&[
            r#"{"type":"plan","summary":"Checking.","proposed_actions":[{"action_type":"get_knowledge","key":"k"}]}"#,
            "\n",
            r#"{"type":"answer","summary":"The key is 7."}"#,
        ]);
        assert_eq!(shown, "Checking.\nThe key is 7.");
        assert_eq!(extractor.summary(), "The key is 7.");
        // A document without a summary adds nothing, not even a line break.
        let (shown, extractor) = extract(&[r#"{"summary":"One."}{"type":"x"}{"summary":""}"#]);
        assert_eq!(shown, "One.");
        assert_eq!(extractor.summary(), "");
    }

    #[test]
    fn documents_without_a_string_summary_give_nothing() {
        for document in [
            r#"{"type":"answer"}"#,
            r#"{"summary":null,"type":"summary"}"#,
            r#"{"summary":42,"x":"summary"}"#,
            r#"{"summary":{"summary":"nested"}}"#,
            r#"{"summary":["a"]}"#,
            r#"{"list": ["summary", {"summary": "in an array"}]}"#,
            "no JSON at all",
            "",
        ] {
            let (shown, extractor) = extract(&[document]);
            assert_eq!(shown, "", "{document}");
            assert!(!extractor.emitted(), "{document}");
        }
        // Only the first summary of a document counts.
        assert_eq!(extract(&[r#"{"summary":"first","summary":"second"}"#]).0, "first");
    }

    #[test]
    fn deep_nesting_stops_following_without_panicking() {
        let deep = format!("{{\"a\":{}1{}, \"summary\":\"s\"}}", "[".repeat(500), "]".repeat(500));
        let (shown, _) = extract(&[&deep]);
        assert_eq!(shown, "");
        let shallow = format!("{{\"a\":{}1{}, \"summary\":\"s\"}}", "[".repeat(50), "]".repeat(50));
        assert_eq!(extract(&[&shallow]).0, "s");
    }

    /// A small deterministic generator, so the fuzz below needs no extra crate.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % bound
        }
    }

    /// `text` as a JSON string with every non-ASCII and special character as `\u` escapes
    /// (surrogate pairs for astral characters), as some servers write it.
    fn ascii_json_string(text: &str) -> String {
        let mut encoded = String::from("\"");
        for c in text.chars() {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                encoded.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    encoded.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
        encoded.push('"');
        encoded
    }

    #[test]
    fn random_summaries_survive_random_chunking() {
        let alphabet: Vec<char> = "ab \"\\/\n\t\u{1}\u{1f}é日😀{}[]:,summary\u{2028}\u{ffff}\u{10ffff}"
            .chars()
            .collect();
        let mut random = Lcg(7);
        for round in 0..400 {
            let length = random.next(24);
            let summary: String = (0..length).map(|_| alphabet[random.next(alphabet.len())]).collect();
            let noise: String = (0..random.next(8))
                .map(|_| alphabet[random.next(alphabet.len())])
                .collect();
            let document = if round % 2 == 0 {
                serde_json::to_string(&json!({"type": noise, "summary": summary, "proposed_actions": [{"action_type": "notify", "summary": noise}]}))
                    .expect("json")
            } else {
                format!(
                    "{{ \"payload\" : {{ \"summary\" : {} }} , \"summary\" : {} }}",
                    ascii_json_string(&noise),
                    ascii_json_string(&summary)
                )
            };
            assert_eq!(expected_summary(&document), summary, "{document}");
            let chars: Vec<(usize, char)> = document.char_indices().collect();
            let mut chunks = Vec::new();
            let mut start = 0;
            let mut index = 0;
            while index < chars.len() {
                index += 1 + random.next(6);
                let end = chars.get(index).map_or(document.len(), |(offset, _)| *offset);
                chunks.push(&document[start..end]);
                start = end;
            }
            let (shown, extractor) = extract(&chunks);
            assert_eq!(shown, summary, "{document} in {chunks:?}");
            assert_eq!(extractor.summary(), summary);
        }
    }
}
