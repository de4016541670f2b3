//! Wrappers: commands that run another command (`env`, `sudo`, `nice`, `timeout`, `xargs`,
//! `find -exec`, `busybox`, …) or a shell string (`sh -c`, `eval`, `watch`, `su -c`). Each is
//! unwrapped so the deny rules see every command that would run.

use crate::patterns::program_name;
use crate::shell;

/// How many wrappers deep a command is unwrapped (`env nice timeout 5 xargs …`).
const MAX_WRAPPERS: usize = 16;

/// How many commands one argv may unwrap to (`find a b -exec find c d -exec …` fans out).
const MAX_LEVELS: usize = 64;

/// Shells (their `-c` string is parsed; fed from a pipe or heredoc, what they read is a script).
const SHELLS: [&str; 11] = [
    "sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "yash", "fish", "csh", "tcsh",
];

/// One command as run, after unwrapping wrappers.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub(crate) argv: Vec<String>,
    /// Its arguments come partly from input (`xargs`).
    pub(crate) from_input: bool,
}

/// A shell string a command runs (`bash -c S`, `eval S`, `watch S`, `su -c S`).
#[derive(Debug, Clone)]
pub(crate) struct Nested {
    pub(crate) script: String,
}

/// The paths `find` starts from (default `.`).
pub(crate) fn find_start_paths(args: &[String]) -> Vec<String> {
    let mut index = 0;
    while index < args.len() && matches!(args[index].as_str(), "-H" | "-L" | "-P") {
        index += 1;
    }
    let starts: Vec<String> = args[index..]
        .iter()
        .take_while(|arg| !arg.starts_with('-') && *arg != "(" && *arg != "!" && *arg != ")")
        .cloned()
        .collect();
    if starts.is_empty() {
        vec![".".to_owned()]
    } else {
        starts
    }
}

pub(crate) fn is_shell(argv: &[String]) -> bool {
    let name = program_name(&argv[0]);
    SHELLS.contains(&name) || (name == "busybox" && argv.get(1).is_some_and(|a| a == "sh" || a == "ash"))
}

/// Skips options: `short` lists short flags that take a value, `long` long ones. Returns the
/// index of the first operand.
fn skip_options(argv: &[String], from: usize, short: &str, long: &[&str]) -> usize {
    let mut index = from;
    while let Some(arg) = argv.get(index) {
        if arg == "--" {
            return index + 1;
        }
        if let Some(name) = arg.strip_prefix("--") {
            index += if !name.contains('=') && long.contains(&name) {
                2
            } else {
                1
            };
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            index += 1;
            for (position, flag) in arg[1..].char_indices() {
                if short.contains(flag) {
                    if position + flag.len_utf8() == arg.len() - 1 {
                        index += 1;
                    }
                    break;
                }
            }
            continue;
        }
        return index;
    }
    index
}

/// The value of `-c` style options (`-c S`, `-cS` is not used by shells) among the options.
fn option_value(argv: &[String], short: char, long: &str) -> Option<String> {
    let mut iter = argv.iter().skip(1);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return None;
        }
        if let Some(value) = arg.strip_prefix(&format!("--{long}=")) {
            return Some(value.to_owned());
        }
        if arg == &format!("--{long}") || (arg.starts_with('-') && !arg.starts_with("--") && arg.ends_with(short)) {
            return iter.next().cloned();
        }
    }
    None
}

/// The commands an argv runs, wrappers unwrapped (each level is checked), and the shell strings
/// it hands to a shell.
pub(crate) fn unwrap(argv: &[String]) -> (Vec<Level>, Vec<Nested>) {
    let mut levels = Vec::new();
    let mut nested = Vec::new();
    unwrap_into(argv, false, 0, &mut levels, &mut nested);
    (levels, nested)
}

