use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, JobStatus, Store};
use crate::Result;

/// One document's ingestion, run by the worker pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The job id.
    pub id: i64,
    /// The document it ingests.
    pub document_id: i64,
    /// Where it stands.
    pub status: JobStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Times it was claimed (a transient database conflict runs it again).
    pub attempts: i64,
}

const COLUMNS: &str = "id, document_id, status, error, attempts";

fn from_row(r: &AnyRow) -> Result<Job> {
    Ok(Job {
        id: r.try_get(0)?,
        document_id: r.try_get(1)?,
        status: JobStatus::parse(&r.try_get::<String, _>(2)?),
        error: r.try_get(3)?,
        attempts: r.try_get(4)?,
    })
}

impl Store {
    /// Queues a job that ingests the document.
    pub async fn create_job(&self, document_id: i64) -> Result<Job> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO jobs (document_id, status, created_at, updated_at) VALUES ($1, 'queued', $2, $2) RETURNING {COLUMNS}"
        ))
        .bind(document_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        from_row(&row)
    }

    /// The job of this id, if any.
    pub async fn job(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The newest job of a document.
    pub async fn latest_job(&self, document_id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE document_id = $1 ORDER BY id DESC LIMIT 1"))
            .bind(document_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Marks the oldest queued jobs (at most `limit`) running and returns them, oldest first.
    /// Only one dispatcher claims jobs, so no row locking is needed.
    pub async fn claim_jobs(&self, limit: usize) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = $1
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT $2)
             RETURNING {COLUMNS}"
        ))
        .bind(now_ms())
        .bind(limit.max(1) as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Records how a job ended (or queues it again with `Queued`).
    pub async fn finish_job(&self, id: i64, status: JobStatus, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE jobs SET status = $1, error = $2, updated_at = $3 WHERE id = $4")
            .bind(status.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// At start: jobs that were running when the process died go back to the queue.
    pub async fn requeue_interrupted_jobs(&self) -> Result<u64> {
        let done = sqlx::query("UPDATE jobs SET status = 'queued', updated_at = $1 WHERE status = 'running'")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "UPDATE documents SET status = 'queued' WHERE status = 'running'
             AND id IN (SELECT document_id FROM jobs WHERE status = 'queued')",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Jobs with this status, for the metrics.
    pub async fn count_jobs(&self, status: JobStatus) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = $1")
            .bind(status.as_str())
            .fetch_one(&self.pool)
            .await?)
    }
}
