//! DeepSeek-V2 on a tiny random checkpoint, written by the test as sharded safetensors.

use candle_core::{DType, Device, Tensor};
use kb_inference::deepseek::{
    DeepSeekV2, DeepSeekV2Config, FixedDecoder, LatentCache, LogitsMode, RandomSource, WeightSource,
};
use kb_inference::ModelError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

pub(crate) fn tiny_config(extra: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut v = serde_json::json!({
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_shared_experts": 2,
        "n_routed_experts": 8,
        "num_experts_per_tok": 3,
        "routed_scaling_factor": 1.0,
        "norm_topk_prob": false,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": null,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 2560,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "yarn", "factor": 40, "original_max_position_embeddings": 64,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707
        },
        "scoring_func": "softmax",
        "tie_word_embeddings": false,
        "attention_bias": false,
        "bos_token_id": 0,
        "eos_token_id": 1
    });
    for (k, val) in extra {
        v[*k] = val.clone();
    }
    v
}

/// A weight source in the hub's per-expert layout that remembers what it handed out.
struct Recording {
    inner: RandomSource,
    seen: RefCell<Vec<(String, Tensor)>>,
}

impl WeightSource for Recording {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let t = if name.ends_with("norm.weight") {
            // Not all ones, so a norm weight loaded in the wrong place shows.
            (self.inner.get(&format!("{name}/"), shape, dtype, device)?.abs()? + 0.5)?
        } else {
            self.inner.get(name, shape, dtype, device)?
        };
        self.seen.borrow_mut().push((name.to_string(), t.clone()));
        Ok(t)
    }
    fn contains(&self, _name: &str) -> bool {
        false
    }
}

/// Writes config.json and two safetensors shards with the index file; returns the config.
pub(crate) fn write_checkpoint(dir: &Path, config: &serde_json::Value, seed: u64) -> DeepSeekV2Config {
    let text = serde_json::to_string_pretty(config).unwrap();
    std::fs::write(dir.join("config.json"), &text).unwrap();
    let cfg = DeepSeekV2Config::from_json(&text, &dir.join("config.json")).unwrap();
    let dev = Device::Cpu;
    let rec = Recording { inner: RandomSource::new(0.15, seed), seen: RefCell::new(Vec::new()) };
    DeepSeekV2::from_source(cfg.clone(), &rec, DType::F32, &dev).unwrap();
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, (name, t)) in rec.seen.into_inner().into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), serde_json::Value::String(file));
        shards[i % 2].insert(name, t);
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(shard, dir.join(format!("model-0000{}-of-00002.safetensors", i + 1))).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    cfg
}

fn load_tiny(extra: &[(&str, serde_json::Value)]) -> (tempfile::TempDir, DeepSeekV2) {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tiny_config(extra), 7);
    let model = DeepSeekV2::load(dir.path(), &Device::Cpu).unwrap();
    (dir, model)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

const PROMPT: [u32; 13] = [5, 17, 99, 3, 64, 127, 8, 8, 42, 11, 90, 2, 77];

fn full_logits(model: &DeepSeekV2, tokens: &[u32]) -> Tensor {
    let mut cache = model.new_cache(4).unwrap();
    let out = model.forward(&[tokens], &mut [&mut cache], LogitsMode::All).unwrap();
    assert_eq!(cache.len(), tokens.len());
    out.logits.unwrap()
}

#[test]
fn incremental_decoding_matches_full_forward() {
    for q_lora in [serde_json::Value::Null, serde_json::json!(24)] {
        let (_dir, model) = load_tiny(&[("q_lora_rank", q_lora)]);
        let full = full_logits(&model, &PROMPT);
        assert_eq!(full.dims(), &[PROMPT.len(), 128]);
        let scale = max_abs(&full);
        assert!(scale > 0.1, "logits should not be degenerate, max |logit| {scale}");

        // Prefill 5 tokens, then a chunk of 3 (masked against a prefix), then one at a time.
        // A capacity of 2 forces the cache to grow on the way.
        let mut cache = model.new_cache(2).unwrap();
        let out = model.forward(&[&PROMPT[..5]], &mut [&mut cache], LogitsMode::All).unwrap();
        let d = max_abs_diff(&out.logits.unwrap(), &full.narrow(0, 0, 5).unwrap());
        assert!(d < 1e-4 * scale.max(1.0), "prefill differs by {d}");
        let out = model.forward(&[&PROMPT[5..8]], &mut [&mut cache], LogitsMode::All).unwrap();
        let d = max_abs_diff(&out.logits.unwrap(), &full.narrow(0, 5, 3).unwrap());
        assert!(d < 1e-4 * scale.max(1.0), "chunked prefill differs by {d}");
        for p in 8..PROMPT.len() {
            let out = model.forward(&[&PROMPT[p..p + 1]], &mut [&mut cache], LogitsMode::Last).unwrap();
            let d = max_abs_diff(&out.logits.unwrap(), &full.narrow(0, p, 1).unwrap());
            assert!(d < 1e-4 * scale.max(1.0), "decode step at position {p} differs by {d}");
        }
        assert_eq!(cache.len(), PROMPT.len());
    }
}

