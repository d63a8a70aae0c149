//! DeepSeek-V2 GPU checks: logits against transformers' reference, and throughput.
//!
//!   deepseek-bench compare DIR          DIR from scripts/gpu/deepseek_ref.py: config.json,
//!                                       safetensors, tokens.json, logits.npy (+ logits_native.npy)
//!   deepseek-bench bench [--layers N] [--steps N] [--cpu]
//!                                       random Lite-shaped bf16 weights made on the device
//!   deepseek-bench serve-bench [--batches 1,8,32,64] [--prompt N] [--new N] [--layers N]
//!                              [--max-prefill 4096,16384] [--prefill-chunk 512,4096]
//!                                       the continuous-batching scheduler at each concurrency
//!                                       (and each prefill budget and prompt chunk, to compare
//!                                       them in one run)
//!
//!   deepseek-bench int4 [--layers N] [--steps N]
//!                                       int4 (W4A16) against bf16: kernels, memory, logits, speed
//!
//! Prints one `RESULT {json}` line per measurement.

#[path = "deepseek_bench/int4.rs"]
mod int4;

use candle_core::{DType, Device, Tensor, D};
use kb_inference::deepseek::scheduler::SchedulerConfig;
use kb_inference::deepseek::{
    rope, BatchDecoder, CachePool, DeepSeekV2, DeepSeekV2Config, FixedDecoder, LatentCache, LogitsMode, Quantize,
    RandomSource,
};
use std::path::Path;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn device(cpu: bool) -> Res<Device> {
    Ok(if cpu { Device::Cpu } else { Device::cuda_if_available(0)? })
}

fn lite_config(layers: usize) -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
        "moe_intermediate_size": 1408, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
        "num_experts_per_tok": 6, "routed_scaling_factor": 1.0, "norm_topk_prob": false,
        "topk_method": "greedy", "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": null, "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128, "v_head_dim": 128, "hidden_act": "silu",
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        "scoring_func": "softmax", "tie_word_embeddings": false, "attention_bias": false
    })
}

/// Max abs error, max abs error relative to the reference's largest logit, mean abs error,
/// top-1 agreement (fraction of rows whose argmax agree).
fn metrics(got: &Tensor, want: &Tensor) -> Res<serde_json::Value> {
    let diff = (got - want)?.abs()?;
    let max_abs = diff.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let mean_abs = diff.mean_all()?.to_scalar::<f32>()?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let a = got.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let b = want.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let agree = a.iter().zip(b.iter()).filter(|(x, y)| x == y).count();
    // Per-row relative error: |got - want|_inf / |want|_inf, worst row.
    let row_err = diff.max(D::Minus1)?.div(&want.abs()?.max(D::Minus1)?)?.max(0)?.to_scalar::<f32>()?;
    Ok(serde_json::json!({
        "max_abs_err": max_abs, "mean_abs_err": mean_abs, "ref_max_abs": scale,
        "max_rel_err": max_abs / scale, "worst_row_rel_err": row_err,
        "top1_agree": agree, "rows": a.len(), "top1_agreement": agree as f64 / a.len() as f64,
    }))
}

fn result(kind: &str, mut v: serde_json::Value, dev: &str) {
    v["kind"] = kind.into();
    v["device"] = dev.into();
    println!("RESULT {v}");
}

