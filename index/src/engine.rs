//! The engine: the store plus, per collection, the vector and keyword indexes derived from
//! it, kept in step with it, and searched together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kb_inference::Embedder;
use serde::{Deserialize, Serialize};

use crate::fusion::{fuse_for_coverage, Fusion};
use crate::keyword::KeywordIndex;
use crate::query_cache::QueryCache;
use crate::store::{ChunkRow, ChunkText, Collection, Store};
use crate::vector::{HnswParams, VectorIndex};
use crate::{IndexError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexConfig {
    pub hnsw: HnswParams,
    pub fusion: Fusion,
    /// Rebuild a vector index when this share of its points is deleted.
    pub rebuild_deleted_share: f64,
    /// Query embeddings remembered (0: none).
    pub query_cache_size: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            hnsw: HnswParams::default(),
            fusion: Fusion::default(),
            rebuild_deleted_share: 0.2,
            query_cache_size: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    Keyword,
    Vector,
    #[default]
    Hybrid,
}

impl std::str::FromStr for SearchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keyword" => Ok(Self::Keyword),
            "vector" => Ok(Self::Vector),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err(format!("unknown search mode {s:?}: expected keyword, vector or hybrid")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub top_k: usize,
    pub mode: SearchMode,
    /// At most one hit (the best chunk) per document.
    pub distinct_documents: bool,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub chunk: ChunkRow,
    pub score: f32,
}

/// A collection's two derived indexes.
pub struct CollectionIndexes {
    collection: Collection,
    /// Swapped whole on rebuild; searches hold their own `Arc`.
    vectors: RwLock<Arc<VectorIndex>>,
    keywords: KeywordIndex,
    dir: PathBuf,
}

impl CollectionIndexes {
    fn vectors(&self) -> Arc<VectorIndex> {
        self.vectors.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn collection(&self) -> &Collection {
        &self.collection
    }
}

pub struct Engine {
    store: Store,
    embedder: Arc<dyn Embedder>,
    root: PathBuf,
    config: IndexConfig,
    open: RwLock<HashMap<i64, Arc<CollectionIndexes>>>,
    query_cache: QueryCache,
}

/// Runs blocking index work off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| IndexError::Task(e.to_string()))?
}

impl Engine {
    /// Opens the indexes of every collection under `root`, rebuilding or catching each up
    /// from the database.
    pub async fn open(store: Store, embedder: Arc<dyn Embedder>, root: &Path, config: IndexConfig) -> Result<Self> {
        let query_cache = QueryCache::new(config.query_cache_size);
        let engine = Self { store, embedder, root: root.to_owned(), config, open: RwLock::default(), query_cache };
        for c in engine.store.all_collections().await? {
            if c.embedder != engine.embedder.id() {
                // Its vectors are another model's: it is refused until re-embedded.
                tracing::warn!(collection = %c.name, built_with = %c.embedder, embedder = %engine.embedder.id(), "collection built by another embedder; run kb reembed");
                continue;
            }
            engine.indexes(&c).await?;
        }
        Ok(engine)
    }

    /// Re-embeds every chunk of a collection with this engine's embedder and switches the
    /// collection to it: vectors are staged in the database and swapped in one transaction at
    /// the end (an interrupted run changes nothing and resumes), then the vector index is
    /// rebuilt. `progress(done, total)` follows the embedding. Returns the chunks re-embedded.
    pub async fn reembed(&self, name: &str, batch: usize, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<u64> {
        let c = self.store.require_collection(name).await?;
        let embedder_id = self.embedder.id().to_owned();
        if c.embedder == embedder_id {
            return Ok(0);
        }
        let all = self.store.chunk_ids(c.id).await?;
        let staged = self.store.staged_chunk_ids(c.id, &embedder_id).await?;
        let todo: Vec<i64> = all.iter().copied().filter(|id| !staged.contains(id)).collect();
        let mut done = all.len() - todo.len();
        progress(done, all.len());
        for ids in todo.chunks(batch.max(1)) {
            let texts = self.store.chunk_texts(ids).await?;
            let inputs: Vec<String> =
                texts.iter().map(|t| crate::contextual_text(t.title.as_deref(), &t.heading_path, &t.text)).collect();
            let embedder = self.embedder.clone();
            let vectors = blocking(move || {
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                Ok(embedder.embed_passages(&refs)?)
            })
            .await?;
            let rows: Vec<(i64, Vec<f32>)> = texts.iter().map(|t| t.id).zip(vectors).collect();
            self.store.stage_embeddings(c.id, &embedder_id, &rows).await?;
            done += rows.len();
            progress(done, all.len());
        }
        let switched = self.store.commit_reembed(c.id, &embedder_id).await?;
        // The vector graph is derived: drop it and build it again from the new vectors.
        self.open.write().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
        let _ = std::fs::remove_dir_all(self.collection_dir(c.id).join("vectors"));
        let c = self.store.require_collection(name).await?;
        self.indexes(&c).await?;
        self.flush(&c).await?;
        Ok(switched)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub async fn create_collection(&self, name: &str) -> Result<Collection> {
        let c = self.store.create_collection(name, self.embedder.id()).await?;
        // A directory left by an earlier collection of the same name must not leak into this one.
        let dir = self.collection_dir(c.id);
        let _ = std::fs::remove_dir_all(&dir);
        self.indexes(&c).await?;
        Ok(c)
    }

    /// The collection, or a clear error when it is missing or built by another embedder.
    pub async fn collection(&self, name: &str) -> Result<Collection> {
        let c = self.store.require_collection(name).await?;
        if c.embedder != self.embedder.id() {
            return Err(IndexError::EmbedderMismatch {
                collection: c.name,
                built_with: c.embedder,
                requested: self.embedder.id().to_owned(),
            });
        }
        Ok(c)
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let c = self.store.require_collection(name).await?;
        self.store.delete_collection(c.id).await?;
        self.open.write().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
        let dir = self.collection_dir(c.id);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    fn collection_dir(&self, id: i64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// The open indexes of `c`, opening and reconciling them on first use.
    pub async fn indexes(&self, c: &Collection) -> Result<Arc<CollectionIndexes>> {
        if let Some(ix) = self.open.read().unwrap_or_else(|e| e.into_inner()).get(&c.id) {
            return Ok(ix.clone());
        }
        let dir = self.collection_dir(c.id);
        let (vdir, kdir, dim, params) =
            (dir.join("vectors"), dir.join("keywords"), self.embedder.dim(), self.config.hnsw.clone());
        let (vectors, keywords) = blocking(move || {
            let vectors =
                VectorIndex::load(&vdir, dim, &params).unwrap_or_else(|| VectorIndex::new(&vdir, dim, params, 0));
            let keywords = match KeywordIndex::open(&kdir) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(dir = %kdir.display(), error = %e, "keyword index unreadable; rebuilding");
                    let _ = std::fs::remove_dir_all(&kdir);
                    KeywordIndex::open(&kdir)?
                }
            };
            Ok((vectors, keywords))
        })
        .await?;
        let ix = Arc::new(CollectionIndexes {
            collection: c.clone(),
            vectors: RwLock::new(Arc::new(vectors)),
            keywords,
            dir,
        });
        self.reconcile(&ix).await?;
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        Ok(open.entry(c.id).or_insert(ix).clone())
    }

    /// Brings both indexes to exactly the database's chunks: adds what they miss, drops what
    /// the database no longer has, rebuilds the vector graph when too much of it is deleted.
    async fn reconcile(&self, ix: &Arc<CollectionIndexes>) -> Result<()> {
        let db: HashSet<i64> = self.store.chunk_ids(ix.collection.id).await?.into_iter().collect();
        let vectors = ix.vectors();
        let live = vectors.live_ids();
        let stale: Vec<i64> = live.difference(&db).copied().collect();
        vectors.remove(&stale);
        if vectors.deleted_share() > self.config.rebuild_deleted_share {
            self.rebuild_vectors(ix, &db).await?;
        } else {
            let mut missing: Vec<i64> = db.difference(&live).copied().collect();
            missing.sort_unstable();
            if !missing.is_empty() || !stale.is_empty() {
                tracing::info!(collection = %ix.collection.name, added = missing.len(), removed = stale.len(), "catching up vector index");
                let points = self.store.chunk_vectors(&missing).await?;
                let v = vectors.clone();
                blocking(move || {
                    v.insert(&points)?;
                    v.save()
                })
                .await?;
            }
        }

        let kw = ix.keywords.ids()?;
        let mut missing: Vec<i64> = db.difference(&kw).copied().collect();
        missing.sort_unstable();
        let stale: Vec<i64> = kw.difference(&db).copied().collect();
        if !missing.is_empty() || !stale.is_empty() {
            tracing::info!(collection = %ix.collection.name, added = missing.len(), removed = stale.len(), "catching up keyword index");
            let texts = self.store.chunk_texts(&missing).await?;
            let ix = ix.clone();
            blocking(move || {
                ix.keywords.remove(&stale)?;
                ix.keywords.insert(&texts)
            })
            .await?;
        }
        Ok(())
    }

    async fn rebuild_vectors(&self, ix: &Arc<CollectionIndexes>, db: &HashSet<i64>) -> Result<()> {
        let mut ids: Vec<i64> = db.iter().copied().collect();
        ids.sort_unstable();
        tracing::info!(collection = %ix.collection.name, points = ids.len(), "rebuilding vector index");
        let points = self.store.chunk_vectors(&ids).await?;
        let (dir, dim, params) = (ix.dir.join("vectors"), self.embedder.dim(), self.config.hnsw.clone());
        let fresh = blocking(move || {
            let v = VectorIndex::new(&dir, dim, params, points.len());
            v.insert(&points)?;
            v.save()?;
            Ok(v)
        })
        .await?;
        *ix.vectors.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Applies newly stored chunks (and the chunks they replaced) to both indexes. The vector
    /// graph is saved by [`Engine::flush`]; until then a crash is caught up from the database.
    pub async fn apply(&self, c: &Collection, added: Vec<(ChunkText, Vec<f32>)>, removed: Vec<i64>) -> Result<()> {
        let ix = self.indexes(c).await?;
        let vectors = ix.vectors();
        let ix2 = ix.clone();
        blocking(move || {
            let points: Vec<(i64, Vec<f32>)> = added.iter().map(|(t, v)| (t.id, v.clone())).collect();
            let texts: Vec<ChunkText> = added.into_iter().map(|(t, _)| t).collect();
            vectors.remove(&removed);
            vectors.insert(&points)?;
            if !removed.is_empty() {
                ix2.keywords.remove(&removed)?;
            }
            ix2.keywords.insert(&texts)
        })
        .await?;
        if ix.vectors().deleted_share() > self.config.rebuild_deleted_share {
            let db: HashSet<i64> = self.store.chunk_ids(c.id).await?.into_iter().collect();
            self.rebuild_vectors(&ix, &db).await?;
        }
        Ok(())
    }

    /// Deletes a document from the store and its chunks from both indexes.
    pub async fn delete_document(&self, c: &Collection, document_id: i64) -> Result<()> {
        let removed = self.store.delete_document(document_id).await?;
        self.apply(c, Vec::new(), removed).await?;
        self.flush(c).await
    }

    /// Persists the vector graph of `c` (the keyword index commits on every change).
    pub async fn flush(&self, c: &Collection) -> Result<()> {
        let v = self.indexes(c).await?.vectors();
        blocking(move || v.save()).await
    }

    pub async fn flush_all(&self) -> Result<()> {
        let all: Vec<Arc<CollectionIndexes>> =
            self.open.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for ix in all {
            let v = ix.vectors();
            blocking(move || v.save()).await?;
        }
        Ok(())
    }

    /// Searches a collection.
    pub async fn search(&self, c: &Collection, req: &SearchRequest) -> Result<Vec<Hit>> {
        let ix = self.indexes(c).await?;
        let top_k = req.top_k.max(1);
        // Candidates per list: fusion and per-document collapsing need more than top_k.
        let depth = (top_k * if req.distinct_documents { 8 } else { 4 }).max(100);
        // The query embedding (the slow part) and the keyword search run side by side.
        let keyword = || {
            let (ix, q) = (ix.clone(), req.query.clone());
            blocking(move || ix.keywords.search(&q, depth))
        };
        let (query_vector, keyword) = match req.mode {
            SearchMode::Keyword => (None, keyword().await?),
            SearchMode::Vector => (Some(self.embed_query(&req.query).await?), Vec::new()),
            SearchMode::Hybrid => {
                let (e, k) = tokio::join!(self.embed_query(&req.query), keyword());
                (Some(e?), k?)
            }
        };
        let vector = match &query_vector {
            Some(q) => ix.vectors().search(q, depth),
            None => Vec::new(),
        };
        let ranked = match req.mode {
            SearchMode::Keyword => keyword,
            SearchMode::Vector => vector,
            SearchMode::Hybrid => {
                fuse_for_coverage(self.config.fusion, self.embedder.coverage(&req.query), &keyword, &vector)
            }
        };
        self.resolve(ranked, top_k, req.distinct_documents).await
    }

    /// The query's embedding, from a small cache: the same question is often embedded twice
    /// in a row (an answer's relevance probe, then its search) and popular queries repeat.
    async fn embed_query(&self, query: &str) -> Result<Arc<Vec<f32>>> {
        if let Some(v) = self.query_cache.get(query) {
            return Ok(v);
        }
        let (embedder, q) = (self.embedder.clone(), query.to_owned());
        // On a rayon worker, the model's parallel ops split work within the pool instead of
        // handing every op over from an outside thread.
        let (tx, rx) = tokio::sync::oneshot::channel();
        rayon::spawn(move || {
            let _ = tx.send(embedder.embed_query(&q));
        });
        let v = rx.await.map_err(|_| IndexError::Task("query embedding was dropped".into()))??;
        let v = Arc::new(v);
        self.query_cache.put(query, v.clone());
        Ok(v)
    }

    /// Turns ranked chunk ids into hits, dropping ids the database no longer has.
    async fn resolve(&self, ranked: Vec<(i64, f32)>, top_k: usize, distinct: bool) -> Result<Vec<Hit>> {
        let mut hits = Vec::with_capacity(top_k);
        let mut seen_docs = HashSet::new();
        // Fetch in slices: usually the first holds all we need.
        for part in ranked.chunks(top_k.max(16) * 2) {
            let ids: Vec<i64> = part.iter().map(|(id, _)| *id).collect();
            let scores: HashMap<i64, f32> = part.iter().copied().collect();
            for chunk in self.store.chunks_by_ids(&ids).await? {
                if distinct && !seen_docs.insert(chunk.document_id) {
                    continue;
                }
                let score = scores[&chunk.id];
                hits.push(Hit { chunk, score });
                if hits.len() == top_k {
                    return Ok(hits);
                }
            }
        }
        Ok(hits)
    }
}
