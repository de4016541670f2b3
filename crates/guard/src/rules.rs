//! The built-in deny rules, applied to every command a shell action would run: each simple
//! command of a shell string (and of the strings it hands to shells), each command inside
//! wrappers, redirections, pipes from downloads into interpreters, fork bombs.
//!
//! Over 800 lines: the rules, the target classification they share (what `rm -rf X` would hit)
//! and the script-level checks read best side by side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::patterns::{display_argv, is_flag, program_name, quoted};
use crate::shell::{self, RedirectOp, Script};
use crate::wrappers::{Level, Nested, find_start_paths, is_shell, unwrap};
use crate::{Refusal, Settings, paths};

/// How deep shell strings may nest (`bash -c "eval '…'"`) before the action is refused.
const MAX_NESTING: usize = 8;

/// Longest shell string checked; longer ones are refused rather than half-checked.
pub(crate) const MAX_SCRIPT_LEN: usize = 64 * 1024;

/// Top-level directories whose recursive deletion (or chmod/chown) breaks the system.
const SYSTEM_DIRS: [&str; 24] = [
    "bin",
    "boot",
    "dev",
    "etc",
    "home",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "media",
    "mnt",
    "nix",
    "opt",
    "proc",
    "root",
    "run",
    "sbin",
    "snap",
    "srv",
    "sys",
    "tmp",
    "usr",
    "var",
    "lost+found",
];

/// Programs that fetch from the network.
const DOWNLOADERS: [&str; 10] = [
    "curl",
    "wget",
    "fetch",
    "aria2c",
    "http",
    "https",
    "xh",
    "lwp-request",
    "ftp",
    "tftp",
];

/// Programs that run code they read (besides shells).
const INTERPRETERS: [&str; 12] = [
    "perl", "ruby", "node", "nodejs", "php", "lua", "pwsh", "tclsh", "bun", "deno", "source", ".",
];

/// What a target path turned out to be.
enum Danger {
    Root,
    Home(String),
    System(String),
    Protected(String),
}

/// Checks commands against the deny rules; collects every simple command it saw.
pub(crate) struct Checker<'a> {
    settings: &'a Settings,
    cwd: Option<PathBuf>,
    /// Every simple command seen, for the verdict.
    pub(crate) commands: Vec<Vec<String>>,
    depth: usize,
}

/// A deny rule's finding before it is placed in its command's context.
struct Finding {
    rule: String,
    what: String,
}

fn finding(rule: impl Into<String>, what: impl Into<String>) -> Finding {
    Finding {
        rule: rule.into(),
        what: what.into(),
    }
}

