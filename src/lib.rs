//! keyway: a transparent, prefix-routing RESP proxy. The path of a request:
//! `session` → `command` → `route` → `backend`, replies back through
//! `session` in request order. docs/architecture.md is the module map.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod client_memory;
pub mod cluster;
pub mod command;
pub mod commandstats;
pub mod config;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub mod resp;
pub mod route;
pub mod sentinel;
pub mod server;
pub mod session;
pub mod slowlog;
pub mod state;
pub mod supervisor;
pub mod tls;
pub mod wake_flag;
