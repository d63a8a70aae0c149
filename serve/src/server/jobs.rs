//! The ingest worker pool. Jobs live in the database: a dispatcher claims queued jobs in
//! order and runs up to `workers` at once; jobs interrupted by a crash are queued again at
//! start (their chunks are replaced, never duplicated).

use std::sync::Arc;

use kb_index::store::{DocumentStatus, Job, JobStatus};
use kb_ingest::pipeline::{Ingestor, Outcome, Pending};
use tokio::sync::{Notify, Semaphore};

pub struct JobQueue {
    wake: Notify,
    workers: Arc<Semaphore>,
}

impl JobQueue {
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self { wake: Notify::new(), workers: Arc::new(Semaphore::new(workers.max(1))) })
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
            match store.claim_job().await {
                Ok(Some(job)) => {
                    let ingestor = ingestor.clone();
                    tokio::spawn(async move {
                        run_job(&ingestor, job).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
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

#[tracing::instrument(skip_all, fields(job = job.id, document = job.document_id))]
async fn run_job(ingestor: &Ingestor, job: Job) {
    let store = ingestor.engine().store();
    let result = async {
        let doc = store.document(job.document_id).await?.ok_or_else(|| "document was deleted".to_string())?;
        let c = store
            .all_collections()
            .await?
            .into_iter()
            .find(|c| c.id == doc.collection_id)
            .ok_or_else(|| "collection was deleted".to_string())?;
        let path = doc.source_path.clone().ok_or_else(|| "the uploaded file is gone".to_string())?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| format!("reading the upload: {e}"))?;
        store.set_document_status(doc.id, DocumentStatus::Running, None).await?;
        let outcome = ingestor.run(&c, vec![Pending { document: doc, bytes }]).await.map_err(|e| e.to_string())?;
        ingestor.engine().flush(&c).await?;
        let _ = tokio::fs::remove_file(&path).await;
        store.set_document_source(job.document_id, None).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(outcome)
    }
    .await;
    let (status, error) = match result {
        Ok(outcomes) => match outcomes.into_iter().next() {
            Some(Outcome::Failed { error, .. }) => (JobStatus::Failed, Some(error.to_string())),
            _ => (JobStatus::Done, None),
        },
        Err(e) => {
            let _ = store.set_document_status(job.document_id, DocumentStatus::Failed, Some(&e.to_string())).await;
            (JobStatus::Failed, Some(e.to_string()))
        }
    };
    tracing::info!(status = status.as_str(), error = error.as_deref().unwrap_or(""), "job finished");
    if let Err(e) = store.finish_job(job.id, status, error.as_deref()).await {
        tracing::error!(error = %e, "recording job result");
    }
}
