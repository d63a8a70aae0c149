//! Staging for `kb reembed`: new vectors wait beside the old ones until all are there, then
//! replace them and the collection's embedder in one transaction.

use std::collections::HashSet;

use super::chunks::encode_vector;
use super::Store;
use crate::{IndexError, Result};

/// Rows per multi-row INSERT (4 parameters each).
const INSERT_BATCH: usize = 128;

impl Store {
    /// Chunks of the collection already staged for `embedder` (an interrupted run resumes).
    pub async fn staged_chunk_ids(&self, collection_id: i64, embedder: &str) -> Result<HashSet<i64>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT s.chunk_id FROM reembed_staging s JOIN chunks k ON k.id = s.chunk_id
             WHERE s.collection_id = $1 AND s.embedder = $2",
        )
        .bind(collection_id)
        .bind(embedder)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().collect())
    }

    /// Stores new vectors of a collection's chunks from `embedder` beside the current ones, until the switch.
    pub async fn stage_embeddings(
        &self,
        collection_id: i64,
        embedder: &str,
        vectors: &[(i64, Vec<f32>)],
    ) -> Result<()> {
        for batch in vectors.chunks(INSERT_BATCH) {
            let mut sql =
                String::from("INSERT INTO reembed_staging (chunk_id, collection_id, embedder, embedding) VALUES ");
            for i in 0..batch.len() {
                let p = i * 4;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${},${},${},${})", p + 1, p + 2, p + 3, p + 4));
            }
            sql.push_str(
                " ON CONFLICT (chunk_id) DO UPDATE SET collection_id = excluded.collection_id, \
                 embedder = excluded.embedder, embedding = excluded.embedding",
            );
            let mut q = sqlx::query(&sql);
            for (id, v) in batch {
                q = q.bind(*id).bind(collection_id).bind(embedder).bind(encode_vector(v));
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Swaps the staged vectors in, if every chunk of the collection has one, and records the
    /// new embedder. Returns the number of chunks switched.
    pub async fn commit_reembed(&self, collection_id: i64, embedder: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Write first (SQLite upgrades a read transaction badly under a concurrent writer).
        let switched = sqlx::query(
            "UPDATE chunks SET embedding = (SELECT s.embedding FROM reembed_staging s WHERE s.chunk_id = chunks.id)
             WHERE collection_id = $1 AND id IN (SELECT chunk_id FROM reembed_staging WHERE collection_id = $1 AND embedder = $2)",
        )
        .bind(collection_id)
        .bind(embedder)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chunks WHERE collection_id = $1")
            .bind(collection_id)
            .fetch_one(&mut *tx)
            .await?;
        if switched as i64 != total {
            // Chunks arrived meanwhile (or some failed): keep the old vectors, stage the rest next run.
            tx.rollback().await?;
            return Err(IndexError::ReembedIncomplete { staged: switched, total: total as u64 });
        }
        sqlx::query("UPDATE collections SET embedder = $1 WHERE id = $2")
            .bind(embedder)
            .bind(collection_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM reembed_staging WHERE collection_id = $1")
            .bind(collection_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(switched)
    }
}
