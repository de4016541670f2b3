//! `aiventbus-policy`: Decides allow/confirm/deny, holds approvals and human-input requests.

fn main() {
    aiventbus_rpc::service::main("policy", aiventbus_policy::run)
}