fn compare(dir: &Path, dev: &Device, dev_name: &str) -> Res<()> {
    let t = Instant::now();
    let model = DeepSeekV2::load(dir, dev)?;
    eprintln!("loaded {} in {:.1}s", dir.display(), t.elapsed().as_secs_f32());
    let tokens: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json"))?)?;
    let reference = Tensor::read_npy(dir.join("logits.npy"))?.to_device(dev)?;
    let native = dir.join("logits_native.npy");
    let native = if native.exists() { Some(Tensor::read_npy(native)?.to_device(dev)?) } else { None };
    if let Ok(theirs) = Tensor::read_npy(dir.join("inv_freq.npy")) {
        let (ours, mscale) = rope::inv_freq(model.config());
        let theirs = theirs.to_vec1::<f32>()?;
        let rel = ours.iter().zip(theirs.iter()).map(|(a, b)| ((*a as f32 - b) / b).abs()).fold(0f32, f32::max);
        result("rope", serde_json::json!({ "inv_freq_max_rel_err": rel, "cos_sin_mscale": mscale }), dev_name);
    }
    let layers = model.config().num_hidden_layers;
    // f32 on the GPU against transformers in f32 (tiny shape only): no bf16 noise, so this
    // checks the arithmetic itself.
    let f32_ref = dir.join("logits_f32.npy");
    if f32_ref.exists() && dev.is_cuda() {
        let m32 = DeepSeekV2::load_with_dtype(dir, dev, DType::F32)?;
        let want = Tensor::read_npy(&f32_ref)?.to_device(dev)?;
        let mut cache = m32.new_cache(tokens.len())?;
        let got = m32.forward(&[&tokens], &mut [&mut cache], LogitsMode::All)?.logits.expect("logits");
        result("compare_prefill_f32", metrics(&got, &want)?, dev_name);
        let half = tokens.len() / 2;
        let mut cache = m32.new_cache(tokens.len())?;
        let mut rows =
            vec![m32.forward(&[&tokens[..half]], &mut [&mut cache], LogitsMode::All)?.logits.expect("logits")];
        for p in half..tokens.len() {
            rows.push(m32.forward(&[&tokens[p..p + 1]], &mut [&mut cache], LogitsMode::Last)?.logits.expect("logits"));
        }
        result("compare_incremental_f32", metrics(&Tensor::cat(&rows, 0)?, &want)?, dev_name);
    }
    // 1. One prefill over the whole prompt.
    let mut cache = model.new_cache(tokens.len())?;
    let full = model.forward(&[&tokens], &mut [&mut cache], LogitsMode::All)?.logits.expect("logits");
    let mut m = metrics(&full, &reference)?;
    m["layers"] = layers.into();
    result("compare_prefill", m, dev_name);
    if let Some(native) = &native {
        let mut m = metrics(&full, native)?;
        m["note"] = "against transformers' unpatched softmax scale (no YaRN mscale^2)".into();
        result("compare_prefill_native_scale", m, dev_name);
    }
    // 2. Prefill half, then decode one token at a time (the absorbed decode path and, on CUDA,
    //    the fused MoE kernels).
    let half = tokens.len() / 2;
    let mut cache = model.new_cache(tokens.len())?;
    let mut rows = vec![model.forward(&[&tokens[..half]], &mut [&mut cache], LogitsMode::All)?.logits.expect("logits")];
    for p in half..tokens.len() {
        rows.push(model.forward(&[&tokens[p..p + 1]], &mut [&mut cache], LogitsMode::Last)?.logits.expect("logits"));
    }
    let inc = Tensor::cat(&rows, 0)?;
    let mut m = metrics(&inc, &reference)?;
    m["prefill_tokens"] = half.into();
    m["decoded_tokens"] = (tokens.len() - half).into();
    result("compare_incremental", m, dev_name);
    let m = metrics(&inc, &full)?;
    result("incremental_vs_own_prefill", m, dev_name);
    // 3. The same through FixedDecoder (on CUDA: one CUDA graph per attention window,
    //    captured on its first step and replayed after).
    let mut dec = FixedDecoder::new(&model, tokens.len())?;
    let first = dec.prefill(&tokens[..half])?;
    let mut rows = vec![full.narrow(0, 0, half - 1)?, first];
    for &t in &tokens[half..tokens.len() - 1] {
        rows.push(dec.step(t)?);
    }
    let fixed = Tensor::cat(&rows, 0)?;
    let n = tokens.len() - 1;
    let mut m = metrics(&fixed.narrow(0, half, n - half)?, &reference.narrow(0, half, n - half)?)?;
    m["note"] = "decoded rows only; FixedDecoder (CUDA graphs on CUDA)".into();
    result("compare_fixed_decoder", m, dev_name);
    Ok(())
}

fn sync(dev: &Device) -> Res<()> {
    dev.synchronize()?;
    Ok(())
}

/// Bytes read per decode step of `batch` sequences at `context` cached tokens each: every weight
/// the step touches (attention, dense MLP, router, shared experts, the routed experts any token
/// chose, final norm, lm_head; the embedding rows) and the latent cache rows attention reads.
/// Routed experts touched: exactly k at batch 1; for a batch, the expectation under uniform
/// routing, E (1 - (1 - k/E)^batch) (random weights route about uniformly).
///
/// With int4 weights the projections kb quantises (q, kv_a, o, the dense MLP, the experts) count
/// 4 bits a weight plus a 2-byte scale and a 1-byte zero point per 128; the rest stays `dtype`.
fn step_bytes(cfg: &DeepSeekV2Config, dtype: DType, quant: Quantize, batch: usize, context: usize) -> f64 {
    let b = dtype.size_in_bytes() as f64;
    let q = match quant {
        Quantize::Int4 => 0.5 + 3.0 / 128.0,
        Quantize::None => b,
    };
    let (hd, h) = (cfg.hidden_size as f64, cfg.num_attention_heads as f64);
    let qk = cfg.qk_head_dim() as f64;
    // q, kv_a and o (quantisable), then kv_b and the two norms (kept in dtype).
    let attn_q = h * qk * hd + (cfg.latent_dim() as f64) * hd + hd * h * cfg.v_head_dim as f64;
    let attn_b = h * (cfg.qk_nope_head_dim + cfg.v_head_dim) as f64 * cfg.kv_lora_rank as f64
        + cfg.kv_lora_rank as f64
        + 2.0 * hd;
    let (e, k) = (cfg.n_routed_experts as f64, cfg.num_experts_per_tok as f64);
    let routed = if batch <= 1 { k } else { e * (1.0 - (1.0 - k / e).powi(batch as i32)) };
    let expert = 3.0 * hd * cfg.moe_intermediate_size as f64;
    let (mut quantised, mut dense, mut router) = (0.0, 0.0, 0.0);
    for i in 0..cfg.num_hidden_layers {
        quantised += attn_q;
        dense += attn_b;
        if cfg.is_moe_layer(i) {
            quantised += (routed + cfg.n_shared_experts as f64) * expert;
            router += e * hd; // f32
        } else {
            quantised += 3.0 * hd * cfg.intermediate_size as f64;
        }
    }
    dense += hd + hd * cfg.vocab_size as f64 + batch as f64 * hd; // final norm, lm_head, embedding rows
    let cache = (batch * context * cfg.latent_dim() * cfg.num_hidden_layers) as f64;
    quantised * q + (dense + cache) * b + router * 4.0
}

