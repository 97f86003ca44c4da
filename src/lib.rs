//! keyway: a transparent, prefix-routing RESP proxy. The path of a request:
//! `session` → `command` → `route` → `backend`, replies back through
//! `session` in request order. See DESIGN.md for the map.

pub mod backend;
pub mod command;
pub mod config;
pub mod resp;
pub mod route;
pub mod server;
pub mod session;
pub mod state;
pub mod metrics;
pub mod policy;
