use sqlx::Row;

use super::{now_ms, Store};
use crate::Result;

/// A chunk to store, with its embedding.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// The chunk text.
    pub text: String,
    /// The headings it sits under, outermost first.
    pub heading_path: Vec<String>,
    /// Its page, in paged formats (PDF).
    pub page: Option<u32>,
    /// A citation location that is not a page: "slide 3", "sheet Costs, rows 2–9".
    pub location: Option<String>,
    /// Byte offset of its start in the parsed document text.
    pub start: usize,
    /// Byte offset of its end in the parsed document text.
    pub end: usize,
    /// Its unit-length embedding.
    pub embedding: Vec<f32>,
}

/// A stored chunk as search results show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    /// The chunk id.
    pub id: i64,
    /// The document it belongs to.
    pub document_id: i64,
    /// That document's file name.
    pub filename: String,
    /// That document's title, when it has one.
    pub title: Option<String>,
    /// The chunk text.
    pub text: String,
    /// The headings it sits under, outermost first.
    pub heading_path: Vec<String>,
    /// Its page, in paged formats (PDF).
    pub page: Option<u32>,
    /// A citation location that is not a page: "slide 3", "sheet Costs, rows 2–9".
    pub location: Option<String>,
}

impl ChunkRow {
    /// Where a citation of this chunk points, for people: the stored location ("slide 3",
    /// "sheet Costs, rows 2–9"), else the page, else the heading path.
    pub fn location_label(&self) -> Option<String> {
        let pages = |l: String| match self.page {
            Some(p) if !l.contains("page") => format!("{l}, page {p}"),
            _ => l,
        };
        if let Some(l) = &self.location {
            return Some(pages(l.clone()));
        }
        if let Some(p) = self.page {
            return Some(format!("page {p}"));
        }
        (!self.heading_path.is_empty()).then(|| self.heading_path.join(" › "))
    }
}

/// What the keyword index needs of a chunk.
#[derive(Debug, Clone)]
pub struct ChunkText {
    /// The chunk id.
    pub id: i64,
    /// The document it belongs to.
    pub document_id: i64,
    /// That document's title, when it has one.
    pub title: Option<String>,
    /// The headings it sits under, outermost first.
    pub heading_path: Vec<String>,
    /// The chunk text.
    pub text: String,
}

const HEADING_SEP: &str = "\u{1f}";
/// Rows per multi-row INSERT: fewer round trips, well under both databases' parameter limits.
const INSERT_BATCH: usize = 64;

pub(crate) fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn split_headings(s: &str) -> Vec<String> {
    s.split(HEADING_SEP).filter(|h| !h.is_empty()).map(str::to_owned).collect()
}

