//! Builds kb's parts from the configuration: store, embedder, engine, ingestor.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kb_index::{Engine, Fusion, HnswParams, IndexConfig, Store};
use kb_inference::{BertEmbedder, Embedder, Generator, SmolLmGenerator};
use kb_ingest::parse::PdfParser;
use kb_ingest::pipeline::Ingestor;
use kb_ingest::ChunkerConfig;

use crate::config::Config;
use crate::metrics::TimedEmbedder;

pub struct App {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub ingestor: Arc<Ingestor>,
}

/// The hidden subcommand under which `kb` runs pdf-extract in a child process.
pub const PDF_WORKER_COMMAND: &str = "pdf-worker";

impl App {
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        config.ensure_dirs()?;
        let store = Store::open(&config.database_url())
            .await
            .with_context(|| format!("opening the database {}", config.describe_database()))?;
        let dir = config.embedder_dir();
        let bert = BertEmbedder::load(&dir)
            .with_context(|| format!("loading the embedder from {} (run scripts/fetch-models.sh)", dir.display()))?;
        let embedder: Arc<dyn Embedder> = Arc::new(TimedEmbedder(Arc::new(bert)));
        let fusion = match config.fusion.as_str() {
            "rrf" => Fusion::Rrf { k: config.rrf_k },
            "convex" => Fusion::Convex { alpha: config.fusion_alpha },
            other => anyhow::bail!("unknown fusion {other:?}: expected convex or rrf"),
        };
        let index_config = IndexConfig {
            hnsw: HnswParams {
                m: config.hnsw_m,
                ef_construction: config.hnsw_ef_construction,
                ef_search: config.hnsw_ef_search,
            },
            fusion,
            query_cache_size: config.query_cache_size,
            ..IndexConfig::default()
        };
        let engine = Arc::new(
            Engine::open(store, embedder, &config.index_dir(), index_config)
                .await
                .context("opening the indexes")?,
        );
        let exe = std::env::current_exe().context("locating the kb executable for the PDF worker")?;
        let pdf = PdfParser {
            program: exe,
            args: vec![PDF_WORKER_COMMAND.into()],
            timeout: Duration::from_secs(config.pdf_timeout_secs),
            memory_limit_bytes: config.pdf_memory_mb * 1024 * 1024,
        };
        let chunker = ChunkerConfig { target_tokens: config.chunk_tokens, overlap_tokens: config.chunk_overlap };
        let ingestor = Arc::new(Ingestor::new(engine.clone(), pdf, chunker));
        Ok(Self { config, engine, ingestor })
    }
}

impl App {
    /// The answer generator the configuration names; `None` means extractive answers.
    pub async fn load_generator(&self) -> anyhow::Result<Option<Arc<dyn Generator>>> {
        match self.config.generator.as_str() {
            "none" => Ok(None),
            "smollm2" => {
                let path = self.config.models_dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
                if !path.is_file() {
                    tracing::warn!(path = %path.display(), "generator model missing (scripts/fetch-models.sh): answers will be extractive");
                    return Ok(None);
                }
                let g = tokio::task::spawn_blocking(move || SmolLmGenerator::load(&path)).await??;
                Ok(Some(Arc::new(g)))
            }
            other => anyhow::bail!("unknown generator {other:?}: expected smollm2 or none"),
        }
    }
}

impl Config {
    fn describe_database(&self) -> String {
        self.describe().lines().find(|l| l.starts_with("database_url")).unwrap_or("").to_owned()
    }
}