impl<'a> Checker<'a> {
    pub(crate) fn new(settings: &'a Settings, cwd: Option<PathBuf>) -> Checker<'a> {
        Checker {
            settings,
            cwd,
            commands: Vec::new(),
            depth: 0,
        }
    }

    /// Checks an argv run without a shell.
    pub(crate) fn check_argv(&mut self, argv: &[String]) -> Result<(), Refusal> {
        self.commands.push(argv.to_vec());
        let text = display_argv(argv);
        let vars = HashMap::new();
        let cwd = self.cwd.clone();
        let (levels, nested) = unwrap(argv);
        for level in &levels {
            if let Some(found) = self.check_level(level, cwd.as_deref(), &vars) {
                return Err(Refusal::new(found.rule, format!("{} {}", quoted(&text), found.what)));
            }
        }
        for inner in nested {
            let context = format!(" (in the string run by {})", quoted(&text));
            self.check_script(&inner.script, &context)?;
        }
        Ok(())
    }

    /// Checks a shell string: every simple command in it, and what they run.
    pub(crate) fn check_script(&mut self, script: &str, context: &str) -> Result<(), Refusal> {
        self.depth += 1;
        let result = self.check_script_inner(script, context);
        self.depth -= 1;
        result
    }

    fn check_script_inner(&mut self, script: &str, context: &str) -> Result<(), Refusal> {
        if self.depth > MAX_NESTING {
            return Err(Refusal::new(
                "deny.unparseable",
                format!("shell strings nest more than {MAX_NESTING} levels deep{context}"),
            ));
        }
        if script.len() > MAX_SCRIPT_LEN {
            return Err(Refusal::new(
                "deny.unparseable",
                format!(
                    "a shell string of {} bytes is longer than the {MAX_SCRIPT_LEN} bytes that are checked{context}",
                    script.len()
                ),
            ));
        }
        if let Some(name) = textual_fork_bomb(script) {
            return Err(Refusal::new(
                "deny.fork_bomb",
                format!(
                    "{} defines {name}() to start two copies of itself: a fork bomb{context}",
                    quoted(script)
                ),
            ));
        }
        let parsed = shell::parse(script).map_err(|e| {
            Refusal::new(
                "deny.unparseable",
                format!(
                    "{} cannot be parsed ({e}), so it cannot be checked{context}",
                    quoted(script)
                ),
            )
        })?;
        self.commands.extend(parsed.commands.iter().map(|c| c.argv.clone()));
        let count = parsed.commands.len();
        let place = |index: usize, what: &str| {
            let text = &parsed.commands[index].text;
            let part = if count > 1 {
                format!(" (in part {} of {})", index + 1, quoted(script))
            } else {
                String::new()
            };
            format!("{} {what}{part}{context}", quoted(text))
        };
        if let Some((index, name)) = structural_fork_bomb(&parsed) {
            return Err(Refusal::new(
                "deny.fork_bomb",
                place(
                    index,
                    &format!("makes {name}() start copies of itself without end: a fork bomb"),
                ),
            ));
        }
        let unwrapped: Vec<(Vec<Level>, Vec<Nested>)> =
            parsed.commands.iter().map(|command| unwrap(&command.argv)).collect();
        let mut cwd = self.cwd.clone();
        let mut vars: HashMap<String, Option<String>> = HashMap::new();
        for (index, command) in parsed.commands.iter().enumerate() {
            for redirection in &command.redirections {
                if redirection.op.writes() && is_disk_device(&redirection.target) {
                    return Err(Refusal::new(
                        "deny.redirect_device",
                        place(
                            index,
                            &format!("writes straight to the disk device {}", redirection.target),
                        ),
                    ));
                }
            }
            let (levels, nested) = &unwrapped[index];
            for level in levels {
                if let Some(found) = self.check_level(level, cwd.as_deref(), &vars) {
                    return Err(Refusal::new(found.rule, place(index, &found.what)));
                }
            }
            if levels.iter().any(|level| is_downloader(&level.argv)) {
                if let Some(target) = (0..count)
                    .find(|&other| parsed.pipes_into(index, other) && unwrapped[other].0.iter().any(runs_code))
                {
                    return Err(Refusal::new(
                        "deny.download_to_shell",
                        place(
                            index,
                            &format!(
                                "pipes a download into {}, which runs it as code",
                                quoted(&parsed.commands[target].text)
                            ),
                        ),
                    ));
                }
                let mut ancestor = command.parent;
                while let Some(parent) = ancestor {
                    let outer = &parsed.commands[parent];
                    let program_is_substitution = outer
                        .argv
                        .first()
                        .is_some_and(|p| p.starts_with("$(") || p.starts_with('`') || p.starts_with("<("));
                    if unwrapped[parent].0.iter().any(runs_code) || program_is_substitution {
                        return Err(Refusal::new(
                            "deny.download_to_shell",
                            place(
                                index,
                                &format!("feeds a download to {}, which runs it as code", quoted(&outer.text)),
                            ),
                        ));
                    }
                    ancestor = outer.parent;
                }
            }
            for inner in nested {
                let inner_context = format!(" (in the string run by {}){context}", quoted(&command.text));
                self.check_script(&inner.script, &inner_context)?;
            }
            for fed in stdin_scripts(&parsed, index, &unwrapped) {
                let inner_context = format!(" (in what {} reads as a script){context}", quoted(&command.text));
                self.check_script(&fed, &inner_context)?;
            }
            self.track(command, levels, &mut cwd, &mut vars);
        }
        Ok(())
    }

    /// Follows `cd` and plain assignments so later relative targets and variables resolve.
    fn track(
        &self,
        command: &shell::Command,
        levels: &[Level],
        cwd: &mut Option<PathBuf>,
        vars: &mut HashMap<String, Option<String>>,
    ) {
        let assign = |vars: &mut HashMap<String, Option<String>>, assignment: &str| {
            if let Some((name, value)) = assignment.split_once('=') {
                let literal = !value.contains(['$', '`']);
                vars.insert(name.trim_end_matches('+').to_owned(), literal.then(|| value.to_owned()));
            }
        };
        let Some(level) = levels.first() else {
            for assignment in &command.assignments {
                assign(vars, assignment);
            }
            return;
        };
        match program_name(&level.argv[0]) {
            "cd" | "pushd" => {
                let target = level.argv[1..].iter().find(|arg| !is_flag(arg));
                *cwd = match target {
                    None => Some(self.settings.home_literal.clone()),
                    Some(target) if target == "-" => None,
                    Some(target) => {
                        let expanded = self.expand(target, vars);
                        match (&expanded, cwd.as_ref()) {
                            (Some(path), _) if path.is_absolute() => Some(paths::normalize(path)),
                            (Some(path), Some(current)) => Some(paths::normalize(&current.join(path))),
                            _ => None,
                        }
                    }
                };
            }
            "export" | "declare" | "local" | "readonly" | "typeset" => {
                for arg in level.argv[1..].iter().filter(|arg| !is_flag(arg)) {
                    assign(vars, arg);
                }
            }
            _ => {}
        }
    }

    /// Expands `~`, `$HOME`, `$USER` and known variables in a word; unknown variables and
    /// substitutions become empty (the worst case for `rm -rf "$DIR/"`). `None` for `~user`
    /// forms that cannot be placed.
    fn expand(&self, word: &str, vars: &HashMap<String, Option<String>>) -> Option<PathBuf> {
        let home = self.settings.home_literal.to_string_lossy().into_owned();
        let user = self
            .settings
            .home_literal
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut out = String::new();
        let bytes = word.as_bytes();
        let mut i = 0;
        if let Some(rest) = word.strip_prefix('~') {
            let end = rest.find('/').unwrap_or(rest.len());
            let name = &rest[..end];
            if name.is_empty() || name == user {
                out.push_str(&home);
            } else if name == "root" {
                out.push_str("/root");
            } else if name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                out.push_str("/home/");
                out.push_str(name);
            } else {
                return None;
            }
            i = 1 + end;
        }
        while i < bytes.len() {
            match bytes[i] {
                b'$' => {
                    let (name, next) = variable_at(word, i);
                    i = next;
                    let value = match name.as_deref() {
                        Some("HOME") => Some(home.clone()),
                        Some("USER" | "LOGNAME") => Some(user.clone()),
                        Some("PWD") => self.cwd.as_ref().map(|p| p.to_string_lossy().into_owned()),
                        Some(name) => vars.get(name).cloned().flatten(),
                        None => None,
                    };
                    out.push_str(&value.unwrap_or_default());
                }
                b'`' => {
                    i = word[i + 1..].find('`').map_or(bytes.len(), |end| i + end + 2);
                }
                _ => {
                    let end = word[i..].find(['$', '`']).map_or(bytes.len(), |e| i + e);
                    out.push_str(&word[i..end]);
                    i = end;
                }
            }
        }
        Some(PathBuf::from(out))
    }