impl Store {
    /// Stores a document's chunks in one transaction, replacing any it had (a job that runs
    /// again after a crash must not duplicate them). Returns the new ids in chunk order and
    /// the ids replaced. The document is marked done by [`Store::mark_done`] once its chunks
    /// are in the indexes too.
    pub async fn store_chunks(
        &self,
        document_id: i64,
        collection_id: i64,
        title: Option<&str>,
        format: &str,
        extractor: Option<&str>,
        chunks: &[NewChunk],
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        let mut tx = self.pool.begin().await?;
        // Write first: a SQLite transaction that reads before writing cannot upgrade while
        // another writer is active and fails at once instead of waiting out busy_timeout.
        let replaced: Vec<i64> = sqlx::query_scalar("DELETE FROM chunks WHERE document_id = $1 RETURNING id")
            .bind(document_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut ids = vec![0i64; chunks.len()];
        for (batch_no, batch) in chunks.chunks(INSERT_BATCH).enumerate() {
            let mut sql = String::from(
                "INSERT INTO chunks (document_id, collection_id, ordinal, text, heading_path, page, location, char_start, char_end, embedding) VALUES ",
            );
            for i in 0..batch.len() {
                let p = i * 10;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${},${},${},${},${},${},${},${},${},${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7,
                    p + 8,
                    p + 9,
                    p + 10
                ));
            }
            sql.push_str(" RETURNING id, ordinal");
            let mut q = sqlx::query(&sql);
            for (i, c) in batch.iter().enumerate() {
                q = q
                    .bind(document_id)
                    .bind(collection_id)
                    .bind((batch_no * INSERT_BATCH + i) as i64)
                    .bind(c.text.as_str())
                    .bind(c.heading_path.join(HEADING_SEP))
                    .bind(c.page.map(i64::from))
                    .bind(c.location.as_deref())
                    .bind(c.start as i64)
                    .bind(c.end as i64)
                    .bind(encode_vector(&c.embedding));
            }
            for row in q.fetch_all(&mut *tx).await? {
                let ordinal: i64 = row.try_get(1)?;
                ids[ordinal as usize] = row.try_get(0)?;
            }
        }
        sqlx::query(
            "UPDATE documents SET error = NULL, chunk_count = $1, title = $2, format = $3, updated_at = $4,
             extractor = COALESCE($6, extractor) WHERE id = $5",
        )
        .bind(chunks.len() as i64)
        .bind(title)
        .bind(format)
        .bind(now_ms())
        .bind(document_id)
        .bind(extractor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((ids, replaced))
    }

    /// Marks documents whose chunks are stored (and applied to the indexes) done.
    pub async fn mark_done(&self, document_ids: &[i64]) -> Result<()> {
        for part in document_ids.chunks(500) {
            let list = part.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            sqlx::query(&format!(
                "UPDATE documents SET status = 'done', error = NULL, updated_at = $1 WHERE id IN ({list})"
            ))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Chunks by id, in the order asked; ids no longer in the database are left out.
    pub async fn chunks_by_ids(&self, ids: &[i64]) -> Result<Vec<ChunkRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let rows = sqlx::query(&format!(
            "SELECT k.id, k.document_id, d.filename, d.title, k.text, k.heading_path, k.page, k.location
             FROM chunks k JOIN documents d ON d.id = k.document_id WHERE k.id IN ({list})"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let page: Option<i64> = r.try_get(6)?;
            let row = ChunkRow {
                id: r.try_get(0)?,
                document_id: r.try_get(1)?,
                filename: r.try_get(2)?,
                title: r.try_get(3)?,
                text: r.try_get(4)?,
                heading_path: split_headings(&r.try_get::<String, _>(5)?),
                page: page.map(|p| p as u32),
                location: r.try_get(7)?,
            };
            found.insert(row.id, row);
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// Ids of every chunk in the collection: what each index must hold.
    pub async fn chunk_ids(&self, collection_id: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT id FROM chunks WHERE collection_id = $1 ORDER BY id")
            .bind(collection_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Embeddings of the given chunks (to build the vector index).
    pub async fn chunk_vectors(&self, ids: &[i64]) -> Result<Vec<(i64, Vec<f32>)>> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(500) {
            let list = part.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let rows = sqlx::query(&format!("SELECT id, embedding FROM chunks WHERE id IN ({list})"))
                .fetch_all(&self.pool)
                .await?;
            for r in rows {
                out.push((r.try_get(0)?, decode_vector(&r.try_get::<Vec<u8>, _>(1)?)));
            }
        }
        Ok(out)
    }

    /// Texts of the given chunks (to build the keyword index).
    pub async fn chunk_texts(&self, ids: &[i64]) -> Result<Vec<ChunkText>> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(500) {
            let list = part.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let rows = sqlx::query(&format!(
                "SELECT k.id, k.document_id, d.title, k.heading_path, k.text
                 FROM chunks k JOIN documents d ON d.id = k.document_id WHERE k.id IN ({list})"
            ))
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                out.push(ChunkText {
                    id: r.try_get(0)?,
                    document_id: r.try_get(1)?,
                    title: r.try_get(2)?,
                    heading_path: split_headings(&r.try_get::<String, _>(3)?),
                    text: r.try_get(4)?,
                });
            }
        }
        Ok(out)
    }
}