fn unwrap_into(argv: &[String], from_input: bool, depth: usize, levels: &mut Vec<Level>, nested: &mut Vec<Nested>) {
    if argv.is_empty() || depth > MAX_WRAPPERS || levels.len() >= MAX_LEVELS {
        return;
    }
    levels.push(Level {
        argv: argv.to_vec(),
        from_input,
    });
    let name = program_name(&argv[0]);
    let rest = |index: usize| argv.get(index..).unwrap_or(&[]).to_vec();
    macro_rules! next {
        ($inner:expr, $input:expr) => {
            unwrap_into(&$inner, from_input || $input, depth + 1, levels, nested)
        };
    }
    match name {
        "env" => {
            let mut index = 1;
            while let Some(arg) = argv.get(index) {
                if arg == "--" {
                    index += 1;
                    break;
                }
                if let Some(split) = arg
                    .strip_prefix("--split-string=")
                    .or_else(|| arg.strip_prefix("-S").filter(|s| !s.is_empty()))
                {
                    let mut words = split_words(split);
                    words.extend(rest(index + 1));
                    return next!(words, false);
                }
                if arg == "-S" || arg == "--split-string" {
                    let mut words = argv.get(index + 1).map(|s| split_words(s)).unwrap_or_default();
                    words.extend(rest(index + 2));
                    return next!(words, false);
                }
                if matches!(arg.as_str(), "-u" | "-C" | "--unset" | "--chdir") {
                    index += 2;
                } else if arg.starts_with('-') || arg.contains('=') {
                    index += 1;
                } else {
                    break;
                }
            }
            while argv.get(index).is_some_and(|arg| arg.contains('=')) {
                index += 1;
            }
            next!(rest(index), false);
        }
        "sudo" | "sudoedit" => next!(
            rest(skip_options(
                argv,
                1,
                "ugCDhprtTU",
                &["user", "group", "chdir", "prompt"]
            )),
            false
        ),
        "doas" => next!(rest(skip_options(argv, 1, "uC", &[])), false),
        "pkexec" => next!(rest(skip_options(argv, 1, "", &["user"])), false),
        "run0" => next!(
            rest(skip_options(
                argv,
                1,
                "ugDM",
                &["user", "group", "chdir", "property", "machine"]
            )),
            false
        ),
        "su" | "runuser" => {
            if let Some(script) = option_value(argv, 'c', "command") {
                nested.push(Nested { script });
            }
        }
        "command" => {
            let operand = skip_options(argv, 1, "", &[]);
            let inspect = argv[1..operand].iter().any(|a| a.contains('v') || a.contains('V'));
            if !inspect {
                next!(rest(operand), false);
            }
        }
        "builtin" | "nohup" | "setsid" | "unbuffer" | "torsocks" | "fakeroot" | "eatmydata" | "catchsegv"
        | "dbus-run-session" | "firejail" | "proxychains" | "proxychains4" | "nocache" => {
            next!(rest(skip_options(argv, 1, "f", &[])), false);
        }
        "exec" => next!(rest(skip_options(argv, 1, "a", &[])), false),
        "nice" => next!(rest(skip_options(argv, 1, "n", &["adjustment"])), false),
        "time" => next!(rest(skip_options(argv, 1, "fo", &["format", "output"])), false),
        "stdbuf" => next!(rest(skip_options(argv, 1, "ioe", &["input", "output", "error"])), false),
        "ionice"
            if !argv
                .iter()
                .any(|a| matches!(a.as_str(), "-p" | "-P" | "--pid" | "--pgid")) =>
        {
            next!(rest(skip_options(argv, 1, "cnu", &["class", "classdata"])), false);
        }
        "timeout" => next!(rest(skip_options(argv, 1, "sk", &["signal", "kill-after"]) + 1), false),
        "chrt" | "taskset" if !argv.iter().any(|a| a == "-p" || a == "--pid") => {
            next!(
                rest(skip_options(argv, 1, "TPD", &["sched-runtime", "sched-period", "sched-deadline"]) + 1),
                false
            );
        }
        "chroot" => next!(rest(skip_options(argv, 1, "", &["userspec", "groups"]) + 1), false),
        "strace" | "ltrace" => {
            next!(
                rest(skip_options(
                    argv,
                    1,
                    "oepsuEPXbaSIn",
                    &["output", "trace", "signal", "attach", "user"]
                )),
                false
            )
        }
        "unshare" | "nsenter" | "systemd-run" | "systemd-inhibit" | "xvfb-run" | "faketime" | "caffeinate" => {
            let operand = skip_options(
                argv,
                1,
                "tpEnsfe",
                &[
                    "unit",
                    "property",
                    "description",
                    "slice",
                    "uid",
                    "gid",
                    "setenv",
                    "what",
                    "who",
                    "why",
                    "mode",
                ],
            );
            let skip = usize::from(name == "faketime");
            next!(rest(operand + skip), false);
        }
        "flock" => {
            if let Some(script) = option_value(argv, 'c', "command") {
                nested.push(Nested { script });
            } else {
                next!(
                    rest(skip_options(argv, 1, "wE", &["timeout", "conflict-exit-code"]) + 1),
                    false
                );
            }
        }
        "script" => {
            if let Some(script) = option_value(argv, 'c', "command") {
                nested.push(Nested { script });
            }
        }
        "busybox" | "toybox" if argv.get(1).is_some_and(|a| !a.starts_with('-')) => next!(rest(1), false),
        "xargs" => {
            let operand = skip_options(
                argv,
                1,
                "adEILnPs",
                &[
                    "arg-file",
                    "delimiter",
                    "eof",
                    "replace",
                    "max-lines",
                    "max-args",
                    "max-procs",
                    "max-chars",
                    "process-slot-var",
                ],
            );
            let inner = rest(operand);
            next!(
                if inner.is_empty() {
                    vec!["echo".to_owned()]
                } else {
                    inner
                },
                true
            );
        }
        "find" => {
            let starts = find_start_paths(&argv[1..]);
            let mut index = 1;
            while index < argv.len() {
                if matches!(argv[index].as_str(), "-exec" | "-execdir" | "-ok" | "-okdir") {
                    let end = argv[index + 1..]
                        .iter()
                        .position(|a| a == ";" || a == "+")
                        .map_or(argv.len(), |p| index + 1 + p);
                    let inner = &argv[index + 1..end];
                    for start in &starts {
                        let substituted: Vec<String> = inner.iter().map(|a| a.replace("{}", start)).collect();
                        next!(substituted, false);
                    }
                    index = end;
                }
                index += 1;
            }
        }
        "watch" => {
            let operand = skip_options(argv, 1, "nq", &["interval", "differences"]);
            let exec = argv[1..operand].iter().any(|a| a == "-x" || a == "--exec");
            if exec {
                next!(rest(operand), false);
            } else if operand < argv.len() {
                nested.push(Nested {
                    script: argv[operand..].join(" "),
                });
            }
        }
        "eval" if argv.len() > 1 => nested.push(Nested {
            script: argv[1..].join(" "),
        }),
        _ if is_shell(argv) => {
            let skip = if name == "busybox" { 2 } else { 1 };
            let mut index = skip;
            let mut wants_string = false;
            while let Some(arg) = argv.get(index) {
                if arg == "-o" || arg == "+o" || arg == "--rcfile" || arg == "--init-file" {
                    index += 2;
                    continue;
                }
                if arg == "--" {
                    index += 1;
                    break;
                }
                if arg.starts_with('-') || arg.starts_with('+') {
                    if !arg.starts_with("--") && arg.contains('c') {
                        wants_string = true;
                    }
                    index += 1;
                    continue;
                }
                break;
            }
            if wants_string && let Some(script) = argv.get(index) {
                nested.push(Nested { script: script.clone() });
            }
        }
        _ => {}
    }
}

