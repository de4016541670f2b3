//! `aibus`, the command-line client: parses the command line, runs one command against the daemon's
//! public socket (or, with `--url`, a gateway over ATP), and turns the outcome into an exit status
//! (SPEC §13: 0 ok, 1 failure, 2 usage, 3 daemon not running; `aibus run` exits like its command).

mod actions;
mod agents;
mod assignments;
mod daemon;
mod events;
mod knowledge;
mod mcp;
mod memory;
mod output;
mod query;
mod requests;
mod rules;
mod run;
mod summary;
mod users;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aiventbus_client::{Client, Error as ClientError};
use aiventbus_proto::ErrorCode;
use aiventbus_rpc::paths::Paths;
use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The aiventbus command-line client.
#[derive(Debug, Parser)]
#[command(name = "aibus", version, about = "Command-line client for the aiventbus daemon")]
struct Cli {
    /// Print JSON instead of text: one document per command, one event per line for `tail`.
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's public socket [default: api.sock in the runtime dir].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Talk to a remote gateway over ATP instead of the local socket (`http://HOST:PORT`).
    #[arg(long, global = true, env = "AIVENTBUS_URL", value_name = "URL")]
    url: Option<String>,
    /// The API key for --url (from `aibus keys create`).
    #[arg(
        long,
        global = true,
        env = "AIVENTBUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon (aiventbus-init) in the foreground, or in the background with --detach.
    Up {
        /// Start in the background and return once the daemon answers.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Stop the daemon: SIGTERM to init, then wait until it is gone.
    Down,
    /// Show the supervised services and bus figures.
    Status,
    /// Show (and follow) a service's log file.
    Logs(daemon::LogsArgs),
    /// Publish one event.
    Publish(events::PublishArgs),
    /// Follow events as they are published, reconnecting when the daemon restarts.
    Tail(events::TailArgs),
    /// List stored events.
    Events(events::ListArgs),
    /// Show the events of one trace as a tree.
    Trace {
        /// The trace id (`tr_…`).
        trace_id: String,
    },
    /// Durable key/value facts: set, get, delete, list.
    #[command(subcommand)]
    Knowledge(knowledge::KnowledgeCommand),
    /// Memories with full-text search: add, get, list, search, update, delete.
    #[command(subcommand)]
    Memory(memory::MemoryCommand),
    /// Agents: create, list, get, update, delete, enable, disable, memory.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Routing rules that send events to agents: create, list, get, update, delete.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Work handed to agents: list, cancel pending.
    #[command(subcommand)]
    Assignments(assignments::AssignmentsCommand),
    /// Ask the agents a question and stream the answer as it is written.
    Query(query::QueryArgs),
    /// Run a command through policy and exec; exits with its code (125 when aibus fails).
    Run(run::RunArgs),
    /// Actions waiting for approval.
    Pending,
    /// Approve a waiting action so it runs.
    Approve {
        /// The action id (`act_…`).
        id: String,
    },
    /// Deny a waiting action.
    Deny {
        /// The action id (`act_…`).
        id: String,
        /// Why, for the proposing agent.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Action history, or one action with `actions show ID`.
    Actions(actions::ActionsArgs),
    /// Ask policy what it would decide: `policy explain -- CMD ARGS…`.
    #[command(subcommand)]
    Policy(actions::PolicyCommand),
    /// Human-input requests from agent sessions: list, show, answer, dismiss.
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// Agent sessions registered with the human-input hub.
    Sessions(requests::SessionsArgs),
    /// Users of the gateway: list, set-role, delete, set-password.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// API keys: create (shown once), list, revoke.
    #[command(subcommand)]
    Keys(users::KeysCommand),
    /// Print a one-time login link to the web dashboard.
    Dashboard(users::DashboardArgs),
    /// Serve MCP (Model Context Protocol) on stdio for AI coding agents.
    Mcp,
    /// Show the client's and the daemon's versions.
    Version,
}

/// Where the daemon is: its local socket, or a gateway over ATP.
#[derive(Debug, Clone)]
pub enum Target {
    /// `api.sock`.
    Local(PathBuf),
    /// A gateway's HTTP address and an API key.
    Remote {
        /// `http(s)://HOST:PORT`.
        url: String,
        /// The API key.
        token: String,
    },
}

impl Target {
    /// Connects; a missing daemon surfaces as `ClientError::Unavailable` (exit 3).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        match self {
            Target::Local(socket) => Client::connect(socket).await,
            Target::Remote { url, token } => Client::connect_remote(url, token).await,
        }
    }
}

