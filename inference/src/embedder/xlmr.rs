//! XLM-RoBERTa checkpoints (multilingual-e5, bge-m3's dense model, the paraphrase-multilingual
//! models) read by the BERT [`Encoder`](super::encoder::Encoder).
//!
//! XLM-R is BERT's encoder with other inputs: one token type, and positions that count from
//! `pad_token_id + 1` (RoBERTa's padding-aware position ids). In a right-padded batch the real
//! token at index `i` has position `pad + 1 + i`, so the encoder, which numbers positions from
//! 0, reads XLM-R's position table from row `pad + 1` on. Padding positions then get other
//! position vectors than in XLM-R, but the attention mask and the pooling never look at them.
//! Tensor names may carry the `roberta.` prefix of a full XLM-R checkpoint, or none.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models::bert::Config;

use crate::ModelError;

/// Whether `config.json`'s `model_type` is of the RoBERTa family.
pub(crate) fn is_roberta(config: &serde_json::Value) -> bool {
    matches!(config["model_type"].as_str(), Some("xlm-roberta" | "roberta"))
}

/// The weights in `path` as the BERT encoder reads them; `config`'s position count becomes the
/// positions a sequence may really use.
pub(crate) fn weights(path: &Path, config: &mut Config, device: &Device) -> Result<VarBuilder<'static>, ModelError> {
    let offset = config.pad_token_id + 1;
    if config.max_position_embeddings <= offset {
        return Err(ModelError::Unsupported(format!(
            "XLM-R with {} positions and padding id {}",
            config.max_position_embeddings, config.pad_token_id
        )));
    }
    config.max_position_embeddings -= offset;
    // SAFETY: the file is mapped read-only and not modified while the model lives.
    let inner = unsafe { MmapedSafetensors::new(path)? };
    Ok(VarBuilder::from_backend(Box::new(XlmrWeights { inner, offset }), DType::F32, device.clone()))
}

struct XlmrWeights {
    inner: MmapedSafetensors,
    /// The first position row a real token uses.
    offset: usize,
}

impl XlmrWeights {
    fn resolve(&self, name: &str) -> String {
        let prefixed = format!("roberta.{name}");
        if self.inner.get(name).is_err() && self.inner.get(&prefixed).is_ok() {
            prefixed
        } else {
            name.to_owned()
        }
    }
}

impl SimpleBackend for XlmrWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("shape mismatch for {name}: expected {s:?}, got {:?}", t.shape());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.load(&self.resolve(name), dev)?.to_dtype(dtype)?;
        if name.ends_with("embeddings.position_embeddings.weight") {
            let rows = t.dim(0)?;
            return t.narrow(0, self.offset.min(rows), rows.saturating_sub(self.offset));
        }
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.get(&self.resolve(name)).is_ok()
    }
}
