//! kb's retrieval core: the metadata store (the source of truth) and the two indexes derived
//! from it — HNSW vectors and BM25 keywords — searched alone or fused.

#![warn(missing_docs)]

mod distance;
mod engine;
mod error;
pub mod fusion;
pub mod keyword;
mod passage;
mod query_batcher;
mod query_cache;
pub mod store;
mod tokenizer;
pub mod vector;

pub use engine::{CollectionIndexes, Engine, Hit, IndexConfig, SearchMode, SearchRequest};
pub use error::{IndexError, Result};
pub use fusion::Fusion;
pub use passage::contextual_text;
pub use store::{Collection, Store};
pub use tokenizer::{is_cjk, to_simplified};
pub use vector::HnswParams;
