//! The DeepSeek-V2 generator with DeepSeek-V2-Chat's template and tokenizer, decoding either
//! one sequence at a time through [`FixedDecoder`] (on CUDA, the decode step is a replayed CUDA
//! graph) or many at once through the continuous-batching [`Scheduler`].

use super::decode_loop::decode_loop;
use super::sampling::{RepeatPenalty, Sampler};
use super::text_stream::{StreamState, TextStream};
use super::{ChatMessage, FinishReason, Flow, GenerationStats, Generator, SamplingParams};
use crate::deepseek::scheduler::{Event, Request, Scheduler, SchedulerConfig, SubmitError};
use crate::deepseek::{DeepSeekTokenizer, DeepSeekV2, FixedDecoder};
use crate::ModelError;
use candle_core::Device;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

enum Backend {
    /// The model and its one preallocated sequence cache; a request holds it throughout.
    Single(Box<Mutex<FixedDecoder>>),
    /// Each request joins the running batch.
    Batched(Scheduler),
}

pub struct DeepSeekGenerator {
    id: String,
    tokenizer: DeepSeekTokenizer,
    backend: Backend,
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
            backend: Backend::Single(Box::new(Mutex::new(decoder))),
            // The repeat penalty is off by default: DeepSeek's own generation config uses none.
            repeat: RepeatPenalty { penalty: 1.0, last_n: 64 },
        })
    }

    /// As [`Self::load`], serving concurrent requests in one batch through a [`Scheduler`].
    pub fn load_batched(
        dir: &Path,
        device: &Device,
        context_tokens: usize,
        config: SchedulerConfig,
    ) -> Result<Self, ModelError> {
        let tokenizer = DeepSeekTokenizer::from_dir(dir)?;
        let model = Arc::new(DeepSeekV2::load(dir, device)?);
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "deepseek-v2".into());
        Self::batched(id, model, tokenizer, context_tokens, config)
    }

    /// A batched generator over an already loaded (possibly shared) model.
    pub fn batched(
        id: impl Into<String>,
        model: Arc<DeepSeekV2>,
        tokenizer: DeepSeekTokenizer,
        context_tokens: usize,
        config: SchedulerConfig,
    ) -> Result<Self, ModelError> {
        let context_tokens = context_tokens.min(model.max_positions()).min(config.cache_tokens);
        Ok(Self {
            id: id.into(),
            tokenizer,
            backend: Backend::Batched(Scheduler::start(model, config)?),
            context_tokens,
            repeat: RepeatPenalty { penalty: 1.0, last_n: 64 },
        })
    }

    /// Sets the repeat penalty applied to generated tokens (single-sequence decoding).
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
        let prompt = self.tokenizer.encode_chat(messages)?;
        let stats = super::start_stats(prompt.len(), params.max_tokens, self.context_tokens)?;
        if params.max_tokens == 0 {
            return Ok(stats);
        }
        match &self.backend {
            Backend::Single(decoder) => self.generate_single(decoder, prompt, stats, params, on_text),
            Backend::Batched(scheduler) => self.generate_batched(scheduler, prompt, stats, params, on_text),
        }
    }
}

impl DeepSeekGenerator {
    fn generate_single(
        &self,
        decoder: &Mutex<FixedDecoder>,
        prompt: Vec<u32>,
        mut stats: GenerationStats,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<GenerationStats, ModelError> {
        let mut sampler = Sampler::new(params, self.repeat)?;
        let prompt_tokens = prompt.len();
        // A panic in an earlier request poisons the lock; the cache is reset below anyway.
        let mut dec = decoder.lock().unwrap_or_else(|p| p.into_inner());
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

    fn generate_batched(
        &self,
        scheduler: &Scheduler,
        prompt: Vec<u32>,
        mut stats: GenerationStats,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<GenerationStats, ModelError> {
        let request = Request { prompt, params: params.clone(), end_tokens: vec![self.tokenizer.eos_token_id()] };
        let events = scheduler.submit(request).map_err(|e| match e {
            SubmitError::QueueFull => ModelError::Busy("the generation queue is full".into()),
            other => ModelError::InvalidInput(other.to_string()),
        })?;
        let mut stream = TextStream::new(&params.stop);
        let (mut generated, mut shown) = (Vec::new(), String::new());
        // Leaving this loop early drops `events`, which cancels the request in the scheduler.
        let finish = loop {
            match events.recv() {
                Ok(Event::Token(t)) => {
                    generated.push(t);
                    let bytes = new_text(&self.tokenizer, &generated, &mut shown)?;
                    if !bytes.is_empty() {
                        match stream.push(&bytes, on_text) {
                            StreamState::Continue => {}
                            StreamState::StopString => break FinishReason::Stop,
                            StreamState::Cancelled => break FinishReason::Cancelled,
                        }
                    }
                }
                Ok(Event::Done(reason)) => {
                    // The scheduler ends on an end token without sending it; it counts as generated.
                    if reason == FinishReason::Stop {
                        generated.push(self.tokenizer.eos_token_id());
                    }
                    break reason;
                }
                Ok(Event::Error(e)) => return Err(ModelError::InvalidInput(format!("generation failed: {e}"))),
                Ok(Event::Busy) => return Err(ModelError::Busy("no generation place freed up in time".into())),
                Err(_) => return Err(ModelError::InvalidInput("the scheduler stopped".into())),
            }
        };
        if finish != FinishReason::Cancelled {
            let _ = stream.finish(on_text);
        }
        stats.completion_tokens = generated.len();
        stats.finish_reason = finish;
        Ok(stats)
    }
}

/// The bytes the newest token adds to the answer: what decoding all of `generated` adds to
/// `shown` (byte-level BPE pieces can be parts of one character, so nothing until it is whole).
fn new_text(tokenizer: &DeepSeekTokenizer, generated: &[u32], shown: &mut String) -> Result<Vec<u8>, ModelError> {
    let text = tokenizer.decode(generated)?;
    if text.ends_with('\u{FFFD}') || text.len() <= shown.len() || !text.starts_with(shown.as_str()) {
        return Ok(Vec::new());
    }
    let piece = text.as_bytes()[shown.len()..].to_vec();
    *shown = text;
    Ok(piece)
}
