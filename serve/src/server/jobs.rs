//! The ingest worker pool. Jobs live in the database: a dispatcher claims queued jobs in
//! order, up to `batch` at a time, and runs up to `workers` such batches at once; a batch is
//! parsed together and embedded in full encoder batches across its documents. Jobs
//! interrupted by a crash are queued again at start (their chunks are replaced, never
//! duplicated).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use kb_index::store::{DocumentStatus, Job, JobStatus};
use kb_index::{Collection, IndexError, Store};
use kb_ingest::pipeline::{Ingestor, Outcome, Pending};
use kb_ingest::IngestError;
use tokio::sync::{Notify, Semaphore};

use crate::metrics::METRICS;

/// How many times a job runs before a transient database conflict fails it.
const MAX_ATTEMPTS: i64 = 5;

pub struct JobQueue {
    wake: Notify,
    workers: Arc<Semaphore>,
    size: usize,
    /// Jobs claimed together as one batch.
    batch: usize,
    stopping: AtomicBool,
}

impl JobQueue {
    pub fn new(workers: usize, batch: usize) -> Arc<Self> {
        let size = workers.max(1);
        Arc::new(Self {
            wake: Notify::new(),
            workers: Arc::new(Semaphore::new(size)),
            size,
            batch: batch.max(1),
            stopping: AtomicBool::new(false),
        })
    }

