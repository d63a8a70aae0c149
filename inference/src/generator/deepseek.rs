//! The DeepSeek-V2 generator: one sequence at a time through [`FixedDecoder`] (on CUDA, the
//! decode step is a replayed CUDA graph), DeepSeek-V2-Chat's template and tokenizer.

use super::sampling::{RepeatPenalty, Sampler};
use super::decode_loop::decode_loop;
use super::{ChatMessage, Flow, GenerationStats, Generator, SamplingParams};
use crate::deepseek::{DeepSeekTokenizer, DeepSeekV2, FixedDecoder};
use crate::ModelError;
use candle_core::Device;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

pub struct DeepSeekGenerator {
    id: String,
    tokenizer: DeepSeekTokenizer,
    /// The model and its one preallocated sequence cache; a request holds it throughout.
    decoder: Mutex<FixedDecoder>,
    context_tokens: usize,
    repeat: RepeatPenalty,
}

impl DeepSeekGenerator {
    /// Loads checkpoint, tokenizer and chat template from `dir` (bf16 on CUDA, f32 on CPU)
    /// with a cache for `context_tokens` tokens (prompt plus answer).
    pub fn load(dir: &Path, device: &Device, context_tokens: usize) -> Result<Self, ModelError> {
        let tokenizer = DeepSeekTokenizer::from_dir(dir)?;
        let model = DeepSeekV2::load(dir, device)?;
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "deepseek-v2".into());
        Self::new(id, &model, tokenizer, context_tokens)
    }

    /// From a loaded model and tokenizer.
    pub fn new(
        id: impl Into<String>,
        model: &DeepSeekV2,
        tokenizer: DeepSeekTokenizer,
        context_tokens: usize,
    ) -> Result<Self, ModelError> {
        let context_tokens = context_tokens.min(model.max_positions());
        let decoder = FixedDecoder::new(model, context_tokens)?;
        Ok(Self {
            id: id.into(),
            tokenizer,
            context_tokens: context_tokens.min(decoder.capacity()),
            decoder: Mutex::new(decoder),
            // The repeat penalty is off by default: DeepSeek's own generation config uses none.
            repeat: RepeatPenalty { penalty: 1.0, last_n: 64 },
        })
    }

    /// Sets the repeat penalty applied to generated tokens.
    pub fn with_repeat_penalty(mut self, repeat: RepeatPenalty) -> Self {
        self.repeat = repeat;
        self
    }

    pub fn tokenizer(&self) -> &DeepSeekTokenizer {
        &self.tokenizer
    }
}

impl Generator for DeepSeekGenerator {
    fn id(&self) -> &str {
        &self.id
    }

    fn context_tokens(&self) -> usize {
        self.context_tokens
    }

    fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.tokenizer.encode(text)?.len())
    }

    fn generate(
        &self,
        messages: &[ChatMessage],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<GenerationStats, ModelError> {
        let mut sampler = Sampler::new(params, self.repeat)?;
        let prompt = self.tokenizer.encode_chat(messages)?;
        let prompt_tokens = prompt.len();
        let mut stats = super::start_stats(prompt_tokens, params.max_tokens, self.context_tokens)?;
        if params.max_tokens == 0 {
            return Ok(stats);
        }
        // A panic in an earlier request poisons the lock; the cache is reset below anyway.
        let mut dec = self.decoder.lock().unwrap_or_else(|p| p.into_inner());
        dec.reset();
        let eos = self.tokenizer.eos_token_id();
        let started = Instant::now();
        let result = (|| {
            let logits = dec.prefill(&prompt)?.squeeze(0)?;
            let prefill = started.elapsed();
            let mut shown = String::new();
            let tokenizer = &self.tokenizer;
            let (completion, finish) = decode_loop(
                logits,
                &mut sampler,
                params.max_tokens,
                &params.stop,
                on_text,
                |t| t == eos,
                |generated| new_text(tokenizer, generated, &mut shown),
                |token, _| Ok(dec.step(token)?.squeeze(0)?),
            )?;
            stats.finish_reason = finish;
            stats.completion_tokens = completion;
            let decode = started.elapsed().saturating_sub(prefill);
            tracing::debug!(
                id = self.id,
                prompt_tokens,
                completion_tokens = stats.completion_tokens,
                finish = ?stats.finish_reason,
                prefill_ms = prefill.as_millis() as u64,
                decode_tok_per_s = stats.completion_tokens.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9),
                "generation done"
            );
            Ok(stats)
        })();
        dec.reset();
        result
    }
}

/// The bytes the newest token adds to the answer: what decoding all of `generated` adds to
/// `shown` (byte-level BPE pieces can be parts of one character, so nothing until it is whole).
pub(crate) fn new_text(tokenizer: &DeepSeekTokenizer, generated: &[u32], shown: &mut String) -> Result<Vec<u8>, ModelError> {
    let text = tokenizer.decode(generated)?;
    if text.ends_with('\u{FFFD}') || text.len() <= shown.len() || !text.starts_with(shown.as_str()) {
        return Ok(Vec::new());
    }
    let piece = text.as_bytes()[shown.len()..].to_vec();
    *shown = text;
    Ok(piece)
}
