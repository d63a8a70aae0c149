use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Store};
use crate::{IndexError, Result};

/// A named set of documents, searched together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collection {
    /// The collection id (its index directory's name).
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// The embedder that built this collection's vectors (`Embedder::id`).
    pub embedder: String,
}

/// A collection with its counts, for listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionSummary {
    /// The collection's name.
    pub name: String,
    /// Documents it holds.
    pub documents: i64,
    /// Chunks it holds.
    pub chunks: i64,
}

fn from_row(r: &AnyRow) -> Result<Collection> {
    Ok(Collection { id: r.try_get(0)?, name: r.try_get(1)?, embedder: r.try_get(2)? })
}

/// Names become URL path segments and directory names: keep them plain.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 64 {
        Some("must be at most 64 characters")
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        Some("may contain only letters, digits, '-', '_' and '.'")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IndexError::InvalidName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

impl Store {
    /// Creates an empty collection built by `embedder`; refuses a taken or invalid name.
    pub async fn create_collection(&self, name: &str, embedder: &str) -> Result<Collection> {
        validate_name(name)?;
        let inserted = sqlx::query(
            "INSERT INTO collections (name, embedder, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(embedder)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(row) => Ok(Collection { id: row.try_get(0)?, name: name.into(), embedder: embedder.into() }),
            None => Err(IndexError::CollectionExists(name.into())),
        }
    }

    /// The collection of this name, if any.
    pub async fn collection(&self, name: &str) -> Result<Option<Collection>> {
        let row = sqlx::query("SELECT id, name, embedder FROM collections WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The collection of this id, if any.
    pub async fn collection_by_id(&self, id: i64) -> Result<Option<Collection>> {
        let row = sqlx::query("SELECT id, name, embedder FROM collections WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The collection or `CollectionNotFound`.
    pub async fn require_collection(&self, name: &str) -> Result<Collection> {
        self.collection(name).await?.ok_or_else(|| IndexError::CollectionNotFound(name.into()))
    }

    /// Every collection.
    pub async fn all_collections(&self) -> Result<Vec<Collection>> {
        let rows =
            sqlx::query("SELECT id, name, embedder FROM collections ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Every collection with its document and chunk counts, by name.
    pub async fn collection_summaries(&self) -> Result<Vec<CollectionSummary>> {
        let rows = sqlx::query(
            "SELECT c.name,
                    (SELECT COUNT(*) FROM documents d WHERE d.collection_id = c.id),
                    (SELECT COUNT(*) FROM chunks k WHERE k.collection_id = c.id)
             FROM collections c ORDER BY c.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(CollectionSummary { name: r.try_get(0)?, documents: r.try_get(1)?, chunks: r.try_get(2)? }))
            .collect()
    }

    /// Records the embedder that built the collection's vectors.
    pub async fn set_collection_embedder(&self, id: i64, embedder: &str) -> Result<()> {
        sqlx::query("UPDATE collections SET embedder = $1 WHERE id = $2")
            .bind(embedder)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes the collection with its documents, chunks and jobs (cascade).
    pub async fn delete_collection(&self, id: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Explicit deletes: cascades need foreign keys on, which a foreign SQLite file may not have.
        sqlx::query("DELETE FROM chunks WHERE collection_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM jobs WHERE document_id IN (SELECT id FROM documents WHERE collection_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM documents WHERE collection_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM collections WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
