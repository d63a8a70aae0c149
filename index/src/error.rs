/// Failures of the store and the indexes, in the terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// No collection has this name.
    #[error("collection not found: {0}")]
    CollectionNotFound(String),
    /// A collection of this name exists already.
    #[error("collection already exists: {0}")]
    CollectionExists(String),
    /// A collection name the store does not accept, and why.
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An API key of this name exists already.
    #[error("an API key named {0:?} already exists")]
    KeyExists(String),
    /// No document has this id.
    #[error("document not found: {0}")]
    DocumentNotFound(i64),
    /// The collection's vectors come from another embedder than the configured one.
    #[error("collection {collection} was built with embedder {built_with}, not {requested}; re-embed it first")]
    EmbedderMismatch {
        /// The collection's name.
        collection: String,
        /// The embedder that built its vectors.
        built_with: String,
        /// The configured embedder.
        requested: String,
    },
    /// A re-embedding run stopped before every chunk had its new vector.
    #[error("re-embedding incomplete: {staged} of {total} chunks have new vectors; run it again")]
    ReembedIncomplete {
        /// Chunks with a new vector so far.
        staged: u64,
        /// Chunks of the collection.
        total: u64,
    },
    /// The database failed or refused a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The keyword index failed.
    #[error("keyword index: {0}")]
    Keyword(#[from] tantivy::TantivyError),
    /// The vector index failed.
    #[error("vector index: {0}")]
    Vector(String),
    /// The embedder failed on a query or a passage.
    #[error("embedding the query: {0}")]
    Embed(#[from] kb_inference::ModelError),
    /// Reading or writing an index file failed.
    #[error("io on {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The result of every fallible operation of this crate.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
