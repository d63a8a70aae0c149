//! `config.json` of a DeepSeek-V2 checkpoint, validated into the shape the model needs.

use crate::ModelError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// YaRN parameters as DeepSeek publishes them under `rope_scaling` (or, from transformers 5,
/// under `rope_parameters` with `rope_type`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct YarnScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "one")]
    pub mscale: f64,
    #[serde(default)]
    pub mscale_all_dim: f64,
}

fn default_beta_fast() -> f64 {
    32.0
}
fn default_beta_slow() -> f64 {
    1.0
}
fn one() -> f64 {
    1.0
}

/// How the router picks experts (`topk_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    Greedy,
    /// Keep the `topk_group` best groups (by their best expert), then the top-k inside them.
    GroupLimitedGreedy {
        n_group: usize,
        topk_group: usize,
    },
}

/// The raw file: every field DeepSeek-V2 and transformers write that matters to inference.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    moe_intermediate_size: Option<usize>,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    n_shared_experts: Option<usize>,
    n_routed_experts: Option<usize>,
    #[serde(default = "one")]
    routed_scaling_factor: f64,
    kv_lora_rank: usize,
    q_lora_rank: Option<usize>,
    qk_rope_head_dim: usize,
    v_head_dim: usize,
    qk_nope_head_dim: usize,
    topk_method: Option<String>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    num_experts_per_tok: Option<usize>,
    #[serde(default = "one_usize")]
    moe_layer_freq: usize,
    #[serde(default)]
    first_k_dense_replace: usize,
    #[serde(default)]
    norm_topk_prob: bool,
    scoring_func: Option<String>,
    hidden_act: Option<String>,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

fn one_usize() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-6
}

