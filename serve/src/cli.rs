//! The command line: every `kb` subcommand, parsed by clap and run on one tokio runtime.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kb_index::SearchMode;

use crate::config::{Config, ConfigArgs};
use crate::{commands, server};

/// `kb`'s command line: the configuration flags and one subcommand.
#[derive(Parser)]
#[command(name = "kb", version, about = "Enterprise knowledge base: ingest documents, search them, ask questions")]
pub struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the web UI (on `--addr`).
    Serve,
    /// Ingest files and directories (recursively) into a collection, creating it if needed.
    Ingest {
        #[arg(long, short)]
        collection: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Make a collection mirror a folder: new files ingested, changed ones replaced, removed
    /// ones deleted. A run with nothing changed does nothing and says so.
    Sync {
        #[arg(long, short)]
        collection: String,
        dir: PathBuf,
    },
    /// Search a collection.
    Search {
        #[arg(long, short)]
        collection: String,
        #[arg(long, default_value = "hybrid")]
        mode: SearchMode,
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// At most one hit per document.
        #[arg(long)]
        distinct: bool,
        query: String,
    },
    /// List collections with their document and chunk counts.
    Collections,
    /// Re-embed a collection with the configured embedder (e.g. `--embedder deepseek`) and
    /// switch it over; until then a collection built by another embedder is refused.
    Reembed {
        #[arg(long, short)]
        collection: String,
        /// Chunks per embedding batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Manage API keys. With none, the API is open and `kb serve` listens only on loopback.
    #[command(subcommand)]
    Keys(KeysArgs),
    /// Feedback people gave on answers.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// Measure retrieval and answer quality and speed.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Internal: parse one PDF from stdin in an isolated process.
    #[command(name = "pdf-worker", hide = true)]
    PdfWorker,
}

#[derive(Subcommand)]
enum KeysArgs {
    /// Create a key and print it (once).
    Create {
        name: String,
        /// All collections, including creating and deleting them.
        #[arg(long)]
        admin: bool,
        /// A collection this key may search, ask and list (repeatable).
        #[arg(long, value_name = "COLLECTION")]
        read: Vec<String>,
        /// A collection this key may also upload to and delete from (repeatable).
        #[arg(long, value_name = "COLLECTION")]
        write: Vec<String>,
    },
    /// List keys and their rights.
    List,
    /// Delete a key.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum FeedbackCommand {
    /// Write every rating, comment, question, answer and citations as JSON lines to stdout.
    Export {
        /// Only this collection's feedback.
        #[arg(long, short)]
        collection: Option<String>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// A BEIR-format dataset: corpus.jsonl, queries.jsonl, qrels/test.tsv.
    Beir {
        dir: PathBuf,
        #[arg(long, short)]
        collection: String,
        #[arg(long, default_value = "hybrid")]
        mode: SearchMode,
        /// Documents per ingest batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Answers on a SQuAD v1.1 JSON file: contains gold, faithful, citations retrieved,
    /// refused, answer length, first-token and whole-answer latency.
    Qa {
        file: PathBuf,
        #[arg(long, short, default_value = "squad")]
        collection: String,
        /// Questions asked (a seeded random sample).
        #[arg(long, default_value_t = 300)]
        limit: usize,
        #[arg(long, default_value_t = 13)]
        seed: u64,
        /// Passages retrieved per question.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Questions the corpus does not answer, one a line: counts how many are refused.
        #[arg(long)]
        unanswerable: Option<PathBuf>,
        /// Print each question, its gold answers and the answer.
        #[arg(long)]
        show: bool,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tantivy=warn,hnsw_rs=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one parsed command line: loads the configuration, starts logging and a tokio runtime,
/// and runs the subcommand on it (`pdf-worker` before any of that).
/// candle's worker threads spin 25,000 times after each of its tensor ops before they sleep:
/// between the small ops of a query's forward pass they burn a core that the encoder's own
/// threads and other searches want (search under 16 clients: 205 → 238 QPS, p99 127 → 116
/// ms with 64). Set before any thread starts, since candle reads it once; an operator's own
/// setting stands.
fn spin_briefly() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "64");
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::PdfWorker = cli.command {
        // Before anything else: the worker must stay small and talk only through its pipes.
        std::process::exit(kb_ingest::parse::pdf_worker_main());
    }
    spin_briefly();
    let config = Config::load(&cli.config)?;
    init_tracing(config.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => server::run(config).await,
            Command::Ingest { collection, paths } => commands::ingest::run(config, &collection, &paths).await,
            Command::Sync { collection, dir } => commands::sync::run(config, &collection, &dir).await,
            Command::Search { collection, mode, top_k, distinct, query } => {
                commands::search::run(config, &collection, mode, top_k, distinct, &query).await
            }
            Command::Collections => commands::collections::run(config).await,
            Command::Reembed { collection, batch } => commands::reembed::run(config, &collection, batch).await,
            Command::Keys(k) => {
                use commands::keys::KeysCommand;
                let command = match k {
                    KeysArgs::Create { name, admin, read, write } => KeysCommand::Create { name, admin, read, write },
                    KeysArgs::List => KeysCommand::List,
                    KeysArgs::Revoke { name } => KeysCommand::Revoke { name },
                };
                commands::keys::run(config, command).await
            }
            Command::Eval(EvalCommand::Beir { dir, collection, mode, batch }) => {
                commands::eval::run(config, &dir, &collection, mode, batch).await
            }
            Command::Feedback(FeedbackCommand::Export { collection }) => {
                commands::feedback::export(config, collection.as_deref(), &mut std::io::stdout().lock()).await
            }
            Command::Eval(EvalCommand::Qa { file, collection, limit, seed, top_k, unanswerable, show }) => {
                let args = commands::qa::QaArgs { file, collection, limit, seed, top_k, unanswerable, show };
                commands::qa::run(config, args).await
            }
            Command::PdfWorker => unreachable!("handled above"),
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