/// What every command needs: where the daemon is and how to print.
pub struct Context {
    /// Print JSON instead of text.
    pub json: bool,
    /// The public socket (the local daemon's, also in remote mode).
    pub socket: PathBuf,
    /// The daemon's directories (pid file, logs).
    pub paths: Paths,
    /// Where commands are sent.
    pub target: Target,
}

impl Context {
    /// Connects to the daemon; a missing daemon surfaces as `ClientError::Unavailable` (exit 3).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        self.target.connect().await
    }

    /// The remote gateway's URL, in remote mode.
    pub fn remote_url(&self) -> Option<&str> {
        match &self.target {
            Target::Local(_) => None,
            Target::Remote { url, .. } => Some(url),
        }
    }

    /// What to call the daemon in messages.
    pub fn daemon(&self) -> Daemon<'_> {
        match &self.target {
            Target::Local(socket) => Daemon::Local(socket),
            Target::Remote { url, .. } => Daemon::Remote(url),
        }
    }

    /// Refuses a command that only makes sense on this machine when talking to a remote gateway.
    pub fn local_only(&self, command: &str) -> Result<(), UsageError> {
        match self.remote_url() {
            Some(url) => Err(UsageError(format!(
                "'aibus {command}' manages the daemon on this machine; it cannot run against --url {url}"
            ))),
            None => Ok(()),
        }
    }
}

/// The daemon as error messages name it.
#[derive(Debug, Clone, Copy)]
pub enum Daemon<'a> {
    /// Through this socket.
    Local(&'a Path),
    /// Through the gateway at this URL.
    Remote(&'a str),
}

/// Picks the target from the flags: `--url` needs `--token`.
fn target(socket: PathBuf, url: Option<String>, token: Option<String>) -> Result<Target, UsageError> {
    let Some(url) = url.filter(|url| !url.trim().is_empty()) else {
        return Ok(Target::Local(socket));
    };
    aiventbus_client::atp::websocket_url(&url).map_err(|error| UsageError(format!("--url: {error}")))?;
    match token.filter(|token| !token.trim().is_empty()) {
        Some(token) => Ok(Target::Remote {
            url,
            token: token.trim().to_owned(),
        }),
        None => Err(UsageError(
            "--url needs --token (or AIVENTBUS_TOKEN): an API key from 'aibus keys create USER'".into(),
        )),
    }
}

/// A mistake in how aibus was invoked that clap cannot see (a bad payload, a bad pattern): exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The daemon is not running, found without asking its socket (no pid file, a stale pid): exit 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRunning(pub String);

impl fmt::Display for NotRunning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotRunning {}

/// Exit statuses of SPEC §13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    NotRunning = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let paths = Paths::from_env();
    let socket = cli.socket.clone().unwrap_or_else(|| paths.api_socket());
    let target = match target(socket.clone(), cli.url, cli.token) {
        Ok(target) => target,
        Err(error) => {
            output::stderr_line(&render_error(&error.into(), &Daemon::Local(&socket)));
            return Exit::Usage.into();
        }
    };
    let context = Context {
        json: cli.json,
        socket,
        paths,
        target,
    };
    if let Command::Run(args) = cli.command {
        return ExitCode::from(run::main(&context, args));
    }
    match run(cli.command, &context) {
        Ok(()) => Exit::Ok.into(),
        // The reader of our output went away (`aibus tail | head`): nothing left to tell anyone.
        Err(error) if is_broken_pipe(&error) => Exit::Ok.into(),
        Err(error) => {
            output::stderr_line(&render_error(&error, &context.daemon()));
            exit_status(&error).into()
        }
    }
}

