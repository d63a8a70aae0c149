//! Load benchmark against a running `kb serve`.
//!
//! `cargo run --release -p kb --example load -- search URL COLLECTION QUERIES.jsonl [CLIENTS] [SECONDS] [CORPUS.jsonl N]`
//!   hybrid `/search` from CLIENTS concurrent clients for SECONDS: QPS, latency percentiles, errors.
//!   Each query is sent once (the run stops early when they are used up), so that a query
//!   cache cannot make the figure. With CORPUS.jsonl and N, the first N documents of that BEIR
//!   corpus are uploaded to the collection `COLLECTION-upload` (in requests of 50 files) while
//!   the clients search: search under ingest.
//! `cargo run --release -p kb --example load -- ask URL COLLECTION QUERIES.jsonl [CLIENTS] [QUESTIONS]`
//!   streamed `/ask`: time to first token, total time and tokens per answer.
//! QUERIES.jsonl is BEIR's queries file (`{"_id", "text"}` per line).

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: load search|ask URL COLLECTION QUERIES.jsonl [CLIENTS] [SECONDS|QUESTIONS]");
        std::process::exit(2);
    }
    let (what, url, collection) = (args[0].as_str(), args[1].trim_end_matches('/').to_owned(), args[2].clone());
    let queries: Vec<String> = std::fs::read_to_string(&args[3])
        .expect("reading queries")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect();
    assert!(!queries.is_empty(), "no queries in {}", args[3]);
    let clients: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(16);
    let key = std::env::var("KB_API_KEY").ok();
    match what {
        "search" => {
            let seconds = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(60);
            let upload = match (args.get(6), args.get(7).and_then(|s| s.parse::<usize>().ok())) {
                (Some(corpus), Some(n)) => Some((corpus.clone(), n)),
                _ => None,
            };
            std::thread::scope(|s| {
                let uploader = upload.map(|(corpus, n)| {
                    let (url, collection, key) = (url.clone(), format!("{collection}-upload"), key.clone());
                    s.spawn(move || upload_corpus(&url, &collection, &corpus, n, &key))
                });
                search(&url, &collection, &queries, clients, seconds, key.clone());
                if let Some(u) = uploader {
                    u.join().expect("uploader");
                }
            });
        }
        "ask" => ask(&url, &collection, &queries, clients, args.get(5).and_then(|s| s.parse().ok()).unwrap_or(5), key),
        other => panic!("unknown benchmark {other:?}"),
    }
}

/// The response, or the error boxed (ureq's is large and only ever counted).
fn post(agent: &ureq::Agent, url: &str, key: &Option<String>, body: Value) -> Result<ureq::Response, Box<ureq::Error>> {
    let req = agent.post(url);
    let req = match key {
        Some(k) => req.set("Authorization", &format!("Bearer {k}")),
        None => req,
    };
    req.send_json(body).map_err(Box::new)
}

