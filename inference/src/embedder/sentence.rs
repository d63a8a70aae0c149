//! What a sentence-transformers model directory says beyond its transformer: how token states
//! pool into one vector (`modules.json`, `1_Pooling/config.json`), the sequence length it was
//! trained at (`sentence_bert_config.json`) and the prompts that go before queries and
//! passages (`config_sentence_transformers.json`; e5 models want `query: ` / `passage: `).
//!
//! Vectors are always L2-normalised, whether or not the directory lists a `Normalize` module:
//! kb compares vectors by cosine, where the two rank alike.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::ModelError;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentencePooling {
    /// The mean over the real (unpadded) tokens.
    Mean,
    /// The first token's state (`[CLS]` / `<s>`), as bge models are trained.
    Cls,
}

/// A model directory's sentence-transformers settings; defaults where a file is absent.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    pub pooling: SentencePooling,
    /// `max_seq_length`, when the directory gives one.
    pub max_seq_length: Option<usize>,
    /// Put before every query.
    pub query_prefix: String,
    /// Put before every passage.
    pub passage_prefix: String,
}

impl Default for SentenceConfig {
    fn default() -> Self {
        Self {
            pooling: SentencePooling::Mean,
            max_seq_length: None,
            query_prefix: String::new(),
            passage_prefix: String::new(),
        }
    }
}

impl SentenceConfig {
    /// Reads `dir`'s settings. A pooling mode kb does not implement (max, weighted, last
    /// token) is an error rather than a silently different model.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let mut config = Self::default();
        // modules.json names the pooling module's folder; "1_Pooling" by convention.
        let pooling_dir = json(&dir.join("modules.json"))?
            .and_then(|m| {
                m.as_array()?.iter().find_map(|module| {
                    let is_pooling = module["type"].as_str()?.ends_with(".Pooling");
                    is_pooling.then(|| module["path"].as_str().map(str::to_owned)).flatten()
                })
            })
            .unwrap_or_else(|| "1_Pooling".to_owned());
        let pooling_path = dir.join(&pooling_dir).join("config.json");
        if let Some(p) = json(&pooling_path)? {
            let on = |key: &str| p[key].as_bool().unwrap_or(false);
            config.pooling = match (on("pooling_mode_cls_token"), on("pooling_mode_mean_tokens")) {
                (true, false) => SentencePooling::Cls,
                (false, true) => SentencePooling::Mean,
                _ => {
                    return Err(ModelError::Config {
                        path: pooling_path,
                        message: "only mean or CLS pooling, alone, is supported".into(),
                    })
                }
            };
            let others = [
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens",
                "pooling_mode_lasttoken",
            ];
            if let Some(mode) = others.iter().find(|k| on(k)) {
                return Err(ModelError::Config { path: pooling_path, message: format!("{mode} is not supported") });
            }
        }
        config.max_seq_length = json(&dir.join("sentence_bert_config.json"))?
            .and_then(|v| v["max_seq_length"].as_u64())
            .map(|n| n as usize);
        if let Some(st) = json(&dir.join("config_sentence_transformers.json"))? {
            let prompt = |names: &[&str]| names.iter().find_map(|n| st["prompts"][n].as_str()).unwrap_or("").to_owned();
            config.query_prefix = prompt(&["query"]);
            config.passage_prefix = prompt(&["passage", "document"]);
        }
        Ok(config)
    }
}

/// Pools `hidden` (batch, seq, dim) over `mask` (batch, seq; 1 for real tokens).
pub(crate) fn pool(hidden: &Tensor, mask: &Tensor, pooling: SentencePooling) -> candle_core::Result<Tensor> {
    match pooling {
        SentencePooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        SentencePooling::Mean => {
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
            summed.broadcast_div(&counts)
        }
    }
}

/// The JSON in `path`, or `None` when there is no such file.
fn json(path: &Path) -> Result<Option<Value>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ModelError::Io { path: path.to_owned(), source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Config { path: path.to_owned(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pooling_length_and_prompts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SentenceConfig::read(dir.path()).unwrap(), SentenceConfig::default());

        std::fs::create_dir(dir.path().join("pool")).unwrap();
        let modules = r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                          {"path": "pool", "type": "sentence_transformers.models.Pooling"}]"#;
        std::fs::write(dir.path().join("modules.json"), modules).unwrap();
        std::fs::write(
            dir.path().join("pool/config.json"),
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("sentence_bert_config.json"), r#"{"max_seq_length": 384}"#).unwrap();
        std::fs::write(
            dir.path().join("config_sentence_transformers.json"),
            r#"{"prompts": {"query": "query: ", "document": "passage: "}}"#,
        )
        .unwrap();
        let c = SentenceConfig::read(dir.path()).unwrap();
        assert_eq!(c.pooling, SentencePooling::Cls);
        assert_eq!(c.max_seq_length, Some(384));
        assert_eq!((c.query_prefix.as_str(), c.passage_prefix.as_str()), ("query: ", "passage: "));

        std::fs::write(
            dir.path().join("pool/config.json"),
            r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
        )
        .unwrap();
        assert!(SentenceConfig::read(dir.path()).is_err());
    }

    #[test]
    fn pools_over_real_tokens_only() {
        let dev = candle_core::Device::Cpu;
        // One sequence of three tokens, the last one padding.
        let hidden = Tensor::new(&[[[1f32, 2.], [3., 4.], [100., 100.]]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &dev).unwrap();
        let mean = pool(&hidden, &mask, SentencePooling::Mean).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(mean, [[2., 3.]]);
        let cls = pool(&hidden, &mask, SentencePooling::Cls).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(cls, [[1., 2.]]);
    }
}