fn run(command: Command, context: &Context) -> anyhow::Result<()> {
    match &command {
        Command::Up { .. } => context.local_only("up")?,
        Command::Down => context.local_only("down")?,
        Command::Logs(_) => context.local_only("logs")?,
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match command {
            Command::Up { detach } => daemon::up(context, detach).await,
            Command::Down => daemon::down(context).await,
            Command::Status => daemon::status(context).await,
            Command::Logs(args) => daemon::logs(context, &args).await,
            Command::Publish(args) => events::publish(context, args).await,
            Command::Tail(args) => events::tail(context, args).await,
            Command::Events(args) => events::list(context, args).await,
            Command::Trace { trace_id } => events::trace(context, &trace_id).await,
            Command::Knowledge(command) => knowledge::run(context, command).await,
            Command::Memory(command) => memory::run(context, command).await,
            Command::Agents(command) => agents::run(context, command).await,
            Command::Rules(command) => rules::run(context, command).await,
            Command::Assignments(command) => assignments::run(context, command).await,
            Command::Query(args) => query::run(context, args).await,
            // Handled before the runtime starts: it has exit statuses of its own.
            Command::Run(_) => Ok(()),
            Command::Pending => actions::pending(context).await,
            Command::Approve { id } => actions::approve(context, &id).await,
            Command::Deny { id, reason } => actions::deny(context, &id, reason.as_deref()).await,
            Command::Actions(args) => actions::actions(context, args).await,
            Command::Policy(command) => actions::policy(context, command).await,
            Command::Requests(command) => requests::run(context, command).await,
            Command::Sessions(args) => requests::sessions(context, args).await,
            Command::Users(command) => users::users(context, command).await,
            Command::Keys(command) => users::keys(context, command).await,
            Command::Dashboard(args) => users::dashboard(context, args).await,
            Command::Mcp => mcp::run(context).await,
            Command::Version => daemon::version(context).await,
        }
    })
}

/// The exit status for a failed command.
fn exit_status(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return Exit::Usage;
        }
        if cause.downcast_ref::<NotRunning>().is_some() {
            return Exit::NotRunning;
        }
        if let Some(client_error) = cause.downcast_ref::<ClientError>() {
            return client_exit_status(client_error);
        }
    }
    Exit::Failure
}

/// The exit status for a failed call: only "nobody answers" means the daemon is not running; an
/// error answer (even -32005, a dependency down) means it runs and said no.
fn client_exit_status(error: &ClientError) -> Exit {
    match error {
        ClientError::Unavailable(_) => Exit::NotRunning,
        ClientError::Rpc(_) | ClientError::Disconnected | ClientError::Timeout | ClientError::Protocol(_) => {
            Exit::Failure
        }
    }
}

/// The message printed to stderr for a failed command.
pub fn render_error(error: &anyhow::Error, daemon: &Daemon<'_>) -> String {
    let mut contexts = Vec::new();
    for cause in error.chain() {
        if let Some(usage) = cause.downcast_ref::<UsageError>() {
            return format!("error: {usage}\n\nFor more information, try '--help'.");
        }
        if let Some(not_running) = cause.downcast_ref::<NotRunning>() {
            return not_running.to_string();
        }
        if let Some(client_error) = cause.downcast_ref::<ClientError>() {
            return match client_error {
                ClientError::Unavailable(detail) => match daemon {
                    Daemon::Local(socket) => format!(
                        "aiventbus is not running (no answer on {}); start it with 'aibus up'",
                        socket.display()
                    ),
                    Daemon::Remote(url) => format!("no answer from the aiventbus gateway at {url} ({detail})"),
                },
                ClientError::Rpc(answer) => {
                    contexts.push(format!(
                        "{} [{} ({})]",
                        answer.message,
                        code_name(answer.code),
                        answer.code
                    ));
                    let mut text = format!("error: {}", contexts.join(": "));
                    if let Some(data) = &answer.data {
                        text.push_str(&format!("\n  data: {data}"));
                    }
                    text
                }
                ClientError::Disconnected => {
                    contexts.push("the connection to the daemon was lost before it answered; the request may or may not have taken effect".into());
                    format!("error: {}", contexts.join(": "))
                }
                ClientError::Timeout | ClientError::Protocol(_) => {
                    contexts.push(client_error.to_string());
                    format!("error: {}", contexts.join(": "))
                }
            };
        }
        contexts.push(cause.to_string());
    }
    format!("error: {}", contexts.join(": "))
}

