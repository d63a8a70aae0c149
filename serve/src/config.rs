//! kb's one configuration struct. Values come from, in rising precedence: built-in
//! defaults, a TOML file (`--config`, else `<data-dir>/kb.toml` when present), environment
//! variables, command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

/// Flags shared by every `kb` command. Each is also an environment variable.
#[derive(Debug, Clone, Args, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Default: <data-dir>/kb.toml if it exists.
    #[arg(long, env = "KB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the database (SQLite default), indexes and uploads live.
    #[arg(long, env = "KB_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Where model weights live (scripts/fetch-models.sh fills it).
    #[arg(long, env = "KB_MODELS_DIR", global = true)]
    pub models_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://… (default: SQLite file in the data directory).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Serve the web UI from this directory (UI development) instead of the built-in copy.
    #[arg(long, env = "KB_WEB_DIR", global = true)]
    pub web_dir: Option<PathBuf>,
    /// JSON logs.
    #[arg(long, env = "KB_LOG_JSON", global = true)]
    pub log_json: bool,
    /// Answer generator: smollm2 (CPU default), deepseek, or none.
    #[arg(long, env = "KB_GENERATOR", global = true)]
    pub generator: Option<String>,
    /// Embedder: a sentence-encoder directory under the models directory, or deepseek.
    #[arg(long, env = "KB_EMBEDDER", global = true)]
    pub embedder: Option<String>,
    /// DeepSeek-V2 checkpoint directory (Hugging Face layout) for `deepseek`.
    #[arg(long, env = "KB_MODEL_DIR", global = true)]
    pub model_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub database_url: Option<String>,
    /// Sentence-encoder directory name under `models_dir`, or `deepseek` for the DeepSeek
    /// embedding head (the generator's model, pooled).
    pub embedder: String,
    /// `smollm2` (CPU default), `deepseek`, or `none` (extractive answers only).
    pub generator: String,
    /// The DeepSeek model, for `generator = "deepseek"` and `embedder = "deepseek"`.
    pub deepseek: DeepSeekConfig,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    pub hnsw_m: usize,
    pub hnsw_ef_construction: usize,
    pub hnsw_ef_search: usize,
    /// Query embeddings kept in memory for repeated queries (0 turns the cache off).
    pub query_cache_size: usize,
    /// `convex` or `rrf`.
    pub fusion: String,
    /// Vector weight of convex fusion.
    pub fusion_alpha: f32,
    pub rrf_k: f32,
    pub max_upload_bytes: u64,
    /// Largest upload request (all its files together); one that declares more in its
    /// Content-Length gets 413 before its body is read.
    pub max_request_bytes: u64,
    /// An upload whose body sends nothing for this long is cut off (408).
    pub upload_idle_secs: u64,
    pub ingest_workers: usize,
    /// The longest generated answer, in tokens.
    pub answer_max_tokens: usize,
    /// Cosine similarity the best passage needs for a question to count as answerable; the
    /// default suits all-MiniLM-L6-v2 (another embedder has its own scale: measure it).
    pub answer_min_relevance: f32,
    /// Answers generating or waiting for the generator at once; more get 503 + Retry-After.
    pub max_pending_answers: usize,
    pub pdf_timeout_secs: u64,
    pub pdf_memory_mb: u64,
    pub log_json: bool,
    /// How long running ingest jobs may take to finish at shutdown before they are queued
    /// again for the next start.
    pub shutdown_grace_secs: u64,
    /// Serve the web UI from this directory instead of the copy built into the binary.
    pub web_dir: Option<PathBuf>,
    /// Folders `kb serve` keeps collections in sync with (`[[sources]]`).
    pub sources: Vec<SourceConfig>,
}

/// A folder a collection mirrors: `kb serve` runs `kb sync` on it every `interval_secs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub collection: String,
    pub path: PathBuf,
    #[serde(default = "default_source_interval")]
    pub interval_secs: u64,
}

fn default_source_interval() -> u64 {
    300
}

