//! Continuous batching: one thread owns the model and serves many requests at once. Each step
//! is one forward pass over every active sequence: the next token of each decoding sequence and
//! a chunk of each prompt still being prefilled (so a long prompt never stalls the others).
//! New requests join at the next step, finished or abandoned ones leave at once, and every
//! sequence has its own latent cache: a row range of one preallocated pool, reserved for its
//! prompt and longest answer when it is admitted. When every sequence in a step is decoding,
//! the step runs the batched decode path (on CUDA: fused kernels over the pool, replayed as
//! CUDA graphs per batch size).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, D};

use super::model::{DeepSeekV2, LogitsMode};
use super::{BatchDecoder, CachePool, LatentCache};
use crate::generator::sampling::{RepeatPenalty, Sampler};
use crate::generator::{FinishReason, SamplingParams};
use crate::ModelError;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Requests waiting for a place beyond these are refused ([`SubmitError::QueueFull`]).
    pub max_queued: usize,
    /// Prompt tokens of one sequence fed per step while other sequences are decoding.
    pub prefill_chunk: usize,
    /// Cache tokens (prompt + max_tokens of every admitted sequence): the pool's rows.
    pub cache_tokens: usize,
    /// How long a request may wait for a place before it is turned away as busy.
    pub queue_wait: Duration,
    /// Tokens one step feeds at most: every decoding sequence's one, then prompt chunks up to
    /// this (so prefill never stalls decoding for long).
    pub max_step_tokens: usize,
    /// Prompt tokens one step feeds at most while no sequence decodes (no one to stall): whole
    /// prompts, many at once, so a burst of requests reaches its first tokens in few passes.
    pub max_prefill_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_sequences: 64,
            max_queued: 256,
            prefill_chunk: 512,
            cache_tokens: 64 * 4096,
            queue_wait: Duration::from_secs(10),
            max_step_tokens: 4096,
            max_prefill_tokens: 16_384,
        }
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
    /// No place freed up within the queue wait: retry later.
    Busy,
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
    queued_at: Instant,
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
    /// Starts the scheduling thread, with the cache pool allocated on the model's device.
    pub fn start(model: Arc<DeepSeekV2>, config: SchedulerConfig) -> Result<Self, ModelError> {
        let cfg = model.config();
        let pool = CachePool::new(
            cfg.num_hidden_layers,
            cfg.latent_dim(),
            config.cache_tokens,
            model.dtype(),
            model.device(),
        )?;
        // Its buffers only where the batched decode path runs (CUDA).
        let decoder = model
            .batched_decode_supported(1)
            .then(|| BatchDecoder::new(&model, config.max_sequences.min(64)))
            .transpose()?;
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
            .spawn(move || {
                Worker {
                    model,
                    config,
                    rx,
                    queued,
                    pool,
                    decoder,
                    waiting: VecDeque::new(),
                    active: Vec::new(),
                    next_id: 0,
                    outbox: Vec::new(),
                }
                .run()
            })
            .map_err(|e| ModelError::InvalidInput(format!("spawning the scheduler thread: {e}")))?;
        Ok(handle)
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
        self.tx.try_send(Job { request, events, queued_at: Instant::now() }).map_err(|e| {
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

/// What one step feeds, as (sequence, tokens): every decoding sequence (`left[i]` None) its one
/// token, then the prompts (`left[i]`: prompt tokens still to feed) in order, a chunk each, while
/// the step's budget lasts (at least one chunk). While any sequence decodes, a chunk is
/// `prefill_chunk` and the budget `max_step_tokens` (a long prompt stalls them one chunk at most);
/// with none decoding there is no one to stall, so prompts go in whole, up to
/// `max_prefill_tokens`: each extra pass costs every waiting prompt its fixed cost before its
/// first token, and one pass over many prompts runs the experts' GEMMs fuller.
fn step_plan(left: &[Option<usize>], c: &SchedulerConfig) -> Vec<(usize, usize)> {
    let mut plan: Vec<(usize, usize)> = (0..left.len()).filter(|&i| left[i].is_none()).map(|i| (i, 1)).collect();
    let (chunk, step) = if plan.is_empty() {
        (c.max_prefill_tokens, c.max_prefill_tokens)
    } else {
        (c.prefill_chunk, c.max_step_tokens)
    };
    let chunk = chunk.max(1);
    let mut budget = step.saturating_sub(plan.len());
    for (i, remaining) in left.iter().enumerate().filter_map(|(i, l)| l.map(|r| (i, r))) {
        if budget == 0 && !plan.is_empty() {
            break;
        }
        let n = chunk.min(remaining).min(budget.max(1));
        plan.push((i, n));
        budget = budget.saturating_sub(n);
    }
    plan
}

struct Sequence {
    /// Unique among the worker's sequences: events sent late find their sequence by it.
    id: u64,
    job: Job,
    cache: LatentCache,
    sampler: Sampler,
    /// Prompt tokens fed so far.
    fed: usize,
    generated: Vec<u32>,
    /// Its receiver is gone: it leaves at the next step.
    cancelled: bool,
}

/// An event waiting in the outbox, for sequence `id` (which may have left since).
struct Outgoing {
    id: u64,
    to: mpsc::Sender<Event>,
    event: Event,
}

impl Sequence {
    fn decoding(&self) -> bool {
        self.fed >= self.job.request.prompt.len()
    }
}

struct Worker {
    model: Arc<DeepSeekV2>,
    config: SchedulerConfig,
    rx: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
    pool: CachePool,
    /// Steps where every sequence decodes (CUDA graphs per batch size); None off CUDA.
    decoder: Option<BatchDecoder>,
    waiting: VecDeque<Job>,
    active: Vec<Sequence>,
    next_id: u64,
    /// The last step's events. Sending wakes each request's thread (a few µs each, 32 a step
    /// at batch 32); after a graph decode step is enqueued, that happens while the GPU runs
    /// it instead of between steps ([`Worker::step`]).
    outbox: Vec<Outgoing>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.active.is_empty() {
                self.flush(); // no step follows to send them behind
            }
            if !self.admit() {
                return;
            }
            if self.active.is_empty() {
                continue;
            }
            if let Err(e) = self.step() {
                // A failed pass fails every sequence in it; the scheduler carries on.
                self.flush();
                for s in std::mem::take(&mut self.active) {
                    let _ = s.job.events.send(Event::Error(e.to_string()));
                    self.pool.release(&s.cache);
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
        while self.active.len() < self.config.max_sequences {
            let Some(job) = self.waiting.front() else { break };
            let need = job.request.prompt.len() + job.request.params.max_tokens;
            // No repeat penalty: DeepSeek's own generation config uses none.
            let sampler = match Sampler::new(&job.request.params, RepeatPenalty { penalty: 1.0, last_n: 64 }) {
                Ok(s) => s,
                Err(e) => {
                    let job = self.waiting.pop_front().expect("front exists");
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    let _ = job.events.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            let cache = match self.pool.alloc(need) {
                Ok(Some(c)) => c,
                Ok(None) => break, // wait for a sequence to finish and free its rows
                Err(e) => {
                    let job = self.waiting.pop_front().expect("front exists");
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    let _ = job.events.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            let job = self.waiting.pop_front().expect("front exists");
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let id = self.next_id;
            self.next_id += 1;
            self.active.push(Sequence { id, job, cache, sampler, fed: 0, generated: Vec::new(), cancelled: false });
        }
        // Requests that found no place within the queue wait are turned away (the caller
        // answers 503 with Retry-After); the oldest are at the front.
        let wait = self.config.queue_wait;
        while self.waiting.front().is_some_and(|j| j.queued_at.elapsed() >= wait) {
            let job = self.waiting.pop_front().expect("front exists");
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = job.events.send(Event::Busy);
        }
        true
    }

    /// Which sequences this step feeds, and what: see [`step_plan`].
    fn plan(&self) -> Vec<(usize, Vec<u32>)> {
        let left: Vec<Option<usize>> =
            self.active.iter().map(|s| (!s.decoding()).then(|| s.job.request.prompt.len() - s.fed)).collect();
        step_plan(&left, &self.config)
            .into_iter()
            .map(|(i, n)| {
                let s = &self.active[i];
                match left[i] {
                    None => (i, vec![*s.generated.last().expect("a decoding sequence has a token")]),
                    Some(_) => (i, s.job.request.prompt[s.fed..s.fed + n].to_vec()),
                }
            })
            .collect()
    }

    /// One forward pass over the planned sequences, then sampling for those past their prompt.
    /// The last step's events are sent once this step's work is on the device: right after a
    /// graph decode step is enqueued (the GPU runs it meanwhile), before any other pass (a
    /// prompt pass waits on the device between layers, and a first token must not wait for it).
    fn step(&mut self) -> Result<(), ModelError> {
        let plan = self.plan();
        let all_decoding = plan.iter().all(|(i, _)| self.active[*i].decoding());
        let batched = self.decoder.is_some() && all_decoding && self.model.batched_decode_supported(plan.len());
        if !batched {
            self.flush();
        }
        let logits = {
            let mut picked: Vec<Option<&mut LatentCache>> =
                self.active.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut caches: Vec<&mut LatentCache> =
                plan.iter().map(|(i, _)| picked[*i].take().expect("each sequence planned once")).collect();
            match self.decoder.as_mut().filter(|_| batched) {
                Some(decoder) => {
                    let tokens: Vec<u32> = plan.iter().map(|(_, t)| t[0]).collect();
                    decoder.step(&self.model, &tokens, &mut caches, &self.pool)?
                }
                None => {
                    let tokens: Vec<&[u32]> = plan.iter().map(|(_, t)| t.as_slice()).collect();
                    self.model.forward(&tokens, &mut caches, LogitsMode::Last)?.logits.expect("logits were asked for")
                }
            }
        };
        self.flush();
        // Rows whose prompt is now complete get a token.
        let mut rows = Vec::new();
        for (row, (i, input)) in plan.iter().enumerate() {
            let s = &mut self.active[*i];
            if !s.decoding() {
                s.fed += input.len();
                if !s.decoding() {
                    continue; // more prompt to feed: these logits are not a prediction yet
                }
            }
            rows.push((row, *i));
        }
        let tokens = self.sample(&logits, &rows)?;
        let mut finished = Vec::new();
        for ((_, i), token) in rows.into_iter().zip(tokens) {
            let s = &mut self.active[i];
            s.generated.push(token);
            let outcome = if s.cancelled {
                Some(FinishReason::Cancelled)
            } else if s.job.request.end_tokens.contains(&token) {
                Some(FinishReason::Stop)
            } else {
                self.outbox.push(Outgoing { id: s.id, to: s.job.events.clone(), event: Event::Token(token) });
                (s.generated.len() >= s.job.request.params.max_tokens).then_some(FinishReason::Length)
            };
            if let Some(reason) = outcome {
                if reason != FinishReason::Cancelled {
                    self.outbox.push(Outgoing { id: s.id, to: s.job.events.clone(), event: Event::Done(reason) });
                }
                finished.push(i);
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let s = self.active.swap_remove(i);
            self.pool.release(&s.cache);
        }
        Ok(())
    }

    /// Sends the outbox; a sequence whose receiver is gone is marked cancelled.
    fn flush(&mut self) {
        let mut outbox = std::mem::take(&mut self.outbox);
        for o in outbox.drain(..) {
            if o.to.send(o.event).is_err() {
                if let Some(s) = self.active.iter_mut().find(|s| s.id == o.id) {
                    s.cancelled = true;
                }
            }
        }
        self.outbox = outbox; // keeps its capacity
    }

    /// The next token of each `(row, sequence)`: greedy rows on the device in one argmax, the
    /// rest from one host copy of the logits.
    fn sample(&mut self, logits: &candle_core::Tensor, rows: &[(usize, usize)]) -> Result<Vec<u32>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let greedy = rows.iter().all(|(_, i)| self.active[*i].job.request.params.temperature == 0.0);
        if greedy {
            let best = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            return Ok(rows.iter().map(|(row, _)| best[*row]).collect());
        }
        let host = logits.to_device(&Device::Cpu)?;
        rows.iter()
            .map(|(row, i)| {
                let s = &mut self.active[*i];
                s.sampler.sample(&host.get(*row)?, &s.generated)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{step_plan, SchedulerConfig};

    fn budget(prefill_chunk: usize, max_step_tokens: usize, max_prefill_tokens: usize) -> SchedulerConfig {
        SchedulerConfig { prefill_chunk, max_step_tokens, max_prefill_tokens, ..SchedulerConfig::default() }
    }

    #[test]
    fn a_prompt_alone_goes_in_whole_and_beside_decoding_in_chunks() {
        let b = budget(512, 4096, 4096);
        // Nothing decoding: whole prompts, up to the prefill budget.
        assert_eq!(step_plan(&[Some(1024)], &b), vec![(0, 1024)]);
        assert_eq!(step_plan(&[Some(3000), Some(3000)], &b), vec![(0, 3000), (1, 1096)]);
        assert_eq!(step_plan(&[Some(10_000)], &b), vec![(0, 4096)]);
        // A sequence decoding: its token first, then prompt chunks of prefill_chunk.
        assert_eq!(step_plan(&[Some(1024), None], &b), vec![(1, 1), (0, 512)]);
        assert_eq!(step_plan(&[None, Some(100), Some(1000)], &b), vec![(0, 1), (1, 100), (2, 512)]);
        // Decoders use up the budget: no prompt this step.
        assert_eq!(step_plan(&[None, None, Some(10)], &budget(4, 2, 2)), vec![(0, 1), (1, 1)]);
        // A budget smaller than a chunk still feeds one token of one prompt.
        assert_eq!(step_plan(&[Some(10), Some(10)], &budget(4, 0, 0)), vec![(0, 1)]);
    }

    #[test]
    fn a_burst_of_prompts_goes_in_together_until_one_decodes() {
        let b = budget(512, 4096, 16_384);
        // 32 prompts of 1,024 tokens arrive at once: the first pass takes 16 of them whole.
        let burst = vec![Some(1024); 32];
        let plan = step_plan(&burst, &b);
        assert_eq!(plan.len(), 16);
        assert!(plan.iter().all(|&(_, n)| n == 1024));
        // Once those decode, the rest share max_step_tokens in chunks: 16 tokens of decoding,
        // then 512-token chunks while 4,080 last.
        let mut left = vec![None; 16];
        left.extend(vec![Some(1024); 16]);
        let plan = step_plan(&left, &b);
        let chunks: Vec<usize> = plan.iter().filter(|&&(i, _)| i >= 16).map(|&(_, n)| n).collect();
        assert_eq!(chunks, [512, 512, 512, 512, 512, 512, 512, 496]);
    }
}
