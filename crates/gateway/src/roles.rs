//! Which role each public method needs over TCP (REST and ATP alike). The owner on `api.sock`
//! acts as admin and may call everything, including the methods that are not callable remotely.

use aiventbus_proto::auth::Role;

/// The least role that may call `method` over HTTP or ATP; `None` when it is not callable
/// remotely at all (owner-only methods on `api.sock`, subscriptions, internal methods, and names
/// that are not public methods).
pub fn required_role(method: &str) -> Option<Role> {
    Some(match method {
        // Reads.
        "events.get" | "events.list" | "events.chain" | "events.trace" | "topics.list" | "agents.get"
        | "agents.list" | "agents.memory" | "rules.get" | "rules.list" | "assignments.list" | "actions.get"
        | "actions.pending" | "actions.history" | "policy.explain" | "sessions.list" | "requests.get"
        | "requests.list" | "knowledge.get" | "knowledge.list" | "memory.get" | "memory.list" | "memory.search"
        | "producers.list" | "cron.list" | "system.status" | "system.services" | "system.version"
        | "events.subscribe" | "events.unsubscribe" => Role::Viewer,
        // Publishing, deciding, answering, and the human-input hub.
        "events.publish"
        | "actions.approve"
        | "actions.deny"
        | "actions.deny_pending"
        | "assignments.cancel_pending"
        | "sessions.register"
        | "sessions.heartbeat"
        | "sessions.set_state"
        | "requests.create"
        | "requests.respond"
        | "requests.dismiss"
        | "inbox.poll"
        | "inbox.ack"
        | "knowledge.set"
        | "knowledge.delete"
        | "memory.add"
        | "memory.update"
        | "memory.delete"
        | "query.ask" => Role::Operator,
        // Configuration, people and commands.
        "agents.create" | "agents.update" | "agents.delete" | "agents.enable" | "agents.disable" | "rules.create"
        | "rules.update" | "rules.delete" | "keys.list" | "keys.revoke" | "users.list" | "users.set_role"
        | "users.delete" | "users.set_password" | "secrets.set" | "secrets.list" | "secrets.delete" | "exec.run"
        | "exec.get" | "exec.cancel" | "producers.enable" | "producers.disable" | "cron.add" | "cron.remove" => {
            Role::Admin
        }
        // `keys.create` and `dashboard.link` belong to the owner on api.sock (SPEC §16).
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_spec() {
        assert_eq!(required_role("events.list"), Some(Role::Viewer));
        assert_eq!(required_role("events.publish"), Some(Role::Operator));
        assert_eq!(required_role("actions.approve"), Some(Role::Operator));
        assert_eq!(required_role("requests.respond"), Some(Role::Operator));
        assert_eq!(required_role("agents.create"), Some(Role::Admin));
        assert_eq!(required_role("rules.delete"), Some(Role::Admin));
        assert_eq!(required_role("users.set_role"), Some(Role::Admin));
        assert_eq!(required_role("exec.run"), Some(Role::Admin));
        assert_eq!(required_role("keys.create"), None);
        assert_eq!(required_role("dashboard.link"), None);
        assert_eq!(required_role("actions.propose"), None);
        assert_eq!(required_role("system.health"), None);
        assert_eq!(required_role("nonsense"), None);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
