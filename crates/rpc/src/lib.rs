//! The plumbing every aiventbus process shares: line-framed JSON-RPC over Unix sockets (server and
//! reconnecting client), capability tokens, credentials, paths, the config file, readiness
//! notification, request metrics, shutdown signals and logging.

pub mod client;
pub mod codec;
pub mod config;
pub mod creds;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod token;

pub use client::{Client, ClientError, Endpoint, Notice, Subscription, TokenSource};
pub use error::RpcError;
pub use server::{Auth, Handler, Methods, Peer, Reply, ServeOptions, bind, serve};
