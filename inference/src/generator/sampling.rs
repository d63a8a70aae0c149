//! Next-token choice: repeat penalty, then greedy or temperature + top-p with a seeded RNG.

use candle_core::{DType, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::utils::apply_repeat_penalty;

use super::SamplingParams;
use crate::ModelError;

/// The repeat penalty: logits of recently generated tokens are divided by `penalty` (1.0
/// turns it off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepeatPenalty {
    pub penalty: f32,
    /// How many of the most recent tokens count.
    pub last_n: usize,
}

impl Default for RepeatPenalty {
    fn default() -> Self {
        Self { penalty: 1.1, last_n: 64 }
    }
}

pub struct Sampler {
    processor: LogitsProcessor,
    repeat: RepeatPenalty,
}

impl Sampler {
    /// Checks `params` and builds the sampler; temperature 0 is greedy.
    pub fn new(params: &SamplingParams, repeat: RepeatPenalty) -> Result<Self, ModelError> {
        let t = params.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(ModelError::InvalidInput(format!("temperature must be >= 0, got {t}")));
        }
        if let Some(p) = params.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ModelError::InvalidInput(format!("top_p must be in (0, 1], got {p}")));
            }
        }
        if !repeat.penalty.is_finite() || repeat.penalty <= 0.0 {
            return Err(ModelError::InvalidInput(format!("repeat penalty must be > 0, got {}", repeat.penalty)));
        }
        let temperature = (t > 0.0).then_some(t);
        // top_p = 1 keeps every token: plain temperature sampling, without the sort.
        let top_p = params.top_p.filter(|&p| p < 1.0);
        Ok(Self { processor: LogitsProcessor::new(params.seed, temperature, top_p), repeat })
    }

    /// Picks the next token from `logits` (shape `[vocab]`) given the tokens generated so far.
    pub fn sample(&mut self, logits: &Tensor, generated: &[u32]) -> Result<u32, ModelError> {
        let logits = logits.to_dtype(DType::F32)?;
        let logits = if self.repeat.penalty == 1.0 || generated.is_empty() {
            logits
        } else {
            // Only generated tokens count, not the prompt: a knowledge-base answer should be
            // free to repeat names and terms from the retrieved context.
            let start = generated.len().saturating_sub(self.repeat.last_n);
            apply_repeat_penalty(&logits, self.repeat.penalty, &generated[start..])?
        };
        Ok(self.processor.sample(&logits)?)
    }
}
