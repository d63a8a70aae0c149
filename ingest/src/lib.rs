//! Ingestion: bytes in, indexed chunks out.
//!
//! `detect` names the format from the bytes, `parse` turns a document into text blocks
//! (pages and headings kept), `chunk` cuts blocks into token-aware chunks.

pub mod archive;
pub mod chunk;
pub mod detect;
mod error;
pub mod parse;
pub mod pipeline;

pub use chunk::{Chunk, ChunkerConfig};
pub use detect::Format;
pub use error::IngestError;
pub use parse::{Block, ParsedDocument};
