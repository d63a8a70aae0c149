//! `deepseek-bench int4`: int4 (W4A16) against bf16 on the same random Lite-shaped weights, in
//! one process: the kernels against dequantised bf16 products, then per model the memory it
//! holds, its logits, prefill, batch-1 decode and batched decode as the scheduler runs it.

use super::{fixed_greedy, lite_config, metrics, prefill_median, result, sync, Res};
use candle_core::{DType, Device, Tensor, D};
use kb_inference::deepseek::{
    BatchDecoder, CachePool, DeepSeekV2, DeepSeekV2Config, LogitsMode, Quantize, RandomSource,
};
use std::path::Path;
use std::time::Instant;

/// Device memory in use (total - free), when the device can say.
fn device_used(dev: &Device) -> Option<f64> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let (free, total) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
            Some((total - free) as f64)
        }
        _ => None,
    }
}

/// The W4A16 kernels against candle products over the dequantised weights, fresh random
/// inputs for every case (a stale output buffer from an earlier case would not match).
#[cfg(feature = "cuda")]
fn kernel_check(dev: &Device, dev_name: &str) -> Res<()> {
    use kb_inference::deepseek::q4_kernels::{experts_q4, q4_dequantize, q4_gemv};
    use kb_inference::deepseek::{kernels, Int4Weight};
    let rel = |got: &Tensor, want: &Tensor| -> Res<f64> {
        let (g, w) = (got.to_dtype(DType::F32)?, want.to_dtype(DType::F32)?);
        let num = (&g - &w)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
        let den = w.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
        let nan = g.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite());
        Ok(if nan { f64::NAN } else { (num / den) as f64 })
    };
    for (out, inp) in [(3072usize, 2048usize), (576, 2048), (2048, 2048), (2816, 2048)] {
        let w = (Tensor::randn(0f32, 0.02, (out, inp), dev)?).to_dtype(DType::BF16)?;
        let q = Int4Weight::quantize(&w)?;
        let by_kernel = q4_dequantize(&q)?;
        let by_ops = q.dequantize_generic(DType::BF16)?;
        let deq_diff = (by_kernel.to_dtype(DType::F32)? - by_ops.to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let qerr = rel(&by_ops, &w)?;
        for t in [1usize, 3, 8, 16, 33, 64] {
            let x = Tensor::randn(0f32, 1.0, (t, inp), dev)?.to_dtype(DType::BF16)?;
            let got = q4_gemv(&x, &q)?;
            let want = x.to_dtype(DType::F32)?.matmul(&by_ops.to_dtype(DType::F32)?.t()?)?;
            result(
                "int4_check_gemv",
                serde_json::json!({ "out": out, "in": inp, "tokens": t, "rel_l2_vs_dequantised_f32": rel(&got, &want)?,
                                    "dequant_kernel_vs_ops_max_abs": deq_diff, "weight_rel_l2_quantisation": qerr }),
                dev_name,
            );
        }
    }
    // The fused experts: int4 kernels against the bf16 fused kernels on the dequantised weights.
    let (h, inter, e, s, k) = (2048usize, 1408usize, 64usize, 2usize, 6usize);
    let gu = Tensor::randn(0f32, 0.02, (e + s, 2 * inter, h), dev)?.to_dtype(DType::BF16)?;
    let dn = Tensor::randn(0f32, 0.02, (e + s, h, inter), dev)?.to_dtype(DType::BF16)?;
    let (gq, dq) = (Int4Weight::quantize(&gu)?, Int4Weight::quantize(&dn)?);
    let (gd, dd) = (gq.dequantize(DType::BF16)?, dq.dequantize(DType::BF16)?);
    let gate = Tensor::randn(0f32, 0.02, (e, h), dev)?;
    for t in [1usize, 4, 8, 16, 32, 64] {
        let x = Tensor::randn(0f32, 1.0, (t, h), dev)?.to_dtype(DType::BF16)?;
        let residual = Tensor::randn(0f32, 1.0, (t, h), dev)?.to_dtype(DType::BF16)?;
        let route = kernels::route(&x, &gate, k, false, 1.0)?;
        let got = experts_q4(&x, &route, &gq, &dq, &residual, k, s)?;
        // Against the bf16 per-pair kernels on the dequantised weights, 8 tokens a call (their limit).
        let mut parts = Vec::new();
        for start in (0..t).step_by(8) {
            let n = 8.min(t - start);
            let (xs, rs, res) = (x.narrow(0, start, n)?, route.narrow(0, start, n)?, residual.narrow(0, start, n)?);
            parts.push(kernels::experts(&xs, &rs, &gd, &dd, &res, k, s)?);
        }
        let want = Tensor::cat(&parts, 0)?;
        // Compare the MoE contribution (residual removed), where the weights matter.
        let (got_d, want_d) = (
            (got.to_dtype(DType::F32)? - residual.to_dtype(DType::F32)?)?,
            (want.to_dtype(DType::F32)? - residual.to_dtype(DType::F32)?)?,
        );
        result(
            "int4_check_experts",
            serde_json::json!({ "tokens": t, "path": if t > 8 { "grouped, tensor cores" } else { "per token" },
                                "rel_l2_vs_bf16_kernel_on_dequantised": rel(&got_d, &want_d)?,
                                "note": "both outputs bf16; the moe part compared (residual removed)" }),
            dev_name,
        );
    }
    Ok(())
}

