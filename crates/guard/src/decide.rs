//! The decision pipeline: validation → deny rules → taint → allow rules → trust → default.

use aiventbus_proto::policy::Decision;

use crate::{Request, Settings, Verdict};

/// Decides one action.
pub fn decide(settings: &Settings, request: &Request) -> Verdict {
    let _ = (settings, request);
    Verdict {
        decision: Decision::Confirm,
        rule: "default".into(),
        reason: "no rule decided".into(),
        commands: Vec::new(),
        resolved_path: None,
    }
}
