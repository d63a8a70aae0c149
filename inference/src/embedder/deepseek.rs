//! The "DeepSeek embedding head": the loaded DeepSeek-V2 model's final hidden states, pooled
//! (mean over tokens or the last token), optionally through a linear projection head, then
//! L2-normalised. It shares the generator's weights (one `Arc<DeepSeekV2>`, one copy on the
//! device).
//!
//! With base weights and no trained head this is a weaker embedding than a trained sentence
//! encoder: a causal LM's states were not trained to be compared by cosine. `kb eval` measures
//! it like any other embedder.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::Embedder;
use crate::deepseek::{DeepSeekTokenizer, DeepSeekV2, LogitsMode};
use crate::ModelError;

/// How a passage's token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token (the usual choice for an untrained head).
    Mean,
    /// The last token's state (what a causal model has seen the whole passage at).
    Last,
}

impl std::str::FromStr for Pooling {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "mean" => Ok(Self::Mean),
            "last" => Ok(Self::Last),
            other => Err(ModelError::InvalidInput(format!("unknown pooling {other:?}: expected mean or last"))),
        }
    }
}

/// Tokens per forward pass: passages are packed into ragged batches up to this many tokens.
const BATCH_TOKENS: usize = 8192;

pub struct DeepSeekEmbedder {
    id: String,
    model: Arc<DeepSeekV2>,
    tokenizer: tokenizers::Tokenizer,
    bos: Option<u32>,
    pooling: Pooling,
    /// (dim, hidden) f32 projection, on the model's device.
    head: Option<Tensor>,
    dim: usize,
    max_tokens: usize,
}

impl DeepSeekEmbedder {
    /// `name` identifies the checkpoint (recorded with collections); `head` is a safetensors
    /// file holding one (dim, hidden) matrix (any name), applied after pooling.
    pub fn new(
        name: &str,
        model: Arc<DeepSeekV2>,
        tokenizer: &DeepSeekTokenizer,
        pooling: Pooling,
        head: Option<&Path>,
        max_tokens: usize,
    ) -> Result<Self, ModelError> {
        let hidden = model.config().hidden_size;
        let (head, head_name) = match head {
            None => (None, String::new()),
            Some(path) => {
                let t = load_head(path, hidden, model.device())?;
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (Some(t), format!(":{stem}"))
            }
        };
        let dim = head.as_ref().map_or(hidden, |h| h.dims()[0]);
        let pool = match pooling {
            Pooling::Mean => "mean",
            Pooling::Last => "last",
        };
        let mut tok = tokenizer.inner().clone();
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self {
            id: format!("deepseek:{name}:{pool}{head_name}:{dim}"),
            bos: tok.token_to_id(tokenizer.bos_token()),
            tokenizer: tok,
            model,
            pooling,
            head,
            dim,
            max_tokens: max_tokens.clamp(1, 8192),
        })
    }

    /// Token ids of each text: BOS, then the text, cut to `max_tokens`.
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
        texts
            .iter()
            .map(|t| {
                let enc = self.tokenizer.encode(*t, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
                let mut ids: Vec<u32> = self.bos.into_iter().collect();
                ids.extend_from_slice(enc.get_ids());
                ids.truncate(self.max_tokens);
                if ids.is_empty() {
                    ids.push(0); // an empty text still gets a (meaningless but defined) vector
                }
                Ok(ids)
            })
            .collect()
    }

    /// One ragged forward pass over `seqs`; one normalised vector each.
    fn embed_batch(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut caches = seqs.iter().map(|s| self.model.new_cache(s.len())).collect::<Result<Vec<_>, _>>()?;
        let mut refs: Vec<&mut _> = caches.iter_mut().collect();
        let out = self.model.forward(seqs, &mut refs, LogitsMode::None)?;
        let hidden = out.hidden.to_dtype(DType::F32)?;
        let pooled = out
            .spans
            .iter()
            .map(|s| match self.pooling {
                Pooling::Mean => hidden.narrow(0, s.start, s.len)?.mean_keepdim(0),
                Pooling::Last => hidden.narrow(0, s.start + s.len - 1, 1),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut v = Tensor::cat(&pooled, 0)?; // (n, hidden)
        if let Some(h) = &self.head {
            v = v.matmul(&h.t()?)?;
        }
        super::unit_rows(&v)
    }
}

fn load_head(path: &Path, hidden: usize, device: &candle_core::Device) -> Result<Tensor, ModelError> {
    if !path.is_file() {
        return Err(ModelError::MissingFile { path: path.to_owned() });
    }
    let tensors = candle_core::safetensors::load(path, device)?;
    let mut matrices = tensors.into_values().filter(|t| t.rank() == 2);
    let (Some(t), None) = (matrices.next(), matrices.next()) else {
        return Err(ModelError::Config {
            path: path.to_owned(),
            message: "an embedding head file holds exactly one 2-D (dim, hidden) tensor".into(),
        });
    };
    if t.dims()[1] != hidden {
        return Err(ModelError::Config {
            path: path.to_owned(),
            message: format!("head is {:?}; it must take the model's hidden size {hidden}", t.dims()),
        });
    }
    Ok(t.to_dtype(DType::F32)?)
}

impl Embedder for DeepSeekEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let ids = self.encode(texts)?;
        // Length-sorted packing keeps similar lengths together (the MoE groups tokens per
        // expert, so bigger passes read each expert's weights fewer times).
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < order.len() && (end == start || tokens + ids[order[end]].len() <= BATCH_TOKENS) {
                tokens += ids[order[end]].len();
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end].iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, v) in order[start..end].iter().zip(self.embed_batch(&batch)?) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }
}