/// `KB_DEEPSEEK_QUANTIZE` (as `kb serve` reads it): `int4` loads the models of `serve-bench` and
/// `decode-batch` quantised, and their floors count int4 bytes.
fn bench_quantize() -> Quantize {
    std::env::var("KB_DEEPSEEK_QUANTIZE").ok().and_then(|v| v.parse().ok()).unwrap_or_default()
}

/// The weight-read floor of a decode step of `batch` sequences at `context` tokens: its bytes
/// ([`step_bytes`], the weights as [`bench_quantize`] loads them) at the measured copy bandwidth.
fn floor(cfg: &DeepSeekV2Config, dtype: DType, batch: usize, context: usize, bw: f64) -> serde_json::Value {
    let quant = bench_quantize();
    let bytes = step_bytes(cfg, dtype, quant, batch, context);
    let ms = bytes / bw * 1e3;
    serde_json::json!({ "bytes_per_step_GB": bytes / 1e9, "copy_bandwidth_GBps": bw / 1e9, "ms_per_step": ms,
                        "tok_s": batch as f64 * 1e3 / ms, "context": context, "weights": format!("{quant:?}") })
}

/// HBM bandwidth in bytes/s (read + write of a 4 GiB device-to-device copy; a candle copy
/// elsewhere), and candle's own elementwise copy rate, which undershoots it.
fn copy_bandwidth(dev: &Device) -> Res<(f64, f64)> {
    let n = 1usize << 31;
    let x = Tensor::zeros(n, DType::BF16, dev)?;
    let _ = x.copy()?;
    sync(dev)?;
    let t = Instant::now();
    for _ in 0..5 {
        let _ = x.copy()?;
    }
    sync(dev)?;
    let candle_copy_bw = 5.0 * 2.0 * (n * 2) as f64 / t.elapsed().as_secs_f64();
    drop(x);
    let bw = match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let stream = cuda.cuda_stream();
            let bytes = 1usize << 32;
            let src = stream.alloc_zeros::<u8>(bytes)?;
            let mut dst = stream.alloc_zeros::<u8>(bytes)?;
            stream.memcpy_dtod(&src, &mut dst)?;
            stream.synchronize()?;
            let t = Instant::now();
            for _ in 0..5 {
                stream.memcpy_dtod(&src, &mut dst)?;
            }
            stream.synchronize()?;
            5.0 * 2.0 * bytes as f64 / t.elapsed().as_secs_f64()
        }
        _ => candle_copy_bw,
    };
    Ok((bw, candle_copy_bw))
}

