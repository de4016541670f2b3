//! A fake home directory with file roots, keys, symlinks and a protected daemon dir, and the
//! settings the cases run under.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use aiventbus_guard::{ArgvPattern, PolicyInput, Settings};

/// The fake home and the settings built over it.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The canonical home directory.
    pub home: PathBuf,
    /// `~/roots`, the main file root.
    pub root: PathBuf,
    pub settings: Settings,
}

pub fn input() -> PolicyInput {
    let pattern = |argv: &[&str], reason: Option<&str>| ArgvPattern {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        reason: reason.map(str::to_owned),
    };
    PolicyInput {
        untrusted_topics: vec!["clipboard.**".into(), "webhook.**".into(), "mail.*".into()],
        file_roots: vec!["~/roots".into(), "~/projects".into()],
        egress_allow: vec!["api.example.com".into(), "*.trusted.org".into()],
        private_allow: vec!["10.1.0.0/16".into(), "nas.lan".into()],
        trust: BTreeMap::from([
            ("tool_call".to_owned(), "auto".to_owned()),
            ("get_knowledge".to_owned(), "deny".to_owned()),
        ]),
        allow: vec![
            pattern(&["make", "test"], None),
            pattern(&["cargo", "build", "**"], Some("builds are harmless")),
        ],
        deny: vec![pattern(&["git", "push", "**"], Some("no pushing from agents"))],
        builtin_allow: true,
    }
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = fs::canonicalize(dir.path()).expect("canonical temp dir").join("home");
    let root = home.join("roots");
    fs::create_dir_all(root.join("sub")).expect("roots");
    fs::create_dir_all(home.join("projects")).expect("projects");
    fs::create_dir_all(home.join(".ssh")).expect(".ssh");
    fs::create_dir_all(root.join(".aiventbus-state")).expect("state dir");
    fs::write(home.join(".ssh/id_rsa"), "PRIVATE KEY").expect("key");
    fs::write(root.join("notes.txt"), "notes").expect("notes");
    fs::write(home.join("outside.txt"), "outside").expect("outside");
    symlink("../.ssh/id_rsa", root.join("link")).expect("link");
    symlink("../.ssh/authorized_keys2", root.join("dangling")).expect("dangling link");
    symlink("../.ssh", root.join("keys")).expect("dir link");
    let settings =
        Settings::new(&input(), &home, &[root.join(".aiventbus-state")]).expect("settings from a valid input");
    Fixture {
        _dir: dir,
        home,
        root,
        settings,
    }
}
