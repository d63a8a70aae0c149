//! Where the sentence encoder runs: `embedder_device` in the configuration.

use candle_core::Device;

use crate::ModelError;

/// The device of the sentence encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderDevice {
    /// The CPU (int8 or f32 kernels of its own).
    Cpu,
    /// The first CUDA GPU, in f32 or bf16; an error when kb was built without `--features
    /// cuda` or no GPU answers.
    Cuda,
    /// The first CUDA GPU when kb was built with CUDA and one answers, else the CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for EmbedderDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("unknown embedder device {s:?}: expected cpu, cuda or auto")),
        }
    }
}

impl EmbedderDevice {
    /// The candle device this setting names on this machine and build.
    pub fn resolve(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => cuda().map_err(ModelError::Unsupported),
            Self::Auto => Ok(cuda().unwrap_or_else(|reason| {
                tracing::debug!(%reason, "embedder on the CPU");
                Device::Cpu
            })),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device, String> {
    Device::new_cuda(0).map_err(|e| format!("embedder_device = \"cuda\": no CUDA GPU: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device, String> {
    Err("embedder_device = \"cuda\": kb was built without CUDA (cargo build --features cuda)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!("cuda".parse::<EmbedderDevice>(), Ok(EmbedderDevice::Cuda));
        assert!("gpu".parse::<EmbedderDevice>().is_err());
        assert!(EmbedderDevice::Cpu.resolve().unwrap().is_cpu());
        // Without a GPU, auto is the CPU and cuda is an error that says why.
        if cfg!(not(feature = "cuda")) {
            assert!(EmbedderDevice::Auto.resolve().unwrap().is_cpu());
            let err = EmbedderDevice::Cuda.resolve().unwrap_err().to_string();
            assert!(err.contains("without CUDA"), "{err}");
        }
    }
}
