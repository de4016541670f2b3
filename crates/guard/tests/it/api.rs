//! The checks other crates call directly: taint, URL and address checks, confinement, settings
//! errors, and what `decide` reports besides the decision.

use std::net::IpAddr;

use aiventbus_guard::{PolicyInput, Request, Settings, decide, is_tainted, net, paths};
use aiventbus_proto::policy::Decision;
use serde_json::{Map, Value, json};

use crate::fixture::{fixture, input};

fn params(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("params must be an object"),
    }
}

#[test]
fn taint_follows_untrusted_topics_through_ancestors() {
    let fixture = fixture();
    assert!(is_tainted(&fixture.settings, ["user.query", "clipboard.changed"]));
    assert!(is_tainted(&fixture.settings, ["mail.received"]));
    assert!(!is_tainted(&fixture.settings, ["mail.received.extra", "user.query"]));
    assert!(!is_tainted(&fixture.settings, std::iter::empty::<&str>()));
}

#[test]
fn urls_are_classified_like_the_http_client_reads_them() {
    let fixture = fixture();
    let check = net::check_url(&fixture.settings, "https://API.Example.com:8443/x").unwrap();
    assert_eq!(check.host, "api.example.com");
    assert_eq!(check.port, 8443);
    assert!(check.egress_allowed);
    assert_eq!(check.ip, None);
    for literal in [
        "http://0x7f.1/",
        "http://017700000001/",
        "http://2130706433/",
        "http://127.1/",
    ] {
        let refusal = net::check_url(&fixture.settings, literal).unwrap_err();
        assert_eq!(refusal.rule, "deny.private_address", "{literal}");
        assert!(refusal.reason.contains("127.0.0.1"), "{literal}: {}", refusal.reason);
    }
    let check = net::check_url(&fixture.settings, "http://93.184.216.34/").unwrap();
    assert_eq!(check.ip, Some("93.184.216.34".parse().unwrap()));
    assert!(!check.egress_allowed);
    assert_eq!(
        net::check_url(&fixture.settings, "not a url").unwrap_err().rule,
        "invalid_params"
    );
    assert_eq!(
        net::check_url(&fixture.settings, "gopher://x/").unwrap_err().rule,
        "deny.scheme"
    );
}

#[test]
fn resolved_addresses_are_checked_with_private_allow() {
    let fixture = fixture();
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    assert!(net::check_ip(&fixture.settings, "example.com", ip("93.184.216.34")).is_ok());
    let refusal = net::check_ip(&fixture.settings, "rebind.example.com", ip("127.0.0.1")).unwrap_err();
    assert_eq!(refusal.rule, "deny.private_address");
    assert!(
        refusal.reason.contains("rebind.example.com (127.0.0.1)"),
        "{}",
        refusal.reason
    );
    assert!(refusal.reason.contains("loopback"), "{}", refusal.reason);
    assert!(net::check_ip(&fixture.settings, "nas.lan", ip("192.168.1.20")).is_ok());
    assert!(net::check_ip(&fixture.settings, "other.lan", ip("192.168.1.20")).is_err());
    assert!(net::check_ip(&fixture.settings, "x", ip("10.1.200.7")).is_ok());
    assert!(net::check_ip(&fixture.settings, "x", ip("10.2.0.1")).is_err());
    assert!(net::check_ip(&fixture.settings, "x", ip("::ffff:10.1.0.9")).is_ok());
}

#[test]
fn confine_answers_canonical_paths() {
    let fixture = fixture();
    let resolved = paths::confine(&fixture.settings, "~/roots/sub/../notes.txt", true).unwrap();
    assert_eq!(resolved, fixture.root.join("notes.txt"));
    let refusal = paths::confine(&fixture.settings, "~/roots/missing.txt", true).unwrap_err();
    assert_eq!(refusal.rule, "not_found");
    assert!(paths::confine(&fixture.settings, "~/roots/missing.txt", false).is_ok());
    let refusal = paths::confine(&fixture.settings, "~/roots/keys/id_rsa", false).unwrap_err();
    assert_eq!(refusal.rule, "deny.protected_path");
    assert!(refusal.reason.contains("~/.ssh"), "{}", refusal.reason);
    let refusal = paths::confine(&fixture.settings, "~/outside.txt", false).unwrap_err();
    assert_eq!(refusal.rule, "deny.outside_roots");
    assert!(refusal.reason.contains("~/roots, ~/projects"), "{}", refusal.reason);
}

