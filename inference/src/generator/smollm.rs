//! The default CPU answer generator: SmolLM2-135M-Instruct from a quantized GGUF file, run
//! with candle's quantized llama. The tokenizer and chat template come from the GGUF metadata.

use std::fs::File;
use std::io::BufReader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

use super::chatml::ChatMl;
use super::decode_loop::decode_loop;
use super::gguf_tokenizer::GgufTokenizer;
use super::requant::{self, WeightFormat};
use super::sampling::{RepeatPenalty, Sampler};
use super::{ChatMessage, Flow, GenerationStats, Generator, SamplingParams};
use crate::ModelError;

/// The most context used even if the file claims more: keeps the KV cache and attention cost
/// of one request bounded on a CPU.
const MAX_CONTEXT: usize = 8192;

pub struct SmolLmGenerator {
    id: String,
    /// `ModelWeights` keeps the KV cache inside, so a request needs it exclusively; the lock
    /// also makes requests on one generator run one at a time.
    model: Mutex<ModelWeights>,
    tokenizer: GgufTokenizer,
    chat: ChatMl,
    /// Ids that end the answer: EOS, `<|im_end|>`, `<|endoftext|>`.
    stop_ids: Vec<u32>,
    context_tokens: usize,
    repeat: RepeatPenalty,
    device: Device,
}

impl std::fmt::Debug for SmolLmGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolLmGenerator")
            .field("id", &self.id)
            .field("context_tokens", &self.context_tokens)
            .field("repeat", &self.repeat)
            .finish_non_exhaustive()
    }
}

impl SmolLmGenerator {
    /// Loads the model, tokenizer and chat template from the GGUF file at `path`, with
    /// weights re-encoded for fast CPU kernels ([`WeightFormat::F32`]).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with(path, WeightFormat::default())
    }

    /// As [`load`](Self::load), choosing how the weights are held in memory.
    pub fn load_with(path: &Path, format: WeightFormat) -> Result<Self, ModelError> {
        let started = Instant::now();
        let config_err = |message: String| ModelError::Config { path: path.to_path_buf(), message };
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile { path: path.to_path_buf() }
            } else {
                ModelError::Io { path: path.to_path_buf(), source }
            }
        })?;
        let mut reader = BufReader::new(file);
        // candle's GGUF reader can still panic on some malformed headers (e.g. an alignment
        // of 0); a bad file must be an error, not a crashed server.
        let content = catch_unwind(AssertUnwindSafe(|| Content::read(&mut reader)))
            .map_err(|_| config_err("GGUF header is malformed (parser panicked)".into()))?
            .map_err(|e| config_err(format!("not a readable GGUF file: {e}")))?;

        let md = &content.metadata;
        let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
        if arch.as_deref() != Some("llama") {
            return Err(ModelError::Unsupported(format!(
                "{}: architecture {arch:?}, expected \"llama\"",
                path.display()
            )));
        }
        let file_context = md
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|n| n as usize)
            .ok_or_else(|| config_err("llama.context_length missing".into()))?;
        // quantized_llama precomputes RoPE for MAX_SEQ_LEN positions only; past that the
        // forward pass would fail.
        let context_tokens = file_context.min(MAX_CONTEXT).min(MAX_SEQ_LEN);

        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        // Every id the model can sample must have text, and every prompt id an embedding.
        let embedding_rows =
            content.tensor_infos.get("token_embd.weight").and_then(|t| t.shape.dims().first().copied());
        if embedding_rows != Some(tokenizer.vocab_size()) {
            return Err(config_err(format!(
                "token_embd.weight has {embedding_rows:?} rows, tokenizer has {} tokens",
                tokenizer.vocab_size()
            )));
        }
        let chat = ChatMl::from_tokenizer(&tokenizer)?;
        let mut stop_ids: Vec<u32> =
            [tokenizer.eos_token_id(), tokenizer.token_id(super::chatml::IM_END), tokenizer.token_id("<|endoftext|>")]
                .into_iter()
                .flatten()
                .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let device = Device::Cpu;
        let build = || {
            if requant::needs_conversion(&content, format) {
                let (content, mut data) = requant::convert(content, &mut reader, format)?;
                ModelWeights::from_gguf(content, &mut data, &device)
            } else {
                ModelWeights::from_gguf(content, &mut reader, &device)
            }
        };
        let model = catch_unwind(AssertUnwindSafe(build))
            .map_err(|_| config_err("GGUF tensors are malformed (loader panicked)".into()))?
            .map_err(|e| config_err(format!("loading weights: {e}")))?;

        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("smollm");
        let id = format!("smollm:{stem}");
        tracing::info!(
            id,
            context_tokens,
            vocab = tokenizer.vocab_size(),
            ?format,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded GGUF generator"
        );
        Ok(Self {
            id,
            model: Mutex::new(model),
            tokenizer,
            chat,
            stop_ids,
            context_tokens,
            repeat: RepeatPenalty::default(),
            device,
        })
    }

    /// Replaces the default repeat penalty (1.1 over the last 64 generated tokens).
    pub fn with_repeat_penalty(mut self, repeat: RepeatPenalty) -> Self {
        self.repeat = repeat;
        self
    }

    pub fn repeat_penalty(&self) -> RepeatPenalty {
        self.repeat
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The prompt text `messages` become under the chat template.
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> String {
        self.chat.render(messages)
    }

    /// The prompt token ids of `messages` (template included): exactly what `generate` feeds.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ModelError> {
        self.chat.encode(&self.tokenizer, messages)
    }

    /// One forward pass of `tokens` at position `pos`; the logits of the last one.
    fn forward(&self, model: &mut ModelWeights, tokens: &[u32], pos: usize) -> Result<Tensor, ModelError> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        Ok(model.forward(&input, pos)?.squeeze(0)?)
    }
}

