//! `aiventbus-bus`: the durable event bus service.

fn main() {
    aiventbus_rpc::service::main("bus", aiventbus_bus::run)
}
