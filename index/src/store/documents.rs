use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, DocumentStatus, Store};
use crate::Result;

/// One ingested (or queued) file of a collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    /// The document id.
    pub id: i64,
    /// The collection it belongs to.
    pub collection_id: i64,
    /// The file name it was uploaded or ingested under.
    pub filename: String,
    /// Its title, when parsing found one.
    pub title: Option<String>,
    /// SHA-256 of its bytes, hex: the same bytes are one document.
    pub content_hash: String,
    /// Its size in bytes.
    pub size_bytes: i64,
    /// The detected format, once parsed.
    pub format: Option<String>,
    /// Where its ingestion stands.
    pub status: DocumentStatus,
    /// Why its ingestion failed.
    pub error: Option<String>,
    /// Chunks it was cut into.
    pub chunks: i64,
    /// Where the uploaded bytes wait until their job has run (service uploads only).
    pub source_path: Option<String>,
    /// What produced the text, where a format has several ways ("pdf-extract", "pdftotext",
    /// "tesseract").
    pub extractor: Option<String>,
    /// The document that carried this one (an e-mail message, for an attachment).
    pub parent_id: Option<i64>,
}

/// A document row to insert.
#[derive(Debug, Clone)]
pub struct NewDocument<'a> {
    /// The collection it joins.
    pub collection_id: i64,
    /// Its file name.
    pub filename: &'a str,
    /// SHA-256 of its bytes, hex.
    pub content_hash: &'a str,
    /// Its size in bytes.
    pub size_bytes: i64,
    /// Its first status.
    pub status: DocumentStatus,
    /// Where its bytes wait for their job (service uploads).
    pub source_path: Option<&'a str>,
    /// The document that carried it (an e-mail message, for an attachment).
    pub parent_id: Option<i64>,
}

const COLUMNS: &str =
    "id, collection_id, filename, title, content_hash, size_bytes, format, status, error, chunk_count, source_path, extractor, parent_id";

fn from_row(r: &AnyRow) -> Result<Document> {
    Ok(Document {
        id: r.try_get(0)?,
        collection_id: r.try_get(1)?,
        filename: r.try_get(2)?,
        title: r.try_get(3)?,
        content_hash: r.try_get(4)?,
        size_bytes: r.try_get(5)?,
        format: r.try_get(6)?,
        status: DocumentStatus::parse(&r.try_get::<String, _>(7)?),
        error: r.try_get(8)?,
        chunks: r.try_get(9)?,
        source_path: r.try_get(10)?,
        extractor: r.try_get(11)?,
        parent_id: r.try_get(12)?,
    })
}

impl Store {
    /// Inserts a document row and returns it.
    pub async fn insert_document(&self, doc: &NewDocument<'_>) -> Result<Document> {
        let now = now_ms();
        let row = sqlx::query(&format!(
            "INSERT INTO documents (collection_id, filename, content_hash, size_bytes, status, source_path, parent_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {COLUMNS}"
        ))
        .bind(doc.collection_id)
        .bind(doc.filename)
        .bind(doc.content_hash)
        .bind(doc.size_bytes)
        .bind(doc.status.as_str())
        .bind(doc.source_path)
        .bind(doc.parent_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        from_row(&row)
    }

    /// The document of this id, if any.
    pub async fn document(&self, id: i64) -> Result<Option<Document>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM documents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The documents of a collection.
    pub async fn documents(&self, collection_id: i64) -> Result<Vec<Document>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM documents WHERE collection_id = $1 ORDER BY id"))
            .bind(collection_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// A live (not failed) document of the collection with these exact bytes.
    pub async fn document_by_hash(&self, collection_id: i64, hash: &str) -> Result<Option<Document>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM documents
             WHERE collection_id = $1 AND content_hash = $2 AND status <> 'failed' ORDER BY id LIMIT 1"
        ))
        .bind(collection_id)
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Other documents of the collection with this name: what a new version replaces.
    pub async fn documents_named(&self, collection_id: i64, filename: &str, except: i64) -> Result<Vec<Document>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM documents WHERE collection_id = $1 AND filename = $2 AND id <> $3"
        ))
        .bind(collection_id)
        .bind(filename)
        .bind(except)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets a document's status and error.
    pub async fn set_document_status(&self, id: i64, status: DocumentStatus, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE documents SET status = $1, error = $2, updated_at = $3 WHERE id = $4")
            .bind(status.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets (or clears) where a document's uploaded bytes wait.
    pub async fn set_document_source(&self, id: i64, source_path: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE documents SET source_path = $1 WHERE id = $2")
            .bind(source_path)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a document, the documents it carried (an e-mail's attachments) and their
    /// chunks; returns the ids of the chunks that went, which the indexes must drop.
    pub async fn delete_document(&self, id: i64) -> Result<Vec<i64>> {
        const FAMILY: &str = "(SELECT id FROM documents WHERE id = $1 OR parent_id = $1)";
        let mut tx = self.pool.begin().await?;
        // Write first (see `store_chunks`).
        let ids: Vec<i64> =
            sqlx::query_scalar(&format!("DELETE FROM chunks WHERE document_id IN {FAMILY} RETURNING id"))
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query(&format!("DELETE FROM jobs WHERE document_id IN {FAMILY}")).bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM documents WHERE id = $1 OR parent_id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(ids)
    }
}
