//! An XLM-RoBERTa sentence-transformers directory loads and embeds what candle-transformers'
//! own XLM-R computes. No multilingual weights can be fetched here, so the test writes a tiny
//! random checkpoint: config, safetensors and a SentencePiece-style (Unigram) tokenizer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::xlm_roberta::{Config, XLMRobertaModel};
use kb_inference::{BertEmbedder, Embedder};
use tokenizers::models::unigram::Unigram;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::Tokenizer;

const HIDDEN: usize = 32;
const LAYERS: usize = 2;
const INTERMEDIATE: usize = 64;
const POSITIONS: usize = 40;
const PAD: u32 = 1;

const PIECES: &[&str] = &[
    "<s>",
    "<pad>",
    "</s>",
    "<unk>",
    "▁",
    "▁hello",
    "▁world",
    "▁the",
    "▁机器",
    "学习",
    "▁知识",
    "库",
    "▁検索",
    "s",
    "e",
    "a",
    "t",
    "▁k",
    "b",
];

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "model_type": "xlm-roberta",
        "architectures": ["XLMRobertaModel"],
        "vocab_size": PIECES.len(),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "intermediate_size": INTERMEDIATE,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": PAD,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "absolute"
    })
}

/// Random weights under `prefix` ("" as sentence-transformers saves them, or "roberta.").
fn write_weights(path: &Path, prefix: &str) {
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: &str, shape: &[usize], around: f32| {
        let x = (Tensor::randn(0f32, 0.3, shape, &dev).unwrap() + around as f64).unwrap();
        t.insert(format!("{prefix}{name}"), x);
    };
    put("embeddings.word_embeddings.weight", &[PIECES.len(), HIDDEN], 0.0);
    put("embeddings.position_embeddings.weight", &[POSITIONS, HIDDEN], 0.0);
    put("embeddings.token_type_embeddings.weight", &[1, HIDDEN], 0.0);
    put("embeddings.LayerNorm.weight", &[HIDDEN], 1.0);
    put("embeddings.LayerNorm.bias", &[HIDDEN], 0.0);
    for i in 0..LAYERS {
        let l = format!("encoder.layer.{i}");
        for m in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"] {
            put(&format!("{l}.{m}.weight"), &[HIDDEN, HIDDEN], 0.0);
            put(&format!("{l}.{m}.bias"), &[HIDDEN], 0.0);
        }
        put(&format!("{l}.intermediate.dense.weight"), &[INTERMEDIATE, HIDDEN], 0.0);
        put(&format!("{l}.intermediate.dense.bias"), &[INTERMEDIATE], 0.0);
        put(&format!("{l}.output.dense.weight"), &[HIDDEN, INTERMEDIATE], 0.0);
        put(&format!("{l}.output.dense.bias"), &[HIDDEN], 0.0);
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(&format!("{l}.{n}.weight"), &[HIDDEN], 1.0);
            put(&format!("{l}.{n}.bias"), &[HIDDEN], 0.0);
        }
    }
    // A full XLM-R checkpoint also holds a pooler, which sentence embedding does not use.
    put("pooler.dense.weight", &[HIDDEN, HIDDEN], 0.0);
    candle_core::safetensors::save(&t, path).unwrap();
}

fn write_tokenizer(path: &Path) {
    let vocab: Vec<(String, f64)> =
        PIECES.iter().enumerate().map(|(i, p)| (p.to_string(), if i < 4 { 0.0 } else { -(i as f64) / 4.0 })).collect();
    let model = Unigram::from(vocab, Some(3), false).unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_post_processor(Some(RobertaProcessing::new(("</s>".into(), 2), ("<s>".into(), 0))));
    tok.save(path, false).unwrap();
}

/// A model directory; `pooling` "mean" or "cls".
fn write_model(dir: &Path, prefix: &str, pooling: &str) {
    std::fs::write(dir.join("config.json"), config_json().to_string()).unwrap();
    write_weights(&dir.join("model.safetensors"), prefix);
    write_tokenizer(&dir.join("tokenizer.json"));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let p = serde_json::json!({
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
    });
    std::fs::write(dir.join("1_Pooling/config.json"), p.to_string()).unwrap();
}

/// candle-transformers' XLM-R on the same checkpoint, pooled and normalised as kb does.
fn reference(dir: &Path, prefix: &str, pooling: &str, texts: &[&str]) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let config: Config = serde_json::from_value(config_json()).unwrap();
    // SAFETY: the test's own file, mapped read-only and not modified while it is read.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev).unwrap()
    };
    let vb = if prefix.is_empty() { vb } else { vb.pp(prefix.trim_end_matches('.')) };
    let model = XLMRobertaModel::new(&config, vb).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let encodings: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(*t, true).unwrap().get_ids().to_vec()).collect();
    let len = encodings.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for e in &encodings {
        ids.extend(e.iter().copied().chain(std::iter::repeat_n(PAD, len - e.len())));
        mask.extend((0..len).map(|i| u32::from(i < e.len())));
    }
    let n = texts.len();
    let ids = Tensor::from_vec(ids, (n, len), &dev).unwrap();
    let mask = Tensor::from_vec(mask, (n, len), &dev).unwrap();
    let hidden = model.forward(&ids, &mask, &ids.zeros_like().unwrap(), None, None, None).unwrap();
    let pooled = if pooling == "cls" {
        hidden.narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
    } else {
        let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        hidden.broadcast_mul(&m).unwrap().sum(1).unwrap().broadcast_div(&m.sum(1).unwrap()).unwrap()
    };
    let norms = pooled.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    pooled.broadcast_div(&norms).unwrap().to_vec2().unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

#[test]
fn xlm_roberta_directory_matches_candle_transformers() {
    // Different lengths, so the batch is padded; CJK and an unknown piece included.
    let texts = ["hello world", "the 机器学习 知识库 hello the world world", "検索 k", "zz"];
    for (prefix, pooling) in [("", "mean"), ("roberta.", "mean"), ("", "cls")] {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), prefix, pooling);
        let e = BertEmbedder::load(dir.path()).unwrap();
        assert_eq!(e.dim(), HIDDEN);
        // XLM-R's first two position rows belong to padding.
        assert_eq!(e.max_tokens(), POSITIONS - PAD as usize - 1);
        let got = e.embed_passages(&texts).unwrap();
        let want = reference(dir.path(), prefix, pooling, &texts);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-4, "{prefix:?} {pooling}: max |difference| {diff}");
    }
}

#[test]
fn query_and_passage_prompts_come_from_the_directory_or_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), "", "mean");
    let prompts = r#"{"prompts": {"query": "the ", "passage": ""}}"#;
    std::fs::write(dir.path().join("config_sentence_transformers.json"), prompts).unwrap();
    let e = BertEmbedder::load(dir.path()).unwrap();
    let q = e.embed_query("hello world").unwrap();
    let p = e.embed_passages(&["the hello world", "hello world"]).unwrap();
    assert!(max_diff(std::slice::from_ref(&q), std::slice::from_ref(&p[0])) < 1e-5);
    assert!(max_diff(&[q], &[p[1].clone()]) > 1e-3);

    // e5's prompts, which its directory does not carry, given by the caller.
    let e = e.with_prefixes(Some("world ".into()), Some("world ".into()));
    let q = e.embed_query("hello").unwrap();
    let p = e.embed_passages(&["hello"]).unwrap();
    assert!(max_diff(&[q], &p) < 1e-6);
}