fn bench(layers: usize, steps: usize, dev: &Device, dev_name: &str) -> Res<()> {
    let text = lite_config(layers).to_string();
    let cfg = DeepSeekV2Config::from_json(&text, Path::new("lite-shaped config"))?;
    let dtype = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    dev.set_seed(7)?;
    let t = Instant::now();
    let model = DeepSeekV2::from_source(cfg.clone(), &RandomSource::new(0.02, 7), dtype, dev)?;
    sync(dev)?;
    eprintln!("random Lite-shaped weights ({layers} layers) made in {:.1}s", t.elapsed().as_secs_f32());
    let vocab = cfg.vocab_size as u32;
    let prompt = |n: usize, seed: u32| -> Vec<u32> {
        (0..n as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed)) % vocab).collect()
    };

    let (bw, candle_copy_bw) = copy_bandwidth(dev)?;
    let bytes = step_bytes(&cfg, dtype, Quantize::None, 1, 0);
    let floor_ms = bytes / bw * 1e3;
    result(
        "floor",
        serde_json::json!({ "copy_bandwidth_GBps": bw / 1e9, "candle_copy_bandwidth_GBps": candle_copy_bw / 1e9, "active_bytes_per_step_GB": bytes / 1e9,
                            "floor_ms_per_step": floor_ms, "floor_tok_s": 1e3 / floor_ms, "layers": layers }),
        dev_name,
    );

    // Prefill with kb's prefill kernels (grouped expert GEMMs, in-kernel causal softmax), then
    // with the generic candle paths they replace, in the same run; logits compared between them.
    #[cfg(feature = "cuda")]
    for n in [512usize, 2048] {
        let toks = prompt(n, 13);
        let mut logits = Vec::new();
        for on in [true, false] {
            kb_inference::deepseek::kernels::set_prefill_kernels(on);
            let mut cache = model.new_cache(n)?;
            let out = model.forward(&[&toks], &mut [&mut cache], LogitsMode::All)?;
            logits.push(out.logits.expect("logits").to_dtype(DType::F32)?);
        }
        let mut m = metrics(&logits[0], &logits[1])?;
        m["prompt_tokens"] = n.into();
        result("prefill_kernels_vs_generic", m, dev_name);
        for on in [false, true] {
            kb_inference::deepseek::kernels::set_prefill_kernels(on);
            let dt = prefill_median(&model, &prompt(n, 11), 5, dev)?;
            let kind = if on { "prefill" } else { "prefill_generic" };
            result(
                kind,
                serde_json::json!({ "prompt_tokens": n, "ms": dt * 1e3, "tok_s": n as f64 / dt, "median_of": 5 }),
                dev_name,
            );
        }
    }
    #[cfg(not(feature = "cuda"))]
    for n in [512usize, 2048] {
        let dt = prefill_median(&model, &prompt(n, 11), 3, dev)?;
        result(
            "prefill",
            serde_json::json!({ "prompt_tokens": n, "ms": dt * 1e3, "tok_s": n as f64 / dt, "median_of": 3 }),
            dev_name,
        );
    }

    // Greedy decode at batch 1 after a 32-token prompt; the token goes to the host each step.
    let decode = |steps: usize| -> Res<f64> {
        let toks = prompt(32, 5);
        let mut cache = model.new_cache(32 + steps + 1)?;
        let out = model.forward(&[&toks], &mut [&mut cache], LogitsMode::Last)?;
        let mut next = out.logits.expect("logits").argmax(D::Minus1)?.to_vec1::<u32>()?[0];
        sync(dev)?;
        let t = Instant::now();
        for _ in 0..steps {
            let out = model.forward(&[&[next]], &mut [&mut cache], LogitsMode::Last)?;
            next = out.logits.expect("logits").argmax(D::Minus1)?.to_vec1::<u32>()?[0];
        }
        Ok(t.elapsed().as_secs_f64() / steps as f64)
    };
    decode(4)?;
    let dt = decode(steps)?;
    result(
        "decode_b1_plain",
        serde_json::json!({ "steps": steps, "ms_per_step": dt * 1e3, "tok_s": 1.0 / dt,
                            "fraction_of_floor": floor_ms / (dt * 1e3),
                            "note": "DeepSeekV2::forward per step, kernels launched one by one" }),
        dev_name,
    );

    // The same greedy decode through FixedDecoder: fixed addresses, one CUDA graph per
    // 256-token attention window (captured on the window's first step, which is included).
    let fixed = |steps: usize, graphs: bool| fixed_greedy(&model, &prompt(32, 5), steps, graphs, dev);
    fixed(4, true)?;
    let (dt_eager, toks_eager) = fixed(steps, false)?;
    result(
        "decode_b1_fixed_eager",
        serde_json::json!({ "steps": steps, "ms_per_step": dt_eager * 1e3, "tok_s": 1.0 / dt_eager }),
        dev_name,
    );
    let (dt, toks_graph) = fixed(steps, true)?;
    let agree = toks_eager.iter().zip(toks_graph.iter()).take_while(|(a, b)| a == b).count();
    result(
        "decode_b1",
        serde_json::json!({ "steps": steps, "ms_per_step": dt * 1e3, "tok_s": 1.0 / dt,
                            "fraction_of_floor": floor_ms / (dt * 1e3),
                            "greedy_tokens_same_as_eager": agree, "of": toks_eager.len(),
                            "note": "FixedDecoder with CUDA graphs, capture included" }),
        dev_name,
    );
    let long = 600.min(model.max_positions() - 40);
    let (dt_long, _) = fixed(long, true)?;
    result(
        "decode_b1_long",
        serde_json::json!({ "steps": long, "ms_per_step": dt_long * 1e3, "tok_s": 1.0 / dt_long,
                            "note": "3 attention windows, 3 captures included" }),
        dev_name,
    );

    // Batched decode (8 sequences, one token each per step), for the serving picture.
    let b = 8;
    let mut caches = (0..b).map(|_| model.new_cache(64 + steps)).collect::<Result<Vec<_>, _>>()?;
    let prompts: Vec<Vec<u32>> = (0..b).map(|s| prompt(32, s as u32 * 7919)).collect();
    {
        let toks: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let mut refs: Vec<_> = caches.iter_mut().collect();
        model.forward(&toks, &mut refs, LogitsMode::Last)?;
    }
    let mut next: Vec<u32> = vec![1; b];
    sync(dev)?;
    let t = Instant::now();
    let bsteps = steps.min(32);
    for _ in 0..bsteps {
        let owned: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let toks: Vec<&[u32]> = owned.iter().map(|t| t.as_slice()).collect();
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let out = model.forward(&toks, &mut refs, LogitsMode::Last)?;
        next = out.logits.expect("logits").argmax(D::Minus1)?.to_vec1::<u32>()?;
    }
    let dt = t.elapsed().as_secs_f64() / bsteps as f64;
    result("decode_b8", serde_json::json!({ "ms_per_step": dt * 1e3, "tok_s": b as f64 / dt }), dev_name);
    Ok(())
}

