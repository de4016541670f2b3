//! A quote-aware parser for POSIX/bash command strings, enough to find every simple command a
//! string would run (operators, subshells, groups, substitutions, redirections, heredocs).
//!
//! One recursive-descent parser, past 800 lines: the grammar reads best in one place. Depth is
//! bounded ([`MAX_DEPTH`]) so hostile input cannot exhaust the stack; every step makes progress.

use std::ops::Range;

/// A parsed shell string: every simple command in source order (an enclosing command before the
/// commands of its substitutions), the control operators, and function definitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Every simple command, nested ones included.
    pub commands: Vec<Command>,
    /// Control operators in source order.
    pub operators: Vec<Operator>,
    /// Function definitions (`name() { … }`, `function name { … }`).
    pub functions: Vec<Function>,
}

/// One simple command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// Words after quote removal; expansions (`$HOME`, `$(…)`) are kept as written.
    pub argv: Vec<String>,
    /// Leading `NAME=value` assignments.
    pub assignments: Vec<String>,
    /// Redirections, in order.
    pub redirections: Vec<Redirection>,
    /// The source text of the command.
    pub text: String,
    /// The command whose word or redirection holds the substitution this one runs in.
    pub parent: Option<usize>,
    /// The pipelines it is part of, outermost first: (pipeline id, stage from 0).
    pub pipelines: Vec<(usize, usize)>,
    /// Runs in the background (`&`).
    pub background: bool,
    /// The function definition whose body holds it.
    pub function: Option<usize>,
}

/// A redirection and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirection {
    /// The file descriptor written before the operator (`2>`).
    pub fd: Option<u32>,
    /// The operator.
    pub op: RedirectOp,
    /// The target word after quote removal (for a heredoc: its delimiter).
    pub target: String,
    /// A heredoc's or here-string's body.
    pub body: Option<String>,
}

/// A redirection operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectOp {
    /// `<`
    In,
    /// `>`
    Out,
    /// `>>`
    Append,
    /// `>|`
    Clobber,
    /// `<>`
    InOut,
    /// `<&`
    DupIn,
    /// `>&`
    DupOut,
    /// `&>`
    OutErr,
    /// `&>>`
    AppendErr,
    /// `<<`
    HereDoc,
    /// `<<-`
    HereDocStrip,
    /// `<<<`
    HereString,
}

impl RedirectOp {
    /// Whether it writes to its target.
    pub fn writes(self) -> bool {
        matches!(
            self,
            RedirectOp::Out
                | RedirectOp::Append
                | RedirectOp::Clobber
                | RedirectOp::InOut
                | RedirectOp::DupOut
                | RedirectOp::OutErr
                | RedirectOp::AppendErr
        )
    }
}

/// A control operator between commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `;`
    Semicolon,
    /// `&&`
    And,
    /// `||`
    Or,
    /// `|`
    Pipe,
    /// `|&`
    PipeAll,
    /// `&`
    Background,
    /// A newline.
    Newline,
}

/// A function definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// The indices in [`Script::commands`] of its body.
    pub body: Range<usize>,
}

/// Why a string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at byte {offset}")]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub offset: usize,
}

/// Deepest nesting of substitutions, subshells and groups a string may have.
pub const MAX_DEPTH: usize = 32;

/// Parses a shell string.
pub fn parse(script: &str) -> Result<Script, ParseError> {
    let mut out = Script::default();
    Parser::new(script, &mut out, 0, None, None).program()?;
    Ok(out)
}

impl Script {
    /// Whether `a` feeds `b` through a pipe (directly or through later stages).
    pub fn pipes_into(&self, a: usize, b: usize) -> bool {
        let (Some(first), Some(second)) = (self.commands.get(a), self.commands.get(b)) else {
            return false;
        };
        first.pipelines.iter().any(|(id, stage)| {
            second
                .pipelines
                .iter()
                .any(|(other, later)| other == id && later > stage)
        })
    }
}

/// What ends a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Term {
    /// The end of the string.
    End,
    /// `)` (subshell, `$( )`, `<( )`).
    Paren,
    /// The `}` keyword.
    Brace,
    /// `;;`, `;&`, `;;&` or `esac` (a case item).
    Case,
}

struct Heredoc {
    command: usize,
    redirection: usize,
    delimiter: String,
    strip_tabs: bool,
    expand: bool,
}

struct Word {
    cooked: String,
    start: usize,
    quoted: bool,
}

