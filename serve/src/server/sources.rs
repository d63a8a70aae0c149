//! Keeps the configured `[[sources]]` in sync: one task per folder runs the same sync as
//! `kb sync` on its interval and records the outcome for `GET /v1/collections/{c}/sources`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kb_ingest::pipeline::Ingestor;
use serde::Serialize;

use crate::commands::sync::{sync_folder, SyncReport};
use crate::config::SourceConfig;

/// The last outcome of one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub path: String,
    pub interval_secs: u64,
    /// Unix milliseconds of the last finished run; None before the first.
    pub last_run_ms: Option<u64>,
    pub last_report: Option<SyncReport>,
    /// The run's error, when it failed as a whole (folder unreadable, store down).
    pub last_error: Option<String>,
    pub summary: Option<String>,
}

/// Outcomes by collection name.
#[derive(Default)]
pub struct Sources {
    by_collection: Mutex<HashMap<String, Vec<SourceStatus>>>,
}

impl Sources {
    pub fn of(&self, collection: &str) -> Vec<SourceStatus> {
        self.by_collection.lock().map(|m| m.get(collection).cloned().unwrap_or_default()).unwrap_or_default()
    }

    fn update(&self, source: &SourceConfig, f: impl FnOnce(&mut SourceStatus)) {
        let Ok(mut map) = self.by_collection.lock() else { return };
        let list = map.entry(source.collection.clone()).or_default();
        let path = source.path.display().to_string();
        let idx = match list.iter().position(|s| s.path == path) {
            Some(i) => i,
            None => {
                list.push(SourceStatus {
                    path,
                    interval_secs: source.interval_secs,
                    last_run_ms: None,
                    last_report: None,
                    last_error: None,
                    summary: None,
                });
                list.len() - 1
            }
        };
        f(&mut list[idx]);
    }
}

/// Starts one sync loop per configured source.
pub fn spawn(sources: &[SourceConfig], ingestor: Arc<Ingestor>, state: Arc<Sources>) {
    for source in sources.iter().cloned() {
        state.update(&source, |_| {});
        let ingestor = ingestor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let interval = Duration::from_secs(source.interval_secs.max(1));
            loop {
                let outcome = run_once(&ingestor, &source).await;
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                match &outcome {
                    Ok(r) => {
                        tracing::info!(collection = %source.collection, path = %source.path.display(), outcome = %r, "source synced")
                    }
                    Err(e) => {
                        tracing::warn!(collection = %source.collection, path = %source.path.display(), error = %e, "source sync failed")
                    }
                }
                state.update(&source, |s| {
                    s.last_run_ms = Some(now);
                    match outcome {
                        Ok(r) => {
                            s.summary = Some(r.to_string());
                            s.last_report = Some(r);
                            s.last_error = None;
                        }
                        Err(e) => {
                            s.summary = None;
                            s.last_error = Some(format!("{e:#}"));
                        }
                    }
                });
                tokio::time::sleep(interval).await;
            }
        });
    }
}

async fn run_once(ingestor: &Ingestor, source: &SourceConfig) -> anyhow::Result<SyncReport> {
    let engine = ingestor.engine();
    let c = match engine.collection(&source.collection).await {
        Ok(c) => c,
        Err(kb_index::IndexError::CollectionNotFound(_)) => engine.create_collection(&source.collection).await?,
        Err(e) => return Err(e.into()),
    };
    let report = sync_folder(ingestor, &c, &source.path).await?;
    engine.flush(&c).await?;
    Ok(report)
}
