//! `aiventbus-router`: Routes events to agents: rules, lanes, assignments.

fn main() {
    aiventbus_rpc::service::main("router", aiventbus_router::run)
}
