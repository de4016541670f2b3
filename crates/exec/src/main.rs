//! `aiventbus-exec`: Carries out decided actions: processes, files, HTTP, notifications, MCP tools.

fn main() {
    aiventbus_rpc::service::main("exec", aiventbus_exec::run)
}
