//! `kb eval beir`: retrieval quality (nDCG@10, Recall@10/100, MRR@10) and speed on a
//! BEIR-format dataset, ingesting its corpus first when the collection is empty.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kb_index::{SearchMode, SearchRequest};
use kb_ingest::pipeline::Outcome;
use serde::Deserialize;

use crate::app::App;
use crate::commands::ingest::open_or_create;
use crate::config::Config;

#[derive(Deserialize)]
struct CorpusRecord {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    title: String,
    text: String,
}

#[derive(Deserialize)]
struct QueryRecord {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

/// query id → (document id → graded relevance)
pub type Qrels = HashMap<String, HashMap<String, i32>>;

pub async fn run(
    mut config: Config,
    dir: &Path,
    collection: &str,
    mode: SearchMode,
    batch: usize,
) -> anyhow::Result<()> {
    let qrels = read_qrels(&dir.join("qrels/test.tsv"))?;
    let queries: Vec<QueryRecord> = read_jsonl(&dir.join("queries.jsonl"))?
        .into_iter()
        .filter(|q: &QueryRecord| qrels.contains_key(&q.id))
        .collect();
    // Every timed query must embed its text: no cached embeddings.
    config.query_cache_size = 0;
    let app = App::open(config).await?;
    let c = open_or_create(&app, collection).await?;

    if app.engine.store().documents(c.id).await?.is_empty() {
        ingest_corpus(&app, &c, &dir.join("corpus.jsonl"), batch.max(1)).await?;
    } else {
        println!("collection {collection} already holds documents: skipping ingest");
    }

    let mut per_query = Vec::with_capacity(queries.len());
    let mut latencies = Vec::with_capacity(queries.len());
    for q in &queries {
        let req = SearchRequest { query: q.text.clone(), top_k: 100, mode, distinct_documents: true };
        let started = Instant::now();
        let hits = app.engine.search(&c, &req).await?;
        latencies.push(started.elapsed());
        let ranked: Vec<String> = hits
            .iter()
            .map(|h| h.chunk.filename.strip_suffix(".txt").unwrap_or(&h.chunk.filename).to_owned())
            .collect();
        per_query.push(score(&ranked, &qrels[&q.id]));
    }
    let n = per_query.len().max(1) as f64;
    let mean = |f: fn(&Scores) -> f64| per_query.iter().map(f).sum::<f64>() / n;
    println!("queries: {}  mode: {}", per_query.len(), format!("{mode:?}").to_lowercase());
    println!("nDCG@10    {:.4}", mean(|s| s.ndcg10));
    println!("Recall@10  {:.4}", mean(|s| s.recall10));
    println!("Recall@100 {:.4}", mean(|s| s.recall100));
    println!("MRR@10     {:.4}", mean(|s| s.mrr10));
    latencies.sort();
    println!(
        "query latency (100 documents deep, as scored above) p50 {:.2} ms  p95 {:.2} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.95))
    );
    // What a search user waits for: the top 10 chunks, as `/search` and `kb search` ask.
    let mut latencies = Vec::with_capacity(queries.len());
    for q in &queries {
        let req = SearchRequest { query: q.text.clone(), top_k: 10, mode, distinct_documents: false };
        let started = Instant::now();
        app.engine.search(&c, &req).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "search latency (top 10) p50 {:.2} ms  p95 {:.2} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.95))
    );
    Ok(())
}

async fn ingest_corpus(app: &App, c: &kb_index::Collection, path: &Path, batch: usize) -> anyhow::Result<()> {
    let records: Vec<CorpusRecord> = read_jsonl(path)?;
    let bar = ProgressBar::new(records.len() as u64);
    bar.set_style(ProgressStyle::with_template("ingest {bar:40} {pos}/{len} docs {elapsed_precise} eta {eta}")?);
    let started = Instant::now();
    let before = app.ingestor.embed_stats();
    let (mut chunks, mut failed) = (0usize, 0usize);
    let workers = app.config.ingest_workers.max(1);
    // As many batches in flight as the service's ingest workers run, so one batch's embedding
    // overlaps another's parsing and storing, as uploads to the service do.
    let mut batches = futures_util::stream::iter(records.chunks(batch))
        .map(|part| async move {
            let files = part
                .iter()
                .map(|r| (format!("{}.txt", r.id), format!("{}\n\n{}", r.title, r.text).into_bytes()))
                .collect();
            app.ingestor.ingest_files(c, files).await.map(|outcomes| (part.len(), outcomes))
        })
        .buffered(workers);
    while let Some(done) = batches.next().await {
        let (docs, outcomes) = done?;
        for outcome in outcomes {
            match outcome {
                Outcome::Indexed { chunks: n, .. } => chunks += n,
                Outcome::Unchanged { .. } => {}
                Outcome::Failed { error, document_id } => {
                    failed += 1;
                    tracing::warn!(document_id, %error, "document failed");
                }
            }
        }
        bar.inc(docs as u64);
    }
    app.engine.flush(c).await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let after = app.ingestor.embed_stats();
    let embed = (after.time - before.time).as_secs_f64();
    println!(
        "ingested {} documents ({} chunks, {failed} failed) in {secs:.1} s: {:.1} docs/s, {:.1} chunks/s; embedding {embed:.1} s summed over the batches ({} at a time, {} threads)",
        records.len(),
        chunks,
        records.len() as f64 / secs,
        chunks as f64 / secs,
        workers,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    Ok(())
}

/// Per-query metrics, with the definitions pytrec_eval (and so BEIR) uses: linear gains,
/// log2 discounts, ideal ranking from the judged documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub ndcg10: f64,
    pub recall10: f64,
    pub recall100: f64,
    pub mrr10: f64,
}

pub fn score(ranked: &[String], judged: &HashMap<String, i32>) -> Scores {
    let gain = |doc: &String| judged.get(doc).copied().unwrap_or(0).max(0) as f64;
    let dcg: f64 = ranked.iter().take(10).enumerate().map(|(i, d)| gain(d) / (i as f64 + 2.0).log2()).sum();
    let mut ideal: Vec<f64> = judged.values().map(|&g| g.max(0) as f64).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, g)| g / (i as f64 + 2.0).log2()).sum();
    let relevant = judged.values().filter(|&&g| g > 0).count().max(1) as f64;
    let found = |k: usize| ranked.iter().take(k).filter(|d| gain(d) > 0.0).count() as f64;
    let first = ranked.iter().take(10).position(|d| gain(d) > 0.0);
    Scores {
        ndcg10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        recall10: found(10) / relevant,
        recall100: found(100) / relevant,
        mrr10: first.map_or(0.0, |p| 1.0 / (p as f64 + 1.0)),
    }
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{} line {}", path.display(), n + 1))?);
    }
    Ok(out)
}

