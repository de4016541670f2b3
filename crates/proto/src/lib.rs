//! Wire types of the aiventbus protocol: the JSON-RPC envelope and error codes, one marker type per
//! method, the event envelope and topic patterns. Nothing here does I/O; every service and client
//! speaks through these types.
#![deny(missing_docs)]

/// Declares a method marker: `method!(/// doc, Marker, "ns.verb", Params, Result)`.
macro_rules! method {
    ($(#[$doc:meta])* $marker:ident, $name:literal, $params:ty, $result:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $marker;
        impl Method for $marker {
            const NAME: &'static str = $name;
            type Params = $params;
            type Result = $result;
        }
    };
}

pub mod agents;
pub mod atp;
pub mod auth;
pub mod event;
pub mod exec;
pub mod jsonrpc;
pub mod methods;
pub mod pattern;
pub mod policy;

pub use event::{Event, EventStatus, Priority};
pub use jsonrpc::{ErrorCode, ErrorObject};
pub use methods::Method;
pub use pattern::TopicPattern;

/// Version of the wire protocol spoken on every socket; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
