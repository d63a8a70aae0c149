//! int4 weights (W4A16, group 128) on CPU: load-time quantisation of a tiny model, and an AWQ
//! checkpoint written here loading as its own dequantisation.

use crate::deepseek::{tiny_config, write_checkpoint};
use candle_core::{DType, Device, Tensor};
use kb_inference::deepseek::loader::get_weight;
use kb_inference::deepseek::quant::{Int4Weight, Weight, GROUP};
use kb_inference::deepseek::{DeepSeekV2, LogitsMode, Quantize, SafetensorsSource, WeightSource};
use std::collections::HashMap;
use std::path::Path;

/// The tiny test model with every quantised projection's input a multiple of the group.
fn int4_config() -> serde_json::Value {
    tiny_config(&[
        ("hidden_size", 128.into()),
        ("intermediate_size", 256.into()),
        ("moe_intermediate_size", 128.into()),
        ("qk_nope_head_dim", 32.into()),
        ("v_head_dim", 32.into()),
        ("kv_lora_rank", 64.into()),
    ])
}

const PROMPT: [u32; 12] = [5, 17, 99, 3, 64, 127, 8, 42, 11, 90, 2, 77];

fn logits(model: &DeepSeekV2) -> Tensor {
    let mut cache = model.new_cache(PROMPT.len()).unwrap();
    model.forward(&[&PROMPT], &mut [&mut cache], LogitsMode::All).unwrap().logits.unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let num = (got - want).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let den = want.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    num / den
}

/// Every tensor of the checkpoint in `dir`, by name.
fn read_all(dir: &Path) -> HashMap<String, Tensor> {
    let mut all = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            all.extend(candle_core::safetensors::load(&path, &Device::Cpu).unwrap());
        }
    }
    all
}

/// The (out, in) projections kb stores as int4: attention q / kv_a / o, dense MLPs, experts
/// (not the router, kv_b, embeddings, norms or the vocabulary projection).
fn quantised_names(all: &HashMap<String, Tensor>) -> Vec<String> {
    let mut names: Vec<String> = all
        .keys()
        .filter(|n| {
            n.ends_with(".weight")
                && n.contains("_proj")
                && !n.contains("kv_b_proj")
                && (n.contains("self_attn") || n.contains(".mlp."))
        })
        .cloned()
        .collect();
    names.sort();
    names
}

/// Round-to-nearest int4 per group of 128 input columns, range widened to include 0, scale
/// rounded to f16 first: (codes (out, in), zeros (out, in / 128), scales (out, in / 128)), on
/// the host, written independently of kb's candle implementation.
#[allow(clippy::type_complexity)]
fn quantise_host(w: &Tensor) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<f32>>) {
    let w = w.to_vec2::<f32>().unwrap();
    let (out, inp) = (w.len(), w[0].len());
    let groups = inp / GROUP;
    let mut q = vec![vec![0u8; inp]; out];
    let mut zeros = vec![vec![0u8; groups]; out];
    let mut scales = vec![vec![0f32; groups]; out];
    for o in 0..out {
        for g in 0..groups {
            let cols = &w[o][g * GROUP..(g + 1) * GROUP];
            let max = cols.iter().copied().fold(0f32, f32::max);
            let min = cols.iter().copied().fold(0f32, f32::min);
            let s = f16_round(((max - min) / 15.0).max(1e-5));
            let z = (-min / s).round().clamp(0.0, 15.0);
            for (j, &v) in cols.iter().enumerate() {
                q[o][g * GROUP + j] = ((v / s).round() + z).clamp(0.0, 15.0) as u8;
            }
            zeros[o][g] = z as u8;
            scales[o][g] = s;
        }
    }
    (q, zeros, scales)
}

