//! `kb serve --generator deepseek --embedder deepseek` on a tiny random DeepSeek-V2 (CPU, the
//! weights drawn from config.json's shape): a collection built by the sentence encoder is
//! refused until `kb reembed` switches it to the DeepSeek embedding head, then it is searched
//! and answered through the continuous-batching scheduler, streaming included; a generator
//! with no free place answers 503 with Retry-After.

use std::path::{Path, PathBuf};

use crate::common::server::{kb, Server};
use serde_json::{json, Value};

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";

/// config.json of a 3-layer model with 8 routed experts, and a word-level tokenizer with
/// DeepSeek-V2-Chat's template (the words are noise; the machinery is real).
fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "vocab_size": 512, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "n_shared_experts": 2, "n_routed_experts": 8, "num_experts_per_tok": 3,
        "routed_scaling_factor": 1.0, "norm_topk_prob": false, "topk_method": "greedy",
        "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "kv_lora_rank": 32, "q_lora_rank": null, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
        "v_head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "rope_scaling": null, "scoring_func": "softmax",
        "tie_word_embeddings": false, "attention_bias": false, "bos_token_id": 0, "eos_token_id": 1
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut vocab = serde_json::Map::new();
    vocab.insert(BOS.into(), 0.into());
    vocab.insert(EOS.into(), 1.into());
    vocab.insert("[UNK]".into(), 2.into());
    let words =
        ["User", ":", "Assistant", "the", "port", "torque", "blade", "bolt", "kb", "8443", "turbine", "a", "of", "is"];
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).into(), (i + 3).into());
    }
    for id in (3 + words.len())..512 {
        vocab.insert(format!("w{id}"), id.into());
    }
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, BOS), added(1, EOS)],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let template = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
    let tok_cfg = json!({"bos_token": BOS, "eos_token": {"content": EOS}, "chat_template": template});
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
}

/// A configuration selecting the DeepSeek generator and embedding head over `model`.
fn deepseek_config(dir: &Path, model: &Path, deepseek_extra: &str, extra: &str) -> PathBuf {
    let path = dir.join("kb-deepseek.toml");
    let text = format!(
        "generator = \"deepseek\"\nembedder = \"deepseek\"\nanswer_min_relevance = -1.0\n{extra}\n\
         [deepseek]\nmodel_dir = {model:?}\nrandom_weights = true\ncache_tokens = 8192\n{deepseek_extra}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn vector_search(server: &Server, query: &str) -> (u16, Value) {
    server.post_json("/v1/collections/docs/search", &json!({"query": query, "mode": "vector", "top_k": 3}))
}

#[test]
fn reembed_switches_a_collection_to_the_deepseek_head_and_answers_stream() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-deepseek");
    write_model(&model);
    let data = dir.path().join("data");
    let guide = crate::common::fixtures().join("guide.md");

    // Built by the default sentence encoder.
    let (ok, out, err) = kb(&data, &["ingest", "--collection", "docs", guide.to_str().unwrap()]);
    assert!(ok, "{out}\n{err}");

    let config = deepseek_config(dir.path(), &model, "", "answer_max_tokens = 24");
    {
        let server = Server::start_with(&data, Some(&config));
        let refused = vector_search(&server, "Which port does kb listen on?");
        crate::common::assert_error(&refused, 409, "embedder_mismatch");
        assert!(refused.1["error"]["message"].as_str().unwrap().contains("re-embed"), "{}", refused.1);
        server.assert_healthy();
    }

    let config_arg = config.to_str().unwrap();
    let (ok, out, err) = kb(&data, &["--config", config_arg, "reembed", "--collection", "docs"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("re-embedded with deepseek:tiny-deepseek:mean:64"), "{out}");
    // Running it again finds nothing to do.
    let (ok, out, _) = kb(&data, &["--config", config_arg, "reembed", "--collection", "docs"]);
    assert!(ok && out.contains("already embedded"), "{out}");

    let server = Server::start_with(&data, Some(&config));
    let hits = server.search("docs", "Which port does kb listen on?", "vector", 3);
    assert!(!hits.is_empty() && hits.iter().all(|h| h["filename"] == "guide.md"), "{hits:#?}");
    assert!(hits.iter().all(|h| h["score"].as_f64().is_some_and(|s| (-1.0..=1.0001).contains(&s))), "{hits:#?}");

    let (status, a) =
        server.post_json("/v1/collections/docs/ask", &json!({"question": "Which port does kb listen on?", "top_k": 2}));
    assert_eq!(status, 200, "{a}");
    // Random weights write no supported sentence: the checked answer falls back to quoting.
    assert!(a["kind"] == "generated" || a["kind"] == "extractive", "{a}");
    assert!(a["answer"].is_string() && a["citations"].is_array(), "{a}");

    let r = server.call(
        "POST",
        "/v1/collections/docs/ask",
        &[],
        Some(&json!({"question": "What torque goes on a blade bolt?", "stream": true})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("text/event-stream"), "{}", r.content_type);
    let events: Vec<&str> = r.body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert!(events.len() >= 2, "{}", r.body);
    assert_eq!(&events[events.len() - 2..], ["citations", "done"], "{}", r.body);
    assert!(events[..events.len() - 2].iter().all(|e| *e == "token"), "{}", r.body);
    server.assert_healthy();
}

#[test]
fn a_generator_with_no_free_place_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-deepseek");
    write_model(&model);
    // One sequence at a time, and a request may not wait: the second of two at once is busy.
    let config = deepseek_config(
        dir.path(),
        &model,
        "max_sequences = 1\nmax_queued = 8\nqueue_wait_secs = 0",
        "answer_max_tokens = 600",
    );
    let server = Server::start_with(&dir.path().join("data"), Some(&config));
    server.create_collection("docs");
    let (status, body) = server.upload("docs", &[("guide.md", crate::common::fixture("guide.md").as_slice())]);
    assert_eq!(status, 202, "{body}");
    let docs = server.wait_idle("docs", std::time::Duration::from_secs(60));
    assert!(docs.iter().all(|d| d["status"] == "done"), "{docs:#?}");

    let server = std::sync::Arc::new(server);
    let replies: Vec<(u16, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let server = server.clone();
                s.spawn(move || {
                    let body = json!({"question": format!("Which port does kb listen on? {i}"), "stream": i % 2 == 0});
                    let r = server.call("POST", "/v1/collections/docs/ask", &[], Some(&body));
                    (r.status, r.retry_after, r.body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<_> = replies.iter().filter(|r| r.0 == 503).collect();
    assert!(replies.iter().any(|r| r.0 == 200), "{replies:?}");
    assert!(!busy.is_empty(), "no request was turned away: {replies:?}");
    for (_, retry_after, body) in &busy {
        assert!(retry_after.is_some(), "503 without Retry-After: {body}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    }
    assert!(replies.iter().all(|r| r.0 == 200 || r.0 == 503), "{replies:?}");
    server.assert_healthy();
}
