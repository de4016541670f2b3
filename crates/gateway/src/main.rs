//! `aiventbus-gateway`: the boundary to the outside (for now the public local socket `api.sock`).

fn main() {
    aiventbus_rpc::service::main("gateway", aiventbus_gateway::run)
}
