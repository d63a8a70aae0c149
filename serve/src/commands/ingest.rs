use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kb_index::{Collection, IndexError};
use kb_ingest::pipeline::Outcome;

use crate::app::App;
use crate::config::Config;

/// Files read and processed together: one embedding pass, one index commit.
const BATCH: usize = 32;

pub async fn run(config: Config, collection: &str, paths: &[PathBuf]) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let c = open_or_create(&app, collection).await?;
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    files.sort();
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} files  {elapsed_precise}  {msg}")?);
    let (mut indexed, mut unchanged, mut chunks) = (0usize, 0usize, 0usize);
    let mut failures: Vec<(PathBuf, String)> = Vec::new();
    for batch in files.chunks(BATCH) {
        let mut items = Vec::with_capacity(batch.len());
        let mut paths = Vec::with_capacity(batch.len());
        for path in batch {
            match std::fs::read(path) {
                Ok(bytes) => {
                    items.push((display_name(path), bytes));
                    paths.push(path.clone());
                }
                Err(e) => failures.push((path.clone(), e.to_string())),
            }
        }
        for (path, outcome) in paths.into_iter().zip(app.ingestor.ingest_files(&c, items).await?) {
            match outcome {
                Outcome::Indexed { chunks: n, .. } => {
                    indexed += 1;
                    chunks += n;
                }
                Outcome::Unchanged { .. } => unchanged += 1,
                Outcome::Failed { error, .. } => failures.push((path, error.to_string())),
            }
        }
        bar.inc(batch.len() as u64);
        bar.set_message(format!("{chunks} chunks"));
    }
    app.engine.flush(&c).await?;
    bar.finish_and_clear();
    println!("{indexed} ingested ({chunks} chunks), {unchanged} skipped (unchanged), {} failed", failures.len());
    for (path, why) in &failures {
        println!("  failed: {}: {why}", path.display());
    }
    Ok(())
}

pub async fn open_or_create(app: &App, name: &str) -> anyhow::Result<Collection> {
    match app.engine.collection(name).await {
        Ok(c) => Ok(c),
        Err(IndexError::CollectionNotFound(_)) => Ok(app.engine.create_collection(name).await?),
        Err(e) => Err(e.into()),
    }
}

/// The name a file is stored under: its file name (paths are not part of a document's identity).
fn display_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_owned());
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            // Hidden files and folders (.git, .DS_Store) are not documents.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            collect_files(&entry.path(), out)?;
        }
    }
    Ok(())
}
