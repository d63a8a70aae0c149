//! The encoder's linear layers at ingest shapes (6,400 tokens: 32 passages of 200): candle's
//! f32 matmul against kb's int8 kernel, in GFLOP/s.
//! `cargo run --release -p kb-inference --example int8_bench`
use std::time::Instant;

use candle_core::{Device, Tensor};
use kb_inference::embedder::int8::Int8Linear;

fn main() -> candle_core::Result<()> {
    let m = 6400;
    for (k, n) in [(384, 1152), (384, 384), (384, 1536), (1536, 384)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?;
        let b = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?;
        let wt = w.t()?.contiguous()?;
        let q = Int8Linear::new(&w, &b)?;
        let flops = 2.0 * (m * k * n) as f64;
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<f64> {
            f()?;
            let t = Instant::now();
            for _ in 0..5 {
                f()?;
            }
            Ok(t.elapsed().as_secs_f64() / 5.0)
        };
        let f = time(&|| x.matmul(&wt))?;
        let i = time(&|| x.apply_op1_no_bwd(&q))?;
        println!(
            "({m}x{k}) x ({k}x{n}): f32 {:.1} ms {:.0} GFLOP/s, int8 {:.1} ms {:.0} GOP/s",
            f * 1e3,
            flops / f / 1e9,
            i * 1e3,
            flops / i / 1e9
        );
    }
    Ok(())
}