    /// What deleting (or chmod/chown-ing) this target recursively would hit.
    fn classify(&self, word: &str, cwd: Option<&Path>, vars: &HashMap<String, Option<String>>) -> Option<Danger> {
        let expanded = self.expand(word, vars)?;
        if expanded.as_os_str().is_empty() {
            return None;
        }
        let absolute = if expanded.is_absolute() {
            expanded
        } else {
            cwd?.join(expanded)
        };
        let mut path = paths::normalize(&absolute);
        let mut glob_child: Option<String> = None;
        while let Some(last) = path.file_name().map(|n| n.to_string_lossy().into_owned()) {
            let all_glob = last.chars().all(|c| "*?[]!.{},^".contains(c)) && last.contains(['*', '?', '[', '{']);
            if !all_glob {
                break;
            }
            path.pop();
        }
        if let Some(last) = path.file_name().map(|n| n.to_string_lossy().into_owned())
            && last.contains(['*', '?', '['])
        {
            glob_child = Some(last);
            path.pop();
        }
        let resolved = paths::resolve_lenient(&path);
        for candidate in [&path, &resolved] {
            if let Some(danger) = self.classify_path(candidate, glob_child.as_deref()) {
                return Some(danger);
            }
        }
        None
    }

    fn classify_path(&self, path: &Path, glob_child: Option<&str>) -> Option<Danger> {
        let settings = self.settings;
        let shown = paths::show(settings, path);
        let components: Vec<String> = path
            .components()
            .skip(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match glob_child {
            None => {
                if components.is_empty() {
                    return Some(Danger::Root);
                }
                if path == settings.home || path == settings.home_literal {
                    return Some(Danger::Home(shown));
                }
                if settings.home.starts_with(path) || settings.home_literal.starts_with(path) {
                    return Some(Danger::Home(format!("{shown}, which holds the home directory")));
                }
                if components == ["home"] || components == ["root"] {
                    return Some(Danger::Home(format!("{shown}, which holds home directories")));
                }
                if is_system_dir(&components) {
                    return Some(Danger::System(shown));
                }
                paths::protected(settings, path)
                    .or_else(|| paths::holds_protected(settings, path))
                    .map(Danger::Protected)
            }
            Some(pattern) => {
                let matched = format!("{}/{pattern}", if components.is_empty() { "" } else { &shown });
                if components.is_empty() {
                    return Some(Danger::System(format!("{matched} (it can match system directories)")));
                }
                if path == settings.home || path == settings.home_literal {
                    let hits_protected = settings.protected.iter().any(|entry| entry.glob_hits(path, pattern));
                    if hits_protected {
                        return Some(Danger::Protected(format!(
                            "{matched} (it can match a protected location)"
                        )));
                    }
                }
                if settings.home.starts_with(path)
                    && settings.home.components().count() == path.components().count() + 1
                {
                    let home_name = settings.home.file_name().map(|n| n.to_string_lossy().into_owned());
                    if home_name.is_some_and(|name| glob_match(pattern, &name)) {
                        return Some(Danger::Home(format!("{matched} (it can match the home directory)")));
                    }
                }
                None
            }
        }
    }

    /// The built-in deny rules and `[[policy.deny]]` for one command.
    fn check_level(
        &self,
        level: &Level,
        cwd: Option<&Path>,
        vars: &HashMap<String, Option<String>>,
    ) -> Option<Finding> {
        let argv = &level.argv;
        let name = program_name(&argv[0]);
        let args = &argv[1..];
        let found = match name {
            "sudo" | "sudoedit" => Some(finding("deny.sudo", "runs a command as root (sudo)")),
            "su" => Some(finding("deny.su", "switches to another user (su)")),
            "doas" => Some(finding("deny.doas", "runs a command as root (doas)")),
            "pkexec" => Some(finding("deny.pkexec", "runs a command as root (pkexec)")),
            "run0" => Some(finding("deny.run0", "runs a command as root (run0)")),
            "rm" => self.check_rm(args, level.from_input, cwd, vars),
            "mkfs" | "mke2fs" | "mkswap" | "mkdosfs" | "mkntfs" => Some(finding("deny.mkfs", "formats a disk")),
            _ if name.starts_with("mkfs.") => Some(finding("deny.mkfs", "formats a disk")),
            "wipefs" => Some(finding("deny.wipefs", "wipes file system signatures off a disk")),
            "fdisk" | "cfdisk" | "gdisk" | "sgdisk" => Some(finding("deny.fdisk", "edits a disk's partition table")),
            "parted" => Some(finding("deny.parted", "edits a disk's partition table")),
            "sfdisk" => Some(finding("deny.sfdisk", "edits a disk's partition table")),
            "dd" => args
                .iter()
                .filter_map(|arg| arg.strip_prefix("of="))
                .find(|target| is_device(target))
                .map(|target| finding("deny.dd_device", format!("writes raw data onto the device {target}"))),
            "shred" => args
                .iter()
                .filter(|arg| !is_flag(arg))
                .find(|target| is_device(target))
                .map(|target| finding("deny.shred_device", format!("overwrites the device {target}"))),
            "tee" => args
                .iter()
                .filter(|arg| !is_flag(arg))
                .find(|target| is_disk_device(target))
                .map(|target| {
                    finding(
                        "deny.redirect_device",
                        format!("writes straight to the disk device {target}"),
                    )
                }),
            "chmod" | "chown" | "chgrp" => self.check_chmod(name, args, cwd, vars),
            "shutdown" | "reboot" | "poweroff" | "halt" => Some(finding(
                "deny.shutdown",
                format!("shuts down or restarts the machine ({name})"),
            )),
            "init" | "telinit" if args.iter().any(|a| a == "0" || a == "6") => Some(finding(
                "deny.shutdown",
                format!("shuts down or restarts the machine ({name})"),
            )),
            "systemctl" => args
                .iter()
                .find(|arg| !is_flag(arg))
                .filter(|verb| matches!(verb.as_str(), "poweroff" | "reboot" | "halt" | "kexec" | "soft-reboot"))
                .map(|verb| {
                    finding(
                        "deny.shutdown",
                        format!("shuts down or restarts the machine (systemctl {verb})"),
                    )
                }),
            "crontab" => args
                .iter()
                .take_while(|arg| *arg != "--")
                .any(|arg| arg == "--remove" || (arg.starts_with('-') && !arg.starts_with("--") && arg.contains('r')))
                .then(|| finding("deny.crontab_remove", "deletes the user's crontab")),
            "kill" => kills_everything(args).then(|| {
                finding(
                    "deny.kill_all",
                    "sends a signal to every process the user owns (pid -1)",
                )
            }),
            "find" => self.check_find_delete(args, cwd, vars),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
        self.settings
            .deny
            .iter()
            .find(|pattern| pattern.matches(argv))
            .map(|pattern| {
                let why = pattern
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("matches the deny rule {}", display_argv(&pattern.tokens)));
                finding(pattern.rule.clone(), format!("is refused: {why}"))
            })
    }

    fn check_rm(
        &self,
        args: &[String],
        from_input: bool,
        cwd: Option<&Path>,
        vars: &HashMap<String, Option<String>>,
    ) -> Option<Finding> {
        let mut recursive = false;
        let mut targets = Vec::new();
        let mut options_done = false;
        for arg in args {
            if arg == "--no-preserve-root" {
                return Some(finding(
                    "deny.rm_no_preserve_root",
                    "turns off rm's protection of / (--no-preserve-root)",
                ));
            }
            if options_done || !is_flag(arg) {
                targets.push(arg.as_str());
            } else if arg == "--" {
                options_done = true;
            } else if arg == "--recursive" || (!arg.starts_with("--") && arg.contains(['r', 'R'])) {
                recursive = true;
            }
        }
        if !recursive {
            return None;
        }
        if from_input {
            return Some(finding(
                "deny.rm_recursive_xargs",
                "deletes recursively whatever its input names, which could be / or the home directory",
            ));
        }
        targets.iter().find_map(|target| {
            Some(match self.classify(target, cwd, vars)? {
                Danger::Root => finding(
                    "deny.rm_recursive_root",
                    format!("deletes the root file system ({target})"),
                ),
                Danger::Home(what) => finding("deny.rm_recursive_home", format!("deletes the home directory ({what})")),
                Danger::System(what) => finding(
                    "deny.rm_recursive_system",
                    format!("deletes the system directory {what}"),
                ),
                Danger::Protected(what) => finding(
                    "deny.rm_recursive_protected",
                    format!("deletes the protected location {what}"),
                ),
            })
        })
    }

    fn check_chmod(
        &self,
        name: &str,
        args: &[String],
        cwd: Option<&Path>,
        vars: &HashMap<String, Option<String>>,
    ) -> Option<Finding> {
        let recursive = args
            .iter()
            .take_while(|a| *a != "--")
            .any(|arg| arg == "--recursive" || (arg.starts_with('-') && !arg.starts_with("--") && arg.contains('R')));
        if !recursive {
            return None;
        }
        let reference = args.iter().any(|arg| arg.starts_with("--reference"));
        let operands: Vec<&String> = args.iter().filter(|arg| !is_flag(arg)).collect();
        // The first operand is the mode or owner, unless --reference gives it.
        let targets = if reference {
            &operands[..]
        } else {
            operands.get(1..).unwrap_or(&[])
        };
        let rule = if name == "chmod" {
            "deny.chmod_recursive"
        } else {
            "deny.chown_recursive"
        };
        targets.iter().find_map(|target| {
            let what = match self.classify(target, cwd, vars)? {
                Danger::Root => "the whole file system".to_owned(),
                Danger::Home(what) => format!("the home directory ({what})"),
                Danger::System(what) => format!("the system directory {what}"),
                Danger::Protected(what) => format!("the protected location {what}"),
            };
            Some(finding(
                rule,
                format!("changes permissions or ownership of {what} recursively"),
            ))
        })
    }

    fn check_find_delete(
        &self,
        args: &[String],
        cwd: Option<&Path>,
        vars: &HashMap<String, Option<String>>,
    ) -> Option<Finding> {
        if !args.iter().any(|arg| arg == "-delete") {
            return None;
        }
        let starts = find_start_paths(args);
        starts.iter().find_map(|start| {
            let what = match self.classify(start, cwd, vars)? {
                Danger::Root => "the root file system".to_owned(),
                Danger::Home(what) => format!("the home directory ({what})"),
                Danger::System(what) => format!("the system directory {what}"),
                Danger::Protected(what) => format!("the protected location {what}"),
            };
            Some(finding("deny.find_delete", format!("deletes files throughout {what}")))
        })
    }
}

impl paths::Protected {
    /// Whether `pattern` (one glob component) under `dir` can match this location's first
    /// component below `dir`.
    fn glob_hits(&self, dir: &Path, pattern: &str) -> bool {
        let own = match self {
            paths::Protected::Tree(tree) => tree,
            paths::Protected::Prefix(parent, _) => parent,
        };
        own.strip_prefix(dir)
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|first| glob_match(pattern, &first.as_os_str().to_string_lossy()))
    }
}

