//! Embedding speed: one query at a time (what a search pays) and passages in batches (what
//! ingestion pays). `cargo run --release -p kb-inference --example embed_bench -- MODEL_DIR`
use std::time::Instant;

use kb_inference::{BertEmbedder, Embedder};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let e = BertEmbedder::load(std::path::Path::new(&dir)).expect("load");
    let queries = [
        "0-dimensional biomaterials show inductive properties.",
        "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
        "What torque does the handbook specify for the wheel nuts?",
        "Vitamin D deficiency is unrelated to birth weight.",
    ];
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
    println!("query: p50 {:.2} ms, p95 {:.2} ms", times[100], times[190]);
    // The same on one thread (a one-thread rayon pool): small matrices may not pay for fork/join.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let mut times = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        one.install(|| e.embed_query(queries[i % queries.len()]).unwrap());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("query, one thread: p50 {:.2} ms, p95 {:.2} ms", times[100], times[190]);
    let passage = "The title of the study\n".to_owned()
        + &"Patients with elevated markers showed a significantly reduced response to the standard treatment regimen. "
            .repeat(12);
    let batch: Vec<&str> = (0..256).map(|_| passage.as_str()).collect();
    let tokens = e.tokenizer().encode(passage.as_str(), true).unwrap().len().min(e.max_tokens());
    let t = Instant::now();
    e.embed_passages(&batch).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!("passages: {} of {tokens} tokens in {s:.2} s = {:.1} passages/s", batch.len(), batch.len() as f64 / s);
}
