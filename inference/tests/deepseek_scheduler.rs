//! Continuous batching on a tiny random DeepSeek-V2 (CPU, f32): sequences decoded together
//! produce exactly what each produces alone, late joiners too; a dropped receiver frees its
//! place; a full queue refuses new requests.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use kb_inference::deepseek::scheduler::{Event, Request, Scheduler, SchedulerConfig, SubmitError};
use kb_inference::deepseek::{DeepSeekV2, DeepSeekV2Config, RandomSource};
use kb_inference::{FinishReason, SamplingParams};

fn model() -> Arc<DeepSeekV2> {
    let config = serde_json::json!({
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "n_shared_experts": 2, "n_routed_experts": 8, "num_experts_per_tok": 3,
        "routed_scaling_factor": 1.0, "norm_topk_prob": false, "topk_method": "greedy",
        "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "kv_lora_rank": 32, "q_lora_rank": null, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
        "v_head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 2560, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        "scoring_func": "softmax", "tie_word_embeddings": false, "attention_bias": false,
        "bos_token_id": 0, "eos_token_id": 1
    });
    let cfg = DeepSeekV2Config::from_json(&config.to_string(), std::path::Path::new("config.json")).unwrap();
    Arc::new(DeepSeekV2::from_source(cfg, &RandomSource::new(0.15, 7), DType::F32, &Device::Cpu).unwrap())
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| 2 + (i * 37 + salt * 11) % 120).collect()
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request { prompt, params: SamplingParams { max_tokens, ..SamplingParams::default() }, end_tokens: vec![] }
}

fn collect(rx: &Receiver<Event>) -> (Vec<u32>, FinishReason) {
    let mut tokens = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).expect("scheduler answered") {
            Event::Token(t) => tokens.push(t),
            Event::Done(r) => return (tokens, r),
            Event::Error(e) => panic!("generation failed: {e}"),
            Event::Busy => panic!("turned away as busy"),
        }
    }
}

fn config(max_sequences: usize, max_queued: usize) -> SchedulerConfig {
    // Small prefill chunks and step budgets: prompts are fed over several steps, beside other
    // sequences' decoding.
    SchedulerConfig {
        max_sequences,
        max_queued,
        prefill_chunk: 4,
        max_step_tokens: 8,
        max_prefill_tokens: 8,
        cache_tokens: 4096,
        ..SchedulerConfig::default()
    }
}

#[test]
fn a_batch_decodes_what_each_sequence_decodes_alone() {
    let m = model();
    let prompts = [prompt(3, 1), prompt(9, 2), prompt(17, 3), prompt(6, 4)];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let s = Scheduler::start(m.clone(), config(1, 4)).unwrap();
            collect(&s.submit(request(p.clone(), 10)).unwrap()).0
        })
        .collect();
    let s = Scheduler::start(m.clone(), config(8, 8)).unwrap();
    let receivers: Vec<_> = prompts.iter().map(|p| s.submit(request(p.clone(), 10)).unwrap()).collect();
    for (rx, want) in receivers.iter().zip(&alone) {
        let (got, reason) = collect(rx);
        assert_eq!(reason, FinishReason::Length);
        assert_eq!(&got, want);
        assert_eq!(got.len(), 10);
    }

    // A request joining a running batch gets its own tokens, and the others keep theirs.
    let first = s.submit(request(prompts[2].clone(), 10)).unwrap();
    for _ in 0..3 {
        assert!(matches!(first.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Token(_)));
    }
    let late = s.submit(request(prompts[1].clone(), 10)).unwrap();
    assert_eq!(collect(&late).0, alone[1]);
    let (rest, _) = collect(&first);
    assert_eq!(rest, alone[2][3..]);
}

#[test]
fn a_dropped_receiver_frees_its_place() {
    let s = Scheduler::start(model(), config(1, 4)).unwrap();
    let long = s.submit(request(prompt(5, 1), 2000)).unwrap();
    assert!(matches!(long.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Token(_)));
    drop(long);
    // With one place, this can only run once the abandoned sequence has left.
    let next = s.submit(request(prompt(4, 2), 5)).unwrap();
    let (tokens, reason) = collect(&next);
    assert_eq!((tokens.len(), reason), (5, FinishReason::Length));
}

#[test]
fn a_full_queue_refuses_new_requests() {
    let s = Scheduler::start(model(), config(1, 1)).unwrap();
    let running = s.submit(request(prompt(5, 1), 2000)).unwrap();
    assert!(matches!(running.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Token(_)));
    let waiting = s.submit(request(prompt(5, 2), 5)).unwrap();
    assert_eq!(s.queued(), 1);
    assert_eq!(s.submit(request(prompt(5, 3), 5)).err(), Some(SubmitError::QueueFull));
    // Too long for the cache: refused up front, not an out-of-memory failure later.
    assert!(matches!(s.submit(request(prompt(5, 4), 10_000)), Err(SubmitError::Invalid(_))));
    drop(running);
    assert_eq!(collect(&waiting).1, FinishReason::Length);
}

#[test]
fn a_request_that_finds_no_place_in_time_is_turned_away_busy() {
    let config = SchedulerConfig { queue_wait: Duration::from_millis(50), ..config(1, 4) };
    let s = Scheduler::start(model(), config).unwrap();
    let running = s.submit(request(prompt(8, 1), 2000)).unwrap();
    assert!(matches!(running.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Token(_)));
    let late = s.submit(request(prompt(5, 2), 4)).unwrap();
    assert_eq!(late.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Busy);
    // The running request is unaffected; dropping it frees the place for the next one.
    assert!(matches!(running.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Token(_)));
    drop(running);
    let next = s.submit(request(prompt(5, 3), 3)).unwrap();
    let (tokens, reason) = collect(&next);
    assert_eq!((tokens.len(), reason), (3, FinishReason::Length));
}

#[test]
fn the_cache_pool_hands_out_and_takes_back_row_ranges() {
    use kb_inference::deepseek::CachePool;
    let mut pool = CachePool::new(2, 8, 100, DType::F32, &Device::Cpu).unwrap();
    let a = pool.alloc(30).unwrap().unwrap();
    let b = pool.alloc(30).unwrap().unwrap();
    let c = pool.alloc(40).unwrap().unwrap();
    assert_eq!(pool.free_rows(), 0);
    assert!(pool.alloc(1).unwrap().is_none());
    pool.release(&b);
    assert!(pool.alloc(31).unwrap().is_none(), "30 free rows cannot hold 31");
    pool.release(&a);
    pool.release(&c);
    assert_eq!(pool.free_rows(), 100);
    // Neighbours merged back into one range.
    let whole = pool.alloc(100).unwrap().unwrap();
    assert_eq!(whole.capacity(), 100);
}
