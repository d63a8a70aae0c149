//! `kb sync --collection C DIR`: the collection mirrors a folder. New files are ingested,
//! files whose bytes changed replace their old version, and documents whose file is gone are
//! deleted from the store and both indexes, so nothing is answered from a removed file.
//! Documents are named by their path inside the folder.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kb_index::Collection;
use kb_ingest::pipeline::{content_hash, Ingestor, Outcome};

use crate::app::App;

/// Files read and processed together: one embedding pass, one index commit.
const BATCH: usize = 32;

/// What one sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
    /// (name, why) of files that could not be ingested.
    pub failed: Vec<(String, String)>,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.deleted.is_empty() && self.failed.is_empty())
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.changed() {
            return write!(f, "no change: {} files already in sync", self.unchanged);
        }
        write!(
            f,
            "{} added, {} updated, {} deleted, {} unchanged, {} failed",
            self.added.len(),
            self.updated.len(),
            self.deleted.len(),
            self.unchanged,
            self.failed.len()
        )?;
        for (name, why) in &self.failed {
            write!(f, "\n  failed: {name}: {why}")?;
        }
        Ok(())
    }
}

pub async fn run(config: crate::config::Config, collection: &str, dir: &Path) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let c = super::ingest::open_or_create(&app, collection).await?;
    let report = sync_folder(&app.ingestor, &c, dir).await?;
    app.engine.flush(&c).await?;
    println!("{report}");
    Ok(())
}

/// Makes `c` mirror the files under `dir`.
pub async fn sync_folder(ingestor: &Ingestor, c: &Collection, dir: &Path) -> anyhow::Result<SyncReport> {
    let engine = ingestor.engine();
    let store = engine.store();
    let mut files = Vec::new();
    collect(dir, dir, &mut files).with_context(|| format!("reading {}", dir.display()))?;
    files.sort();
    let mut by_name: HashMap<String, Vec<kb_index::store::Document>> = HashMap::new();
    // An e-mail's attachments are no files of the folder: they live and go with their message.
    for d in store.documents(c.id).await?.into_iter().filter(|d| d.parent_id.is_none()) {
        by_name.entry(d.filename.clone()).or_default().push(d);
    }
    let mut report = SyncReport::default();
    let present: HashSet<&str> = files.iter().map(|(name, _)| name.as_str()).collect();

    // Deleted first: a file renamed to a name whose bytes another document holds is then
    // ingested under its new name.
    for (name, docs) in &by_name {
        if present.contains(name.as_str()) {
            continue;
        }
        for d in docs {
            engine.delete_document(c, d.id).await?;
        }
        report.deleted.push(name.clone());
    }

    let mut todo: Vec<(String, PathBuf)> = Vec::new();
    for (name, path) in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let hash = content_hash(&bytes);
        match by_name.get(name) {
            Some(docs) if docs.iter().any(|d| d.content_hash == hash) => report.unchanged += 1,
            _ => todo.push((name.clone(), path.clone())),
        }
    }

    for batch in todo.chunks(BATCH) {
        let mut items = Vec::with_capacity(batch.len());
        for (name, path) in batch {
            items.push((name.clone(), std::fs::read(path).with_context(|| format!("reading {}", path.display()))?));
        }
        let outcomes = ingestor.ingest_files(c, items).await?;
        for ((name, _), outcome) in batch.iter().zip(outcomes) {
            let existed = by_name.contains_key(name);
            match outcome {
                Outcome::Indexed { .. } | Outcome::Unchanged { .. } if existed => report.updated.push(name.clone()),
                Outcome::Indexed { .. } | Outcome::Unchanged { .. } => report.added.push(name.clone()),
                Outcome::Failed { document_id, error } => {
                    // The file is no longer what the old version said: that version goes.
                    for d in by_name.get(name).into_iter().flatten().filter(|d| d.id != document_id) {
                        engine.delete_document(c, d.id).await?;
                    }
                    report.failed.push((name.clone(), error.to_string()));
                }
            }
        }
    }
    report.deleted.sort();
    Ok(report)
}

/// (name inside `root`, path) of every file under `dir`; hidden files and folders skipped.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            let name = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            out.push((name, path));
        }
    }
    Ok(())
}
