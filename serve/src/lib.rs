//! `kb`: the knowledge-base service and its command line, as a library. The `kb` binary
//! (`main.rs`) parses the command line and calls [`run`]; the integration tests build the
//! HTTP service in-process from [`server::state`] and [`server::app`].

mod answer;
mod app;
mod cli;
mod commands;
pub mod config;
mod metrics;
pub mod server;

pub use cli::{run, Cli};
