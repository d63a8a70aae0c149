//! The life cycle shared by documents and the jobs that ingest them.

use serde::Serialize;

/// Queued → running → done or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// Being ingested.
    Running,
    /// Ingested: its chunks are searchable.
    Done,
    /// Ingestion failed; the error says why.
    Failed,
}

impl DocumentStatus {
    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// The status a stored name stands for (an unknown one reads as failed).
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            _ => Self::Failed,
        }
    }
}

/// A document's ingestion status.
pub type DocumentStatus = Status;
/// An ingest job's status.
pub type JobStatus = Status;
