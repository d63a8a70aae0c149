//! Continuous batching: one thread owns the model and serves many requests at once. Each step
//! is one forward pass over every active sequence: the next token of each decoding sequence and
//! a chunk of each prompt still being prefilled (so a long prompt never stalls the others).
//! New requests join at the next step, finished or abandoned ones leave at once, and every
//! sequence has its own latent cache, whose memory is reserved up front when it is admitted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use super::model::{DeepSeekV2, LogitsMode};
use super::LatentCache;
use crate::generator::sampling::{RepeatPenalty, Sampler};
use crate::generator::{FinishReason, SamplingParams};
use crate::ModelError;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Requests waiting for a place beyond these are refused ([`SubmitError::QueueFull`]).
    pub max_queued: usize,
    /// Prompt tokens of one sequence fed per step.
    pub prefill_chunk: usize,
    /// Cache tokens (prompt + max_tokens of every admitted sequence) that fit in memory.
    pub cache_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { max_sequences: 64, max_queued: 256, prefill_chunk: 512, cache_tokens: 64 * 4096 }
    }
}

/// One generation request, in tokens; text and stop strings are the caller's business.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub end_tokens: Vec<u32>,
}

/// What a request receives, in order: its tokens, then one `Done` (or an `Error`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(u32),
    Done(FinishReason),
    Error(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("the generation queue is full")]
    QueueFull,
    #[error("the request cannot fit: {0}")]
    Invalid(String),
    #[error("the scheduler has stopped")]
    Stopped,
}

struct Job {
    request: Request,
    events: mpsc::Sender<Event>,
}

/// Handle to the scheduling thread; cheap to share.
pub struct Scheduler {
    tx: mpsc::SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    cache_tokens: usize,
    max_positions: usize,
}

impl Scheduler {
    pub fn start(model: Arc<DeepSeekV2>, config: SchedulerConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(config.max_queued.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let handle = Self {
            tx,
            queued: queued.clone(),
            max_queued: config.max_queued.max(1),
            cache_tokens: config.cache_tokens,
            max_positions: model.max_positions(),
        };
        std::thread::Builder::new()
            .name("kb-deepseek-scheduler".into())
            .spawn(move || Worker { model, config, rx, queued, waiting: VecDeque::new(), active: Vec::new() }.run())
            .expect("spawning the scheduler thread");
        handle
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request and frees its place.
    pub fn submit(&self, request: Request) -> Result<mpsc::Receiver<Event>, SubmitError> {
        let need = request.prompt.len() + request.params.max_tokens;
        if request.prompt.is_empty() {
            return Err(SubmitError::Invalid("empty prompt".into()));
        }
        if need > self.cache_tokens || need > self.max_positions {
            return Err(SubmitError::Invalid(format!(
                "{need} tokens (prompt + max_tokens) exceed the cache ({}) or the model's positions ({})",
                self.cache_tokens, self.max_positions
            )));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull);
        }
        let (events, rx) = mpsc::channel();
        self.tx.try_send(Job { request, events }).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            match e {
                mpsc::TrySendError::Full(_) => SubmitError::QueueFull,
                mpsc::TrySendError::Disconnected(_) => SubmitError::Stopped,
            }
        })?;
        Ok(rx)
    }

    /// Requests submitted and not yet admitted to the batch.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

struct Sequence {
    job: Job,
    cache: LatentCache,
    sampler: Sampler,
    /// Prompt tokens fed so far.
    fed: usize,
    generated: Vec<u32>,
    reserved: usize,
}

struct Worker {
    model: Arc<DeepSeekV2>,
    config: SchedulerConfig,
    rx: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
    waiting: VecDeque<Job>,
    active: Vec<Sequence>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            if self.active.is_empty() {
                continue;
            }
            if let Err(e) = self.step() {
                // A failed pass fails every sequence in it; the scheduler carries on.
                for s in self.active.drain(..) {
                    let _ = s.job.events.send(Event::Error(e.to_string()));
                }
            }
        }
    }

    /// Moves requests from the channel into the batch while places and cache memory last.
    /// Blocks when nothing is active; false once every handle is gone and nothing is left.
    fn admit(&mut self) -> bool {
        loop {
            let next = if self.active.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return false,
                }
            } else {
                self.rx.try_recv().ok()
            };
            match next {
                Some(job) => self.waiting.push_back(job),
                None => break,
            }
        }
        let mut reserved: usize = self.active.iter().map(|s| s.reserved).sum();
        while self.active.len() < self.config.max_sequences {
            let Some(job) = self.waiting.front() else { break };
            let need = job.request.prompt.len() + job.request.params.max_tokens;
            if reserved + need > self.config.cache_tokens {
                break;
            }
            let job = self.waiting.pop_front().expect("front exists");
            self.queued.fetch_sub(1, Ordering::AcqRel);
            // No repeat penalty: DeepSeek's own generation config uses none.
            let started = Sampler::new(&job.request.params, RepeatPenalty { penalty: 1.0, last_n: 64 })
                .and_then(|sampler| Ok((sampler, self.model.new_cache(need)?)));
            match started {
                Ok((sampler, cache)) => {
                    reserved += need;
                    self.active.push(Sequence { job, cache, sampler, fed: 0, generated: Vec::new(), reserved: need });
                }
                Err(e) => {
                    let _ = job.events.send(Event::Error(e.to_string()));
                }
            }
        }
        true
    }

    /// One forward pass over every active sequence, then sampling for those past their prompt.
    fn step(&mut self) -> Result<(), ModelError> {
        let chunk = self.config.prefill_chunk.max(1);
        let inputs: Vec<Vec<u32>> = self
            .active
            .iter()
            .map(|s| {
                let prompt = &s.job.request.prompt;
                if s.fed < prompt.len() {
                    prompt[s.fed..(s.fed + chunk).min(prompt.len())].to_vec()
                } else {
                    vec![*s.generated.last().expect("a decoding sequence has a token")]
                }
            })
            .collect();
        let tokens: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let logits = {
            let mut caches: Vec<&mut LatentCache> = self.active.iter_mut().map(|s| &mut s.cache).collect();
            self.model.forward(&tokens, &mut caches, LogitsMode::Last)?.logits.expect("logits were asked for")
        };
        let mut finished = Vec::new();
        for (i, (s, input)) in self.active.iter_mut().zip(&inputs).enumerate() {
            let prompt_len = s.job.request.prompt.len();
            if s.fed < prompt_len {
                s.fed += input.len();
                if s.fed < prompt_len {
                    continue; // more prompt to feed: these logits are not a prediction yet
                }
            }
            let token = s.sampler.sample(&logits.get(i)?, &s.generated)?;
            s.generated.push(token);
            let end = s.job.request.end_tokens.contains(&token);
            let outcome = if end {
                Some(FinishReason::Stop)
            } else if s.job.events.send(Event::Token(token)).is_err() {
                Some(FinishReason::Cancelled)
            } else if s.generated.len() >= s.job.request.params.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = outcome {
                let _ = s.job.events.send(Event::Done(reason));
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            self.active.swap_remove(i);
        }
        Ok(())
    }
}
