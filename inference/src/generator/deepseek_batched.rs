//! The DeepSeek-V2 generator for many concurrent requests: each `generate` call is one request
//! to the continuous-batching [`Scheduler`], which decodes it together with the others.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use super::deepseek::new_text;
use super::text_stream::{StreamState, TextStream};
use super::{ChatMessage, FinishReason, Flow, GenerationStats, Generator, SamplingParams};
use crate::deepseek::scheduler::{Event, Request, Scheduler, SchedulerConfig, SubmitError};
use crate::deepseek::{DeepSeekTokenizer, DeepSeekV2};
use crate::ModelError;

pub struct BatchedDeepSeekGenerator {
    id: String,
    tokenizer: DeepSeekTokenizer,
    scheduler: Scheduler,
    context_tokens: usize,
}

impl BatchedDeepSeekGenerator {
    pub fn load(dir: &Path, device: &Device, context_tokens: usize, config: SchedulerConfig) -> Result<Self, ModelError> {
        let tokenizer = DeepSeekTokenizer::from_dir(dir)?;
        let model = Arc::new(DeepSeekV2::load(dir, device)?);
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "deepseek-v2".into());
        let context_tokens = context_tokens.min(model.max_positions()).min(config.cache_tokens);
        Ok(Self { id, tokenizer, scheduler: Scheduler::start(model, config), context_tokens })
    }
}

impl Generator for BatchedDeepSeekGenerator {
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
        let prompt_tokens = prompt.len();
        let mut stats = super::start_stats(prompt_tokens, params.max_tokens, self.context_tokens)?;
        if params.max_tokens == 0 {
            return Ok(stats);
        }
        let request = Request { prompt, params: params.clone(), end_tokens: vec![self.tokenizer.eos_token_id()] };
        let events = self.scheduler.submit(request).map_err(|e| match e {
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