/// The DeepSeek-V2 model: one copy, shared by the generator and the embedding head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepSeekConfig {
    /// Checkpoint directory: config.json, *.safetensors, tokenizer.json, tokenizer_config.json.
    pub model_dir: Option<PathBuf>,
    /// Embedding pooling over the final hidden states: `mean` or `last`.
    pub pooling: String,
    /// Optional projection head: a safetensors file with one (dim, hidden) matrix.
    pub head: Option<PathBuf>,
    /// Longest passage the embedding head reads, in tokens.
    pub embed_max_tokens: usize,
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Cache tokens (prompt + answer of every running sequence) reserved on the device.
    pub cache_tokens: usize,
    /// Requests waiting for a place; beyond them, or after `queue_wait_secs`, a 503.
    pub max_queued: usize,
    pub queue_wait_secs: u64,
    /// Prompt tokens of one sequence prefilled per step.
    pub prefill_chunk: usize,
    /// Benchmarks only: random weights of config.json's shape instead of the safetensors.
    pub random_weights: bool,
}

impl Default for DeepSeekConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            pooling: "mean".into(),
            head: None,
            embed_max_tokens: 512,
            max_sequences: 64,
            cache_tokens: 64 * 4096,
            max_queued: 256,
            queue_wait_secs: 10,
            prefill_chunk: 512,
            random_weights: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            models_dir: PathBuf::from("./models"),
            database_url: None,
            embedder: "all-MiniLM-L6-v2".into(),
            generator: "smollm2".into(),
            deepseek: DeepSeekConfig::default(),
            chunk_tokens: 200,
            chunk_overlap: 32,
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 128,
            query_cache_size: 1024,
            fusion: "convex".into(),
            fusion_alpha: 0.5,
            rrf_k: 60.0,
            max_upload_bytes: 64 * 1024 * 1024,
            max_request_bytes: 256 * 1024 * 1024,
            upload_idle_secs: 30,
            ingest_workers: 2,
            max_pending_answers: 32,
            answer_max_tokens: 256,
            answer_min_relevance: 0.25,
            pdf_timeout_secs: 30,
            pdf_memory_mb: 1024,
            log_json: false,
            shutdown_grace_secs: 20,
            web_dir: None,
            sources: Vec::new(),
        }
    }
}

impl Config {
    /// Defaults, then the file, then environment and flags (which clap has merged).
    pub fn load(args: &ConfigArgs) -> anyhow::Result<Self> {
        let data_dir_hint = args.data_dir.clone().unwrap_or_else(|| Config::default().data_dir);
        let file = args.config.clone().or_else(|| {
            let p = data_dir_hint.join("kb.toml");
            p.is_file().then_some(p)
        });
        let mut config = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading configuration file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing configuration file {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(d) = &args.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(m) = &args.models_dir {
            config.models_dir = m.clone();
        }
        if let Some(g) = &args.generator {
            config.generator = g.clone();
        }
        if let Some(e) = &args.embedder {
            config.embedder = e.clone();
        }
        if let Some(d) = &args.model_dir {
            config.deepseek.model_dir = Some(d.clone());
        }
        if let Some(u) = &args.database_url {
            config.database_url = Some(u.clone());
        }
        config.log_json |= args.log_json;
        if let Some(w) = &args.web_dir {
            config.web_dir = Some(w.clone());
        }
        Ok(config)
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) if !u.is_empty() => u.clone(),
            _ => format!("sqlite://{}", self.data_dir.join("kb.sqlite").display()),
        }
    }

    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("indexes")
    }

    pub fn upload_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    pub fn embedder_dir(&self) -> PathBuf {
        self.models_dir.join(&self.embedder)
    }

    /// The configuration as printed at start, secrets masked.
    pub fn describe(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = Some(mask_password(&self.database_url()));
        toml::to_string(&shown).unwrap_or_default()
    }

    pub fn ensure_dirs(&self) -> anyhow::Result<()> {
        for dir in [&self.data_dir, &self.index_dir(), &self.upload_dir()] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}

fn mask_password(url: &str) -> String {
    // postgres://user:secret@host/db → postgres://user:***@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("postgres://kb:hunter2@db:5432/kb"), "postgres://kb:***@db:5432/kb");
        assert_eq!(mask_password("sqlite://data/kb.sqlite"), "sqlite://data/kb.sqlite");
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kb.toml");
        std::fs::write(&file, "chunk_tokens = 128\nmodels_dir = \"/m\"\n").unwrap();
        let args = ConfigArgs { config: Some(file), models_dir: Some("/flag".into()), ..Default::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.chunk_tokens, 128);
        assert_eq!(c.models_dir, PathBuf::from("/flag"));
        assert!(c.database_url().starts_with("sqlite://"));
    }
}