#[test]
fn fixed_decoder_matches_full_forward_across_windows() {
    use kb_inference::deepseek::decode::WINDOW;
    let (_dir, model) = load_tiny(&[]);
    // Crosses the first attention window: prefill up to just before it, decode past it.
    let n = WINDOW + 6;
    let tokens: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2654435761) % 128).collect();
    let full = full_logits(&model, &tokens);
    let scale = max_abs(&full);
    let mut dec = FixedDecoder::new(&model, n + 1).unwrap();
    assert_eq!(dec.capacity(), 2 * WINDOW);
    let start = WINDOW - 4;
    let last = dec.prefill(&tokens[..start]).unwrap();
    let d = max_abs_diff(&last, &full.narrow(0, start - 1, 1).unwrap());
    assert!(d < 1e-4 * scale.max(1.0), "prefill differs by {d}");
    for (p, &t) in tokens.iter().enumerate().skip(start) {
        let logits = dec.step(t).unwrap();
        let d = max_abs_diff(&logits, &full.narrow(0, p, 1).unwrap());
        assert!(d < 1e-4 * scale.max(1.0), "fixed decode step at position {p} differs by {d}");
    }
    assert_eq!(dec.len(), n);
    // Reuse after reset, and the capacity and vocabulary limits are errors.
    dec.reset();
    let again = dec.prefill(&tokens[..3]).unwrap();
    assert!(max_abs_diff(&again, &full.narrow(0, 2, 1).unwrap()) < 1e-4 * scale.max(1.0));
    assert!(matches!(dec.step(128), Err(ModelError::InvalidInput(_))));
    let long = vec![1u32; 2 * WINDOW];
    assert!(matches!(dec.prefill(&long), Err(ModelError::InvalidInput(_))));
}

#[test]
fn batched_sequences_match_separate_runs() {
    let (_dir, model) = load_tiny(&[]);
    let a = &PROMPT[..9];
    let b = &PROMPT[4..];
    let (full_a, full_b) = (full_logits(&model, a), full_logits(&model, b));
    // Batch prefill of two prompts of different lengths, then batched decode of one token each.
    let mut ca = model.new_cache(16).unwrap();
    let mut cb = model.new_cache(16).unwrap();
    let out = model.forward(&[&a[..6], &b[..3]], &mut [&mut ca, &mut cb], LogitsMode::All).unwrap();
    let logits = out.logits.unwrap();
    assert_eq!(out.hidden.dims(), &[9, 64]);
    assert!(max_abs_diff(&logits.narrow(0, 0, 6).unwrap(), &full_a.narrow(0, 0, 6).unwrap()) < 1e-4);
    assert!(max_abs_diff(&logits.narrow(0, 6, 3).unwrap(), &full_b.narrow(0, 0, 3).unwrap()) < 1e-4);
    let out = model.forward(&[&a[6..7], &b[3..4]], &mut [&mut ca, &mut cb], LogitsMode::Last).unwrap();
    let logits = out.logits.unwrap();
    assert_eq!(logits.dims(), &[2, 128]);
    assert!(max_abs_diff(&logits.narrow(0, 0, 1).unwrap(), &full_a.narrow(0, 6, 1).unwrap()) < 1e-4);
    assert!(max_abs_diff(&logits.narrow(0, 1, 1).unwrap(), &full_b.narrow(0, 3, 1).unwrap()) < 1e-4);
    assert_eq!((ca.len(), cb.len()), (7, 4));
}

