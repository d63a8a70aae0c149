//! kb's one configuration struct. Values come from, in rising precedence: built-in
//! defaults, a TOML file (`--config`, else `<data-dir>/kb.toml` when present), environment
//! variables, command-line flags.
//!
//! Each key is declared once, in the `settings!` tables below: its documentation, type,
//! default, environment variable and flag. The macro makes the [`Config`] field (the file's
//! key), the [`Default`] value and the clap flag (with its `env`) from that one row, so the
//! three cannot drift apart. `kb.example.toml` at the repository root shows every key with its
//! default; a test keeps it equal to the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// The answer generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// SmolLM2-135M-Instruct on the CPU (`models/smollm2`).
    Smollm2,
    /// The DeepSeek-V2 MoE (`deepseek.model_dir`), on a GPU when there is one.
    Deepseek,
    /// No generator: extractive answers only.
    None,
}

/// The embedder of passages and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// A BERT-style sentence encoder: the directory `encoder` under `models_dir`. The
    /// previous spelling, the directory's name `all-MiniLM-L6-v2`, is still accepted.
    #[serde(alias = "all-MiniLM-L6-v2")]
    #[value(alias = "all-MiniLM-L6-v2")]
    Encoder,
    /// The DeepSeek generator's model, pooled (`deepseek.pooling`, `deepseek.head`).
    Deepseek,
}

/// How keyword and vector hits are fused in hybrid search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FusionKind {
    /// Min-max normalised scores, weighted by `fusion_alpha` (vector) and 1 - alpha (keyword).
    Convex,
    /// Reciprocal rank fusion with constant `rrf_k`.
    Rrf,
}

/// How the DeepSeek embedder turns a passage's token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PoolingKind {
    /// The mean over every token.
    Mean,
    /// The last token's state.
    Last,
}

impl From<PoolingKind> for kb_inference::Pooling {
    fn from(p: PoolingKind) -> Self {
        match p {
            PoolingKind::Mean => Self::Mean,
            PoolingKind::Last => Self::Last,
        }
    }
}

/// How the DeepSeek model keeps its experts and dense projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QuantizeKind {
    /// As the checkpoint has them (bf16 on a GPU).
    None,
    /// Group-wise int4 (W4A16, group 128), quantised at load; AWQ checkpoints are int4 either way.
    Int4,
}

impl From<QuantizeKind> for kb_inference::deepseek::Quantize {
    fn from(q: QuantizeKind) -> Self {
        match q {
            QuantizeKind::None => Self::None,
            QuantizeKind::Int4 => Self::Int4,
        }
    }
}

/// A key's type as a flag: the flag of an optional key takes the inner value.
pub trait Setting: Sized {
    type Flag: Clone + Send + Sync + 'static;
    fn from_flag(flag: Self::Flag) -> Self;
}

impl<T: Clone + Send + Sync + 'static> Setting for Option<T> {
    type Flag = T;
    fn from_flag(flag: T) -> Self {
        Some(flag)
    }
}

macro_rules! plain_settings {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            type Flag = $t;
            fn from_flag(flag: $t) -> Self {
                flag
            }
        }
    )*};
}
plain_settings!(
    bool,
    usize,
    u64,
    f32,
    String,
    PathBuf,
    SocketAddr,
    GeneratorKind,
    EmbedderKind,
    FusionKind,
    PoolingKind,
    QuantizeKind,
    kb_inference::Precision,
    kb_inference::EmbedderDevice
);

