//! BERT-family sentence encoders (all-MiniLM-L6-v2 by default), XLM-RoBERTa ones too
//! (`xlmr`): pooling, sequence length and prompts as the sentence-transformers
//! directory says ([`super::sentence`]), then L2 normalisation.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::device::EmbedderDevice;
use super::encoder::{Encoder, Precision};
use super::sentence::{pool, SentenceConfig, SentencePooling};
use super::{xlmr, Embedder};
use crate::ModelError;

/// Inputs per forward pass on the CPU. Batches are cut from length-sorted inputs, so padding
/// stays small.
const BATCH_SIZE: usize = 32;
/// Inputs per forward pass on a GPU: larger batches keep it busy (candle launches each op from
/// the host; a batch of 32 passages leaves the device idle between launches).
const GPU_BATCH_SIZE: usize = 128;

pub struct BertEmbedder {
    id: String,
    model: Encoder,
    /// Truncating, padding tokenizer for model input.
    encoder_tokenizer: Tokenizer,
    /// The same vocabulary with no truncation or padding, for counting (the chunker's view).
    tokenizer: Tokenizer,
    dim: usize,
    max_tokens: usize,
    pooling: SentencePooling,
    query_prefix: String,
    passage_prefix: String,
    device: Device,
    /// The arithmetic the encoder really runs (on a GPU, [`Precision::on_gpu`]).
    precision: Precision,
    batch_size: usize,
}

impl BertEmbedder {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`, in f32.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_with(dir, Precision::F32)
    }

    /// As [`BertEmbedder::load`], on the CPU, with the linear layers in `precision` (bf16 is
    /// GPU-only: an error here).
    pub fn load_with(dir: &Path, precision: Precision) -> Result<Self, ModelError> {
        Self::load_on(dir, precision, EmbedderDevice::Cpu)
    }

    /// As [`BertEmbedder::load_with`], on `device`. On a GPU the encoder runs in f32, or bf16
    /// when `precision` says so ([`Precision::on_gpu`]).
    pub fn load_on(dir: &Path, precision: Precision, device: EmbedderDevice) -> Result<Self, ModelError> {
        let device = device.resolve()?;
        let precision = if device.is_cpu() { precision } else { precision.on_gpu() };
        if device.is_cpu() && precision == Precision::Bf16 {
            return Err(ModelError::Unsupported(
                "embedder precision bf16 runs on a GPU only (embedder_device = \"cuda\"); the CPU runs int8 or f32"
                    .into(),
            ));
        }
        let dtype = if precision == Precision::Bf16 { DType::BF16 } else { DType::F32 };
        let config_path = require(dir, "config.json")?;
        let weights = require(dir, "model.safetensors")?;
        let tokenizer_path = require(dir, "tokenizer.json")?;
        let text = read(&config_path)?;
        let mut config: Config = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: config_path.clone(), message: e.to_string() })?;
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let dim = raw["hidden_size"].as_u64().unwrap_or(0) as usize;
        let sentence = SentenceConfig::read(dir)?;

        let vb = if xlmr::is_roberta(&raw) {
            xlmr::weights(&weights, &mut config, &device)?.set_dtype(dtype)
        } else {
            // SAFETY: the file is mapped read-only and not modified while the model lives.
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &device)? }
        };
        let model = Encoder::load(vb, &config, precision)?;
        // The weights were uploaded on this thread's stream; embedding runs on other threads.
        device.synchronize()?;
        let max_positions = config.max_position_embeddings;
        // sentence-transformers trains and evaluates at this length, shorter than the positions.
        let max_tokens = sentence.max_seq_length.unwrap_or(max_positions).min(max_positions);

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut encoder_tokenizer = tokenizer.clone();
        let pad_id = config.pad_token_id as u32;
        let pad_token = tokenizer.id_to_token(pad_id).unwrap_or_else(|| "[PAD]".into());
        encoder_tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..Default::default()
        }));
        encoder_tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;

        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("bert");
        Ok(Self {
            id: format!("bert:{name}"),
            model,
            encoder_tokenizer,
            tokenizer,
            dim,
            max_tokens,
            pooling: sentence.pooling,
            query_prefix: sentence.query_prefix,
            passage_prefix: sentence.passage_prefix,
            batch_size: if device.is_cpu() { BATCH_SIZE } else { GPU_BATCH_SIZE },
            device,
            precision,
        })
    }

    /// Where the encoder runs: "cpu" or "cuda".
    pub fn device_name(&self) -> &'static str {
        if self.device.is_cpu() {
            "cpu"
        } else {
            "cuda"
        }
    }

    /// The arithmetic the encoder runs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Replaces the directory's query and passage prompts (e5 models want "query: " and
    /// "passage: " but do not say so in their directory).
    pub fn with_prefixes(mut self, query: Option<String>, passage: Option<String>) -> Self {
        self.query_prefix = query.unwrap_or(self.query_prefix);
        self.passage_prefix = passage.unwrap_or(self.passage_prefix);
        self
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let encodings = self
            .encoder_tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let len = encodings.first().map_or(0, |e| e.len());
        let n = encodings.len();
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings.iter().flat_map(|e| f(e).iter().copied()).collect()
        };
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (n, len), &self.device)?;
        let type_ids = Tensor::from_vec(flat(&|e| e.get_type_ids()), (n, len), &self.device)?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (n, len), &self.device)?;

        let hidden = self.model.forward(&ids, &type_ids, &mask)?; // (n, len, dim)
        super::unit_rows(&pool(&hidden, &mask, self.pooling)?)
    }

    /// Embeds `texts`, each after `prefix`.
    fn embed_prefixed(&self, texts: &[&str], prefix: &str) -> Result<Vec<Vec<f32>>, ModelError> {
        let prefixed: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let texts: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        // Sort by length so each batch pads to about its own length, then restore the order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for batch in order.chunks(self.batch_size) {
            let inputs: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
            for (&i, v) in batch.iter().zip(self.embed_batch(&inputs)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

impl Embedder for BertEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_prefixed(texts, &self.passage_prefix)
    }

    fn embed_query(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.embed_prefixed(&[text], &self.query_prefix)?.remove(0))
    }

    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_prefixed(texts, &self.query_prefix)
    }
}

fn require(dir: &Path, name: &str) -> Result<PathBuf, ModelError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::MissingFile { path })
    }
}

fn read(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}