impl Generator for SmolLmGenerator {
    fn id(&self) -> &str {
        &self.id
    }

    fn context_tokens(&self) -> usize {
        self.context_tokens
    }

    fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        // As message contents are encoded: special-token text counts as plain text.
        Ok(self.tokenizer.encode(text, false)?.len())
    }

    fn generate(
        &self,
        messages: &[ChatMessage],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<GenerationStats, ModelError> {
        if messages.is_empty() {
            return Err(ModelError::InvalidInput("no messages".into()));
        }
        let mut sampler = Sampler::new(params, self.repeat)?;
        let prompt = self.prompt_tokens(messages)?;
        let prompt_tokens = prompt.len();
        let mut stats = super::start_stats(prompt_tokens, params.max_tokens, self.context_tokens)?;
        if params.max_tokens == 0 {
            return Ok(stats);
        }

        // A panic in an earlier request poisons the lock; the cache is cleared below anyway,
        // so the weights are still good.
        let mut model = self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // index_pos 0 already ignores old cache entries, but clearing makes "fresh per
        // request" independent of that detail (and frees the memory).
        model.clear_kv_cache();

        let started = Instant::now();
        let result = (|| {
            let logits = self.forward(&mut model, &prompt, 0)?;
            let prefill = started.elapsed();
            let mut first_text: Option<std::time::Duration> = None;
            let mut emit = |text: &str| {
                first_text.get_or_insert_with(|| started.elapsed());
                on_text(text)
            };
            let tokenizer = &self.tokenizer;
            let (completion, finish) = decode_loop(
                logits,
                &mut sampler,
                params.max_tokens,
                &params.stop,
                &mut emit,
                |t| self.stop_ids.contains(&t),
                // Other control tokens (<file_sep> and the like) have no text in an answer.
                |generated| {
                    let last = generated[generated.len() - 1];
                    Ok(if tokenizer.is_control(last) { Vec::new() } else { tokenizer.token_bytes(last).to_vec() })
                },
                |token, len| self.forward(&mut model, &[token], prompt_tokens + len - 1),
            )?;
            stats.finish_reason = finish;
            stats.completion_tokens = completion;
            let total = started.elapsed();
            let decode = total.saturating_sub(prefill);
            tracing::debug!(
                id = self.id,
                prompt_tokens,
                completion_tokens = stats.completion_tokens,
                finish = ?stats.finish_reason,
                prefill_ms = prefill.as_millis() as u64,
                first_text_ms = first_text.map(|d| d.as_millis() as u64),
                decode_tok_per_s = stats.completion_tokens.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9),
                "generation done"
            );
            Ok(stats)
        })();
        model.clear_kv_cache();
        result
    }
}