pub fn int4_bench(layers: usize, steps: usize, batches: &[usize], dev: &Device, dev_name: &str) -> Res<()> {
    #[cfg(feature = "cuda")]
    kernel_check(dev, dev_name)?;
    let cfg = DeepSeekV2Config::from_json(&lite_config(layers).to_string(), Path::new("lite-shaped config"))?;
    let dtype = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let vocab = cfg.vocab_size as u32;
    let prompt = |n: usize, seed: u32| -> Vec<u32> {
        (0..n as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed)) % vocab).collect()
    };
    // int4 first, so its memory is measured on a clean device; the same seed draws the same
    // bf16 weights for both (int4 quantises them at load).
    let mut logits: Vec<Tensor> = Vec::new();
    let mut greedy: Vec<Vec<u32>> = Vec::new();
    for quantize in [Quantize::Int4, Quantize::None] {
        let name = if quantize == Quantize::Int4 { "int4" } else { "bf16" };
        sync(dev)?;
        let before = device_used(dev);
        dev.set_seed(7)?;
        let t = Instant::now();
        let model = DeepSeekV2::from_source_quantized(cfg.clone(), &RandomSource::new(0.02, 7), dtype, dev, quantize)?;
        sync(dev)?;
        let load_s = t.elapsed().as_secs_f64();
        let after = device_used(dev);
        result(
            "int4_memory",
            serde_json::json!({ "weights": name, "layers": layers, "weight_bytes_GB": model.weight_bytes() as f64 / 1e9,
                                "device_memory_used_GB": after.zip(before).map(|(a, b)| (a - b) / 1e9),
                                "load_s": load_s }),
            dev_name,
        );
        // Logits on a 128-token prompt, every row.
        let toks = prompt(128, 3);
        let mut cache = model.new_cache(128)?;
        let out = model.forward(&[&toks], &mut [&mut cache], LogitsMode::All)?;
        logits.push(out.logits.ok_or("logits")?.to_dtype(DType::F32)?);
        // Prefill, median of 5.
        for n in [512usize, 2048] {
            let dt = prefill_median(&model, &prompt(n, 11), 5, dev)?;
            result(
                "int4_prefill",
                serde_json::json!({ "weights": name, "prompt_tokens": n, "ms": dt * 1e3, "tok_s": n as f64 / dt, "median_of": 5 }),
                dev_name,
            );
        }
        // Batch-1 decode through FixedDecoder with CUDA graphs (capture included), twice.
        let fixed = |steps: usize| fixed_greedy(&model, &prompt(32, 5), steps, true, dev);
        fixed(4)?;
        let (dt1, toks1) = fixed(steps)?;
        let (dt2, _) = fixed(steps)?;
        greedy.push(toks1);
        result(
            "int4_decode_b1",
            serde_json::json!({ "weights": name, "steps": steps, "ms_per_step": [dt1 * 1e3, dt2 * 1e3], "tok_s": 1.0 / dt1.min(dt2),
                                "note": "FixedDecoder + CUDA graphs, two runs" }),
            dev_name,
        );
        // Batches of `batches` sequences (8, 16, 32 by default; 8 is the per-token kernels'
        // largest), one token each, as the scheduler decodes them: pooled caches, BatchDecoder
        // (a CUDA graph per size).
        for &b in batches {
            let bsteps = steps.min(32);
            let rows = 32 + bsteps + 8;
            let c = model.config();
            let mut pool = CachePool::new(c.num_hidden_layers, c.latent_dim(), b * rows, model.dtype(), dev)?;
            let mut caches =
                (0..b).map(|_| pool.alloc(rows).map(|c| c.expect("room"))).collect::<Result<Vec<_>, _>>()?;
            let prompts: Vec<Vec<u32>> = (0..b).map(|s| prompt(32, s as u32 * 7919)).collect();
            {
                let toks: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
                let mut refs: Vec<_> = caches.iter_mut().collect();
                model.forward(&toks, &mut refs, LogitsMode::None)?;
            }
            let mut dec = BatchDecoder::new(&model, b)?;
            let mut next: Vec<u32> = vec![1; b];
            let mut t = Instant::now();
            for i in 0..bsteps + 2 {
                if i == 2 {
                    sync(dev)?; // the first two steps run eagerly and capture the graph
                    t = Instant::now();
                }
                let mut refs: Vec<_> = caches.iter_mut().collect();
                next = dec.step(&model, &next, &mut refs, &pool)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            }
            let dt = t.elapsed().as_secs_f64() / bsteps as f64;
            result(
                "int4_decode_batch",
                serde_json::json!({ "weights": name, "batch": b, "ms_per_step": dt * 1e3, "tok_s": b as f64 / dt,
                                    "graphs": dec.graphs() }),
                dev_name,
            );
        }
        drop(model);
        sync(dev)?;
    }
    let mut m = metrics(&logits[0], &logits[1])?;
    m["prompt_tokens"] = 128.into();
    m["note"] = "int4 logits against bf16 on the same random weights".into();
    result("int4_vs_bf16_logits", m, dev_name);
    let same = greedy[0].iter().zip(greedy[1].iter()).take_while(|(a, b)| a == b).count();
    result("int4_vs_bf16_greedy", serde_json::json!({ "same_prefix": same, "of": greedy[1].len() }), dev_name);
    Ok(())
}