/// A shell glob match of one component (`*`, `?`, `[…]` as any one character), in linear time
/// per star (the usual backtrack-to-the-last-star walk, not recursion).
fn glob_match(pattern: &str, name: &str) -> bool {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => None,
            '?' => Some(None),
            '[' => {
                for inner in chars.by_ref() {
                    if inner == ']' {
                        break;
                    }
                }
                Some(None)
            }
            other => Some(Some(other)),
        });
    }
    let name: Vec<char> = name.chars().collect();
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Some(expected)) if expected.is_none_or(|c| c == name[n]) => {
                t += 1;
                n += 1;
            }
            Some(None) => {
                star = Some((t, n));
                t += 1;
            }
            _ => match star {
                Some((star_t, star_n)) => {
                    t = star_t + 1;
                    n = star_n + 1;
                    star = Some((star_t, star_n + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(Option::is_none)
}

fn is_system_dir(components: &[String]) -> bool {
    match components {
        [top] => SYSTEM_DIRS.contains(&top.as_str()),
        [first, _] if first == "usr" || first == "boot" => true,
        [first, second] if first == "var" => matches!(second.as_str(), "lib" | "log" | "spool" | "mail" | "backups"),
        _ => false,
    }
}

/// `$NAME`, `${NAME…}`, `$(…)` at `at`: the variable name (`None` for a substitution) and where
/// the expansion ends.
fn variable_at(word: &str, at: usize) -> (Option<String>, usize) {
    let bytes = word.as_bytes();
    match bytes.get(at + 1) {
        Some(b'{') => {
            let end = word[at..].find('}').map_or(bytes.len(), |e| at + e + 1);
            let name: String = word[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (Some(name), end)
        }
        Some(b'(') => {
            let mut depth = 0usize;
            for (offset, byte) in bytes[at + 1..].iter().enumerate() {
                match byte {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            return (None, at + 1 + offset + 1);
                        }
                    }
                    _ => {}
                }
            }
            (None, bytes.len())
        }
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            let len = bytes[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            (Some(word[at + 1..at + 1 + len].to_owned()), at + 1 + len)
        }
        Some(_) => (None, (at + 2).min(bytes.len())),
        None => (None, bytes.len()),
    }
}

/// `/dev/…` other than the harmless pseudo devices.
fn is_device(path: &str) -> bool {
    let Some(name) = path.strip_prefix("/dev/") else {
        return false;
    };
    !matches!(
        name,
        "null" | "zero" | "stdout" | "stderr" | "stdin" | "tty" | "random" | "urandom" | "full"
    ) && !name.starts_with("fd/")
        && !name.starts_with("pts/")
        && !name.starts_with("shm/")
}

/// A block device holding disks: `/dev/sd*`, `/dev/nvme*`, `/dev/mmcblk*`, `/dev/vd*`, …
fn is_disk_device(path: &str) -> bool {
    let Some(name) = path.strip_prefix("/dev/") else {
        return false;
    };
    [
        "sd", "nvme", "mmcblk", "vd", "hd", "xvd", "dm-", "md", "mapper/", "disk/", "loop", "sr",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// `kill … -1` (every process), or `kill -1` alone.
fn kills_everything(args: &[String]) -> bool {
    if args.len() == 1 && args[0] == "-1" {
        return true;
    }
    let mut index = 0;
    let mut signal_seen = false;
    while index < args.len() {
        let arg = args[index].as_str();
        if arg == "--" {
            return args[index + 1..].iter().any(|a| a == "-1");
        }
        if arg == "-s" || arg == "-n" {
            index += 2;
            signal_seen = true;
            continue;
        }
        if arg.starts_with('-') && !signal_seen {
            signal_seen = true;
        } else if arg == "-1" {
            return true;
        }
        index += 1;
    }
    false
}

fn is_downloader(argv: &[String]) -> bool {
    DOWNLOADERS.contains(&program_name(&argv[0]))
}

/// A program that runs what it reads as code.
fn runs_code(level: &Level) -> bool {
    let argv = &level.argv;
    let name = program_name(&argv[0]);
    is_shell(argv)
        || INTERPRETERS.contains(&name)
        || name == "eval"
        || name
            .strip_prefix("python")
            .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Scripts a shell without `-c` or a script file reads: its heredoc or here-string, or what
/// `echo`/`printf` pipes into it.
fn stdin_scripts(parsed: &Script, index: usize, unwrapped: &[(Vec<Level>, Vec<Nested>)]) -> Vec<String> {
    let (levels, _) = &unwrapped[index];
    let Some(shell) = levels.iter().find(|level| is_shell(&level.argv)) else {
        return Vec::new();
    };
    let skip = if program_name(&shell.argv[0]) == "busybox" {
        2
    } else {
        1
    };
    let mut operands = shell.argv[skip..].iter();
    let mut reads_stdin = true;
    while let Some(arg) = operands.next() {
        if arg == "-o" || arg == "+o" || arg == "--rcfile" || arg == "--init-file" {
            operands.next();
        } else if arg == "-s" || arg == "--" {
            break;
        } else if arg.starts_with('-') || arg.starts_with('+') {
            if !arg.starts_with("--") && arg.contains('c') {
                reads_stdin = false;
            }
        } else {
            reads_stdin = false;
            break;
        }
    }
    if !reads_stdin {
        return Vec::new();
    }
    let mut scripts: Vec<String> = parsed.commands[index]
        .redirections
        .iter()
        .filter(|r| {
            matches!(
                r.op,
                RedirectOp::HereDoc | RedirectOp::HereDocStrip | RedirectOp::HereString
            )
        })
        .filter_map(|r| r.body.clone())
        .collect();
    for (other, (other_levels, _)) in unwrapped.iter().enumerate() {
        if !parsed.pipes_into(other, index) {
            continue;
        }
        if let Some(level) = other_levels
            .iter()
            .find(|level| matches!(program_name(&level.argv[0]), "echo" | "printf"))
        {
            let words: Vec<&str> = level.argv[1..]
                .iter()
                .filter(|arg| !matches!(arg.as_str(), "-e" | "-n" | "-E"))
                .map(String::as_str)
                .collect();
            scripts.push(words.join(" ").replace("\\n", "\n"));
        }
    }
    scripts
}

/// Textual fork bomb: `NAME(){ NAME|NAME& }` once whitespace is removed.
fn textual_fork_bomb(script: &str) -> Option<String> {
    let compact: String = script.chars().filter(|c| !c.is_whitespace()).collect();
    let mut search = 0;
    while let Some(found) = compact[search..].find("(){") {
        let at = search + found;
        let before = &compact[..at];
        let start = before
            .rfind([';', '&', '|', '(', ')', '{', '}', '\n'])
            .map_or(0, |p| p + 1);
        let name = before[start..].trim_start_matches("function");
        let body = &compact[at + 3..];
        if !name.is_empty() && body.starts_with(&format!("{name}|{name}&")) {
            return Some(name.to_owned());
        }
        search = at + 3;
    }
    None
}

/// A function whose body calls itself in the background or piped into itself.
fn structural_fork_bomb(parsed: &Script) -> Option<(usize, String)> {
    for function in &parsed.functions {
        let mut stages: HashMap<usize, (usize, usize)> = HashMap::new();
        for index in function.body.clone() {
            let command = &parsed.commands[index];
            if command.argv.first() != Some(&function.name) {
                continue;
            }
            if command.background {
                return Some((index, function.name.clone()));
            }
            for &(pipeline, stage) in &command.pipelines {
                let (first, _) = *stages.entry(pipeline).or_insert((stage, index));
                if first != stage {
                    return Some((index, function.name.clone()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn fork_bombs_textually() {
        assert_eq!(textual_fork_bomb(":(){ :|:& };:").as_deref(), Some(":"));
        assert_eq!(
            textual_fork_bomb("bomb ( ) {\n bomb | bomb &\n}; bomb").as_deref(),
            Some("bomb")
        );
        assert_eq!(textual_fork_bomb("f(){ echo hi; }; f"), None);
    }

    #[test]
    fn kill_targets() {
        assert!(kills_everything(&strings(&["-9", "-1"])));
        assert!(kills_everything(&strings(&["-1"])));
        assert!(kills_everything(&strings(&["-s", "KILL", "-1"])));
        assert!(kills_everything(&strings(&["--", "-1"])));
        assert!(!kills_everything(&strings(&["-1", "1234"])));
        assert!(!kills_everything(&strings(&["-9", "1234"])));
    }

    #[test]
    fn globs() {
        assert!(glob_match(".s*", ".ssh"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match(".[sg]*", ".gnupg"));
        assert!(!glob_match("b*", ".ssh"));
    }
}
