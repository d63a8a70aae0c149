//! Embedding speed in f32 and int8: one query at a time (what a search pays), a batch of 16
//! queries (concurrent searches, batched), and passages in batches (what ingestion pays),
//! with the share of a passage batch spent tokenising.
//! `cargo run --release -p kb-inference --example embed_bench -- [MODEL_DIR] [f32|int8|bf16] [cpu|cuda]`
//! (`--features cuda` for the GPU; there the passage figure is the second of two runs, after
//! the kernels are loaded, over 2,048 passages).
use std::time::Instant;

use kb_inference::{BertEmbedder, Embedder, EmbedderDevice, Precision};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let queries = [
        "0-dimensional biomaterials show inductive properties.",
        "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
        "What torque does the handbook specify for the wheel nuts?",
        "Vitamin D deficiency is unrelated to birth weight.",
    ];
    let passage = "The title of the study\n".to_owned()
        + &"Patients with elevated markers showed a significantly reduced response to the standard treatment regimen. "
            .repeat(12);
    let device: EmbedderDevice =
        std::env::args().nth(3).map_or(EmbedderDevice::Cpu, |d| d.parse().expect("cpu or cuda"));
    let gpu = device != EmbedderDevice::Cpu;
    let batch: Vec<&str> = (0..if gpu { 2048 } else { 256 }).map(|_| passage.as_str()).collect();
    let precisions = match std::env::args().nth(2) {
        Some(p) if p != "all" => vec![p.parse::<Precision>().expect("f32, int8 or bf16")],
        _ if gpu => vec![Precision::F32, Precision::Bf16],
        _ => vec![Precision::F32, Precision::Int8],
    };
    for precision in precisions {
        let e = BertEmbedder::load_on(std::path::Path::new(&dir), precision, device).expect("load");
        if gpu {
            e.embed_passages(&batch[..256]).unwrap();
        }
        let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
        pool.install(|| {
            for q in queries {
                e.embed_query(q).unwrap();
            }
            let mut times = Vec::new();
            for i in 0..200 {
                let t = Instant::now();
                e.embed_query(queries[i % queries.len()]).unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            println!("{precision:?} query: p50 {:.2} ms, p95 {:.2} ms", times[100], times[190]);
            let sixteen: Vec<&str> = (0..16).map(|i| queries[i % queries.len()]).collect();
            let t = Instant::now();
            for _ in 0..20 {
                e.embed_queries(&sixteen).unwrap();
            }
            let per = t.elapsed().as_secs_f64() * 1e3 / 20.0;
            println!("{precision:?} 16 queries in one pass: {per:.2} ms ({:.2} ms a query)", per / 16.0);
            let tokens = e.tokenizer().encode(passage.as_str(), true).unwrap().len().min(e.max_tokens());
            let t = Instant::now();
            e.embed_passages(&batch).unwrap();
            let s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for chunk in batch.chunks(32) {
                e.tokenizer().encode_batch(chunk.to_vec(), true).unwrap();
            }
            let tok = t.elapsed().as_secs_f64();
            println!(
                "{precision:?} passages: {} of {tokens} tokens in {s:.2} s = {:.1} passages/s (tokenising {:.1}%)",
                batch.len(),
                batch.len() as f64 / s,
                100.0 * tok / s
            );
        });
    }
}