/// A readable name for a JSON-RPC error code (SPEC §3).
fn code_name(code: i32) -> &'static str {
    match ErrorCode::from_code(code) {
        Some(ErrorCode::Parse) => "parse error",
        Some(ErrorCode::InvalidRequest) => "invalid request",
        Some(ErrorCode::MethodNotFound) => "no such method",
        Some(ErrorCode::InvalidParams) => "invalid params",
        Some(ErrorCode::Internal) => "internal error",
        Some(ErrorCode::Unauthorized) => "unauthorized",
        Some(ErrorCode::NotFound) => "not found",
        Some(ErrorCode::Conflict) => "conflict",
        Some(ErrorCode::Overloaded) => "overloaded",
        Some(ErrorCode::Unavailable) => "unavailable",
        Some(ErrorCode::TooLarge) => "too large",
        Some(ErrorCode::Expired) => "expired",
        None => "error",
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io_error| io_error.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiventbus_proto::ErrorObject;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_errors_map_to_exit_statuses() {
        let cases = [
            (
                ClientError::Unavailable("x: connection refused".into()),
                Exit::NotRunning,
            ),
            (
                ClientError::Rpc(ErrorObject::new(ErrorCode::NotFound, "no such event")),
                Exit::Failure,
            ),
            (
                ClientError::Rpc(ErrorObject::new(ErrorCode::Unavailable, "bus is down")),
                Exit::Failure,
            ),
            (ClientError::Disconnected, Exit::Failure),
            (ClientError::Timeout, Exit::Failure),
            (ClientError::Protocol("bad".into()), Exit::Failure),
        ];
        for (error, expected) in cases {
            assert_eq!(client_exit_status(&error), expected, "{error:?}");
            let wrapped = anyhow::Error::new(error).context("publishing to demo");
            assert_eq!(exit_status(&wrapped), expected);
        }
    }

    #[test]
    fn usage_and_not_running_map_through_context() {
        let usage = anyhow::Error::new(UsageError("bad payload".into())).context("reading the payload");
        assert_eq!(exit_status(&usage), Exit::Usage);
        let not_running = anyhow::Error::new(NotRunning("aiventbus is not running".into()));
        assert_eq!(exit_status(&not_running), Exit::NotRunning);
        assert_eq!(exit_status(&anyhow::anyhow!("anything else")), Exit::Failure);
    }

    #[test]
    fn error_answers_name_the_code() {
        let error = anyhow::Error::new(ClientError::Rpc(ErrorObject::new(
            ErrorCode::NotFound,
            "no event evt_1",
        )))
        .context("events.get");
        assert_eq!(
            render_error(&error, &Daemon::Local(Path::new("/run/x/api.sock"))),
            "error: events.get: no event evt_1 [not found (-32002)]"
        );
        let unreachable = anyhow::Error::new(ClientError::Unavailable("refused".into()));
        assert_eq!(
            render_error(&unreachable, &Daemon::Local(Path::new("/run/x/api.sock"))),
            "aiventbus is not running (no answer on /run/x/api.sock); start it with 'aibus up'"
        );
        let usage = anyhow::Error::new(UsageError("the payload must be a JSON object, not an array".into()));
        assert!(
            render_error(&usage, &Daemon::Local(Path::new("/s")))
                .starts_with("error: the payload must be a JSON object")
        );
    }

    #[test]
    fn url_needs_a_token_and_local_only_commands_say_so() {
        let socket = PathBuf::from("/run/x/api.sock");
        assert!(matches!(
            target(socket.clone(), None, Some("aib_x".into())),
            Ok(Target::Local(_))
        ));
        assert!(matches!(
            target(socket.clone(), Some(" ".into()), None),
            Ok(Target::Local(_))
        ));
        let missing = target(socket.clone(), Some("http://127.0.0.1:8420".into()), None).expect_err("no token");
        assert!(missing.0.contains("--token"), "{missing}");
        let bad = target(socket.clone(), Some("127.0.0.1:8420".into()), Some("k".into())).expect_err("no scheme");
        assert!(bad.0.starts_with("--url: "), "{bad}");
        let remote = target(
            socket.clone(),
            Some("http://127.0.0.1:8420".into()),
            Some(" aib_k\n".into()),
        )
        .expect("remote");
        assert!(matches!(&remote, Target::Remote { url, token } if url == "http://127.0.0.1:8420" && token == "aib_k"));
        let context = Context {
            json: false,
            socket: socket.clone(),
            paths: Paths::from_env(),
            target: remote,
        };
        let refused = context.local_only("up").expect_err("remote");
        assert!(
            refused.0.contains("'aibus up'") && refused.0.contains("--url http://127.0.0.1:8420"),
            "{refused}"
        );
        let error = anyhow::Error::new(ClientError::Unavailable("connection refused".into()));
        assert_eq!(
            render_error(&error, &context.daemon()),
            "no answer from the aiventbus gateway at http://127.0.0.1:8420 (connection refused)"
        );
        assert_eq!(exit_status(&anyhow::Error::new(refused)), Exit::Usage);
    }

    #[test]
    fn broken_pipes_are_recognised() {
        let error = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&error));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