#[test]
fn verdicts_carry_commands_and_paths() {
    let fixture = fixture();
    let map = params(json!({"command": "cd /tmp && ls -l | grep x; echo $(date)"}));
    let verdict = decide(
        &fixture.settings,
        &Request {
            action_type: "shell_exec",
            params: &map,
            agent: None,
            tainted: false,
            owner: false,
        },
    );
    assert_eq!(verdict.decision, Decision::Confirm);
    let expected: Vec<Vec<String>> = [
        &["cd", "/tmp"][..],
        &["ls", "-l"],
        &["grep", "x"],
        &["echo", "$(date)"],
        &["date"],
    ]
    .iter()
    .map(|argv| argv.iter().map(|s| (*s).to_owned()).collect())
    .collect();
    assert_eq!(verdict.commands, expected);
    assert!(verdict.reason.contains("5 commands"), "{}", verdict.reason);
    let map = params(json!({"path": "~/roots/link"}));
    let verdict = decide(
        &fixture.settings,
        &Request {
            action_type: "file_read",
            params: &map,
            agent: None,
            tainted: false,
            owner: false,
        },
    );
    assert_eq!(verdict.decision, Decision::Deny);
    assert_eq!(verdict.resolved_path, None);
    let map = params(json!({"path": "~/roots/notes.txt"}));
    let verdict = decide(
        &fixture.settings,
        &Request {
            action_type: "file_read",
            params: &map,
            agent: None,
            tainted: false,
            owner: false,
        },
    );
    assert_eq!(verdict.resolved_path, Some(fixture.root.join("notes.txt")));
}

#[test]
fn builtin_allow_can_be_turned_off() {
    let fixture = fixture();
    let mut config = input();
    config.builtin_allow = false;
    let settings = Settings::new(&config, &fixture.home, &[]).unwrap();
    let map = params(json!({"argv": ["ls"]}));
    let request = Request {
        action_type: "shell_exec",
        params: &map,
        agent: None,
        tainted: false,
        owner: false,
    };
    assert_eq!(decide(&settings, &request).rule, "trust.default.shell_exec");
    assert_eq!(decide(&fixture.settings, &request).rule, "allow.builtin[ls]");
}

#[test]
fn bad_settings_name_their_keys() {
    let fixture = fixture();
    let mut config = PolicyInput {
        untrusted_topics: vec!["bad..topic".into()],
        file_roots: vec!["relative/dir".into()],
        egress_allow: vec!["a b".into()],
        private_allow: vec!["10.0.0.0/99".into()],
        ..PolicyInput::default()
    };
    config.trust.insert("teleport".into(), "auto".into());
    config.trust.insert("shell_exec".into(), "sometimes".into());
    config.allow.push(aiventbus_guard::ArgvPattern {
        argv: vec!["**".into()],
        reason: None,
    });
    let error = Settings::new(&config, &fixture.home, &[]).unwrap_err();
    for key in [
        "untrusted_topics",
        "file_roots",
        "egress_allow",
        "private_allow",
        "trust.teleport",
        "trust.shell_exec",
        "allow[0].argv",
    ] {
        assert!(error.contains(key), "{key} missing from {error}");
    }
    assert!(Settings::new(&PolicyInput::default(), std::path::Path::new("relative"), &[]).is_err());
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn arbitrary_shell_strings_never_panic() {
    let fixture = fixture();
    const PIECES: [&str; 44] = [
        "a", "rm", " ", " ", "-rf", "~", "/", "*", "'", "\"", "\\", "$", "(", ")", "{", "}", "`", "|", "&", ";", "<",
        ">", "\n", "#", "é", "€", "=", "$(", "${", "$((", "<(", "<<", "EOF", "if ", "then ", "fi", "case ", " in ",
        "esac", "[[", "]]", "\t", "sh -c ", "f(){",
    ];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = random.below(24);
        let script: String = (0..len).map(|_| PIECES[random.below(PIECES.len())]).collect();
        let map = params(json!({ "command": script }));
        let verdict = decide(
            &fixture.settings,
            &Request {
                action_type: "shell_exec",
                params: &map,
                agent: None,
                tainted: false,
                owner: false,
            },
        );
        assert!(!verdict.rule.is_empty(), "{script:?}");
        assert_ne!(
            verdict.decision,
            Decision::Allow,
            "a shell string was allowed: {script:?}"
        );
    }
}

#[test]
fn pathological_strings_are_refused_or_checked_quickly() {
    let fixture = fixture();
    let check = |script: String| {
        let map = params(json!({ "command": script }));
        decide(
            &fixture.settings,
            &Request {
                action_type: "shell_exec",
                params: &map,
                agent: None,
                tainted: false,
                owner: false,
            },
        )
    };
    // Long keyword chains and deep nesting must not overflow the stack.
    let verdict = check(format!("{}rm -rf ~", "! ".repeat(5000)));
    assert_eq!(verdict.rule, "deny.rm_recursive_home");
    let verdict = check(format!("{}x", "${".repeat(5000)));
    assert_eq!(verdict.rule, "deny.unparseable");
    let verdict = check(format!("{}x", "f() ".repeat(5000)));
    assert_eq!(verdict.rule, "deny.unparseable");
    let verdict = check("x".repeat(200_000));
    assert_eq!(verdict.rule, "deny.unparseable");
    assert!(verdict.reason.contains("longer than"), "{}", verdict.reason);
    let verdict = check(format!("rm -rf ~/{}b", "*a".repeat(40)));
    assert_eq!(verdict.decision, Decision::Confirm);
    let verdict = check(format!(
        "find {} -exec find {} -exec true",
        "a b c ".repeat(3),
        "d e f ".repeat(3)
    ));
    assert_eq!(verdict.decision, Decision::Confirm);
}
