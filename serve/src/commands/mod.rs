//! One module per `kb` subcommand.

pub mod collections;
pub mod eval;
pub mod ingest;
pub mod search;
