//! `aiventbus-llm`: Runs agents: model providers, command agents, context, structured output.

fn main() {
    aiventbus_rpc::service::main("llm", aiventbus_llm::run)
}
