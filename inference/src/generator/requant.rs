//! Re-encodes GGUF weights whose quantization has no SIMD kernel in candle's CPU backend.
//!
//! candle multiplies Q4_1 (and Q5_0/Q5_1) weights with scalar loops, which made SmolLM2's
//! Q4_1 file several times slower than needed. F32 holds the dequantized weights exactly and
//! uses candle's gemm (fast prefill); Q8_0 has AVX2/NEON dot kernels, a quarter of the
//! memory, and adds far less error than the Q4_1 quantization itself did.

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek};

use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

/// How the weights are held in memory on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Types without a fast CPU kernel become F32 (4 bytes per weight; ~0.6 GB for
    /// SmolLM2-135M). Fastest prompt processing.
    #[default]
    F32,
    /// Types without a fast CPU kernel become Q8_0 (~1.06 bytes per weight). Least memory
    /// with a fast kernel; prompt processing is several times slower than F32.
    Q8_0,
    /// As stored in the file.
    Native,
}

/// Types candle's CPU backend handles with scalar loops only.
fn slow_on_cpu(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// Whether `content` holds tensors that `format` would re-encode.
pub fn needs_conversion(content: &Content, format: WeightFormat) -> bool {
    format != WeightFormat::Native && content.tensor_infos.values().any(|t| slow_on_cpu(t.ggml_dtype))
}

/// Reads every tensor of `content` from `reader`, re-encoding the slow ones, and returns a
/// `Content` (same metadata) whose tensor data is the returned in-memory buffer, ready for
/// `ModelWeights::from_gguf`. Tensors are converted one at a time to bound peak memory.
pub fn convert<R: Read + Seek>(
    content: Content,
    reader: &mut R,
    format: WeightFormat,
) -> candle_core::Result<(Content, Cursor<Vec<u8>>)> {
    let target = match format {
        WeightFormat::F32 => Some(GgmlDType::F32),
        WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
        WeightFormat::Native => None,
    };
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut data = Vec::new();
    let mut tensor_infos = HashMap::with_capacity(names.len());
    for name in names {
        let q = content.tensor(reader, name, &device)?;
        let q = match target {
            Some(dtype) if slow_on_cpu(q.dtype()) && fits(&q, dtype) => {
                QTensor::quantize(&q.dequantize(&device)?, dtype)?
            }
            _ => q,
        };
        let info = TensorInfo { ggml_dtype: q.dtype(), shape: q.shape().clone(), offset: data.len() as u64 };
        data.extend_from_slice(&q.data()?);
        tensor_infos.insert(name.clone(), info);
    }
    let converted = Content { magic: content.magic, metadata: content.metadata, tensor_infos, tensor_data_offset: 0 };
    Ok((converted, Cursor::new(data)))
}

/// Quantized blocks run along the last dimension, which must hold whole blocks.
fn fits(q: &QTensor, dtype: GgmlDType) -> bool {
    q.shape().dims().last().is_some_and(|d| d % dtype.block_size() == 0)
}