/// `env -S` splitting: words as a shell would split them (quotes honoured).
fn split_words(text: &str) -> Vec<String> {
    shell::parse(text)
        .ok()
        .and_then(|script| script.commands.into_iter().next())
        .map(|command| {
            let mut words = command.assignments;
            words.extend(command.argv);
            words
        })
        .unwrap_or_else(|| text.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn wrappers_unwrap() {
        let programs = |argv: &[&str]| -> Vec<String> {
            unwrap(&strings(argv))
                .0
                .into_iter()
                .map(|level| level.argv.join(" "))
                .collect()
        };
        assert_eq!(
            programs(&[
                "env", "-i", "FOO=1", "nice", "-n", "5", "timeout", "-s", "KILL", "10", "nohup", "rm", "x"
            ]),
            [
                "env -i FOO=1 nice -n 5 timeout -s KILL 10 nohup rm x",
                "nice -n 5 timeout -s KILL 10 nohup rm x",
                "timeout -s KILL 10 nohup rm x",
                "nohup rm x",
                "rm x"
            ]
        );
        assert_eq!(programs(&["env", "-S", "rm -rf", "/"]), ["env -S rm -rf /", "rm -rf /"]);
        assert_eq!(programs(&["command", "-v", "rm"]), ["command -v rm"]);
        assert_eq!(programs(&["xargs", "-n1", "-I", "{}", "rm", "-rf"])[1], "rm -rf");
        assert_eq!(
            programs(&["find", "/", "~", "-name", "x", "-exec", "rm", "-rf", "{}", ";"])[1..],
            ["rm -rf /", "rm -rf ~"]
        );
        assert_eq!(programs(&["busybox", "rm", "-rf", "/"])[1], "rm -rf /");
        let (_, nested) = unwrap(&strings(&["bash", "-xec", "rm -rf /", "name"]));
        assert_eq!(nested[0].script, "rm -rf /");
        let (_, nested) = unwrap(&strings(&["watch", "-n", "1", "rm", "-rf", "~"]));
        assert_eq!(nested[0].script, "rm -rf ~");
        assert!(unwrap(&strings(&["bash", "script.sh"])).1.is_empty());
    }
}