/// `v` rounded to the nearest f16 (AWQ stores scales as f16).
fn f16_round(v: f32) -> f32 {
    Tensor::new(v, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// AWQ's pack order: nibble i of a word holds output column 8c + AWQ_ORDER[i].
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// AWQ's packing of `codes[column][row]` (4-bit): for each of `rows` rows, eight output columns
/// a word, in [`AWQ_ORDER`].
fn pack_awq(codes: &[Vec<u8>], rows: usize) -> Vec<i32> {
    let words = codes.len() / 8;
    (0..rows)
        .flat_map(|r| {
            (0..words).map(move |c| {
                AWQ_ORDER
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (nib, &col)| acc | (codes[8 * c + col][r] as u32) << (4 * nib))
                    as i32
            })
        })
        .collect()
}

#[test]
fn int4_tiny_model_dequantises_within_half_a_step_and_keeps_logits_close() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_checkpoint(dir.path(), &int4_config(), 11);
    let all = read_all(dir.path());
    let names = quantised_names(&all);
    assert!(names.len() > 20, "expected the tiny model's projections, got {names:?}");

    // 1. Each projection as the loader makes it (int4, dequantised on CPU) is within half a
    //    quantisation step of the checkpoint's weight: round-to-nearest errs by at most
    //    scale / 2 (the zero point is an integer and the scale is the stored f16 one). f32
    //    arithmetic adds at most a few ulps.
    let src = SafetensorsSource::open(dir.path()).unwrap();
    let mut worst = 0f32;
    for name in &names {
        let w = &all[name];
        let (out, inp) = w.dims2().unwrap();
        let prefix = name.trim_end_matches(".weight");
        let loaded = get_weight(&src, prefix, out, inp, DType::F32, &Device::Cpu, Quantize::Int4).unwrap();
        assert!(matches!(loaded, Weight::Dense(_)), "on CPU int4 weights are dequantised at load");
        let deq = loaded.dense(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let scales = Int4Weight::quantize(w).unwrap().scales.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let w = w.to_vec2::<f32>().unwrap();
        for o in 0..out {
            for i in 0..inp {
                let half_step = scales[o][i / GROUP] / 2.0;
                let err = (w[o][i] - deq[o][i]).abs();
                assert!(
                    err <= half_step * (1.0 + 1e-5) + 1e-7,
                    "{name} ({o}, {i}): error {err} > scale / 2 = {half_step}"
                );
                worst = worst.max(err / half_step);
            }
        }
    }
    assert!(worst > 0.9, "round-to-nearest should use most of its half step somewhere, used {worst}");

    // 2. Logits of the int4 model against the full-precision one, measured against the same
    //    model with every quantised weight moved by random noise of the rounding error's
    //    size (uniform in ±scale / 2, std scale / sqrt(12)). Round-to-nearest error behaves
    //    like such noise, so int4 may not be much further off than it; a wrong code, zero point
    //    or scale is systematic and lands far beyond it.
    //    The bound is 1.5x the noise model's error. (This random model is chaotic: 3 layers of
    //    std-0.15 weights with top-3 routing over near-tied experts, so both errors are large
    //    in absolute terms, ~0.4 relative L2.)
    let mut noisy = all.clone();
    let mut state = 0x9e3779b97f4a7c15u64;
    for name in &names {
        let w = &all[name];
        let scales = Int4Weight::quantize(w).unwrap().scales.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let (out, inp) = w.dims2().unwrap();
        let noise: Vec<f32> = (0..out * inp)
            .map(|k| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5; // uniform in [-0.5, 0.5)
                u * scales[k / inp][(k % inp) / GROUP]
            })
            .collect();
        let noise = Tensor::from_vec(noise, (out, inp), &Device::Cpu).unwrap();
        noisy.insert(name.clone(), (w + noise).unwrap());
    }
    let noisy_dir = tempfile::tempdir().unwrap();
    std::fs::write(noisy_dir.path().join("config.json"), int4_config().to_string()).unwrap();
    candle_core::safetensors::save(&noisy, noisy_dir.path().join("model.safetensors")).unwrap();

    let full = DeepSeekV2::load(dir.path(), &Device::Cpu).unwrap();
    let q4 = DeepSeekV2::load_quantized(dir.path(), &Device::Cpu, Quantize::Int4).unwrap();
    assert_eq!(q4.config().hidden_size, cfg.hidden_size);
    let want = logits(&full);
    let err = rel_err(&logits(&q4), &want);
    let noise_err = rel_err(&logits(&DeepSeekV2::load(noisy_dir.path(), &Device::Cpu).unwrap()), &want);
    eprintln!("int4 vs f32 logits: relative L2 {err:.4}; rounding-sized random noise: {noise_err:.4}");
    assert!(err > 0.0, "int4 should change the logits");
    assert!(err < 1.5 * noise_err, "int4 logits off by {err}, more than 1.5x rounding-sized noise ({noise_err})");
}

