//! Prometheus metrics, served at `/metrics`: requests by route, ingest jobs, embedding and
//! generation speed. One process-wide registry, since there is one service per process.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use kb_inference::{Embedder, ModelError};
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub jobs_finished: IntCounterVec,
    pub jobs_current: IntGaugeVec,
    pub embed_seconds: HistogramVec,
    pub generation_ttft_seconds: HistogramVec,
    pub generation_tokens_per_second: HistogramVec,
    pub generation_tokens: IntCounterVec,
}

fn seconds(name: &str, help: &str, labels: &[&str], start: f64) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(exponential_buckets(start, 2.0, 16).expect("valid buckets")),
        labels,
    )
    .expect("valid histogram")
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        registry: Registry::new(),
        http_requests: IntCounterVec::new(
            Opts::new("kb_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid"),
        http_seconds: seconds(
            "kb_http_request_duration_seconds",
            "HTTP request latency by route",
            &["route", "method"],
            0.0005,
        ),
        jobs_finished: IntCounterVec::new(
            Opts::new("kb_ingest_jobs_total", "Finished ingest jobs by outcome"),
            &["outcome"],
        )
        .expect("valid"),
        jobs_current: IntGaugeVec::new(Opts::new("kb_ingest_jobs", "Ingest jobs now queued or running"), &["status"])
            .expect("valid"),
        embed_seconds: seconds(
            "kb_embedding_batch_seconds",
            "Time to embed one batch (passages) or one query",
            &["kind"],
            0.001,
        ),
        generation_ttft_seconds: seconds(
            "kb_generation_time_to_first_token_seconds",
            "Time from prompt to the first answer token",
            &["generator"],
            0.01,
        ),
        generation_tokens_per_second: HistogramVec::new(
            HistogramOpts::new("kb_generation_tokens_per_second", "Decode speed of each answer")
                .buckets(exponential_buckets(0.5, 2.0, 14).expect("valid buckets")),
            &["generator"],
        )
        .expect("valid"),
        generation_tokens: IntCounterVec::new(
            Opts::new("kb_generation_tokens_total", "Tokens read (prompt) and written (completion)"),
            &["generator", "kind"],
        )
        .expect("valid"),
    };
    let r = &m.registry;
    for c in [
        Box::new(m.http_requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.http_seconds.clone()),
        Box::new(m.jobs_finished.clone()),
        Box::new(m.jobs_current.clone()),
        Box::new(m.embed_seconds.clone()),
        Box::new(m.generation_ttft_seconds.clone()),
        Box::new(m.generation_tokens_per_second.clone()),
        Box::new(m.generation_tokens.clone()),
    ] {
        r.register(c).expect("metric registered once");
    }
    m
});

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// An embedder that times every call into `kb_embedding_batch_seconds`.
pub struct TimedEmbedder(pub Arc<dyn Embedder>);

impl TimedEmbedder {
    fn timed<T>(kind: &str, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
        let start = Instant::now();
        let out = f();
        METRICS.embed_seconds.with_label_values(&[kind]).observe(start.elapsed().as_secs_f64());
        out
    }
}

impl Embedder for TimedEmbedder {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn max_tokens(&self) -> usize {
        self.0.max_tokens()
    }
    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.0.tokenizer()
    }
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        Self::timed("passages", || self.0.embed_passages(texts))
    }
    fn embed_query(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        Self::timed("query", || self.0.embed_query(text))
    }
    fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        Self::timed("query", || self.0.embed_queries(texts))
    }
    fn coverage(&self, text: &str) -> f32 {
        self.0.coverage(text)
    }
}