#[test]
fn hidden_states_are_exposed_and_cache_holds_only_the_latent() {
    let (_dir, model) = load_tiny(&[]);
    let mut cache: LatentCache = model.new_cache(16).unwrap();
    let out = model.forward(&[&PROMPT], &mut [&mut cache], LogitsMode::None).unwrap();
    assert!(out.logits.is_none());
    assert_eq!(out.hidden.dims(), &[PROMPT.len(), 64]);
    // kv_lora_rank + rope = 32 + 8 values per token per layer, f32, 3 layers, 16 slots.
    assert_eq!(cache.bytes(), 3 * 16 * 40 * 4);
}

#[test]
fn routing_picks_k_experts_and_shared_experts_always_run() {
    let (_dir, model) = load_tiny(&[]);
    assert!(model.moe_layer(0).is_none(), "first_k_dense_replace = 1 keeps layer 0 dense");
    let moe = model.moe_layer(1).expect("layer 1 is MoE");
    assert!(moe.has_shared_experts());
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (10, 64), &dev).unwrap();
    let routing = moe.route(&x).unwrap();
    assert_eq!(routing.ids.dims(), &[10, 3]);
    let ids = routing.ids.to_vec2::<u32>().unwrap();
    let ws = routing.weights.to_vec2::<f32>().unwrap();
    for (row, w) in ids.iter().zip(ws.iter()) {
        let mut uniq = row.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 3, "three distinct experts per token: {row:?}");
        assert!(row.iter().all(|&e| e < 8));
        assert!(w.iter().all(|&v| v > 0.0 && v < 1.0));
        assert!(w.windows(2).all(|p| p[0] >= p[1]), "top-k in descending weight order");
    }
    // The MoE output is exactly shared(x) + the grouped routed experts, and the routed part
    // equals a per-token reference loop over the chosen experts.
    let routed = moe.experts_grouped(&x, &routing).unwrap();
    let shared = moe.shared_forward(&x).unwrap().expect("shared experts");
    assert!(max_abs(&shared) > 1e-3, "shared experts contribute");
    let total = moe.forward(&x).unwrap();
    assert!(max_abs_diff(&total, &(&shared + &routed).unwrap()) < 1e-5);
    for t in 0..10 {
        let xt = x.narrow(0, t, 1).unwrap();
        let mut want = Tensor::zeros((1, 64), DType::F32, &dev).unwrap();
        for (&e, &w) in ids[t].iter().zip(ws[t].iter()) {
            want = (want + (moe.expert_forward(e as usize, &xt).unwrap() * w as f64).unwrap()).unwrap();
        }
        let got = routed.narrow(0, t, 1).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5, "token {t}");
    }
}

#[test]
fn norm_topk_prob_and_scaling_factor_apply() {
    let (_dir, model) = load_tiny(&[("norm_topk_prob", serde_json::json!(true))]);
    let x = Tensor::randn(0f32, 1.0, (6, 64), &Device::Cpu).unwrap();
    let sums = model.moe_layer(1).unwrap().route(&x).unwrap().weights.sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "normalised: {sums:?}");
    let (_dir2, model) = load_tiny(&[("routed_scaling_factor", serde_json::json!(16.0))]);
    let moe = model.moe_layer(1).unwrap();
    let r = moe.route(&x).unwrap();
    let w = r.weights.to_vec2::<f32>().unwrap();
    assert!(w.iter().flatten().any(|&v| v > 1.0), "scaled by 16: {w:?}");
}

#[test]
fn group_limited_routing_stays_in_the_best_groups() {
    let (_dir, model) = load_tiny(&[
        ("topk_method", serde_json::json!("group_limited_greedy")),
        ("n_group", serde_json::json!(4)),
        ("topk_group", serde_json::json!(2)),
    ]);
    let moe = model.moe_layer(2).unwrap();
    let x = Tensor::randn(0f32, 3.0, (32, 64), &Device::Cpu).unwrap();
    let ids = moe.route(&x).unwrap().ids.to_vec2::<u32>().unwrap();
    let probs = moe.router_probs(&x).unwrap().to_vec2::<f32>().unwrap();
    for (row, p) in ids.iter().zip(probs.iter()) {
        // Groups of 2 experts: the two groups with the highest best-expert probability.
        let mut best: Vec<(f32, usize)> = (0..4).map(|g| (p[2 * g].max(p[2 * g + 1]), g)).collect();
        best.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let kept = [best[0].1, best[1].1];
        assert!(row.iter().all(|&e| kept.contains(&(e as usize / 2))), "{row:?} outside groups {kept:?}");
    }
}