#[test]
fn awq_checkpoint_loads_as_its_own_dequantisation() {
    let dense_dir = tempfile::tempdir().unwrap();
    write_checkpoint(dense_dir.path(), &int4_config(), 13);
    let all = read_all(dense_dir.path());
    let names = quantised_names(&all);

    // The AWQ checkpoint (qweight / qzeros / scales in AWQ's GEMM packing) and, beside it, a
    // dense checkpoint holding exactly its dequantisation (q - zero) * scale.
    let mut awq = all.clone();
    let mut deq = all.clone();
    for name in &names {
        let w = &all[name];
        let (out, inp) = w.dims2().unwrap();
        let (q, zeros, scales) = quantise_host(w);
        let groups = inp / GROUP;
        let qweight = pack_awq(&q, inp);
        let qzeros = pack_awq(&zeros, groups);
        let mut sc = vec![0f32; groups * out];
        for g in 0..groups {
            for o in 0..out {
                sc[g * out + o] = scales[o][g];
            }
        }
        let dense: Vec<f32> = (0..out)
            .flat_map(|o| (0..inp).map(move |i| (o, i)))
            .map(|(o, i)| (q[o][i] as f32 - zeros[o][i / GROUP] as f32) * scales[o][i / GROUP])
            .collect();
        let prefix = name.trim_end_matches(".weight");
        awq.remove(name);
        let dev = Device::Cpu;
        awq.insert(format!("{prefix}.qweight"), Tensor::from_vec(qweight, (inp, out / 8), &dev).unwrap());
        awq.insert(format!("{prefix}.qzeros"), Tensor::from_vec(qzeros, (groups, out / 8), &dev).unwrap());
        awq.insert(
            format!("{prefix}.scales"),
            Tensor::from_vec(sc, (groups, out), &dev).unwrap().to_dtype(DType::F16).unwrap(),
        );
        deq.insert(name.clone(), Tensor::from_vec(dense, (out, inp), &dev).unwrap());
    }
    let mut config = int4_config();
    config["quantization_config"] = serde_json::json!({ "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm" });
    let write = |tensors: &HashMap<String, Tensor>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        candle_core::safetensors::save(tensors, dir.path().join("model.safetensors")).unwrap();
        dir
    };
    let (awq_dir, deq_dir) = (write(&awq), write(&deq));
    assert!(SafetensorsSource::open(awq_dir.path()).unwrap().contains("model.layers.1.mlp.experts.0.up_proj.qweight"));

    // The same weights, bit for bit in f32, so the same logits up to summation order (none
    // differs: the same ops run on the same values). 1e-5 relative leaves room for nothing
    // but float noise; a wrong nibble order or zero layout is off by tens of percent.
    let want = logits(&DeepSeekV2::load(deq_dir.path(), &Device::Cpu).unwrap());
    for quantize in [Quantize::None, Quantize::Int4] {
        // An AWQ checkpoint is int4 already: asking for int4 must not quantise it again.
        let got = logits(&DeepSeekV2::load_quantized(awq_dir.path(), &Device::Cpu, quantize).unwrap());
        let err = rel_err(&got, &want);
        assert!(err < 1e-5, "AWQ load ({quantize:?}) differs from its dequantisation: relative L2 {err}");
    }
}