/// Only the FixedDecoder's batch-1 decode (for profilers); KB_DEEPSEEK_CUDA_GRAPHS=0 for eager.
fn decode_only(layers: usize, steps: usize, dev: &Device, dev_name: &str) -> Res<()> {
    let cfg = DeepSeekV2Config::from_json(&lite_config(layers).to_string(), Path::new("lite-shaped config"))?;
    let dtype = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let model = DeepSeekV2::from_source(cfg, &RandomSource::new(0.02, 7), dtype, dev)?;
    let mut dec = FixedDecoder::new(&model, 64 + steps)?;
    let logits = dec.prefill(&[1, 2, 3, 4, 5, 6, 7, 8])?;
    let mut next = logits.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
    for _ in 0..4 {
        next = dec.step(next)?.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
    }
    sync(dev)?;
    let t = Instant::now();
    for _ in 0..steps {
        next = dec.step(next)?.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
    }
    let dt = t.elapsed().as_secs_f64() / steps as f64;
    result("decode_only", serde_json::json!({ "steps": steps, "ms_per_step": dt * 1e3 }), dev_name);
    Ok(())
}

/// Seconds one prefill of `toks` takes (a fresh cache, the last token's logits read back):
/// the median of `reps` runs after one warm-up.
fn prefill_median(model: &DeepSeekV2, toks: &[u32], reps: usize, dev: &Device) -> Res<f64> {
    let run = || -> Res<f64> {
        let mut cache = model.new_cache(toks.len())?;
        sync(dev)?;
        let t = Instant::now();
        let out = model.forward(&[toks], &mut [&mut cache], LogitsMode::Last)?;
        let _ = out.logits.ok_or("logits")?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok(t.elapsed().as_secs_f64())
    };
    run()?;
    let mut times: Vec<f64> = (0..reps.max(1)).map(|_| run()).collect::<Res<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Greedy decode of `steps` tokens after `prompt` through [`FixedDecoder`] (CUDA graphs when
/// `graphs`, captured on each window's first step, which is timed): seconds per step and the
/// tokens (the prefill's first, then one per step).
fn fixed_greedy(model: &DeepSeekV2, prompt: &[u32], steps: usize, graphs: bool, dev: &Device) -> Res<(f64, Vec<u32>)> {
    let mut dec = FixedDecoder::new(model, prompt.len() + steps + 1)?;
    dec.set_use_graphs(graphs);
    let mut next = dec.prefill(prompt)?.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
    let mut out = vec![next];
    sync(dev)?;
    let t = Instant::now();
    for _ in 0..steps {
        next = dec.step(next)?.argmax(D::Minus1)?.to_vec1::<u32>()?[0];
        out.push(next);
    }
    Ok((t.elapsed().as_secs_f64() / steps as f64, out))
}

/// Random token ids (a small LCG: the same prompts every run).
fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// One pool cache per length, each prefilled with `n` random tokens (seed `seed + i`), with 8
/// rows to spare for decode steps.
fn prefilled(model: &DeepSeekV2, pool: &mut CachePool, lens: &[usize], seed: u64) -> Res<Vec<LatentCache>> {
    let vocab = model.config().vocab_size;
    let mut caches: Vec<LatentCache> =
        lens.iter().map(|&n| pool.alloc(n + 8).map(|c| c.expect("room"))).collect::<Result<_, _>>()?;
    for (i, (&n, c)) in lens.iter().zip(caches.iter_mut()).enumerate() {
        model.forward(&[tokens(n, seed + i as u64, vocab).as_slice()], &mut [c], LogitsMode::None)?;
    }
    Ok(caches)
}

/// The batched decode step (pool + fused batch kernels) against the generic forward pass on
/// the same caches: 5 sequences of different lengths, one decode token each; then the same
/// step through `BatchDecoder`, and a 24-sequence grouped step against each sequence alone.
fn check_batched(model: &DeepSeekV2, dev_name: &str) -> Res<()> {
    let vocab = model.config().vocab_size;
    let cfg = model.config();
    let mut pool = CachePool::new(cfg.num_hidden_layers, cfg.latent_dim(), 8192, model.dtype(), model.device())?;
    let lens = [7usize, 33, 100, 257, 600];
    let mut caches = prefilled(model, &mut pool, &lens, 0)?;
    let next: Vec<u32> = (0..lens.len()).map(|i| tokens(1, 100 + i as u64, vocab)[0]).collect();
    let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
    let batched = model.forward_decode(&next, &mut refs, &pool)?;
    for (c, &n) in caches.iter_mut().zip(lens.iter()) {
        c.truncate(n);
    }
    let owned: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
    let toks: Vec<&[u32]> = owned.iter().map(|t| t.as_slice()).collect();
    let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
    let generic = model.forward(&toks, &mut refs, LogitsMode::Last)?.logits.expect("logits");
    result("batched_decode_vs_generic", metrics(&batched, &generic)?, dev_name);
    // The same step through the scheduler's BatchDecoder: eager, then captured as a CUDA graph
    // (second step of a batch size), then replayed; each must equal the eager batched step.
    let mut graphs = BatchDecoder::new(model, 8)?;
    for round in ["eager", "capture", "replay"] {
        for (c, &n) in caches.iter_mut().zip(lens.iter()) {
            c.truncate(n);
        }
        let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
        let got = graphs.step(model, &next, &mut refs, &pool)?.copy()?;
        let mut m = metrics(&got, &batched)?;
        m["graphs"] = graphs.graphs().into();
        result(&format!("batch_decoder_{round}_vs_batched"), m, dev_name);
    }
    // Six greedy steps at advancing positions through BatchDecoder (eager, captured, then four
    // replays) against the same steps through forward_decode (never a graph): the same tokens.
    // (The rounds above replay one position; this checks that nothing a graph holds is tied to
    // the step it was captured at.)
    let mut greedy = [Vec::new(), Vec::new()];
    for (graph, out) in greedy.iter_mut().enumerate() {
        for (c, &n) in caches.iter_mut().zip(lens.iter()) {
            c.truncate(n);
        }
        let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
        let mut dec = BatchDecoder::new(model, 8)?;
        let mut cur = next.clone();
        for _ in 0..6 {
            let logits = if graph == 1 {
                dec.step(model, &cur, &mut refs, &pool)?
            } else {
                model.forward_decode(&cur, &mut refs, &pool)?
            };
            cur = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            out.extend(cur.iter().copied());
        }
    }
    let same = greedy[0].iter().zip(greedy[1].iter()).filter(|(a, b)| a == b).count();
    result(
        "batch_decoder_steps_vs_forward_decode",
        serde_json::json!({ "same_tokens": same, "of": greedy[0].len(), "steps": 6, "sequences": lens.len() }),
        dev_name,
    );
    // A batch past the per-token kernels (experts grouped on the device) against each sequence
    // decoded alone (per-token kernels), so the grouped expert kernels are checked by others.
    let glens: Vec<usize> = (0..24).map(|i| 9 + (i * 37) % 300).collect();
    let mut gcaches = prefilled(model, &mut pool, &glens, 50)?;
    let gnext: Vec<u32> = (0..glens.len()).map(|i| tokens(1, 200 + i as u64, vocab)[0]).collect();
    let mut refs: Vec<&mut LatentCache> = gcaches.iter_mut().collect();
    let grouped = model.forward_decode(&gnext, &mut refs, &pool)?;
    let mut alone = Vec::with_capacity(glens.len());
    for ((c, &n), &t) in gcaches.iter_mut().zip(glens.iter()).zip(gnext.iter()) {
        c.truncate(n);
        let l = model.forward(&[[t].as_slice()], &mut [c], LogitsMode::Last)?.logits.expect("logits");
        alone.push(l.reshape((1, vocab))?);
    }
    result("grouped_decode_vs_alone", metrics(&grouped, &Tensor::cat(&alone, 0)?)?, dev_name);
    drop(gcaches);
    // The single-sequence fused path (FixedDecoder, CUDA graphs) against the same.
    let p = tokens(lens[2], 2, vocab);
    let mut dec = FixedDecoder::new(model, 1024)?;
    dec.prefill(&p)?;
    let fixed = dec.step(next[2])?;
    let mut cache = model.new_cache(lens[2] + 1)?;
    model.forward(&[p.as_slice()], &mut [&mut cache], LogitsMode::None)?;
    let one = [next[2]];
    let generic = model.forward(&[one.as_slice()], &mut [&mut cache], LogitsMode::Last)?.logits.expect("logits");
    result("fixed_decoder_vs_generic", metrics(&fixed.reshape(generic.shape())?, &generic)?, dev_name);
    Ok(())
}

/// The continuous-batching scheduler at each concurrency: `b` requests submitted at once,
/// `prompt` random tokens in, exactly `new` out (greedy, no end token). Decode rate = tokens
/// produced after every request has its first token / the time from then to the last token;
/// `decode_all_tok_s` the same until the first request finishes (all `b` decoding).
#[allow(clippy::too_many_arguments)]
fn serve_bench(
    layers: usize,
    batches: &[usize],
    max_prefill: &[usize],
    chunks: &[usize],
    prompt: usize,
    new: usize,
    dev: &Device,
    dev_name: &str,
) -> Res<()> {
    use kb_inference::deepseek::scheduler::{Event, Request, Scheduler};
    use kb_inference::SamplingParams;
    use std::sync::Arc;
    let cfg = DeepSeekV2Config::from_json(&lite_config(layers).to_string(), Path::new("lite-shaped config"))?;
    let vocab = cfg.vocab_size;
    let dtype = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let src = RandomSource::new(0.02, 7);
    let model = Arc::new(DeepSeekV2::from_source_quantized(cfg.clone(), &src, dtype, dev, bench_quantize())?);
    let (bw, _) = copy_bandwidth(dev)?;
    if model.batched_decode_supported(5) {
        check_batched(&model, dev_name)?;
    }
    let request = |n: usize, max: usize, seed: u64| Request {
        prompt: tokens(n, seed, vocab),
        params: SamplingParams { max_tokens: max, ..SamplingParams::default() },
        end_tokens: Vec::new(),
    };
    let runs = batches.iter().flat_map(|b| max_prefill.iter().flat_map(move |m| chunks.iter().map(move |k| (b, m, k))));
    for (&b, &max_prefill_tokens, &prefill_chunk) in runs {
        let config = SchedulerConfig {
            prefill_chunk,
            max_sequences: b.max(1),
            cache_tokens: b * (prompt + new) + 64,
            queue_wait: std::time::Duration::from_secs(600),
            max_prefill_tokens,
            ..SchedulerConfig::default()
        };
        let sched = Scheduler::start(model.clone(), config)?;
        // Warm-up: kernels compiled, allocator primed.
        let warm = sched.submit(request(64, 4, 999))?;
        while !matches!(warm.recv()?, Event::Done(_)) {}
        let t0 = Instant::now();
        let rxs = (0..b).map(|i| sched.submit(request(prompt, new, 1000 + i as u64))).collect::<Result<Vec<_>, _>>()?;
        let handles: Vec<_> = rxs
            .into_iter()
            .map(|rx| {
                std::thread::spawn(move || -> Result<Vec<Instant>, String> {
                    let mut times = Vec::new();
                    loop {
                        match rx.recv().map_err(|e| e.to_string())? {
                            Event::Token(_) => times.push(Instant::now()),
                            Event::Done(_) => return Ok(times),
                            other => return Err(format!("{other:?}")),
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.push(h.join().map_err(|_| "receiver thread panicked")??);
        }
        let first_all = all.iter().map(|t| t[0]).max().ok_or("no requests")?;
        let last = all.iter().map(|t| *t.last().expect("tokens")).max().ok_or("no requests")?;
        let in_window: usize = all.iter().map(|t| t.iter().filter(|&&x| x > first_all).count()).sum();
        let window = last.duration_since(first_all).as_secs_f64();
        let mut ttft: Vec<f64> = all.iter().map(|t| t[0].duration_since(t0).as_secs_f64()).collect();
        ttft.sort_by(f64::total_cmp);
        let total = last.duration_since(t0).as_secs_f64();
        let steps = all.iter().map(|t| t.iter().filter(|&&x| x > first_all).count()).max().unwrap_or(0);
        // The same between the last first token and the first last token: every request decoding,
        // the batch at its full size (the window above also holds the tail, when the requests
        // that got their first tokens earliest have finished and fewer decode).
        let first_done = all.iter().map(|t| *t.last().expect("tokens")).min().ok_or("no requests")?;
        let full: usize = all.iter().map(|t| t.iter().filter(|&&x| x > first_all && x <= first_done).count()).sum();
        let full_window = first_done.saturating_duration_since(first_all).as_secs_f64();
        result(
            "serve_batch",
            serde_json::json!({
                "batch": b, "prompt": prompt, "new": new, "max_prefill_tokens": max_prefill_tokens,
                "prefill_chunk": prefill_chunk, "weights": format!("{:?}", bench_quantize()),
                "ttft_p50_s": ttft[ttft.len() / 2], "ttft_max_s": ttft[ttft.len() - 1], "total_s": total,
                "decode_tok_s": in_window as f64 / window.max(1e-9),
                "decode_ms_per_step": window * 1e3 / steps.max(1) as f64,
                "decode_all_tok_s": full as f64 / full_window.max(1e-9),
                "end_to_end_tok_s": (b * new) as f64 / total,
                "floor": floor(&cfg, dtype, b, prompt + new / 2, bw),
            }),
            dev_name,
        );
    }
    Ok(())
}

/// Only batched decode steps (for profilers and tuning): `batch` sequences prefilled to
/// `prompt` tokens, then `steps` forward_decode steps with a device argmax. Also reports how
/// long the host takes to enqueue a step (no sync) against the step's wall time, and the same
/// steps replayed as a CUDA graph (BatchDecoder).
fn decode_batch(layers: usize, batch: usize, prompt: usize, steps: usize, dev: &Device, dev_name: &str) -> Res<()> {
    let cfg = DeepSeekV2Config::from_json(&lite_config(layers).to_string(), Path::new("lite-shaped config"))?;
    let vocab = cfg.vocab_size;
    let dtype = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let model =
        DeepSeekV2::from_source_quantized(cfg.clone(), &RandomSource::new(0.02, 7), dtype, dev, bench_quantize())?;
    let (bw, _) = copy_bandwidth(dev)?;
    let c = model.config();
    let mut pool = CachePool::new(
        c.num_hidden_layers,
        c.latent_dim(),
        batch * (prompt + 2 * steps + 16),
        model.dtype(),
        model.device(),
    )?;
    let mut caches: Vec<LatentCache> =
        (0..batch).map(|_| pool.alloc(prompt + 2 * steps + 16).map(|c| c.expect("room"))).collect::<Result<_, _>>()?;
    for (i, cache) in caches.iter_mut().enumerate() {
        let p = tokens(prompt, i as u64, vocab);
        model.forward(&[p.as_slice()], &mut [cache], LogitsMode::None)?;
    }
    let mut next: Vec<u32> = (0..batch as u64).map(|i| tokens(1, 77 + i, vocab)[0]).collect();
    let step = |next: &mut Vec<u32>, caches: &mut Vec<LatentCache>| -> Res<()> {
        let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
        *next = model.forward_decode(next, &mut refs, &pool)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok(())
    };
    for _ in 0..2 {
        step(&mut next, &mut caches)?;
    }
    sync(dev)?;
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut next, &mut caches)?;
    }
    let wall = t.elapsed().as_secs_f64() / steps as f64;
    // Enqueue only: the logits stay on the device until one sync at the end.
    let t = Instant::now();
    let mut enqueue = 0.0;
    for _ in 0..steps.min(4) {
        let e = Instant::now();
        let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
        let logits = model.forward_decode(&next, &mut refs, &pool)?;
        enqueue += e.elapsed().as_secs_f64();
        drop(logits);
    }
    sync(dev)?;
    let queued = t.elapsed().as_secs_f64() / steps.min(4) as f64;
    // The same steps through BatchDecoder: one CUDA graph for this batch size, replayed.
    let mut graphs = BatchDecoder::new(&model, batch)?;
    let mut t = Instant::now();
    for i in 0..steps + 2 {
        if i == 2 {
            sync(dev)?;
            t = Instant::now();
        }
        let mut refs: Vec<&mut LatentCache> = caches.iter_mut().collect();
        next = graphs.step(&model, &next, &mut refs, &pool)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    }
    let graph_wall = t.elapsed().as_secs_f64() / steps as f64;
    result(
        "decode_batch",
        serde_json::json!({
            "batch": batch, "prompt": prompt, "layers": layers, "steps": steps,
            "ms_per_step": wall * 1e3, "tok_s": batch as f64 / wall,
            "host_enqueue_ms_per_step": enqueue * 1e3 / steps.min(4) as f64,
            "no_sync_ms_per_step": queued * 1e3,
            "graphs": graphs.graphs(), "graph_ms_per_step": graph_wall * 1e3, "graph_tok_s": batch as f64 / graph_wall,
            "floor": floor(&cfg, dtype, batch, prompt + steps, bw),
        }),
        dev_name,
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<usize>().ok())
    };
    let cpu = args.iter().any(|a| a == "--cpu");
    let dev = device(cpu)?;
    let dev_name =
        std::env::var("KB_DEVICE_NAME").unwrap_or_else(|_| if dev.is_cuda() { "cuda:0".into() } else { "cpu".into() });
    let list = |name: &str, default: Vec<usize>| -> Vec<usize> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("compare") => {
            let dir = args.get(1).ok_or("compare needs a directory")?;
            compare(Path::new(dir), &dev, &dev_name)
        }
        Some("decode") => decode_only(flag("--layers").unwrap_or(27), flag("--steps").unwrap_or(64), &dev, &dev_name),
        Some("decode-batch") => decode_batch(
            flag("--layers").unwrap_or(27),
            flag("--batch").unwrap_or(32),
            flag("--prompt").unwrap_or(1024),
            flag("--steps").unwrap_or(16),
            &dev,
            &dev_name,
        ),
        Some("serve-bench") => {
            let batches = list("--batches", vec![1, 8, 32, 64]);
            let prefill = list("--max-prefill", vec![SchedulerConfig::default().max_prefill_tokens]);
            let chunks = list("--prefill-chunk", vec![SchedulerConfig::default().prefill_chunk]);
            let (prompt, new) = (flag("--prompt").unwrap_or(1024), flag("--new").unwrap_or(128));
            serve_bench(flag("--layers").unwrap_or(27), &batches, &prefill, &chunks, prompt, new, &dev, &dev_name)
        }
        Some("int4") => int4::int4_bench(
            flag("--layers").unwrap_or(27),
            flag("--steps").unwrap_or(64),
            &list("--batches", vec![8, 16, 32]),
            &dev,
            &dev_name,
        ),
        Some("bench") => bench(flag("--layers").unwrap_or(27), flag("--steps").unwrap_or(64), &dev, &dev_name),
        _ => Err("usage: deepseek-bench compare DIR | bench [--layers N] [--steps N] [--cpu] | decode [--layers N] [--steps N]".into()),
    }
}
