//! `shell_exec` params → a [`RunRequest`]: argv as given, or `/bin/sh -c` for a shell string a
//! human approved; a scrubbed environment for agents, the owner's own when given; the working
//! directory checked to exist; the timeout (the configured default for agents, none for the owner).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::bus::Thread;
use crate::process::RunRequest;

/// PATH of a scrubbed environment.
pub const SCRUBBED_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Variables a scrubbed environment takes from exec's own.
pub const KEPT_ENV: [&str; 6] = ["HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ"];

/// The environment agents' runs start from: PATH plus [`KEPT_ENV`] from exec's own environment.
#[derive(Debug, Clone)]
pub struct BaseEnv {
    /// Name and value pairs.
    pub vars: Vec<(String, String)>,
    /// HOME, the default working directory.
    pub home: PathBuf,
}

impl BaseEnv {
    /// From exec's own environment.
    pub fn from_process() -> BaseEnv {
        BaseEnv::from_lookup(|name| std::env::var(name).ok())
    }

    /// From a lookup function.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> BaseEnv {
        let mut vars = vec![("PATH".to_owned(), SCRUBBED_PATH.to_owned())];
        for name in KEPT_ENV {
            if let Some(value) = lookup(name) {
                vars.push((name.to_owned(), value));
            }
        }
        let home = lookup("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        BaseEnv { vars, home }
    }
}

/// What a run is for.
pub struct Who<'a> {
    /// The owner's own command.
    pub owner: bool,
    /// The configured default timeout for agents.
    pub default_timeout: Duration,
    /// The cap per stream.
    pub max_output: u64,
    /// Where its events belong.
    pub thread: Thread,
    /// exec's scrubbed environment.
    pub base: &'a BaseEnv,
}

/// Builds the run of a `shell_exec` action, or says which field is wrong.
pub fn request(run_id: String, params: &Map<String, Value>, who: Who<'_>) -> Result<RunRequest, String> {
    let argv = match (params.get("argv"), params.get("command")) {
        (Some(Value::Null) | None, Some(Value::String(command))) if !command.trim().is_empty() => {
            vec!["/bin/sh".to_owned(), "-c".to_owned(), command.clone()]
        }
        (Some(Value::Null) | None, Some(_)) => return Err("command: must be a non-empty string".into()),
        (Some(argv), None | Some(Value::Null)) => strings(argv).ok_or("argv: must be a non-empty array of strings")?,
        (Some(_), Some(_)) => return Err("argv and command: give one of them, not both".into()),
        (None, None) => return Err("argv: required (or command, a shell string)".into()),
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err("argv: must be a non-empty array of strings".into());
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err("argv: an argument contains a NUL byte".into());
    }

    let cwd = match params.get("cwd") {
        None | Some(Value::Null) => who.base.home.clone(),
        Some(Value::String(cwd)) => {
            let path = Path::new(cwd);
            if !path.is_absolute() {
                return Err(format!("cwd: {cwd:?} must be an absolute path"));
            }
            if !path.is_dir() {
                return Err(format!("cwd: {cwd:?} is not an existing directory"));
            }
            path.to_path_buf()
        }
        Some(_) => return Err("cwd: must be a string".into()),
    };

    let env = match params.get("env") {
        None | Some(Value::Null) => who.base.vars.clone(),
        Some(_) if !who.owner => return Err("env: only the owner's own commands set their environment".into()),
        Some(Value::Object(given)) => {
            let mut env = BTreeMap::new();
            for (name, value) in given {
                let Value::String(value) = value else {
                    return Err(format!("env.{name}: must be a string"));
                };
                if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
                    return Err(format!("env.{name}: not a valid variable"));
                }
                env.insert(name.clone(), value.clone());
            }
            env.into_iter().collect()
        }
        Some(_) => return Err("env: must be an object of strings".into()),
    };

    let stdin = match params.get("stdin") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone().into_bytes()),
        Some(_) => return Err("stdin: must be a string".into()),
    };

    let timeout = match params.get("timeout_ms") {
        None | Some(Value::Null) if who.owner => None,
        None | Some(Value::Null) => Some(who.default_timeout),
        Some(value) => match value.as_u64() {
            Some(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => return Err("timeout_ms: must be a positive integer".into()),
        },
    };

    Ok(RunRequest {
        run_id,
        thread: who.thread,
        argv,
        cwd,
        env,
        stdin,
        timeout,
        max_output: who.max_output,
    })
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| item.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> BaseEnv {
        BaseEnv::from_lookup(|name| match name {
            "HOME" => Some("/".into()),
            "USER" => Some("me".into()),
            "SECRET" => Some("x".into()),
            _ => None,
        })
    }

    fn who(owner: bool, base: &BaseEnv) -> Who<'_> {
        Who {
            owner,
            default_timeout: Duration::from_secs(60),
            max_output: 100,
            thread: Thread::default(),
            base,
        }
    }

    fn parse(params: Value, owner: bool) -> Result<RunRequest, String> {
        let base = base();
        request("run_1".into(), params.as_object().unwrap(), who(owner, &base))
    }

    #[test]
    fn argv_or_a_shell_string() {
        let run = parse(json!({"argv": ["ls", "-l"]}), false).unwrap();
        assert_eq!(run.argv, ["ls", "-l"]);
        assert_eq!(run.timeout, Some(Duration::from_secs(60)));
        assert_eq!(run.cwd, PathBuf::from("/"));
        let run = parse(json!({"command": "echo hi | wc -c"}), false).unwrap();
        assert_eq!(run.argv, ["/bin/sh", "-c", "echo hi | wc -c"]);
        // The owner has no default timeout.
        assert_eq!(parse(json!({"argv": ["true"]}), true).unwrap().timeout, None);
    }

    #[test]
    fn bad_fields_are_named() {
        for (params, field) in [
            (json!({}), "argv"),
            (json!({"argv": []}), "argv"),
            (json!({"argv": [1]}), "argv"),
            (json!({"argv": ["a"], "command": "b"}), "argv and command"),
            (json!({"command": ""}), "command"),
            (json!({"argv": ["a"], "cwd": "relative"}), "cwd"),
            (json!({"argv": ["a"], "cwd": "/no/such/dir"}), "cwd"),
            (json!({"argv": ["a"], "timeout_ms": 0}), "timeout_ms"),
            (json!({"argv": ["a"], "stdin": 5}), "stdin"),
            (json!({"argv": ["a"], "env": {"A": "b"}}), "env"),
        ] {
            let error = parse(params.clone(), false).unwrap_err();
            assert!(error.starts_with(field), "{params}: {error}");
        }
        let error = parse(json!({"argv": ["a"], "env": {"A": 1}}), true).unwrap_err();
        assert!(error.starts_with("env.A"), "{error}");
    }

    #[test]
    fn environments() {
        let run = parse(json!({"argv": ["env"]}), false).unwrap();
        let names: Vec<&str> = run.env.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "USER"]);
        assert_eq!(run.env[0].1, SCRUBBED_PATH);
        let run = parse(json!({"argv": ["env"], "env": {"ONLY": "this"}}), true).unwrap();
        assert_eq!(run.env, [("ONLY".to_owned(), "this".to_owned())]);
    }
}
