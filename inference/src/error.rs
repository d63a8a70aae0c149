use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Too many requests in flight: retry later.
    #[error("busy: {0}")]
    Busy(String),
    #[error("model file missing: {path}")]
    MissingFile { path: PathBuf },
    #[error("invalid model config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("unsupported model configuration: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tensor {name} missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {found:?}, the config needs {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("corrupt or unreadable checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("io on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The request itself is unusable (bad sampling parameters, no messages).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// Prompt plus requested answer do not fit the model's context window.
    #[error("prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context window of {context_tokens} tokens")]
    ContextOverflow { prompt_tokens: usize, max_tokens: usize, context_tokens: usize },
}
