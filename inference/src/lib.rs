//! The candle models behind kb: sentence embedders and answer generators.
//!
//! Two small traits, [`Embedder`] and [`Generator`], are the whole contract the rest of kb
//! sees; each implementation lives in its own module.

pub mod deepseek;
pub mod embedder;
mod error;
pub mod generator;

pub use embedder::{
    bert::BertEmbedder,
    deepseek::{DeepSeekEmbedder, Pooling},
    device::EmbedderDevice,
    encoder::Precision,
    sentence::{SentenceConfig, SentencePooling},
    Embedder,
};
pub use error::ModelError;
pub use generator::{smollm::SmolLmGenerator, GgufTokenizer, RepeatPenalty, WeightFormat};
pub use generator::{ChatMessage, FinishReason, Flow, GenerationStats, Generator, Role, SamplingParams};