fn read_qrels(path: &Path) -> anyhow::Result<Qrels> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut qrels = Qrels::new();
    for (n, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 || (n == 0 && cols[2].trim().parse::<i32>().is_err()) {
            continue; // header or blank
        }
        let grade: i32 = cols[2].trim().parse().with_context(|| format!("{} line {}", path.display(), n + 1))?;
        qrels.entry(cols[0].to_owned()).or_default().insert(cols[1].to_owned(), grade);
    }
    Ok(qrels)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn perfect_and_partial_rankings() {
        let j = judged(&[("a", 1), ("b", 1)]);
        let perfect = score(&["a".into(), "b".into(), "c".into()], &j);
        assert!((perfect.ndcg10 - 1.0).abs() < 1e-12);
        assert_eq!(perfect.mrr10, 1.0);
        let second = score(&["c".into(), "a".into()], &j);
        // dcg = 1/log2(3); idcg = 1 + 1/log2(3)
        let expect = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((second.ndcg10 - expect).abs() < 1e-12);
        assert_eq!(second.mrr10, 0.5);
        assert_eq!(second.recall10, 0.5);
    }

    #[test]
    fn graded_gains_are_linear() {
        let j = judged(&[("a", 2), ("b", 1)]);
        let s = score(&["b".into(), "a".into()], &j);
        let dcg = 1.0 + 2.0 / 3f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((s.ndcg10 - dcg / idcg).abs() < 1e-12);
    }
}