#[test]
fn yarn_softmax_scale_follows_mscale_all_dim() {
    let cfg = DeepSeekV2Config::from_json(&tiny_config(&[]).to_string(), Path::new("config.json")).unwrap();
    let m = 0.1 * 0.707 * 40f64.ln() + 1.0;
    assert!((cfg.softmax_scale() - m * m / 24f64.sqrt()).abs() < 1e-9);
    assert_eq!(cfg.latent_dim(), 40);
}

fn load_err(dir: &Path) -> ModelError {
    DeepSeekV2::load(dir, &Device::Cpu).expect_err("load must fail")
}

#[test]
fn loading_rejects_bad_checkpoints_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // No config.json at all.
    assert!(matches!(load_err(dir.path()), ModelError::MissingFile { .. }));

    write_checkpoint(dir.path(), &tiny_config(&[]), 3);
    // A config whose shapes disagree with the weights.
    let good = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["kv_lora_rank"] = serde_json::json!(48);
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    match load_err(dir.path()) {
        ModelError::ShapeMismatch { name, expected, found } => {
            assert!(name.contains("kv_a_proj_with_mqa"), "{name}");
            assert_eq!((expected[0], found[0]), (56, 40));
        }
        e => panic!("expected a shape mismatch, got {e}"),
    }
    // Unsupported and invalid config values.
    v["kv_lora_rank"] = serde_json::json!(32);
    v["topk_method"] = serde_json::json!("noaux_tc");
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("noaux_tc"));
    v["topk_method"] = serde_json::json!("greedy");
    v["num_experts_per_tok"] = serde_json::json!(9);
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Config { .. }));
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Config { .. }));
    std::fs::write(dir.path().join("config.json"), &good).unwrap();
    DeepSeekV2::load(dir.path(), &Device::Cpu).expect("the untouched checkpoint loads");

    // A truncated shard.
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("model-00002-of-00002"), "{e}");
    // A shard with a garbage header.
    std::fs::write(&shard, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Checkpoint { .. }));
    // A shard named by the index but absent.
    std::fs::remove_file(&shard).unwrap();
    match load_err(dir.path()) {
        ModelError::MissingFile { path } => assert_eq!(path, shard),
        e => panic!("expected a missing file, got {e}"),
    }
    // A tensor missing from otherwise valid shards (and from the index).
    std::fs::write(&shard, &bytes).unwrap();
    let idx_path = dir.path().join("model.safetensors.index.json");
    let mut idx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&idx_path).unwrap()).unwrap();
    let file = idx["weight_map"]["model.norm.weight"].as_str().unwrap().to_string();
    idx["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
    std::fs::write(&idx_path, idx.to_string()).unwrap();
    let holder = dir.path().join(file);
    let tensors = candle_core::safetensors::load(&holder, &Device::Cpu).unwrap();
    let kept: HashMap<String, Tensor> = tensors.into_iter().filter(|(k, _)| k != "model.norm.weight").collect();
    candle_core::safetensors::save(&kept, &holder).unwrap();
    match load_err(dir.path()) {
        ModelError::MissingTensor { name } => assert_eq!(name, "model.norm.weight"),
        e => panic!("expected a missing tensor, got {e}"),
    }
}

#[test]
fn out_of_vocabulary_tokens_are_an_error_not_a_panic() {
    let (_dir, model) = load_tiny(&[]);
    let mut cache = model.new_cache(4).unwrap();
    let e = model.forward(&[&[3, 500]], &mut [&mut cache], LogitsMode::Last).unwrap_err();
    assert!(matches!(e, ModelError::InvalidInput(_)), "{e}");
    assert_eq!(cache.len(), 0);
}

// ---- The generator: tiny model + a tiny word-level tokenizer covering its 128 ids ----

const BOS_T: &str = "<｜begin▁of▁sentence｜>";
const EOS_T: &str = "<｜end▁of▁sentence｜>";

fn write_word_tokenizer(dir: &Path) {
    let mut vocab = serde_json::Map::new();
    vocab.insert(BOS_T.into(), 0.into());
    vocab.insert(EOS_T.into(), 1.into());
    for (i, w) in ["User", ":", "Assistant", "[UNK]"].iter().enumerate() {
        vocab.insert((*w).into(), (i + 2).into());
    }
    for id in 6..128u32 {
        vocab.insert(format!("w{id}"), id.into());
    }
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, BOS_T), added(1, EOS_T)],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let template = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
    let cfg = serde_json::json!({ "bos_token": BOS_T, "eos_token": {"content": EOS_T}, "chat_template": template });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

