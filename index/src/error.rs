/// Failures of the store and the indexes, in the terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("collection not found: {0}")]
    CollectionNotFound(String),
    #[error("collection already exists: {0}")]
    CollectionExists(String),
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("an API key named {0:?} already exists")]
    KeyExists(String),
    #[error("document not found: {0}")]
    DocumentNotFound(i64),
    #[error("collection {collection} was built with embedder {built_with}, not {requested}; re-embed it first")]
    EmbedderMismatch { collection: String, built_with: String, requested: String },
    #[error("re-embedding incomplete: {staged} of {total} chunks have new vectors; run it again")]
    ReembedIncomplete { staged: u64, total: u64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("keyword index: {0}")]
    Keyword(#[from] tantivy::TantivyError),
    #[error("vector index: {0}")]
    Vector(String),
    #[error("embedding the query: {0}")]
    Embed(#[from] kb_inference::ModelError),
    #[error("io on {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("background task failed: {0}")]
    Task(String),
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
