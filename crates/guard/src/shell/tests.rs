//! Unit tests of the shell parser.

use super::*;

fn argvs(script: &str) -> Vec<Vec<String>> {
    parse(script)
        .unwrap_or_else(|e| panic!("{script:?}: {e}"))
        .commands
        .into_iter()
        .map(|command| command.argv)
        .collect()
}

fn v(items: &[&[&str]]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|argv| argv.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

#[test]
fn quotes_and_escapes() {
    assert_eq!(argvs(r#"echo "a b" 'c d' e\ f"#), v(&[&["echo", "a b", "c d", "e f"]]));
    assert_eq!(argvs(r#"r\m -r"f" '~'"#), v(&[&["rm", "-rf", "~"]]));
    assert_eq!(argvs(r#"echo "x \"y\" \$z \q""#), v(&[&["echo", r#"x "y" $z \q"#]]));
    assert_eq!(argvs(r"echo $'\x72m\t\101' $'it\'s'"), v(&[&["echo", "rm\tA", "it's"]]));
    assert_eq!(argvs("echo a\\\nb"), v(&[&["echo", "ab"]]));
    assert_eq!(argvs("echo \"\" ''"), v(&[&["echo", "", ""]]));
    assert_eq!(argvs("echo é ü"), v(&[&["echo", "é", "ü"]]));
    assert_eq!(argvs("echo a#b # comment"), v(&[&["echo", "a#b"]]));
    assert_eq!(argvs("# only a comment"), Vec::<Vec<String>>::new());
}

#[test]
fn operators_split_commands() {
    let script = parse("a 1 ; b && c || d | e & f\ng |& h").unwrap();
    let names: Vec<&str> = script.commands.iter().map(|c| c.argv[0].as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g", "h"]);
    assert_eq!(
        script.operators,
        [
            Operator::Semicolon,
            Operator::And,
            Operator::Or,
            Operator::Pipe,
            Operator::Background,
            Operator::Newline,
            Operator::PipeAll
        ]
    );
    assert!(script.commands[3].background && script.commands[4].background);
    assert!(!script.commands[5].background);
    assert!(script.pipes_into(3, 4));
    assert!(!script.pipes_into(4, 3));
    assert!(!script.pipes_into(2, 3));
    assert_eq!(script.commands[1].text, "b");
}

#[test]
fn nesting_is_found() {
    assert_eq!(
        argvs("(a; { b; c; }) && echo $(d $(e)) \"`f`\" <(g) >(h) \"${x:-$(i)}\" $((1 + $(j)))"),
        v(&[
            &["a"],
            &["b"],
            &["c"],
            &[
                "echo",
                "$(d $(e))",
                "`f`",
                "<(g)",
                ">(h)",
                "${x:-$(i)}",
                "$((1 + $(j)))"
            ],
            &["d", "$(e)"],
            &["e"],
            &["f"],
            &["g"],
            &["h"],
            &["i"],
            &["j"],
        ])
    );
    let script = parse("echo $(rm -rf ~)").unwrap();
    assert_eq!(script.commands[1].parent, Some(0));
    assert_eq!(script.commands[1].text, "rm -rf ~");
    assert_eq!(
        argvs("echo `echo \\`id\\``"),
        v(&[&["echo", "`echo \\`id\\``"], &["echo", "`id`"], &["id"]])
    );
}

#[test]
fn control_structures() {
    assert_eq!(
        argvs("if test -f x; then rm x; elif y; then z; else w; fi"),
        v(&[&["test", "-f", "x"], &["rm", "x"], &["y"], &["z"], &["w"]])
    );
    assert_eq!(
        argvs("for f in a b; do echo $f; done; while true; do break; done"),
        v(&[&["for", "f", "in", "a", "b"], &["echo", "$f"], &["true"], &["break"]])
    );
    assert_eq!(
        argvs("case $x in a|b) one;; (c) two ;& *) three;; esac"),
        v(&[&["case", "$x"], &["one"], &["two"], &["three"]])
    );
    assert_eq!(
        argvs("[[ a < b && -f c ]] && d"),
        v(&[&["[[", "a", "<", "b", "&&", "-f", "c", "]]"], &["d"]])
    );
    assert_eq!(argvs("for ((i=0; i<3; i++)); do x; done"), v(&[&["x"]]));
    assert_eq!(argvs("! time -p x"), v(&[&["x"]]));
    assert_eq!(argvs("X=1 Y=$(z) cmd a"), v(&[&["cmd", "a"], &["z"]]));
    let script = parse("X=1 Y=(a b) cmd").unwrap();
    assert_eq!(script.commands[0].assignments, ["X=1", "Y=(a b)"]);
}

#[test]
fn functions_and_fork_bombs() {
    let script = parse(":(){ :|:& };:").unwrap();
    assert_eq!(script.functions.len(), 1);
    assert_eq!(script.functions[0].name, ":");
    let body = &script.commands[script.functions[0].body.clone()];
    assert_eq!(body.len(), 2);
    assert!(
        body.iter()
            .all(|c| c.argv == [":"] && c.background && c.function == Some(0))
    );
    assert_eq!(
        script.commands.last().map(|c| c.argv.clone()),
        Some(vec![":".to_owned()])
    );
    let script = parse("function bomb { bomb | bomb & }; bomb").unwrap();
    assert_eq!(script.functions[0].name, "bomb");
    assert_eq!(script.functions[0].body, 0..2);
}

#[test]
fn redirections() {
    let script = parse("cat <in >out 2>>err 2>&1 &>all >| clob 3<>rw > /dev/sda").unwrap();
    let command = &script.commands[0];
    assert_eq!(command.argv, ["cat"]);
    let ops: Vec<(Option<u32>, RedirectOp, &str)> = command
        .redirections
        .iter()
        .map(|r| (r.fd, r.op, r.target.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            (None, RedirectOp::In, "in"),
            (None, RedirectOp::Out, "out"),
            (Some(2), RedirectOp::Append, "err"),
            (Some(2), RedirectOp::DupOut, "1"),
            (None, RedirectOp::OutErr, "all"),
            (None, RedirectOp::Clobber, "clob"),
            (Some(3), RedirectOp::InOut, "rw"),
            (None, RedirectOp::Out, "/dev/sda"),
        ]
    );
    let script = parse("> /dev/sda").unwrap();
    assert_eq!(script.commands[0].argv, Vec::<String>::new());
    assert_eq!(script.commands[0].redirections[0].target, "/dev/sda");
    let script = parse("{ echo; } > /dev/sdb").unwrap();
    assert_eq!(script.commands[1].redirections[0].target, "/dev/sdb");
    let script = parse("sh < <(curl x)").unwrap();
    assert_eq!(script.commands[0].redirections[0].target, "<(curl x)");
    assert_eq!(script.commands[1].argv, ["curl", "x"]);
    assert_eq!(script.commands[1].parent, Some(0));
}

#[test]
fn heredocs_are_data_unless_expanded() {
    let script = parse("cat <<EOF\nrm -rf ~\n$(id)\nEOF\necho done").unwrap();
    assert_eq!(argvs_of(&script), v(&[&["cat"], &["id"], &["echo", "done"]]));
    assert_eq!(
        script.commands[0].redirections[0].body.as_deref(),
        Some("rm -rf ~\n$(id)\n")
    );
    let script = parse("cat <<'EOF' | wc\n$(id)\nEOF\n").unwrap();
    assert_eq!(argvs_of(&script), v(&[&["cat"], &["wc"]]));
    let script = parse("cat <<-END\n\trm -rf /\n\tEND\nls").unwrap();
    assert_eq!(script.commands[0].redirections[0].body.as_deref(), Some("rm -rf /\n"));
    assert_eq!(script.commands[1].argv, ["ls"]);
    let script = parse("bash <<< 'rm -rf ~'").unwrap();
    assert_eq!(script.commands[0].redirections[0].body.as_deref(), Some("rm -rf ~"));
}

fn argvs_of(script: &Script) -> Vec<Vec<String>> {
    script.commands.iter().map(|c| c.argv.clone()).collect()
}

#[test]
fn errors() {
    for bad in [
        "echo 'abc",
        "echo \"abc",
        "echo `abc",
        "echo $(abc",
        "echo ${abc",
        "(ls",
        "ls)",
        "{ ls;",
        "&& ls",
        "ls &&",
        "ls | ",
        "; ls",
        "ls ;; x",
        "echo >",
        "echo $'abc",
    ] {
        let result = parse(bad);
        assert!(result.is_err(), "{bad:?} parsed: {result:?}");
    }
    let error = parse("echo 'abc").unwrap_err();
    assert!(error.message.contains("single quote"), "{error}");
    let deep = format!("{}x{}", "$(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert!(parse(&deep).unwrap_err().message.contains("nested"));
    let fine = format!("{}x{}", "$(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
    assert!(parse(&fine).is_ok());
}

#[test]
fn odd_input_is_refused_without_panics_or_loops() {
    for text in [
        "x=(<a)",
        "$((\\é))",
        "${\\é}",
        "${é",
        "!(\\é)",
        "echo \\",
        "a=(\né\n)",
        "[[ é ]]",
        "$'\\u00e9'",
    ] {
        let _ = parse(text);
    }
    assert!(parse("x=(<a)").is_err());
    assert_eq!(argvs("echo $'\\u00e9'"), v(&[&["echo", "é"]]));
}

#[test]
fn extglob_and_literals() {
    assert_eq!(argvs("ls !(x|y) {a,b} a=b"), v(&[&["ls", "!(x|y)", "{a,b}", "a=b"]]));
}
