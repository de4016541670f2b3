//! Who may use the gateway from outside (SPEC §12): `aibus users …`, `aibus keys …` (an API key
//! is shown once, when it is created) and `aibus dashboard` (a one-time login link).

use std::io::{self, BufRead, IsTerminal};
use std::process::{Command, Stdio};

use aiventbus_proto::auth::{KeyCreateParams, KeyCreated, KeyInfo, Role, UserInfo};
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::output::{self, Table};
use crate::{Context, UsageError};

/// `aibus users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Every user with their role and live keys.
    List,
    /// Change a user's role.
    SetRole {
        /// The user name.
        user: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Delete a user, revoking their keys and sessions.
    Delete {
        /// The user name.
        user: String,
    },
    /// Set a user's password (for the ATP login): prompted without echo, or one line from stdin.
    SetPassword {
        /// The user name.
        user: String,
    },
}

/// `aibus keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key (and the user when missing); the key is printed once.
    Create(KeyCreateArgs),
    /// API keys (never the keys themselves).
    List {
        /// Only this user's.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Revoke an API key for good.
    Revoke {
        /// The key id (`key_…`).
        key_id: String,
    },
}

/// `aibus keys create`.
#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// The user the key belongs to.
    user: String,
    /// The user's role [default: the existing user's, else viewer].
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// Shown in listings.
    #[arg(long, value_name = "L")]
    label: Option<String>,
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Reads.
    Viewer,
    /// Also publishes, approves and answers.
    Operator,
    /// Everything, including agents, rules, users and keys.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// `aibus dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Open the link in the desktop's browser (xdg-open).
    #[arg(long)]
    open: bool,
}

/// Runs one users command.
pub async fn users(context: &Context, command: UsersCommand) -> anyhow::Result<()> {
    // The password is read before anything is sent.
    let password = match &command {
        UsersCommand::SetPassword { user } => Some(read_password(user)?),
        _ => None,
    };
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        UsersCommand::List => {
            let users = client.users().await.context("users.list")?;
            if context.json {
                return output::write_json(&mut out, &serde_json::json!({ "users": users }));
            }
            output::write_text(&mut out, &users_table(&users))
        }
        UsersCommand::SetRole { user, role } => {
            let info = client
                .set_role(&user, role.into())
                .await
                .with_context(|| format!("users.set_role {user}"))?;
            if context.json {
                return output::write_json(&mut out, &info);
            }
            output::write_line(
                &mut out,
                format!("{} is now {}", output::one_line(&info.name), info.role.as_str()),
            )
        }
        UsersCommand::Delete { user } => {
            let deleted = client
                .delete_user(&user)
                .await
                .with_context(|| format!("users.delete {user}"))?;
            if context.json {
                return output::write_json(&mut out, &serde_json::json!({ "deleted": deleted }));
            }
            let line = if deleted {
                format!("deleted {}", output::one_line(&user))
            } else {
                format!("no user {}", output::one_line(&user))
            };
            output::write_line(&mut out, line)
        }
        UsersCommand::SetPassword { user } => {
            let info = client
                .set_password(&user, &password.unwrap_or_default())
                .await
                .with_context(|| format!("users.set_password {user}"))?;
            if context.json {
                return output::write_json(&mut out, &info);
            }
            output::write_line(&mut out, format!("password set for {}", output::one_line(&info.name)))
        }
    }
}

/// A password: prompted twice without echo on a terminal, else the first line of stdin.
fn read_password(user: &str) -> anyhow::Result<String> {
    let password = if io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {user}: "))
            .context("cannot read the password from the terminal")?;
        let second = rpassword::prompt_password("Again: ").context("cannot read the password from the terminal")?;
        if first != second {
            return Err(UsageError("the passwords differ".into()).into());
        }
        first
    } else {
        first_line(&mut io::stdin().lock())?
    };
    if password.is_empty() {
        return Err(UsageError("the password is empty".into()).into());
    }
    Ok(password)
}

/// The first line of `reader`, without its line end.
fn first_line(reader: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Runs one keys command.
pub async fn keys(context: &Context, command: KeysCommand) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        KeysCommand::Create(args) => {
            let role = match args.role {
                Some(role) => role.into(),
                None => {
                    let users = client.users().await.context("users.list")?;
                    users
                        .iter()
                        .find(|user| user.name == args.user)
                        .map_or(Role::Viewer, |user| user.role)
                }
            };
            let params = KeyCreateParams {
                user: args.user.clone(),
                role,
                label: args.label,
            };
            let created = client
                .create_key(&params)
                .await
                .with_context(|| format!("keys.create {}", args.user))?;
            output::note(
                "the key is shown only this once and cannot be shown again; store it now (a lost key is revoked and replaced)",
            );
            if context.json {
                return output::write_json(&mut out, &created);
            }
            output::write_text(&mut out, &created_text(&created))
        }
        KeysCommand::List { user } => {
            let keys = client.keys(user.as_deref()).await.context("keys.list")?;
            if context.json {
                return output::write_json(&mut out, &serde_json::json!({ "keys": keys }));
            }
            output::write_text(&mut out, &keys_table(&keys))
        }
        KeysCommand::Revoke { key_id } => {
            let revoked = client
                .revoke_key(&key_id)
                .await
                .with_context(|| format!("keys.revoke {key_id}"))?;
            if context.json {
                return output::write_json(&mut out, &serde_json::json!({ "revoked": revoked }));
            }
            let line = if revoked {
                format!("revoked {}", output::one_line(&key_id))
            } else {
                format!("{} was already revoked", output::one_line(&key_id))
            };
            output::write_line(&mut out, line)
        }
    }
}

