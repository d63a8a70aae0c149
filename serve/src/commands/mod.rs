//! One module per `kb` subcommand.

pub mod collections;
pub mod eval;
pub mod feedback;
pub mod ingest;
pub mod keys;
pub mod qa;
pub mod reembed;
pub mod search;
pub mod sync;