fn search(url: &str, collection: &str, queries: &[String], clients: usize, seconds: u64, key: Option<String>) {
    let endpoint = format!("{url}/v1/collections/{collection}/search");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            let (latencies, errors, next, endpoint, key) =
                (latencies.clone(), errors.clone(), next.clone(), endpoint.clone(), key.clone());
            s.spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let Some(q) = queries.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    let t = Instant::now();
                    let ok = post(&agent, &endpoint, &key, json!({"query": q, "top_k": 10, "mode": "hybrid"}))
                        .ok()
                        .and_then(|r| r.into_json::<Value>().ok())
                        .is_some_and(|v| v["hits"].is_array());
                    if ok {
                        mine.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    println!(
        "search hybrid: {clients} clients, {elapsed:.1} s, {} ok, {} errors, {:.1} QPS, latency ms p50 {:.1} p95 {:.1} p99 {:.1} max {:.1}",
        l.len(),
        errors.load(Ordering::Relaxed),
        l.len() as f64 / elapsed,
        percentile(&l, 0.5),
        percentile(&l, 0.95),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
}

/// Uploads the first `n` documents of a BEIR corpus to `collection` (created), 50 files a
/// request, and waits until every one is done or failed.
fn upload_corpus(url: &str, collection: &str, corpus: &str, n: usize, key: &Option<String>) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build();
    let auth = |r: ureq::Request| match key {
        Some(k) => r.set("Authorization", &format!("Bearer {k}")),
        None => r,
    };
    let _ = auth(agent.post(&format!("{url}/v1/collections"))).send_json(json!({"name": collection}));
    let docs: Vec<(String, String)> = std::fs::read_to_string(corpus)
        .expect("reading the corpus")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .take(n)
        .map(|d| {
            let text = format!("{}\n\n{}", d["title"].as_str().unwrap_or(""), d["text"].as_str().unwrap_or(""));
            (format!("{}.txt", d["_id"].as_str().unwrap_or("doc")), text)
        })
        .collect();
    let start = Instant::now();
    for part in docs.chunks(50) {
        let boundary = "kbloadboundary7c1e";
        let mut body = Vec::new();
        for (name, text) in part {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n{text}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let req = auth(agent.post(&format!("{url}/v1/collections/{collection}/documents")))
            .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"));
        if let Err(e) = req.send_bytes(&body) {
            eprintln!("upload failed: {e}");
        }
    }
    let failed = loop {
        let docs: Value = auth(agent.get(&format!("{url}/v1/collections/{collection}/documents")))
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
            .unwrap_or(Value::Null);
        let list = docs["documents"].as_array().cloned().unwrap_or_default();
        let settled = list.iter().filter(|d| d["status"] == "done" || d["status"] == "failed").count();
        if list.len() >= n && settled >= n {
            break list.iter().filter(|d| d["status"] == "failed").count();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let s = start.elapsed().as_secs_f64();
    println!("upload: {n} documents in {s:.1} s = {:.1} documents/s, {failed} failed", n as f64 / s);
}

fn ask(url: &str, collection: &str, queries: &[String], clients: usize, per_client: usize, key: Option<String>) {
    let endpoint = format!("{url}/v1/collections/{collection}/ask");
    let results = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (results, errors, endpoint, key) = (results.clone(), errors.clone(), endpoint.clone(), key.clone());
            s.spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(600)).build();
                for i in 0..per_client {
                    let q = &queries[(c * per_client + i) % queries.len()];
                    let t = Instant::now();
                    let Ok(res) = post(&agent, &endpoint, &key, json!({"question": q, "stream": true})) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (mut first, mut tokens, mut event) = (None, 0usize, String::new());
                    for line in BufReader::new(res.into_reader()).lines() {
                        let Ok(line) = line else { break };
                        if let Some(e) = line.strip_prefix("event: ") {
                            event = e.to_owned();
                        } else if line.starts_with("data: ") && event == "token" {
                            first.get_or_insert_with(|| t.elapsed().as_secs_f64());
                            tokens += 1;
                        }
                    }
                    let total = t.elapsed().as_secs_f64();
                    results.lock().unwrap().push((first.unwrap_or(total), total, tokens));
                }
            });
        }
    });
    let r = results.lock().unwrap().clone();
    let mut ttft: Vec<f64> = r.iter().map(|x| x.0 * 1e3).collect();
    let mut total: Vec<f64> = r.iter().map(|x| x.1 * 1e3).collect();
    ttft.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    let pieces: usize = r.iter().map(|x| x.2).sum();
    println!(
        "ask (streamed): {clients} clients, {} answers in {:.1} s, {} errors; time to first token ms p50 {:.0} max {:.0}; total ms p50 {:.0} max {:.0}; {:.1} text pieces per answer",
        r.len(),
        start.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
        percentile(&ttft, 0.5),
        ttft.last().copied().unwrap_or(f64::NAN),
        percentile(&total, 0.5),
        total.last().copied().unwrap_or(f64::NAN),
        pieces as f64 / r.len().max(1) as f64
    );
}
