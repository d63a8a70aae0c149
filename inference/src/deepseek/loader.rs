//! Where the weights come from: a Hugging Face directory of sharded safetensors, or random
//! tensors made on the device (benchmarks at full shape without a 30 GB download).

use super::quant::{Int4Weight, Quantize, Weight, GROUP};
use crate::ModelError;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A named-tensor store the model pulls its parameters from, shape-checked.
pub trait WeightSource {
    /// The tensor `name` as `dtype` on `device`; an error unless its shape is exactly `shape`.
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError>;
    /// Whether `name` exists (to choose between the per-expert and the fused expert layout).
    fn contains(&self, name: &str) -> bool;
}

/// The (out, in) projection `{prefix}.weight`, or AWQ's `{prefix}.qweight` / `.qzeros` /
/// `.scales` when the checkpoint has those (kept packed, whatever `quantize` says), finished as
/// [`Weight::finish`] says: int4 on CUDA when asked, dense in `dtype` on CPU.
pub fn get_weight(
    src: &dyn WeightSource,
    prefix: &str,
    out: usize,
    inp: usize,
    dtype: DType,
    device: &Device,
    quantize: Quantize,
) -> Result<Weight, ModelError> {
    let qname = format!("{prefix}.qweight");
    let w = if src.contains(&qname) {
        if !inp.is_multiple_of(GROUP) || !out.is_multiple_of(8) {
            return Err(ModelError::Checkpoint {
                path: PathBuf::from(prefix),
                message: format!("AWQ weight of shape ({out}, {inp}): needs out % 8 == 0 and in % {GROUP} == 0"),
            });
        }
        let cpu = &Device::Cpu;
        let qweight = src.get(&qname, &[inp, out / 8], DType::I32, cpu)?;
        let qzeros = src.get(&format!("{prefix}.qzeros"), &[inp / GROUP, out / 8], DType::I32, cpu)?;
        let scales = src.get(&format!("{prefix}.scales"), &[inp / GROUP, out], DType::F16, cpu)?;
        Weight::Int4(Int4Weight::from_awq(&qweight, &qzeros, &scales, device)?)
    } else {
        Weight::Dense(src.get(&format!("{prefix}.weight"), &[out, inp], dtype, device)?)
    };
    w.finish(quantize, dtype)
}

/// Safetensors shards of a checkpoint directory, memory-mapped.
pub struct SafetensorsSource {
    shards: Vec<(PathBuf, MmapedSafetensors)>,
    /// tensor name -> index into `shards`
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors.index.json` and every shard it names, or a lone `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| ModelError::Io { path: index_path.clone(), source: e })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
                path: index_path.clone(),
                message: format!("index is not JSON: {e}"),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Checkpoint { path: index_path.clone(), message: "no weight_map".into() })?;
            let names: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(ModelError::MissingFile { path: index_path });
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            if !path.exists() {
                return Err(ModelError::MissingFile { path });
            }
            // SAFETY: the file is mapped read-only; kb never writes checkpoints while serving.
            let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| ModelError::Checkpoint {
                path: path.clone(),
                message: format!("not a readable safetensors file: {e}"),
            })?;
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            shards.push((path, st));
        }
        tracing::debug!(shards = shards.len(), tensors = index.len(), "opened safetensors checkpoint");
        Ok(Self { shards, index })
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let &i = self.index.get(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        let (path, st) = &self.shards[i];
        let view = st.get(name).map_err(|e| ModelError::Checkpoint { path: path.clone(), message: e.to_string() })?;
        if view.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let t = st
            .load(name, device)
            .map_err(|e| ModelError::Checkpoint { path: path.clone(), message: format!("{name}: {e}") })?;
        Ok(t.to_dtype(dtype)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Random weights made on the device: normal(0, std) matrices, ones for norms. For benchmarks
/// and for the GPU comparison at full shape; the numbers mean nothing.
pub struct RandomSource {
    pub std: f64,
    /// Seeds the CPU generator (on CUDA, seed the device instead: `Device::set_seed`).
    pub seed: u64,
}

impl RandomSource {
    pub fn new(std: f64, seed: u64) -> Self {
        Self { std, seed }
    }
}

impl WeightSource for RandomSource {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        if name.ends_with("norm.weight") {
            return Ok(Tensor::ones(shape, dtype, device)?);
        }
        if device.is_cpu() {
            // candle's CPU rng cannot be seeded: draw from a per-tensor seeded generator so a
            // checkpoint written twice is the same checkpoint.
            let n: usize = shape.iter().product();
            let mut rng = SplitMix::new(self.seed ^ fnv1a(name));
            let data: Vec<f32> = (0..n).map(|_| rng.normal() * self.std as f32).collect();
            return Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?);
        }
        // randn in f32 (every backend has it), then the model dtype.
        Ok(Tensor::randn(0f32, self.std as f32, shape, device)?.to_dtype(dtype)?)
    }

    fn contains(&self, name: &str) -> bool {
        // Answer as the fused transformers-5 layout: one (E, 2I, H) tensor per layer is far
        // faster to make than 3 x E small ones.
        name.ends_with("mlp.experts.gate_up_proj") || name.ends_with("mlp.experts.down_proj")
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// SplitMix64 with Box-Muller: small, seedable, good enough for test weights.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}
