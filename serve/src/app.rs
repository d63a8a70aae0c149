//! Builds kb's parts from the configuration: store, embedder, engine, ingestor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kb_index::{Engine, Fusion, HnswParams, IndexConfig, Store};
use kb_inference::deepseek::scheduler::SchedulerConfig;
use kb_inference::deepseek::{best_device, DeepSeekTokenizer, DeepSeekV2};
use kb_inference::generator::deepseek::DeepSeekGenerator;
use kb_inference::{BertEmbedder, DeepSeekEmbedder, Embedder, Generator, Pooling, SmolLmGenerator};
use kb_ingest::parse::PdfParser;
use kb_ingest::pipeline::Ingestor;
use kb_ingest::ChunkerConfig;

use crate::config::{Config, EmbedderKind, FusionKind, GeneratorKind};
use crate::metrics::TimedEmbedder;

pub struct App {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub ingestor: Arc<Ingestor>,
    /// Loaded once when the generator or the embedder is DeepSeek; both share it.
    deepseek: Option<DeepSeek>,
}

#[derive(Clone)]
struct DeepSeek {
    name: String,
    model: Arc<DeepSeekV2>,
    tokenizer: DeepSeekTokenizer,
}

impl DeepSeek {
    async fn load(config: &crate::config::DeepSeekConfig) -> anyhow::Result<Self> {
        let dir = config.model_dir.clone().context(
            "the DeepSeek generator or embedder needs a checkpoint directory (--model-dir or deepseek.model_dir)",
        )?;
        let random = config.random_weights;
        let quantize: kb_inference::deepseek::Quantize = config.quantize.into();
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Self> {
            let tokenizer = DeepSeekTokenizer::from_dir(&dir)?;
            let device = best_device();
            tracing::info!(dir = %dir.display(), device = ?device, random, ?quantize, "loading DeepSeek-V2");
            let model = if random {
                DeepSeekV2::load_random_quantized(&dir, &device, 7, quantize)?
            } else {
                DeepSeekV2::load_quantized(&dir, &device, quantize)?
            };
            let name =
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "deepseek-v2".into());
            Ok(Self { name, model: Arc::new(model), tokenizer })
        })
        .await??;
        Ok(loaded)
    }
}

/// The hidden subcommand under which `kb` runs pdf-extract in a child process.
pub const PDF_WORKER_COMMAND: &str = "pdf-worker";

impl App {
    /// The parts `config` describes; PDFs are parsed by this executable's `pdf-worker`.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the kb executable for the PDF worker")?;
        Self::open_with_pdf_worker(config, exe).await
    }

    /// As [`App::open`], with `kb_executable` (a `kb` binary) as the PDF worker: a process that
    /// is not `kb` itself, such as a test, names the binary.
    pub async fn open_with_pdf_worker(config: Config, kb_executable: PathBuf) -> anyhow::Result<Self> {
        config.ensure_dirs()?;
        let store = Store::open(&config.database_url())
            .await
            .with_context(|| format!("opening the database {}", config.describe_database()))?;
        let deepseek = if config.generator == GeneratorKind::Deepseek || config.embedder == EmbedderKind::Deepseek {
            Some(DeepSeek::load(&config.deepseek).await?)
        } else {
            None
        };
        let inner: Arc<dyn Embedder> = match &deepseek {
            Some(ds) if config.embedder == EmbedderKind::Deepseek => {
                let d = &config.deepseek;
                let pooling: Pooling = d.pooling.into();
                Arc::new(DeepSeekEmbedder::new(
                    &ds.name,
                    ds.model.clone(),
                    &ds.tokenizer,
                    pooling,
                    d.head.as_deref(),
                    d.embed_max_tokens,
                )?)
            }
            _ => {
                let dir = config.embedder_dir();
                let embedder = BertEmbedder::load_on(&dir, config.embedder_precision, config.embedder_device)
                    .with_context(|| {
                        format!("loading the embedder from {} (run scripts/fetch-models.sh)", dir.display())
                    })?;
                tracing::info!(
                    device = embedder.device_name(),
                    precision = ?embedder.precision(),
                    "sentence encoder {}",
                    dir.display()
                );
                Arc::new(
                    embedder
                        .with_prefixes(config.embedder_query_prefix.clone(), config.embedder_passage_prefix.clone()),
                )
            }
        };
        let embedder: Arc<dyn Embedder> = Arc::new(TimedEmbedder(inner));
        let fusion = match config.fusion {
            FusionKind::Rrf => Fusion::Rrf { k: config.rrf_k },
            FusionKind::Convex => Fusion::Convex { alpha: config.fusion_alpha },
        };
        let index_config = IndexConfig {
            hnsw: HnswParams {
                m: config.hnsw_m,
                ef_construction: config.hnsw_ef_construction,
                ef_search: config.hnsw_ef_search,
            },
            fusion,
            query_cache_size: config.query_cache_size,
            save_every_chunks: config.vector_save_chunks,
            save_every_secs: config.vector_save_secs,
            ..IndexConfig::default()
        };
        let engine = Arc::new(
            Engine::open(store, embedder, &config.index_dir(), index_config).await.context("opening the indexes")?,
        );
        let pdf = PdfParser::new(kb_executable, vec![PDF_WORKER_COMMAND.into()])
            .with_timeout(Duration::from_secs(config.pdf_timeout_secs))
            .with_memory_limit(config.pdf_memory_mb * 1024 * 1024);
        let chunker = ChunkerConfig { target_tokens: config.chunk_tokens, overlap_tokens: config.chunk_overlap };
        let ingestor = Arc::new(Ingestor::new(engine.clone(), pdf, chunker));
        Ok(Self { config, engine, ingestor, deepseek })
    }
}

impl App {
    /// The answer generator the configuration names; `None` means extractive answers.
    pub async fn load_generator(&self) -> anyhow::Result<Option<Arc<dyn Generator>>> {
        match self.config.generator {
            GeneratorKind::None => Ok(None),
            GeneratorKind::Smollm2 => {
                let path = self.config.models_dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
                if !path.is_file() {
                    tracing::warn!(path = %path.display(), "generator model missing (scripts/fetch-models.sh): answers will be extractive");
                    return Ok(None);
                }
                let g = tokio::task::spawn_blocking(move || SmolLmGenerator::load(&path)).await??;
                Ok(Some(Arc::new(g)))
            }
            GeneratorKind::Deepseek => {
                let ds = self.deepseek.clone().context("DeepSeek model not loaded")?;
                let d = &self.config.deepseek;
                let scheduler = SchedulerConfig {
                    max_sequences: d.max_sequences,
                    max_queued: d.max_queued,
                    prefill_chunk: d.prefill_chunk,
                    max_prefill_tokens: d.max_prefill_tokens,
                    cache_tokens: d.cache_tokens,
                    queue_wait: Duration::from_secs(d.queue_wait_secs),
                    ..SchedulerConfig::default()
                };
                let context = ds.model.max_positions().min(d.cache_tokens);
                let g = DeepSeekGenerator::batched(ds.name, ds.model, ds.tokenizer, context, scheduler)?;
                Ok(Some(Arc::new(g)))
            }
        }
    }
}

impl Config {
    fn describe_database(&self) -> String {
        self.describe().lines().find(|l| l.starts_with("database_url")).unwrap_or("").to_owned()
    }
}
