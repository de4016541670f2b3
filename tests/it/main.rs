//! End-to-end tests: each starts the real binaries (`aiventbus-init` and the services it runs, and
//! `aibus`) in temporary directories and checks the product contract from outside.

mod agents;
mod approvals;
mod assignments;
mod atp;
mod auth;
mod cli;
mod cli_policy;
mod dashboard;
mod durability;
mod events;
mod http;
mod inbox;
mod knowledge;
mod lanes;
mod mcp;
mod protocol;
mod real_model;
mod routing;
mod subscriptions;
mod supervision;
mod support;