/// A validated DeepSeek-V2 configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepSeekV2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub n_shared_experts: usize,
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub routed_scaling_factor: f64,
    pub norm_topk_prob: bool,
    pub topk_method: TopkMethod,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub kv_lora_rank: usize,
    pub q_lora_rank: Option<usize>,
    pub qk_rope_head_dim: usize,
    pub qk_nope_head_dim: usize,
    pub v_head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub yarn: Option<YarnScaling>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl DeepSeekV2Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::MissingFile { path: path.to_path_buf() },
            _ => ModelError::Io { path: path.to_path_buf(), source: e },
        })?;
        Self::from_json(&text, path)
    }

    /// Parses a `config.json` text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::Config { path: PathBuf::from(path), message };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let unsupported = |what: String| ModelError::Unsupported(format!("{what} (in {})", path.display()));

        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(unsupported(format!("hidden_act {act:?}: only \"silu\"")));
            }
        }
        if let Some(f) = raw.scoring_func.as_deref() {
            if f != "softmax" {
                return Err(unsupported(format!("scoring_func {f:?}: only \"softmax\" (DeepSeek-V2)")));
            }
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err(unsupported("attention_bias / mlp_bias: DeepSeek-V2 has none".into()));
        }
        if raw.moe_layer_freq == 0 {
            return Err(bad("moe_layer_freq must be at least 1".into()));
        }
        let n_routed = raw.n_routed_experts.unwrap_or(0);
        let has_moe = n_routed > 0 && raw.first_k_dense_replace < raw.num_hidden_layers;
        let topk = raw.num_experts_per_tok.unwrap_or(0);
        if has_moe && (topk == 0 || topk > n_routed) {
            return Err(bad(format!("num_experts_per_tok {topk} must be in 1..={n_routed}")));
        }
        let topk_method = match raw.topk_method.as_deref().unwrap_or("greedy") {
            "greedy" => TopkMethod::Greedy,
            "group_limited_greedy" => {
                let (Some(n_group), Some(topk_group)) = (raw.n_group, raw.topk_group) else {
                    return Err(bad("group_limited_greedy needs n_group and topk_group".into()));
                };
                if n_group == 0 || !n_routed.is_multiple_of(n_group) || topk_group == 0 || topk_group > n_group {
                    return Err(bad(format!(
                        "n_group {n_group} / topk_group {topk_group} do not divide {n_routed} experts"
                    )));
                }
                if topk > topk_group * (n_routed / n_group) {
                    return Err(bad("num_experts_per_tok exceeds the experts of the kept groups".into()));
                }
                TopkMethod::GroupLimitedGreedy { n_group, topk_group }
            }
            other => return Err(unsupported(format!("topk_method {other:?}"))),
        };
        for (name, v) in [
            ("hidden_size", raw.hidden_size),
            ("num_attention_heads", raw.num_attention_heads),
            ("kv_lora_rank", raw.kv_lora_rank),
            ("qk_nope_head_dim", raw.qk_nope_head_dim),
            ("v_head_dim", raw.v_head_dim),
            ("vocab_size", raw.vocab_size),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} must be positive")));
            }
        }
        if raw.qk_rope_head_dim == 0 || !raw.qk_rope_head_dim.is_multiple_of(2) {
            return Err(bad(format!("qk_rope_head_dim {} must be even and positive", raw.qk_rope_head_dim)));
        }

        // transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        let mut rope_theta = raw.rope_theta;
        let mut scaling = raw.rope_scaling.clone().filter(|v| !v.is_null());
        if let Some(params) = raw.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            if rope_theta.is_none() {
                rope_theta = params.get("rope_theta").and_then(|v| v.as_f64());
            }
            if scaling.is_none() {
                scaling = Some(params.clone());
            }
        }
        let yarn = match scaling {
            None => None,
            Some(v) => {
                let kind = v
                    .get("type")
                    .or_else(|| v.get("rope_type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("default")
                    .to_string();
                match kind.as_str() {
                    "default" => None,
                    "yarn" | "deepseek_yarn" => {
                        let y: YarnScaling =
                            serde_json::from_value(v).map_err(|e| bad(format!("rope_scaling: {e}")))?;
                        if y.factor <= 0.0 || y.original_max_position_embeddings == 0 {
                            return Err(bad("rope_scaling factor / original_max_position_embeddings".into()));
                        }
                        Some(y)
                    }
                    other => return Err(unsupported(format!("rope scaling type {other:?}: only yarn"))),
                }
            }
        };
        let eos_token_ids = match raw.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            moe_intermediate_size: raw.moe_intermediate_size.unwrap_or(raw.intermediate_size),
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            n_shared_experts: raw.n_shared_experts.unwrap_or(0),
            n_routed_experts: n_routed,
            num_experts_per_tok: topk,
            routed_scaling_factor: raw.routed_scaling_factor,
            norm_topk_prob: raw.norm_topk_prob,
            topk_method,
            first_k_dense_replace: raw.first_k_dense_replace,
            moe_layer_freq: raw.moe_layer_freq,
            kv_lora_rank: raw.kv_lora_rank,
            q_lora_rank: raw.q_lora_rank.filter(|&r| r > 0),
            qk_rope_head_dim: raw.qk_rope_head_dim,
            qk_nope_head_dim: raw.qk_nope_head_dim,
            v_head_dim: raw.v_head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: rope_theta.unwrap_or(10_000.0),
            yarn,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
        })
    }

    /// Whether layer `i` is a mixture of experts (else a dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.n_routed_experts > 0 && i >= self.first_k_dense_replace && i.is_multiple_of(self.moe_layer_freq)
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token per layer: the compressed latent plus the shared rope key.
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// The attention softmax scale: 1/sqrt(qk_head_dim), times YaRN's mscale(all_dim)^2 as in
    /// DeepSeek's reference code (long-context temperature correction).
    pub fn softmax_scale(&self) -> f64 {
        let base = 1.0 / (self.qk_head_dim() as f64).sqrt();
        match &self.yarn {
            Some(y) if y.mscale_all_dim != 0.0 => {
                let m = yarn_get_mscale(y.factor, y.mscale_all_dim);
                base * m * m
            }
            _ => base,
        }
    }
}

/// YaRN's attention temperature: 0.1 * mscale * ln(scale) + 1 for scale > 1.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}