fn created_text(created: &KeyCreated) -> String {
    format!(
        "key:    {}\nkey_id: {}\nuser:   {} ({})\n\nUse it as: aibus --url http://HOST:PORT --token {} …\n      or: Authorization: Bearer {}\n",
        output::one_line(&created.key),
        output::one_line(&created.key_id),
        output::one_line(&created.identity),
        created.role.as_str(),
        output::one_line(&created.key),
        output::one_line(&created.key),
    )
}

fn users_table(users: &[UserInfo]) -> String {
    let mut table = Table::new(&["NAME", "ROLE", "PASSWORD", "KEYS", "CREATED"]);
    for user in users {
        table.row(vec![
            user.name.clone(),
            user.role.as_str().to_owned(),
            if user.has_password { "set" } else { "-" }.to_owned(),
            user.keys.to_string(),
            user.created_at.clone(),
        ]);
    }
    table.render()
}

fn keys_table(keys: &[KeyInfo]) -> String {
    let mut table = Table::new(&["KEY ID", "USER", "PREFIX", "LABEL", "CREATED", "LAST USED", "STATE"]);
    for key in keys {
        table.row(vec![
            key.key_id.clone(),
            key.user.clone(),
            format!("{}…", key.prefix),
            key.label.clone().unwrap_or_else(|| "-".to_owned()),
            key.created_at.clone(),
            key.last_used_at.clone().unwrap_or_else(|| "never".to_owned()),
            if key.revoked { "revoked" } else { "live" }.to_owned(),
        ]);
    }
    table.render()
}

/// `aibus dashboard`.
pub async fn dashboard(context: &Context, args: DashboardArgs) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let link = client.dashboard_link().await.context("dashboard.link")?;
    let mut out = io::stdout().lock();
    if context.json {
        output::write_json(&mut out, &link)?;
    } else {
        output::write_line(&mut out, output::one_line(&link.url))?;
        output::note(format!(
            "the link works once, until {}",
            output::one_line(&link.expires_at)
        ));
    }
    if args.open {
        Command::new("xdg-open")
            .arg(&link.url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run xdg-open; open the link by hand")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: KeysCommand,
    }

    #[test]
    fn a_created_key_is_printed_with_how_to_use_it() {
        let created = KeyCreated {
            identity: "alice".into(),
            key: "aib_secret".into(),
            key_id: "key_1".into(),
            role: Role::Operator,
        };
        let text = created_text(&created);
        assert!(
            text.starts_with("key:    aib_secret\nkey_id: key_1\nuser:   alice (operator)\n"),
            "{text}"
        );
        assert!(text.contains("--token aib_secret"), "{text}");
    }

    #[test]
    fn listings_never_show_a_key() {
        let keys = vec![KeyInfo {
            key_id: "key_1".into(),
            user: "alice".into(),
            label: Some("laptop".into()),
            prefix: "aib_AbCd".into(),
            created_at: "2026-01-02T03:04:05.000Z".into(),
            last_used_at: None,
            revoked: true,
        }];
        assert_eq!(
            keys_table(&keys),
            "KEY ID  USER   PREFIX     LABEL   CREATED                   LAST USED  STATE\n\
             key_1   alice  aib_AbCd…  laptop  2026-01-02T03:04:05.000Z  never      revoked\n"
        );
        let users = vec![UserInfo {
            name: "alice".into(),
            role: Role::Viewer,
            has_password: false,
            keys: 2,
            created_at: "2026-01-02T03:04:05.000Z".into(),
        }];
        assert_eq!(
            users_table(&users),
            "NAME   ROLE    PASSWORD  KEYS  CREATED\nalice  viewer  -         2     2026-01-02T03:04:05.000Z\n"
        );
    }

    #[test]
    fn key_flags_parse_and_roles_match_the_wire() {
        let parsed =
            Harness::try_parse_from(["k", "create", "bob", "--role", "admin", "--label", "ci"]).expect("parses");
        match parsed.command {
            KeysCommand::Create(args) => {
                assert_eq!(
                    (args.user.as_str(), args.role, args.label.as_deref()),
                    ("bob", Some(RoleArg::Admin), Some("ci"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(Harness::try_parse_from(["k", "create", "bob", "--role", "root"]).is_err());
        for role in RoleArg::value_variants() {
            let name = role.to_possible_value().expect("visible");
            assert_eq!(Role::from(*role).as_str(), name.get_name());
        }
    }

    #[test]
    fn a_piped_password_is_its_first_line() {
        assert_eq!(
            first_line(&mut &b"correct horse\nrest"[..]).expect("line"),
            "correct horse"
        );
        assert_eq!(first_line(&mut &b"crlf\r\n"[..]).expect("line"), "crlf");
        assert_eq!(first_line(&mut &b""[..]).expect("empty"), "");
    }
}
