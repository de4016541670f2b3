//! The service table: which services init runs, in start order, and which methods each may call
//! on the others. Adding a service is adding a row here; nothing else names services.

/// One supervised service.
#[derive(Debug)]
pub struct ServiceSpec {
    /// Short name: socket `<name>.sock`, credentials dir, log file, `system.services` entry.
    pub name: &'static str,
    /// Executable file name, looked up in the libexec dir.
    pub binary: &'static str,
    /// The tokens it gets: `(audience, scope entries)`, written as `token.<audience>` in its
    /// credentials dir. An audience is `init` or a service earlier in the table.
    pub calls: &'static [(&'static str, &'static [&'static str])],
    /// Gets `secrets.key`: the key (derived from the master key) that stored secrets are
    /// encrypted under.
    pub secrets: bool,
}

/// The label the secrets key is derived from the master key with.
pub const SECRETS_LABEL: &[u8] = b"aiventbus secrets v1";

/// init's own name: the audience of tokens for `init.sock` and the subject of init's tokens.
pub const INIT: &str = "init";

/// The service init publishes `system.service` events to.
pub const EVENTS_SERVICE: &str = "bus";

/// What init itself may call on every service.
const INIT_SCOPE: &[&str] = &["system.health"];

/// What init may additionally call on [`EVENTS_SERVICE`].
const INIT_EVENTS_SCOPE: &[&str] = &["events.publish"];

/// Every supervised service, in start order; stopped in reverse.
pub static SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "bus",
        binary: "aiventbus-bus",
        calls: &[],
        secrets: false,
    },
    ServiceSpec {
        name: "exec",
        binary: "aiventbus-exec",
        calls: &[(
            "bus",
            &["events.publish", "knowledge.get", "knowledge.set", "system.health"],
        )],
        secrets: false,
    },
    ServiceSpec {
        name: "policy",
        binary: "aiventbus-policy",
        calls: &[
            (
                "bus",
                &["events.publish", "events.get", "events.chain", "system.health"],
            ),
            (
                "exec",
                &[
                    "exec.execute",
                    "exec.outcome",
                    "exec.notify",
                    "exec.cancel",
                    "tools.list",
                    "system.health",
                ],
            ),
        ],
        secrets: false,
    },
    ServiceSpec {
        name: "llm",
        binary: "aiventbus-llm",
        calls: &[
            (
                "bus",
                &[
                    "events.*",
                    "assignments.claim",
                    "assignments.heartbeat",
                    "assignments.complete",
                    "assignments.fail",
                    "assignments.suspend",
                    "assignments.resume",
                    "assignments.list",
                    "assignments.cancel_pending",
                    "knowledge.*",
                    "memory.*",
                    "system.health",
                ],
            ),
            ("policy", &["actions.propose", "actions.get", "system.health"]),
            ("exec", &["tools.list", "system.health"]),
        ],
        secrets: true,
    },
    ServiceSpec {
        name: "router",
        binary: "aiventbus-router",
        calls: &[
            (
                "bus",
                &[
                    "events.subscribe",
                    "events.unsubscribe",
                    "events.publish",
                    "events.get",
                    "assignments.create",
                    "assignments.list",
                    "system.health",
                ],
            ),
            ("llm", &["agents.get", "agents.list", "system.health"]),
        ],
        secrets: false,
    },
    ServiceSpec {
        name: "gateway",
        binary: "aiventbus-gateway",
        calls: &[
            (
                "bus",
                &[
                    "events.*",
                    "topics.list",
                    "knowledge.*",
                    "memory.*",
                    "assignments.list",
                    "assignments.cancel_pending",
                    "system.health",
                    "system.metrics",
                ],
            ),
            (
                "exec",
                &[
                    "exec.get",
                    "exec.cancel",
                    "tools.list",
                    "system.health",
                    "system.metrics",
                ],
            ),
            (
                "policy",
                &[
                    "actions.get",
                    "actions.pending",
                    "actions.history",
                    "actions.approve",
                    "actions.deny",
                    "actions.deny_pending",
                    "policy.explain",
                    "sessions.*",
                    "requests.*",
                    "inbox.*",
                    "exec.run",
                    "system.health",
                    "system.metrics",
                ],
            ),
            ("llm", &["agents.*", "llm.status", "system.health", "system.metrics"]),
            ("router", &["rules.*", "system.health", "system.metrics"]),
            (INIT, &["system.services", "system.health"]),
        ],
        secrets: true,
    },
];

/// The scope of the token init presents to `service`.
pub fn init_scope(service: &str) -> Vec<&'static str> {
    let mut scope = INIT_SCOPE.to_vec();
    if service == EVENTS_SERVICE {
        scope.extend_from_slice(INIT_EVENTS_SCOPE);
    }
    scope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_not_init() {
        for (index, spec) in SERVICES.iter().enumerate() {
            assert_ne!(spec.name, INIT);
            assert!(
                SERVICES[index + 1..].iter().all(|other| other.name != spec.name),
                "{} appears twice",
                spec.name
            );
        }
    }

    #[test]
    fn services_only_call_init_or_services_started_before_them() {
        for (index, spec) in SERVICES.iter().enumerate() {
            for (audience, scope) in spec.calls {
                assert!(!scope.is_empty(), "{} -> {audience} has an empty scope", spec.name);
                assert!(
                    *audience == INIT || SERVICES[..index].iter().any(|earlier| earlier.name == *audience),
                    "{} calls {audience}, which is not started before it",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn events_service_is_supervised_and_init_may_publish_to_it() {
        assert!(SERVICES.iter().any(|spec| spec.name == EVENTS_SERVICE));
        assert!(init_scope(EVENTS_SERVICE).contains(&"events.publish"));
        for spec in SERVICES.iter().filter(|spec| spec.name != EVENTS_SERVICE) {
            assert_eq!(init_scope(spec.name), vec!["system.health"]);
        }
    }
}