struct Parser<'s, 'o> {
    src: &'s str,
    bytes: &'s [u8],
    pos: usize,
    out: &'o mut Script,
    depth: usize,
    parent: Option<usize>,
    function: Option<usize>,
    pipelines: Vec<(usize, usize)>,
    heredocs: Vec<Heredoc>,
}

fn is_delimiter(byte: u8) -> bool {
    matches!(
        byte,
        b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')'
    )
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `NAME=…`, `NAME+=…`, `NAME[i]=…` at the start of a raw word.
fn is_assignment(raw: &str) -> bool {
    let Some(eq) = raw.find('=') else {
        return false;
    };
    let name = raw[..eq].trim_end_matches('+');
    let name = match name.find('[') {
        Some(open) if name.ends_with(']') => &name[..open],
        _ => name,
    };
    is_name(name)
}

impl<'s, 'o> Parser<'s, 'o> {
    fn new(
        src: &'s str,
        out: &'o mut Script,
        depth: usize,
        parent: Option<usize>,
        function: Option<usize>,
    ) -> Parser<'s, 'o> {
        Parser {
            src,
            bytes: src.as_bytes(),
            pos: 0,
            out,
            depth,
            parent,
            function,
            pipelines: Vec::new(),
            heredocs: Vec::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn starts(&self, text: &str) -> bool {
        self.bytes[self.pos..].starts_with(text.as_bytes())
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            message: message.into(),
            offset: self.pos,
        })
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        Ok(())
    }

    /// The next character, whole (the string is UTF-8; positions stay on char boundaries).
    fn next_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    /// Pushes a run of bytes up to the next one `stop` accepts.
    fn run(&mut self, cooked: &mut String, stop: impl Fn(u8) -> bool) {
        let start = self.pos;
        while let Some(byte) = self.peek() {
            if stop(byte) {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            // Always make progress: one whole character.
            if let Some(c) = self.next_char() {
                cooked.push(c);
                self.pos += c.len_utf8();
            }
        } else {
            cooked.push_str(&self.src[start..self.pos]);
        }
    }

    /// A backslash and the whole character after it.
    fn skip_escaped(&mut self) {
        self.pos += 1;
        if let Some(c) = self.next_char() {
            self.pos += c.len_utf8();
        }
    }

    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'\\') if self.at(1) == Some(b'\n') => self.pos += 2,
                _ => return,
            }
        }
    }

    /// Blanks and a comment (up to, not including, the newline).
    fn skip_space(&mut self) {
        self.skip_blanks();
        if self.peek() == Some(b'#') {
            while let Some(byte) = self.peek() {
                if byte == b'\n' {
                    break;
                }
                self.pos += 1;
            }
        }
    }

    fn skip_space_and_newlines(&mut self) -> Result<(), ParseError> {
        loop {
            self.skip_space();
            if self.peek() == Some(b'\n') {
                self.newline()?;
            } else {
                return Ok(());
            }
        }
    }

    /// The unquoted keyword-like word at the cursor, when it is followed by a delimiter.
    fn keyword(&self) -> Option<&'s str> {
        let rest = &self.bytes[self.pos..];
        let len = rest
            .iter()
            .position(|&b| is_delimiter(b) || matches!(b, b'\'' | b'"' | b'\\' | b'$' | b'`'))
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        let word = &self.src[self.pos..self.pos + len];
        let next = rest.get(len).copied();
        if matches!(next, Some(b'\'' | b'"' | b'\\' | b'$' | b'`')) {
            return None;
        }
        const KEYWORDS: [&str; 20] = [
            "if", "then", "elif", "else", "fi", "while", "until", "do", "done", "for", "select", "case", "esac",
            "function", "{", "}", "!", "time", "[[", "]]",
        ];
        KEYWORDS.contains(&word).then_some(word)
    }

    fn consume(&mut self, keyword: &str) {
        self.pos += keyword.len();
    }

    fn newline(&mut self) -> Result<(), ParseError> {
        self.pos += 1;
        for heredoc in std::mem::take(&mut self.heredocs) {
            let mut body = String::new();
            while self.pos < self.bytes.len() {
                let end = self.src[self.pos..]
                    .find('\n')
                    .map_or(self.bytes.len(), |i| self.pos + i);
                let line = &self.src[self.pos..end];
                self.pos = (end + 1).min(self.bytes.len());
                let line = if heredoc.strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                if line == heredoc.delimiter {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            if heredoc.expand {
                let mut sub = Parser::new(&body, self.out, self.depth, Some(heredoc.command), self.function);
                sub.enter()?;
                let mut ignored = String::new();
                sub.double_quoted_body(&mut ignored, None)?;
            }
            if let Some(redirection) = self
                .out
                .commands
                .get_mut(heredoc.command)
                .and_then(|command| command.redirections.get_mut(heredoc.redirection))
            {
                redirection.body = Some(body);
            }
        }
        Ok(())
    }

    fn program(&mut self) -> Result<(), ParseError> {
        self.list(Term::End)?;
        if self.pos < self.bytes.len() {
            return self.error(format!("unexpected {:?}", self.next_char().unwrap_or(' ')));
        }
        Ok(())
    }

    fn at_list_end(&self, term: Term) -> bool {
        match term {
            Term::End => self.peek().is_none(),
            Term::Paren => self.peek() == Some(b')'),
            Term::Brace => self.keyword() == Some("}"),
            Term::Case => self.starts(";;") || self.starts(";&") || self.keyword() == Some("esac"),
        }
    }

    fn list(&mut self, term: Term) -> Result<(), ParseError> {
        loop {
            self.skip_space_and_newlines()?;
            if self.at_list_end(term) {
                return Ok(());
            }
            if self.peek().is_none() {
                return self.error(match term {
                    Term::Paren => "unexpected end: missing \")\"",
                    Term::Brace => "unexpected end: missing \"}\"",
                    _ => "unexpected end: missing \"esac\"",
                });
            }
            let first = self.out.commands.len();
            self.and_or()?;
            self.skip_space();
            match self.peek() {
                Some(b';') if matches!(self.at(1), Some(b';' | b'&')) => {
                    if term == Term::Case {
                        return Ok(());
                    }
                    return self.error("\";;\" outside a case");
                }
                Some(b';') => {
                    self.pos += 1;
                    self.out.operators.push(Operator::Semicolon);
                }
                Some(b'&') => {
                    self.pos += 1;
                    self.out.operators.push(Operator::Background);
                    for command in &mut self.out.commands[first..] {
                        command.background = true;
                    }
                }
                Some(b'\n') => {
                    self.newline()?;
                    self.out.operators.push(Operator::Newline);
                }
                None => {}
                Some(_) if self.at_list_end(term) => return Ok(()),
                Some(_) => {
                    return self.error(format!("unexpected {:?}", self.next_char().unwrap_or(' ')));
                }
            }
        }
    }

    fn and_or(&mut self) -> Result<(), ParseError> {
        self.pipeline()?;
        loop {
            self.skip_space();
            let operator = if self.starts("&&") {
                Operator::And
            } else if self.starts("||") {
                Operator::Or
            } else {
                return Ok(());
            };
            self.pos += 2;
            self.out.operators.push(operator);
            self.skip_space_and_newlines()?;
            self.pipeline()?;
        }
    }

    fn pipeline(&mut self) -> Result<(), ParseError> {
        let id = self.out.commands.len();
        let mut stage = 0;
        loop {
            self.pipelines.push((id, stage));
            let result = self.command();
            self.pipelines.pop();
            result?;
            self.skip_space();
            if self.peek() == Some(b'|') && self.at(1) != Some(b'|') {
                if self.at(1) == Some(b'&') {
                    self.pos += 2;
                    self.out.operators.push(Operator::PipeAll);
                } else {
                    self.pos += 1;
                    self.out.operators.push(Operator::Pipe);
                }
                self.skip_space_and_newlines()?;
                stage += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn command(&mut self) -> Result<(), ParseError> {
        // Keywords that only introduce the next command (a loop, not recursion: `! ! ! … x` may
        // be long).
        loop {
            self.skip_space();
            match self.keyword() {
                Some(word @ ("!" | "time" | "if" | "then" | "elif" | "else" | "do" | "while" | "until")) => {
                    self.consume(word);
                    if word == "time" {
                        self.skip_blanks();
                        if self.starts("-p") && self.at(2).is_none_or(is_delimiter) {
                            self.pos += 2;
                        }
                    }
                    self.skip_space_and_newlines()?;
                    if self.peek().is_none_or(|b| matches!(b, b';' | b'&' | b'|' | b')')) {
                        return Ok(());
                    }
                }
                _ => break,
            }
        }
        match self.peek() {
            None => return self.error("unexpected end: expected a command"),
            Some(b'(') if self.at(1) == Some(b'(') => {
                let start = self.pos;
                if self.arithmetic()? {
                    return self.trailing_redirections();
                }
                self.pos = start;
                return self.subshell();
            }
            Some(b'(') => return self.subshell(),
            Some(byte @ (b')' | b';' | b'&' | b'|')) => {
                return self.error(format!("expected a command before {:?}", byte as char));
            }
            _ => {}
        }
        match self.keyword() {
            Some("{") => {
                self.enter()?;
                self.consume("{");
                self.list(Term::Brace)?;
                self.consume("}");
                self.depth -= 1;
                self.trailing_redirections()
            }
            Some(word @ "}") => self.error(format!("unexpected {word:?}")),
            Some(word @ ("fi" | "done" | "esac")) => {
                self.consume(word);
                self.trailing_redirections()
            }
            Some(word @ ("for" | "select")) => {
                self.consume(word);
                self.skip_blanks();
                if self.starts("((") {
                    if !self.arithmetic()? {
                        return self.error("expected \"((…))\" after for");
                    }
                    return Ok(());
                }
                self.simple_command(Some(word))
            }
            Some("case") => self.case_command(),
            Some("function") => {
                self.consume("function");
                self.skip_blanks();
                let name = self.word()?.cooked;
                self.skip_blanks();
                if self.peek() == Some(b'(') {
                    self.pos += 1;
                    self.skip_blanks();
                    if self.peek() != Some(b')') {
                        return self.error("expected \")\" after \"function NAME (\"");
                    }
                    self.pos += 1;
                }
                self.function_body(name)
            }
            Some("[[") => self.condition(),
            _ => self.simple_command(None),
        }
    }

    fn subshell(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        self.pos += 1;
        self.list(Term::Paren)?;
        self.pos += 1;
        self.depth -= 1;
        self.trailing_redirections()
    }

    fn function_body(&mut self, name: String) -> Result<(), ParseError> {
        self.skip_space_and_newlines()?;
        let start = self.out.commands.len();
        self.out.functions.push(Function {
            name,
            body: start..start,
        });
        let index = self.out.functions.len() - 1;
        self.enter()?;
        let saved = self.function.replace(index);
        let result = self.command();
        self.function = saved;
        result?;
        self.depth -= 1;
        self.out.functions[index].body.end = self.out.commands.len();
        Ok(())
    }

    /// Reserves a command slot that words parsed next belong to.
    fn reserve(&mut self) -> usize {
        self.out.commands.push(Command {
            parent: self.parent,
            pipelines: self.pipelines.clone(),
            function: self.function,
            ..Command::default()
        });
        self.out.commands.len() - 1
    }

    /// Drops a reserved command that turned out empty, when nothing was added after it.
    fn finish(&mut self, index: usize, start: usize) {
        let end = self.pos;
        let text = self.src[start..end].trim().to_owned();
        let is_last = self.out.commands.len() == index + 1;
        let command = &mut self.out.commands[index];
        command.text = text;
        if command.argv.is_empty() && command.assignments.is_empty() && command.redirections.is_empty() && is_last {
            self.out.commands.pop();
        }
    }

    fn redirection_ahead(&self) -> bool {
        let digits = self.bytes[self.pos..].iter().take_while(|b| b.is_ascii_digit()).count();
        match self.at(digits) {
            Some(b'<' | b'>') => !(digits == 0 && self.at(1) == Some(b'(')),
            Some(b'&') => digits == 0 && self.at(1) == Some(b'>'),
            _ => false,
        }
    }

    fn trailing_redirections(&mut self) -> Result<(), ParseError> {
        self.skip_blanks();
        if !self.redirection_ahead() {
            return Ok(());
        }
        let index = self.reserve();
        let start = self.pos;
        let saved = self.parent.replace(index);
        let result = (|| {
            while self.redirection_ahead() {
                self.redirection(index)?;
                self.skip_blanks();
            }
            Ok(())
        })();
        self.parent = saved;
        result?;
        self.finish(index, start);
        Ok(())
    }

    fn simple_command(&mut self, prefix: Option<&str>) -> Result<(), ParseError> {
        let index = self.reserve();
        if let Some(prefix) = prefix {
            self.out.commands[index].argv.push(prefix.to_owned());
        }
        let start = self.pos;
        let saved = self.parent.replace(index);
        let result = self.simple_command_words(index, prefix.is_some());
        self.parent = saved;
        match result? {
            Some(name) => {
                // A function definition, not a command.
                self.out.commands.truncate(index);
                self.function_body(name)
            }
            None => {
                self.finish(index, start);
                Ok(())
            }
        }
    }

    /// The words of a simple command; `Some(name)` when it turns out to define a function.
    fn simple_command_words(&mut self, index: usize, has_prefix: bool) -> Result<Option<String>, ParseError> {
        let mut first_raw: Option<(usize, usize, bool)> = None;
        loop {
            self.skip_space();
            match self.peek() {
                None | Some(b'\n' | b';' | b'|' | b')') => return Ok(None),
                Some(b'&') if self.at(1) != Some(b'>') => return Ok(None),
                Some(b'(') => {
                    let command = &self.out.commands[index];
                    if let Some((start, end, false)) = first_raw
                        && !has_prefix
                        && command.argv.len() == 1
                        && command.assignments.is_empty()
                        && command.redirections.is_empty()
                        && self.out.commands.len() == index + 1
                    {
                        self.pos += 1;
                        self.skip_blanks();
                        if self.peek() != Some(b')') {
                            return self.error("expected \")\" in a function definition");
                        }
                        self.pos += 1;
                        return Ok(Some(self.src[start..end].to_owned()));
                    }
                    return self.error("unexpected \"(\"");
                }
                _ if self.redirection_ahead() => self.redirection(index)?,
                _ => {
                    let word = self.word()?;
                    let raw = &self.src[word.start..self.pos];
                    let command = &mut self.out.commands[index];
                    if command.argv.is_empty() && is_assignment(raw) {
                        let mut cooked = word.cooked;
                        if raw.ends_with('=') && self.peek() == Some(b'(') {
                            cooked.push_str(&self.array_value()?);
                        }
                        self.out.commands[index].assignments.push(cooked);
                    } else {
                        if command.argv.is_empty() {
                            first_raw = Some((word.start, self.pos, word.quoted));
                        }
                        command.argv.push(word.cooked);
                    }
                }
            }
        }
    }

    /// `NAME=(a b c)`: the parenthesized list, as written.
    fn array_value(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        loop {
            self.skip_space_and_newlines()?;
            match self.peek() {
                None => return self.error("unexpected end: missing \")\" of an array"),
                Some(b')') => {
                    self.pos += 1;
                    return Ok(self.src[start..self.pos].to_owned());
                }
                Some(_) => {
                    self.word()?;
                }
            }
        }
    }

    fn redirection(&mut self, index: usize) -> Result<(), ParseError> {
        let digits_start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let fd = self.src[digits_start..self.pos].parse::<u32>().ok();
        const OPERATORS: [(&str, RedirectOp); 12] = [
            ("&>>", RedirectOp::AppendErr),
            ("&>", RedirectOp::OutErr),
            ("<<<", RedirectOp::HereString),
            ("<<-", RedirectOp::HereDocStrip),
            ("<<", RedirectOp::HereDoc),
            ("<>", RedirectOp::InOut),
            ("<&", RedirectOp::DupIn),
            ("<", RedirectOp::In),
            (">>", RedirectOp::Append),
            (">|", RedirectOp::Clobber),
            (">&", RedirectOp::DupOut),
            (">", RedirectOp::Out),
        ];
        let Some(&(text, op)) = OPERATORS.iter().find(|(text, _)| self.starts(text)) else {
            return self.error("expected a redirection");
        };
        self.pos += text.len();
        self.skip_blanks();
        if self
            .peek()
            .is_none_or(|b| is_delimiter(b) && !(matches!(b, b'<' | b'>') && self.at(1) == Some(b'(')))
        {
            return self.error(format!("{text:?} without a target"));
        }
        let word = self.word()?;
        let raw_quoted = word.quoted;
        let body = (op == RedirectOp::HereString).then(|| word.cooked.clone());
        let command = &mut self.out.commands[index];
        command.redirections.push(Redirection {
            fd,
            op,
            target: word.cooked.clone(),
            body,
        });
        if matches!(op, RedirectOp::HereDoc | RedirectOp::HereDocStrip) {
            self.heredocs.push(Heredoc {
                command: index,
                redirection: command.redirections.len() - 1,
                delimiter: word.cooked,
                strip_tabs: op == RedirectOp::HereDocStrip,
                expand: !raw_quoted,
            });
        }
        Ok(())
    }

    fn case_command(&mut self) -> Result<(), ParseError> {
        let index = self.reserve();
        let start = self.pos;
        self.consume("case");
        self.out.commands[index].argv.push("case".into());
        let saved = self.parent.replace(index);
        let result = self.case_body(index);
        self.parent = saved;
        result?;
        let text_end = self.pos;
        self.out.commands[index].text = self.src[start..text_end].trim().to_owned();
        self.trailing_redirections()
    }

    fn case_body(&mut self, index: usize) -> Result<(), ParseError> {
        self.skip_blanks();
        if self.peek().is_none_or(is_delimiter) {
            return self.error("expected a word after case");
        }
        let subject = self.word()?.cooked;
        self.out.commands[index].argv.push(subject);
        self.skip_space_and_newlines()?;
        if self.keyword().is_some() || !self.starts("in") || self.at(2).is_some_and(|b| !is_delimiter(b)) {
            return self.error("expected \"in\" after case WORD");
        }
        self.pos += 2;
        let saved = self.parent.take();
        let result = (|| loop {
            self.skip_space_and_newlines()?;
            if self.keyword() == Some("esac") {
                self.consume("esac");
                return Ok(());
            }
            if self.peek() == Some(b'(') {
                self.pos += 1;
            }
            loop {
                self.skip_blanks();
                match self.peek() {
                    None => return self.error("unexpected end: missing \"esac\""),
                    Some(b')') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'|') => self.pos += 1,
                    Some(b'\n' | b';' | b'&' | b'(' | b'<' | b'>') => return self.error("bad case pattern"),
                    Some(_) => {
                        self.parent = Some(index);
                        let result = self.word();
                        self.parent = None;
                        result?;
                    }
                }
            }
            self.enter()?;
            self.list(Term::Case)?;
            self.depth -= 1;
            for end in [";;&", ";;", ";&"] {
                if self.starts(end) {
                    self.pos += end.len();
                    break;
                }
            }
        })();
        self.parent = saved;
        result
    }

    /// `[[ … ]]`: words up to `]]`, with `<`, `>`, `&&`, `||` and parentheses as plain words.
    fn condition(&mut self) -> Result<(), ParseError> {
        let index = self.reserve();
        let start = self.pos;
        self.consume("[[");
        self.out.commands[index].argv.push("[[".into());
        let saved = self.parent.replace(index);
        let result = (|| loop {
            self.skip_space_and_newlines()?;
            if self.keyword() == Some("]]") {
                self.consume("]]");
                self.out.commands[index].argv.push("]]".into());
                return Ok(());
            }
            let operator = ["&&", "||", "<", ">", "(", ")", "!"]
                .into_iter()
                .find(|op| self.starts(op));
            match (self.peek(), operator) {
                (None, _) => return self.error("unexpected end: missing \"]]\""),
                (_, Some(op)) => {
                    self.pos += op.len();
                    self.out.commands[index].argv.push(op.to_owned());
                }
                (Some(b';' | b'|' | b'&'), None) => return self.error("unexpected operator inside [[ ]]"),
                _ => {
                    let word = self.word()?;
                    self.out.commands[index].argv.push(word.cooked);
                }
            }
        })();
        self.parent = saved;
        result?;
        self.finish(index, start);
        self.trailing_redirections()
    }

    /// `((…))` or `$((…))` from its first `(`: scans to the closing `))`, parsing substitutions
    /// inside. False (cursor unspecified) when the parentheses do not close as arithmetic.
    fn arithmetic(&mut self) -> Result<bool, ParseError> {
        self.pos += 2;
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return self.error("unexpected end: missing \"))\""),
                Some(b'(') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(b')') if depth > 0 => {
                    depth -= 1;
                    self.pos += 1;
                }
                Some(b')') => {
                    if self.at(1) == Some(b')') {
                        self.pos += 2;
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Some(b'$') => {
                    let mut ignored = String::new();
                    self.dollar(&mut ignored, true)?;
                }
                Some(b'`') => {
                    self.backquote()?;
                }
                Some(b'\\') => self.skip_escaped(),
                Some(_) => {
                    let mut ignored = String::new();
                    self.run(&mut ignored, |b| matches!(b, b'(' | b')' | b'$' | b'`' | b'\\'));
                }
            }
        }
    }

    fn word(&mut self) -> Result<Word, ParseError> {
        let start = self.pos;
        let mut cooked = String::new();
        let mut quoted = false;
        loop {
            match self.peek() {
                None | Some(b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b')') => break,
                Some(b'<' | b'>') if self.at(1) == Some(b'(') => self.process_substitution(&mut cooked)?,
                Some(b'<' | b'>') => break,
                Some(b'(') => {
                    // Extended glob `@(…)`, `!(…)`, `+(…)`, `*(…)`, `?(…)`: kept as written.
                    if cooked.ends_with(['@', '!', '+', '*', '?']) {
                        self.balanced_literal(&mut cooked)?;
                    } else {
                        break;
                    }
                }
                Some(b'\\') => match self.at(1) {
                    Some(b'\n') => self.pos += 2,
                    Some(_) => {
                        self.pos += 1;
                        quoted = true;
                        if let Some(c) = self.next_char() {
                            cooked.push(c);
                            self.pos += c.len_utf8();
                        }
                    }
                    None => {
                        cooked.push('\\');
                        self.pos += 1;
                    }
                },
                Some(b'\'') => {
                    quoted = true;
                    self.pos += 1;
                    match self.src[self.pos..].find('\'') {
                        Some(end) => {
                            cooked.push_str(&self.src[self.pos..self.pos + end]);
                            self.pos += end + 1;
                        }
                        None => return self.error("unterminated single quote"),
                    }
                }
                Some(b'"') => {
                    quoted = true;
                    self.double_quoted(&mut cooked)?;
                }
                Some(b'$') => {
                    if matches!(self.at(1), Some(b'\'' | b'"')) {
                        quoted = true;
                    }
                    self.dollar(&mut cooked, false)?;
                }
                Some(b'`') => {
                    let raw = self.backquote()?;
                    cooked.push_str(raw);
                }
                Some(_) => self.run(&mut cooked, |b| {
                    is_delimiter(b) || matches!(b, b'\\' | b'\'' | b'"' | b'$' | b'`')
                }),
            }
        }
        if self.pos == start {
            // Every caller expects progress; a word cannot start here.
            return self.error(format!("unexpected {:?}", self.next_char().unwrap_or(' ')));
        }
        Ok(Word { cooked, start, quoted })
    }

    fn balanced_literal(&mut self, cooked: &mut String) -> Result<(), ParseError> {
        let start = self.pos;
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return self.error("unexpected end: missing \")\""),
                Some(b'(') => depth += 1,
                Some(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        break;
                    }
                }
                Some(b'\\') => self.pos += 1,
                _ => {}
            }
            self.pos = (self.pos + 1).min(self.bytes.len());
        }
        cooked.push_str(&self.src[start..self.pos]);
        Ok(())
    }

    fn process_substitution(&mut self, cooked: &mut String) -> Result<(), ParseError> {
        let start = self.pos;
        self.pos += 2;
        self.nested_list()?;
        cooked.push_str(&self.src[start..self.pos]);
        Ok(())
    }

    /// A list up to its `)` (cursor just after the opening parenthesis), in a fresh pipeline
    /// context; consumes the `)`.
    fn nested_list(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        let pipelines = std::mem::take(&mut self.pipelines);
        let result = self.list(Term::Paren);
        self.pipelines = pipelines;
        result?;
        self.pos += 1;
        self.depth -= 1;
        Ok(())
    }

    fn double_quoted(&mut self, cooked: &mut String) -> Result<(), ParseError> {
        self.pos += 1;
        self.double_quoted_body(cooked, Some(b'"'))
    }

    /// The inside of double quotes up to `end` (consumed), or to the end of the string (a heredoc
    /// body).
    fn double_quoted_body(&mut self, cooked: &mut String, end: Option<u8>) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                None if end.is_none() => return Ok(()),
                None => return self.error("unterminated double quote"),
                Some(byte) if Some(byte) == end => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => match self.at(1) {
                    Some(c @ (b'$' | b'`' | b'"' | b'\\')) => {
                        cooked.push(c as char);
                        self.pos += 2;
                    }
                    Some(b'\n') => self.pos += 2,
                    _ => {
                        cooked.push('\\');
                        self.pos += 1;
                    }
                },
                Some(b'$') => self.dollar(cooked, true)?,
                Some(b'`') => {
                    let raw = self.backquote()?;
                    cooked.push_str(raw);
                }
                Some(_) => self.run(cooked, |b| matches!(b, b'\\' | b'$' | b'`') || Some(b) == end),
            }
        }
    }

    /// `$…` at the cursor: substitutions are parsed (their commands recorded) and kept as written;
    /// `$'…'` is decoded.
    fn dollar(&mut self, cooked: &mut String, in_double_quotes: bool) -> Result<(), ParseError> {
        let start = self.pos;
        match self.at(1) {
            Some(b'(') if self.at(2) == Some(b'(') => {
                self.pos += 1;
                if !self.arithmetic()? {
                    self.pos = start + 2;
                    self.nested_list()?;
                }
            }
            Some(b'(') => {
                self.pos += 2;
                self.nested_list()?;
            }
            Some(b'{') => {
                self.pos += 2;
                self.parameter()?;
            }
            Some(b'\'') if !in_double_quotes => {
                self.pos += 2;
                self.ansi_c(cooked)?;
                return Ok(());
            }
            Some(b'"') if !in_double_quotes => {
                self.pos += 1;
                self.double_quoted(cooked)?;
                return Ok(());
            }
            _ => self.pos += 1,
        }
        cooked.push_str(&self.src[start..self.pos]);
        Ok(())
    }

    /// `${…}` after the `${`.
    fn parameter(&mut self) -> Result<(), ParseError> {
        self.enter()?;
        self.parameter_body()?;
        self.depth -= 1;
        Ok(())
    }

    fn parameter_body(&mut self) -> Result<(), ParseError> {
        let mut depth = 1usize;
        let mut ignored = String::new();
        loop {
            match self.peek() {
                None => return self.error("unterminated \"${\""),
                Some(b'}') => {
                    self.pos += 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Some(b'{') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(b'\\') => self.skip_escaped(),
                Some(b'\'') => {
                    self.pos += 1;
                    match self.src[self.pos..].find('\'') {
                        Some(end) => self.pos += end + 1,
                        None => return self.error("unterminated single quote"),
                    }
                }
                Some(b'"') => self.double_quoted(&mut ignored)?,
                Some(b'$') => self.dollar(&mut ignored, true)?,
                Some(b'`') => {
                    self.backquote()?;
                }
                Some(_) => self.run(&mut ignored, |b| {
                    matches!(b, b'}' | b'{' | b'\\' | b'\'' | b'"' | b'$' | b'`')
                }),
            }
        }
    }

    /// `$'…'` after the opening quote: ANSI-C escapes decoded.
    fn ansi_c(&mut self, cooked: &mut String) -> Result<(), ParseError> {
        loop {
            let Some(c) = self.next_char() else {
                return self.error("unterminated $'");
            };
            self.pos += c.len_utf8();
            match c {
                '\'' => return Ok(()),
                '\\' => {
                    let Some(e) = self.next_char() else {
                        return self.error("unterminated $'");
                    };
                    self.pos += e.len_utf8();
                    let simple = match e {
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'e' | 'E' => Some('\x1b'),
                        'f' => Some('\x0c'),
                        'n' => Some('\n'),
                        'r' => Some('\r'),
                        't' => Some('\t'),
                        'v' => Some('\x0b'),
                        '\\' | '\'' | '"' | '?' => Some(e),
                        _ => None,
                    };
                    if let Some(simple) = simple {
                        cooked.push(simple);
                        continue;
                    }
                    let (radix, max) = match e {
                        '0'..='7' => {
                            self.pos -= 1;
                            (8, 3)
                        }
                        'x' => (16, 2),
                        'u' => (16, 4),
                        'U' => (16, 8),
                        'c' => {
                            if let Some(x) = self.next_char() {
                                self.pos += x.len_utf8();
                                cooked.push(char::from(x as u8 & 0x1f));
                            }
                            continue;
                        }
                        _ => {
                            cooked.push('\\');
                            cooked.push(e);
                            continue;
                        }
                    };
                    let digits = self.bytes[self.pos..]
                        .iter()
                        .take(max)
                        .take_while(|b| (**b as char).is_digit(radix))
                        .count();
                    if digits == 0 {
                        cooked.push('\\');
                        cooked.push(e);
                        continue;
                    }
                    let value = u32::from_str_radix(&self.src[self.pos..self.pos + digits], radix).unwrap_or(0);
                    self.pos += digits;
                    cooked.push(char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                other => cooked.push(other),
            }
        }
    }

    /// `` `…` ``: the inside is unescaped and parsed as its own string. Returns the raw text.
    fn backquote(&mut self) -> Result<&'s str, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut inner = String::new();
        loop {
            match self.peek() {
                None => return self.error("unterminated backquote"),
                Some(b'`') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') if matches!(self.at(1), Some(b'`' | b'\\' | b'$')) => {
                    inner.push(self.at(1).map_or('\\', char::from));
                    self.pos += 2;
                }
                Some(_) => self.run(&mut inner, |b| matches!(b, b'`' | b'\\')),
            }
        }
        let mut sub = Parser::new(&inner, self.out, self.depth, self.parent, self.function);
        sub.enter()?;
        sub.program().map_err(|e| ParseError {
            message: format!("inside backquotes: {}", e.message),
            offset: start,
        })?;
        Ok(&self.src[start..self.pos])
    }
}

#[cfg(test)]
mod tests;
