//! BERT-family sentence encoders (all-MiniLM-L6-v2 by default): mean pooling over the
//! attention mask, then L2 normalisation, as sentence-transformers does.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::encoder::{Encoder, Precision};
use super::Embedder;
use crate::ModelError;

/// Inputs per forward pass. Batches are cut from length-sorted inputs, so padding stays small.
const BATCH_SIZE: usize = 32;

pub struct BertEmbedder {
    id: String,
    model: Encoder,
    /// Truncating, padding tokenizer for model input.
    encoder_tokenizer: Tokenizer,
    /// The same vocabulary with no truncation or padding, for counting (the chunker's view).
    tokenizer: Tokenizer,
    dim: usize,
    max_tokens: usize,
    device: Device,
}

impl BertEmbedder {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`, in f32.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_with(dir, Precision::F32)
    }

    /// As [`BertEmbedder::load`], with the linear layers in `precision`.
    pub fn load_with(dir: &Path, precision: Precision) -> Result<Self, ModelError> {
        let config_path = require(dir, "config.json")?;
        let weights = require(dir, "model.safetensors")?;
        let tokenizer_path = require(dir, "tokenizer.json")?;
        let text = read(&config_path)?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: config_path.clone(), message: e.to_string() })?;
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let dim = raw["hidden_size"].as_u64().unwrap_or(0) as usize;
        let max_positions = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        // sentence-transformers trains and evaluates at this length, shorter than the positions.
        let max_tokens = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|n| n as usize)
            .unwrap_or(max_positions)
            .min(max_positions);

        let device = Device::Cpu;
        // SAFETY: the file is mapped read-only and not modified while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
        let model = Encoder::load(vb, &config, precision)?;

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut encoder_tokenizer = tokenizer.clone();
        encoder_tokenizer
            .with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        encoder_tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;

        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("bert");
        Ok(Self { id: format!("bert:{name}"), model, encoder_tokenizer, tokenizer, dim, max_tokens, device })
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
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = summed.broadcast_div(&counts)?;
        super::unit_rows(&mean)
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
        // Sort by length so each batch pads to about its own length, then restore the order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for batch in order.chunks(BATCH_SIZE) {
            let inputs: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
            for (&i, v) in batch.iter().zip(self.embed_batch(&inputs)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        // A symmetric model: queries are passages.
        self.embed_passages(texts)
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