#[test]
fn generator_streams_greedy_text_and_honours_stop_strings_and_cancellation() {
    use kb_inference::generator::deepseek::DeepSeekGenerator;
    use kb_inference::{ChatMessage, FinishReason, Flow, Generator, Role, SamplingParams};
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tiny_config(&[]), 11);
    write_word_tokenizer(dir.path());
    let gen = DeepSeekGenerator::load(dir.path(), &Device::Cpu, 300).unwrap();
    assert_eq!(gen.context_tokens(), 300);
    assert_eq!(gen.count_tokens("w7 w8 w9").unwrap(), 3);
    let messages = [ChatMessage { role: Role::User, content: "w10 w11 w12".into() }];

    // The expected greedy answer, from the plain forward pass.
    let model = DeepSeekV2::load(dir.path(), &Device::Cpu).unwrap();
    let prompt = gen.tokenizer().encode_chat(&messages).unwrap();
    assert_eq!(&prompt[..2], &[0, 2]); // BOS, "User"
    let mut cache = model.new_cache(64).unwrap();
    let mut logits = model.forward(&[&prompt], &mut [&mut cache], LogitsMode::Last).unwrap().logits.unwrap();
    let mut want = Vec::new();
    for _ in 0..8 {
        let next = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        want.push(next);
        if next == 1 {
            break;
        }
        logits = model.forward(&[&[next]], &mut [&mut cache], LogitsMode::Last).unwrap().logits.unwrap();
    }
    let words: Vec<String> = want.iter().take_while(|&&t| t != 1).map(|t| format!("w{t}")).collect();

    let params = SamplingParams { max_tokens: 8, ..Default::default() };
    let mut pieces = Vec::new();
    let stats = gen
        .generate(&messages, &params, &mut |t| {
            pieces.push(t.to_string());
            Flow::Continue
        })
        .unwrap();
    assert_eq!(stats.prompt_tokens, prompt.len());
    assert_eq!(stats.completion_tokens, want.len());
    let expect_finish = if want.last() == Some(&1) { FinishReason::Stop } else { FinishReason::Length };
    assert_eq!(stats.finish_reason, expect_finish);
    assert_eq!(pieces.concat(), words.join(" "));
    assert!(pieces.len() >= words.len().min(1));

    // Seed 11 gives a greedy answer of several words (checked), so the cases below all run.
    assert!(words.len() >= 3, "greedy answer {want:?}");
    {
        // A stop string: the text before it is handed out, nothing of it.
        let stop = SamplingParams { max_tokens: 8, stop: vec![words[2].clone()], ..Default::default() };
        let mut text = String::new();
        let stats = gen
            .generate(&messages, &stop, &mut |t| {
                text.push_str(t);
                Flow::Continue
            })
            .unwrap();
        assert_eq!(stats.finish_reason, FinishReason::Stop);
        let cut = words.join(" ");
        let at = cut.find(words[2].as_str()).unwrap();
        assert_eq!(text, cut[..at]);
        // Cancellation from the callback after the first piece.
        let mut calls = 0;
        let stats = gen
            .generate(&messages, &params, &mut |_| {
                calls += 1;
                Flow::Stop
            })
            .unwrap();
        assert_eq!((stats.finish_reason, stats.completion_tokens, calls), (FinishReason::Cancelled, 1, 1));
    }
    // Temperature sampling is reproducible by seed, and the context is enforced.
    let hot = SamplingParams { max_tokens: 6, temperature: 0.9, top_p: Some(0.9), seed: 3, ..Default::default() };
    let run = || {
        let mut s = String::new();
        gen.generate(&messages, &hot, &mut |t| {
            s.push_str(t);
            Flow::Continue
        })
        .unwrap();
        s
    };
    assert_eq!(run(), run());
    let huge = SamplingParams { max_tokens: 1000, ..Default::default() };
    assert!(matches!(gen.generate(&messages, &huge, &mut |_| Flow::Continue), Err(ModelError::ContextOverflow { .. })));
}