    /// Tells the dispatcher a job was queued.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Claims and runs jobs until the process ends.
    pub async fn run(self: Arc<Self>, ingestor: Arc<Ingestor>) {
        let store = ingestor.engine().store().clone();
        match store.requeue_interrupted_jobs().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "requeued jobs interrupted by the last shutdown"),
            Err(e) => tracing::error!(error = %e, "requeueing interrupted jobs"),
        }
        loop {
            let Ok(permit) = self.workers.clone().acquire_owned().await else { return };
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            match store.claim_jobs(self.batch).await {
                Ok(jobs) if !jobs.is_empty() => {
                    let ingestor = ingestor.clone();
                    tokio::spawn(async move {
                        run_batch(&ingestor, jobs).await;
                        drop(permit);
                    });
                }
                Ok(_) => {
                    drop(permit);
                    // Polling as well as notifications: a missed wake-up costs at most a second.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.wake.notified()).await;
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %e, "claiming a job");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl JobQueue {
    /// Stops claiming jobs and lets running ones finish for up to `grace`; jobs still running
    /// then are queued again in the database, to run at the next start.
    pub async fn shutdown(&self, store: &Store, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_waiters();
        let all = self.workers.acquire_many(self.size as u32);
        match tokio::time::timeout(grace, all).await {
            Ok(_) => tracing::info!("ingest workers idle; shutting down"),
            Err(_) => match store.requeue_interrupted_jobs().await {
                Ok(n) => {
                    tracing::warn!(jobs = n, "jobs still running at shutdown were queued again for the next start")
                }
                Err(e) => tracing::error!(error = %e, "requeueing running jobs at shutdown"),
            },
        }
    }
}

/// A claimed job whose upload has been read, ready for the pipeline.
struct Loaded {
    job: Job,
    collection: Collection,
    pending: Pending,
    path: String,
}

/// Runs a batch of jobs: loads each upload, runs the documents of each collection through the
/// pipeline together, and records every job's result.
#[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
async fn run_batch(ingestor: &Ingestor, jobs: Vec<Job>) {
    let mut by_collection: HashMap<i64, Vec<Loaded>> = HashMap::new();
    for job in jobs {
        match load(ingestor, &job).await {
            Ok(Some(loaded)) => by_collection.entry(loaded.collection.id).or_default().push(loaded),
            // Done before a crash stopped its job from being recorded: nothing to run again.
            Ok(None) => finish(ingestor.engine().store(), &job, Ok(())).await,
            Err(e) => finish(ingestor.engine().store(), &job, Err(e)).await,
        }
    }
    for (_, group) in by_collection {
        let c = group[0].collection.clone();
        let mut meta = Vec::with_capacity(group.len());
        let mut pending = Vec::with_capacity(group.len());
        for l in group {
            meta.push((l.job, l.path));
            pending.push(l.pending);
        }
        match ingestor.run(&c, pending).await {
            Ok(outcomes) => {
                let mut by_doc: HashMap<i64, Outcome> = outcomes.into_iter().map(|o| (o.document_id(), o)).collect();
                for (job, path) in meta {
                    let result = match by_doc.remove(&job.document_id) {
                        Some(Outcome::Failed { error, .. }) => Err(Box::new(error) as BoxError),
                        Some(_) => Ok(()),
                        None => Err("the pipeline returned no outcome".into()),
                    };
                    // The upload is kept only for a job that runs again.
                    if !matches!(&result, Err(e) if retryable(&job, e.as_ref())) {
                        cleanup(ingestor.engine().store(), &job, &path).await;
                    }
                    finish(ingestor.engine().store(), &job, result).await;
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (job, _) in meta {
                    finish(ingestor.engine().store(), &job, Err(message.clone().into())).await;
                }
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reads a job's document, collection and uploaded bytes, and marks the document running;
/// `None` when the document is already done.
async fn load(ingestor: &Ingestor, job: &Job) -> Result<Option<Loaded>, BoxError> {
    let store = ingestor.engine().store();
    let doc = store.document(job.document_id).await?.ok_or("document was deleted")?;
    if doc.status == DocumentStatus::Done {
        if let Some(path) = &doc.source_path {
            cleanup(store, job, path).await;
        }
        return Ok(None);
    }
    let collection = store.collection_by_id(doc.collection_id).await?.ok_or("collection was deleted")?;
    let path = doc.source_path.clone().ok_or("the uploaded file is gone")?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| format!("reading the upload: {e}"))?;
    store.set_document_status(doc.id, DocumentStatus::Running, None).await?;
    Ok(Some(Loaded { job: job.clone(), collection, pending: Pending { document: doc, bytes }, path }))
}

/// Removes a processed upload's file; its document no longer points at it.
async fn cleanup(store: &Store, job: &Job, path: &str) {
    let _ = tokio::fs::remove_file(path).await;
    if let Err(e) = store.set_document_source(job.document_id, None).await {
        tracing::warn!(document = job.document_id, error = %e, "clearing the upload path");
    }
}

/// Records a job's result: done, failed (on its document too), or queued again after a
/// transient database conflict.
async fn finish(store: &Store, job: &Job, result: Result<(), BoxError>) {
    let (status, error) = match result {
        Ok(()) => (JobStatus::Done, None),
        Err(e) if retryable(job, e.as_ref()) => {
            // Another writer held the database: run the job again (its chunks are replaced).
            tracing::warn!(job = job.id, error = %e, attempt = job.attempts, "transient database conflict; job queued again");
            let _ = store.set_document_status(job.document_id, DocumentStatus::Queued, None).await;
            tokio::time::sleep(std::time::Duration::from_millis(50 * job.attempts as u64)).await;
            (JobStatus::Queued, None)
        }
        Err(e) => {
            let _ = store.set_document_status(job.document_id, DocumentStatus::Failed, Some(&e.to_string())).await;
            (JobStatus::Failed, Some(e.to_string()))
        }
    };
    tracing::info!(
        job = job.id,
        document = job.document_id,
        status = status.as_str(),
        error = error.as_deref().unwrap_or(""),
        "job finished"
    );
    let outcome = if status == JobStatus::Queued { "requeued" } else { status.as_str() };
    METRICS.jobs_finished.with_label_values(&[outcome]).inc();
    if let Err(e) = store.finish_job(job.id, status, error.as_deref()).await {
        tracing::error!(error = %e, "recording job result");
    }
}

/// Whether a failed job runs again: a transient conflict, attempts left.
fn retryable(job: &Job, e: &(dyn std::error::Error + 'static)) -> bool {
    is_transient(e) && job.attempts < MAX_ATTEMPTS
}

/// A database busy/lock/serialization conflict, which a later attempt can get past (SQLite
/// `SQLITE_BUSY*`/`SQLITE_LOCKED*`, e.g. a read transaction upgraded to a write while
/// another worker writes; PostgreSQL serialization failures and deadlocks).
fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let index = match e.downcast_ref::<IngestError>() {
        Some(IngestError::Index(i)) => i,
        Some(_) => return false,
        None => match e.downcast_ref::<IndexError>() {
            Some(i) => i,
            None => return false,
        },
    };
    let IndexError::Database(db) = index else { return false };
    let Some(code) = db.as_database_error().and_then(|d| d.code()) else { return false };
    match code.as_ref() {
        "40001" | "40P01" => true,
        sqlite => sqlite.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
    }
}