/// One table of keys → a serde struct with its defaults, and a clap struct of flags whose
/// values override the struct's.
macro_rules! settings {
    (
        $(#[$smeta:meta])*
        struct $name:ident, flags $flags:ident, prefix $prefix:literal {
            $(
                $(#[doc = $doc:literal])*
                $key:ident : $ty:ty = $default:expr, env $env:literal, flag $flag:literal $([$($extra:tt)*])?;
            )*
        }
        $(nested {
            $($(#[doc = $ndoc:literal])* $nkey:ident : $nty:ident / $nflags:ident;)*
        })?
        $(file_only {
            $($(#[doc = $fdoc:literal])* $fkey:ident : $fty:ty = $fdefault:expr;)*
        })?
    ) => {
        $(#[$smeta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[doc = $doc])* pub $key: $ty,)*
            $($($(#[doc = $ndoc])* pub $nkey: $nty,)*)?
            $($($(#[doc = $fdoc])* pub $fkey: $fty,)*)?
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($key: $default,)*
                    $($($nkey: $nty::default(),)*)?
                    $($($fkey: $fdefault,)*)?
                }
            }
        }

        /// Command-line flags (and environment variables) for the keys of the same name.
        #[derive(Debug, Clone, Default, Args)]
        pub struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg(long = $flag, env = $env, global = true $(, $($extra)*)?)]
                pub $key: Option<<$ty as Setting>::Flag>,
            )*
            $($(#[command(flatten)] pub $nkey: $nflags,)*)?
        }

        impl $name {
            /// Every key, with the prefix a nested table's keys are written with.
            #[cfg(test)]
            pub const KEYS: &'static [&'static str] = &[$(concat!($prefix, stringify!($key)),)*];

            /// Overrides the keys whose flag or environment variable is set.
            fn apply(&mut self, flags: &$flags) {
                $(
                    if let Some(v) = &flags.$key {
                        self.$key = <$ty as Setting>::from_flag(v.clone());
                    }
                )*
                $($(self.$nkey.apply(&flags.$nkey);)*)?
            }
        }
    };
}

settings! {
    /// The configuration of every `kb` command: each key also a `KB_*` variable and a flag.
    struct Config, flags ConfigFlags, prefix "" {
        /// Address `kb serve` listens on.
        addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), env "KB_ADDR", flag "addr";
        /// Where the database (SQLite default), indexes and uploads live.
        data_dir: PathBuf = PathBuf::from("./data"), env "KB_DATA_DIR", flag "data-dir";
        /// Where model weights live (scripts/fetch-models.sh fills it).
        models_dir: PathBuf = PathBuf::from("./models"), env "KB_MODELS_DIR", flag "models-dir";
        /// sqlite://PATH or postgres://… (default: kb.sqlite in the data directory).
        database_url: Option<String> = None, env "DATABASE_URL", flag "database-url";
        /// Embedder: `encoder` (the sentence encoder `encoder`) or `deepseek` (the DeepSeek
        /// generator's model, pooled).
        embedder: EmbedderKind = EmbedderKind::Encoder, env "KB_EMBEDDER", flag "embedder";
        /// The sentence-encoder directory under `models_dir`, for `embedder = "encoder"`.
        encoder: String = "all-MiniLM-L6-v2".into(), env "KB_ENCODER", flag "encoder";
        /// Arithmetic of the sentence encoder's linear layers: `int8` (int8 weights, per-token
        /// int8 activations: the same vectors within a cosine of about 0.999, several times
        /// faster on the CPU) or `f32`; on a GPU `bf16` (what `int8` means there) or `f32`.
        embedder_precision: kb_inference::Precision = kb_inference::Precision::Int8, env "KB_EMBEDDER_PRECISION", flag "embedder-precision";
        /// Where the sentence encoder runs: `cpu`, `cuda` (the first GPU; kb built with
        /// `--features cuda`), or `auto` (the GPU when kb has CUDA and one answers, else the CPU).
        embedder_device: kb_inference::EmbedderDevice = kb_inference::EmbedderDevice::Auto, env "KB_EMBEDDER_DEVICE", flag "embedder-device";
        /// Put before every query the sentence encoder embeds; unset, the model directory's own
        /// prompts (`config_sentence_transformers.json`). e5 models want "query: ".
        embedder_query_prefix: Option<String> = None, env "KB_EMBEDDER_QUERY_PREFIX", flag "embedder-query-prefix";
        /// Put before every passage the sentence encoder embeds (e5: "passage: "); unset, the
        /// model directory's own prompts.
        embedder_passage_prefix: Option<String> = None, env "KB_EMBEDDER_PASSAGE_PREFIX", flag "embedder-passage-prefix";
        /// Answer generator: `smollm2` (CPU), `deepseek`, or `none` (extractive answers only).
        generator: GeneratorKind = GeneratorKind::Smollm2, env "KB_GENERATOR", flag "generator";
        /// Target chunk length, in embedder tokens.
        chunk_tokens: usize = 200, env "KB_CHUNK_TOKENS", flag "chunk-tokens";
        /// Tokens each chunk repeats from the one before it.
        chunk_overlap: usize = 32, env "KB_CHUNK_OVERLAP", flag "chunk-overlap";
        /// HNSW links per node.
        hnsw_m: usize = 16, env "KB_HNSW_M", flag "hnsw-m";
        /// HNSW candidate list while building.
        hnsw_ef_construction: usize = 200, env "KB_HNSW_EF_CONSTRUCTION", flag "hnsw-ef-construction";
        /// HNSW candidate list while searching.
        hnsw_ef_search: usize = 128, env "KB_HNSW_EF_SEARCH", flag "hnsw-ef-search";
        /// Query embeddings kept in memory for repeated queries (0 turns the cache off).
        query_cache_size: usize = 1024, env "KB_QUERY_CACHE_SIZE", flag "query-cache-size";
        /// Hybrid search's fusion: `convex` or `rrf`.
        fusion: FusionKind = FusionKind::Convex, env "KB_FUSION", flag "fusion";
        /// Vector weight of convex fusion, 0 to 1.
        fusion_alpha: f32 = 0.5, env "KB_FUSION_ALPHA", flag "fusion-alpha";
        /// The rank constant of reciprocal rank fusion.
        rrf_k: f32 = 60.0, env "KB_RRF_K", flag "rrf-k";
        /// The largest upload, in bytes.
        max_upload_bytes: u64 = 64 * 1024 * 1024, env "KB_MAX_UPLOAD_BYTES", flag "max-upload-bytes";
        /// Largest upload request (all its files together); one that declares more in its
        /// Content-Length gets 413 before its body is read.
        max_request_bytes: u64 = 256 * 1024 * 1024, env "KB_MAX_REQUEST_BYTES", flag "max-request-bytes";
        /// An upload whose body sends nothing for this long is cut off (408).
        upload_idle_secs: u64 = 30, env "KB_UPLOAD_IDLE_SECS", flag "upload-idle-secs";
        /// Ingest batches `kb serve` runs at once.
        ingest_workers: usize = 2, env "KB_INGEST_WORKERS", flag "ingest-workers";
        /// Queued documents claimed and embedded together as one ingest batch.
        ingest_batch: usize = 64, env "KB_INGEST_BATCH", flag "ingest-batch";
        /// The vector graph is saved after this many changes ...
        vector_save_chunks: usize = 20_000, env "KB_VECTOR_SAVE_CHUNKS", flag "vector-save-chunks";
        /// ... or this many seconds, whichever comes first, and at shutdown; a crash in between
        /// is caught up from the database at start.
        vector_save_secs: u64 = 30, env "KB_VECTOR_SAVE_SECS", flag "vector-save-secs";
        /// The longest generated answer, in tokens.
        answer_max_tokens: usize = 256, env "KB_ANSWER_MAX_TOKENS", flag "answer-max-tokens";
        /// Cosine similarity the best passage needs for a question to count as answerable; the
        /// default suits all-MiniLM-L6-v2 (another embedder has its own scale: measure it).
        answer_min_relevance: f32 = 0.3, env "KB_ANSWER_MIN_RELEVANCE", flag "answer-min-relevance";
        /// Answers generating or waiting for the generator at once; more get 503 + Retry-After.
        max_pending_answers: usize = 32, env "KB_MAX_PENDING_ANSWERS", flag "max-pending-answers";
        /// How long the PDF parser process may run on one document.
        pdf_timeout_secs: u64 = 30, env "KB_PDF_TIMEOUT_SECS", flag "pdf-timeout-secs";
        /// Memory the PDF parser process may use, in MiB.
        pdf_memory_mb: u64 = 1024, env "KB_PDF_MEMORY_MB", flag "pdf-memory-mb";
        /// JSON logs.
        log_json: bool = false, env "KB_LOG_JSON", flag "log-json"
            [num_args = 0..=1, require_equals = true, default_missing_value = "true",
             value_parser = clap::builder::BoolishValueParser::new()];
        /// How long running ingest jobs may take to finish at shutdown before they are queued
        /// again for the next start.
        shutdown_grace_secs: u64 = 20, env "KB_SHUTDOWN_GRACE_SECS", flag "shutdown-grace-secs";
        /// Serve the web UI from this directory (UI development) instead of the built-in copy.
        web_dir: Option<PathBuf> = None, env "KB_WEB_DIR", flag "web-dir";
    }
    nested {
        /// The DeepSeek model, for `generator = "deepseek"` and `embedder = "deepseek"`.
        deepseek: DeepSeekConfig / DeepSeekFlags;
    }
    file_only {
        /// Folders `kb serve` keeps collections in sync with (`[[sources]]`; file only).
        sources: Vec<SourceConfig> = Vec::new();
    }
}

/// A folder a collection mirrors: `kb serve` runs `kb sync` on it every `interval_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The collection that mirrors the folder.
    pub collection: String,
    /// The folder.
    pub path: PathBuf,
    /// Seconds between syncs.
    #[serde(default = "default_source_interval")]
    pub interval_secs: u64,
}

fn default_source_interval() -> u64 {
    300
}

settings! {
    /// The DeepSeek-V2 model (`[deepseek]`): one copy, shared by the generator and the
    /// embedding head.
    struct DeepSeekConfig, flags DeepSeekFlags, prefix "deepseek." {
        /// DeepSeek-V2 checkpoint directory (Hugging Face layout): config.json, *.safetensors,
        /// tokenizer.json, tokenizer_config.json.
        model_dir: Option<PathBuf> = None, env "KB_MODEL_DIR", flag "model-dir";
        /// Embedding pooling over the final hidden states: `mean` or `last`.
        pooling: PoolingKind = PoolingKind::Mean, env "KB_DEEPSEEK_POOLING", flag "deepseek-pooling";
        /// Optional projection head: a safetensors file with one (dim, hidden) matrix.
        head: Option<PathBuf> = None, env "KB_DEEPSEEK_HEAD", flag "deepseek-head";
        /// Longest passage the embedding head reads, in tokens.
        embed_max_tokens: usize = 512, env "KB_DEEPSEEK_EMBED_MAX_TOKENS", flag "deepseek-embed-max-tokens";
        /// Sequences decoded together at most.
        max_sequences: usize = 64, env "KB_DEEPSEEK_MAX_SEQUENCES", flag "deepseek-max-sequences";
        /// Cache tokens (prompt + answer of every running sequence) reserved on the device.
        cache_tokens: usize = 64 * 4096, env "KB_DEEPSEEK_CACHE_TOKENS", flag "deepseek-cache-tokens";
        /// Requests waiting for a place; beyond them, or after `queue_wait_secs`, a 503.
        max_queued: usize = 256, env "KB_DEEPSEEK_MAX_QUEUED", flag "deepseek-max-queued";
        /// How long a request may wait for a place.
        queue_wait_secs: u64 = 10, env "KB_DEEPSEEK_QUEUE_WAIT_SECS", flag "deepseek-queue-wait-secs";
        /// Prompt tokens of one sequence prefilled per step while others decode.
        prefill_chunk: usize = 512, env "KB_DEEPSEEK_PREFILL_CHUNK", flag "deepseek-prefill-chunk";
        /// Prompt tokens one step prefills while none decode: whole prompts, many at once.
        max_prefill_tokens: usize = 16_384, env "KB_DEEPSEEK_MAX_PREFILL_TOKENS", flag "deepseek-max-prefill-tokens";
        /// Weights of the experts and dense projections: `none` (bf16 on a GPU) or `int4`
        /// (group-wise W4A16, quantised at load: about a quarter of the memory and of the bytes
        /// a decode step reads). AWQ checkpoints load as int4 either way.
        quantize: QuantizeKind = QuantizeKind::None, env "KB_DEEPSEEK_QUANTIZE", flag "deepseek-quantize";
        /// Benchmarks only: random weights of config.json's shape instead of the safetensors.
        random_weights: bool = false, env "KB_DEEPSEEK_RANDOM_WEIGHTS", flag "deepseek-random-weights"
            [num_args = 0..=1, require_equals = true, default_missing_value = "true",
             value_parser = clap::builder::BoolishValueParser::new()];
    }
}

/// Flags shared by every `kb` command: the configuration file and every key.
#[derive(Debug, Clone, Args, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Default: `<data-dir>/kb.toml` if it exists.
    #[arg(long, env = "KB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub keys: ConfigFlags,
}

/// A configuration value that makes no sense, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid configuration: {key}: {reason}")]
pub struct InvalidConfig {
    pub key: &'static str,
    pub reason: String,
}

impl Config {
    /// Defaults, then the file, then environment and flags (which clap has merged); validated.
    pub fn load(args: &ConfigArgs) -> anyhow::Result<Self> {
        let data_dir_hint = args.keys.data_dir.clone().unwrap_or_else(|| Config::default().data_dir);
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
        config.apply(&args.keys);
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let fail = |key, reason: String| Err(InvalidConfig { key, reason });
        let d = &self.deepseek;
        let at_least_one = [
            ("chunk_tokens", self.chunk_tokens),
            ("hnsw_ef_construction", self.hnsw_ef_construction),
            ("hnsw_ef_search", self.hnsw_ef_search),
            ("ingest_workers", self.ingest_workers),
            ("ingest_batch", self.ingest_batch),
            ("vector_save_chunks", self.vector_save_chunks),
            ("answer_max_tokens", self.answer_max_tokens),
            ("max_pending_answers", self.max_pending_answers),
            ("deepseek.embed_max_tokens", d.embed_max_tokens),
            ("deepseek.max_sequences", d.max_sequences),
            ("deepseek.cache_tokens", d.cache_tokens),
            ("deepseek.prefill_chunk", d.prefill_chunk),
            ("deepseek.max_prefill_tokens", d.max_prefill_tokens),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        for (key, value) in [
            ("max_upload_bytes", self.max_upload_bytes),
            ("pdf_timeout_secs", self.pdf_timeout_secs),
            ("pdf_memory_mb", self.pdf_memory_mb),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        if self.chunk_overlap >= self.chunk_tokens {
            return fail(
                "chunk_overlap",
                format!("{} must be less than chunk_tokens ({})", self.chunk_overlap, self.chunk_tokens),
            );
        }
        if !(2..=256).contains(&self.hnsw_m) {
            return fail("hnsw_m", format!("{} is outside 2..=256", self.hnsw_m));
        }
        if !(0.0..=1.0).contains(&self.fusion_alpha) {
            return fail("fusion_alpha", format!("{} is outside 0..=1", self.fusion_alpha));
        }
        if !(self.rrf_k.is_finite() && self.rrf_k > 0.0) {
            return fail("rrf_k", format!("{} must be a positive number", self.rrf_k));
        }
        if !(-1.0..=1.0).contains(&self.answer_min_relevance) {
            return fail("answer_min_relevance", format!("{} is not a cosine (-1..=1)", self.answer_min_relevance));
        }
        if self.encoder.trim().is_empty() {
            return fail("encoder", "must name a directory under models_dir".into());
        }
        let wants_deepseek = self.generator == GeneratorKind::Deepseek || self.embedder == EmbedderKind::Deepseek;
        if wants_deepseek && d.model_dir.is_none() {
            return fail(
                "deepseek.model_dir",
                "the DeepSeek generator or embedder needs a checkpoint directory (--model-dir)".into(),
            );
        }
        if let Some(url) = &self.database_url {
            if !(url.is_empty() || url.starts_with("sqlite:") || url.starts_with("postgres")) {
                return fail("database_url", format!("{} is neither sqlite:… nor postgres://…", mask_password(url)));
            }
        }
        Ok(())
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

    /// The sentence encoder's directory (for `embedder = "encoder"`).
    pub fn embedder_dir(&self) -> PathBuf {
        self.models_dir.join(&self.encoder)
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
    use clap::Parser;

    use super::*;

    const EXAMPLE: &str = include_str!("../../kb.example.toml");

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("postgres://kb:hunter2@db:5432/kb"), "postgres://kb:***@db:5432/kb");
        assert_eq!(mask_password("sqlite://data/kb.sqlite"), "sqlite://data/kb.sqlite");
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kb.toml");
        std::fs::write(&file, "chunk_tokens = 128\nmodels_dir = \"/m\"\nfusion = \"rrf\"\n").unwrap();
        let args = ConfigArgs {
            config: Some(file),
            keys: ConfigFlags { models_dir: Some("/flag".into()), ..Default::default() },
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.chunk_tokens, 128);
        assert_eq!(c.fusion, FusionKind::Rrf);
        assert_eq!(c.models_dir, PathBuf::from("/flag"));
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn the_example_file_is_the_defaults_and_names_every_key() {
        let parsed: Config = toml::from_str(EXAMPLE).expect("kb.example.toml parses");
        assert_eq!(parsed, Config::default());
        for key in Config::KEYS.iter().chain(DeepSeekConfig::KEYS) {
            let name = key.trim_start_matches("deepseek.");
            let shown = EXAMPLE.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{name} = ")));
            assert!(shown, "kb.example.toml lacks {key}");
        }
        Config::default().validate().expect("the defaults are valid");
    }

    #[test]
    fn flags_set_every_kind_of_key() {
        let cli = Cli::try_parse_from([
            "kb",
            "--generator",
            "none",
            "--embedder",
            "all-MiniLM-L6-v2",
            "--fusion",
            "rrf",
            "--deepseek-pooling",
            "last",
            "--chunk-tokens",
            "99",
            "--log-json",
            "--deepseek-random-weights=false",
            "--deepseek-quantize",
            "int4",
            "--web-dir",
            "web",
        ])
        .unwrap();
        let mut c = Config::default();
        c.apply(&cli.config.keys);
        assert_eq!(c.generator, GeneratorKind::None);
        assert_eq!(c.embedder, EmbedderKind::Encoder);
        assert_eq!(c.fusion, FusionKind::Rrf);
        assert_eq!(c.deepseek.pooling, PoolingKind::Last);
        assert_eq!(c.chunk_tokens, 99);
        assert!(c.log_json);
        assert!(!c.deepseek.random_weights);
        assert_eq!(c.deepseek.quantize, QuantizeKind::Int4);
        assert_eq!(c.web_dir, Some(PathBuf::from("web")));
    }

    #[test]
    fn unknown_choices_are_refused_with_the_key() {
        let err = toml::from_str::<Config>("generator = \"gpt\"\n").unwrap_err().to_string();
        assert!(err.contains("generator") && err.contains("gpt"), "{err}");
        let err = toml::from_str::<Config>("[deepseek]\npooling = \"max\"\n").unwrap_err().to_string();
        assert!(err.contains("pooling"), "{err}");
        let err = toml::from_str::<Config>("chunk_tokenz = 3\n").unwrap_err().to_string();
        assert!(err.contains("chunk_tokenz"), "{err}");
        assert!(Cli::try_parse_from(["kb", "--fusion", "max"]).is_err());
    }

    #[test]
    fn nonsense_values_are_refused_with_the_key() {
        type Breaker = (&'static str, fn(&mut Config));
        let cases: [Breaker; 9] = [
            ("chunk_tokens", |c| c.chunk_tokens = 0),
            ("chunk_overlap", |c| c.chunk_overlap = c.chunk_tokens),
            ("hnsw_m", |c| c.hnsw_m = 1),
            ("fusion_alpha", |c| c.fusion_alpha = 1.5),
            ("rrf_k", |c| c.rrf_k = f32::NAN),
            ("answer_min_relevance", |c| c.answer_min_relevance = 2.0),
            ("max_upload_bytes", |c| c.max_upload_bytes = 0),
            ("deepseek.max_sequences", |c| c.deepseek.max_sequences = 0),
            ("deepseek.model_dir", |c| c.generator = GeneratorKind::Deepseek),
        ];
        for (key, break_it) in cases {
            let mut c = Config::default();
            break_it(&mut c);
            let err = c.validate().unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn loading_validates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kb.toml");
        std::fs::write(&file, "fusion_alpha = 3.0\n").unwrap();
        let args = ConfigArgs { config: Some(file), ..Default::default() };
        let err = Config::load(&args).unwrap_err().to_string();
        assert!(err.contains("fusion_alpha"), "{err}");
    }
}