#[test]
fn batched_generator_answers_concurrent_requests_as_the_single_one_does() {
    use kb_inference::deepseek::scheduler::SchedulerConfig;
    use kb_inference::generator::deepseek::DeepSeekGenerator;
    use kb_inference::{ChatMessage, Flow, Generator, Role, SamplingParams};
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tiny_config(&[]), 11);
    write_word_tokenizer(dir.path());
    let single = DeepSeekGenerator::load(dir.path(), &Device::Cpu, 300).unwrap();
    let config = SchedulerConfig {
        max_sequences: 4,
        max_queued: 8,
        prefill_chunk: 3,
        cache_tokens: 2048,
        ..SchedulerConfig::default()
    };
    let batched = DeepSeekGenerator::load_batched(dir.path(), &Device::Cpu, 300, config).unwrap();
    let params = SamplingParams { max_tokens: 8, ..Default::default() };
    let questions = ["w10 w11 w12", "w40 w41", "w7 w8 w9 w20 w21 w22", "w99"];
    let run = |g: &dyn Generator, q: &str| {
        let messages = [ChatMessage { role: Role::User, content: q.into() }];
        let mut text = String::new();
        let stats = g
            .generate(&messages, &params, &mut |t| {
                text.push_str(t);
                Flow::Continue
            })
            .unwrap();
        (text, stats)
    };
    let want: Vec<_> = questions.iter().map(|q| run(&single, q)).collect();
    // All at once, from four threads: the scheduler decodes them in one batch.
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = questions.iter().map(|q| s.spawn(|| run(&batched, q))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((text, stats), (want_text, want_stats)) in got.iter().zip(&want) {
        assert_eq!(text, want_text);
        assert_eq!(stats, want_stats);
    }
}

#[test]
fn the_embedding_head_pools_projects_and_normalises() {
    use kb_inference::deepseek::DeepSeekTokenizer;
    use kb_inference::{DeepSeekEmbedder, Embedder, Pooling};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &tiny_config(&[]), 5);
    write_word_tokenizer(dir.path());
    let model = Arc::new(DeepSeekV2::load(dir.path(), &Device::Cpu).unwrap());
    let tok = DeepSeekTokenizer::from_dir(dir.path()).unwrap();
    let texts = ["w10 w11 w12", "w40 w41", "w10 w11 w12"];

    let mean = DeepSeekEmbedder::new("tiny", model.clone(), &tok, Pooling::Mean, None, 64).unwrap();
    assert_eq!((mean.dim(), mean.id()), (64, "deepseek:tiny:mean:64"));
    let v = mean.embed_passages(&texts).unwrap();
    let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
    assert!(v.iter().all(|x| x.len() == 64 && (norm(x) - 1.0).abs() < 1e-4));
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close(&v[0], &v[2]), "the same text embeds the same, whatever it is batched with");
    assert!(!close(&v[0], &v[1]));
    assert!(close(&mean.embed_query("w10 w11 w12").unwrap(), &v[0]));

    let last = DeepSeekEmbedder::new("tiny", model.clone(), &tok, Pooling::Last, None, 64).unwrap();
    assert!(!close(&last.embed_passages(&texts[..1]).unwrap()[0], &v[0]), "last-token pooling differs from the mean");

    // A (16, hidden) projection head from a safetensors file.
    let head = Tensor::randn(0f32, 1.0, (16, 64), &Device::Cpu).unwrap();
    let path = dir.path().join("head-16.safetensors");
    candle_core::safetensors::save(&HashMap::from([("proj.weight".to_string(), head)]), &path).unwrap();
    let projected = DeepSeekEmbedder::new("tiny", model.clone(), &tok, Pooling::Mean, Some(&path), 64).unwrap();
    assert_eq!((projected.dim(), projected.id()), (16, "deepseek:tiny:mean:head-16:16"));
    let p = projected.embed_passages(&texts[..2]).unwrap();
    assert!(p.iter().all(|x| x.len() == 16 && (norm(x) - 1.0).abs() < 1e-4));

    // A head of the wrong width is a clear error.
    let bad = dir.path().join("bad.safetensors");
    let wrong = Tensor::zeros((16, 32), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), wrong)]), &bad).unwrap();
    let err = DeepSeekEmbedder::new("tiny", model, &tok, Pooling::Mean, Some(&bad), 64).err().expect("refused");
    assert!(err.to_string().contains("hidden size 64"), "{err}");
}
