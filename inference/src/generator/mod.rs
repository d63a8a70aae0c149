//! Answer generators: the small CPU default and the GPU DeepSeek MoE, behind one trait.

use crate::ModelError;
use serde::{Deserialize, Serialize};

mod chatml;
mod decode_loop;
pub mod deepseek;
pub mod gguf_tokenizer;
mod requant;
pub(crate) mod sampling;
pub mod smollm;
mod text_stream;

pub use gguf_tokenizer::GgufTokenizer;
pub use requant::WeightFormat;
pub use sampling::RepeatPenalty;
pub use smollm::SmolLmGenerator;

/// One turn of a chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// How to pick tokens. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { max_tokens: 256, temperature: 0.0, top_p: None, stop: Vec::new(), seed: 42 }
    }
}

/// What a finished generation reports.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller's token callback asked to stop (client gone).
    Cancelled,
}

/// Whether generation should go on after a token was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Generates chat answers token by token.
pub trait Generator: Send + Sync {
    /// A stable name for logs and the API (`model` field).
    fn id(&self) -> &str;
    /// The context window in tokens (prompt plus answer).
    fn context_tokens(&self) -> usize;
    /// Tokens `text` takes in this model, to fit prompts into the context budget.
    fn count_tokens(&self, text: &str) -> Result<usize, ModelError>;
    /// Applies the model's chat template to `messages` and generates, handing each piece of
    /// decoded text to `on_text` as soon as it is known; returning [`Flow::Stop`] cancels.
    fn generate(
        &self,
        messages: &[ChatMessage],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<GenerationStats, ModelError>;
}

/// The stats a generation starts from, or the overflow error when the prompt and the answer
/// cannot both fit in `context_tokens`.
pub(crate) fn start_stats(
    prompt_tokens: usize,
    max_tokens: usize,
    context_tokens: usize,
) -> Result<GenerationStats, ModelError> {
    if prompt_tokens.saturating_add(max_tokens) > context_tokens {
        return Err(ModelError::ContextOverflow { prompt_tokens, max_tokens, context_tokens });
    }
    Ok(GenerationStats { prompt_tokens, completion_tokens: 0, finish_reason: FinishReason::Length })
}
