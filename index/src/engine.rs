//! The engine: the store plus, per collection, the vector and keyword indexes derived from
//! it, kept in step with it, and searched together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kb_inference::Embedder;
use serde::{Deserialize, Serialize};

use crate::fusion::{fuse_for_coverage, Fusion};
use crate::keyword::KeywordIndex;
use crate::query_batcher::QueryBatcher;
use crate::query_cache::QueryCache;
use crate::store::{ChunkRow, ChunkText, Collection, Store};
use crate::vector::{HnswParams, VectorIndex};
use crate::{IndexError, Result};

/// How the indexes are built and searched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexConfig {
    /// HNSW build and search parameters.
    pub hnsw: HnswParams,
    /// How hybrid search fuses the two result lists.
    pub fusion: Fusion,
    /// Rebuild a vector index when this share of its points is deleted.
    pub rebuild_deleted_share: f64,
    /// Query embeddings remembered (0: none).
    pub query_cache_size: usize,
    /// The vector graph is saved when it has this many unsaved changes ...
    pub save_every_chunks: usize,
    /// ... or when its oldest unsaved change is this old, whichever comes first.
    pub save_every_secs: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            hnsw: HnswParams::default(),
            fusion: Fusion::default(),
            rebuild_deleted_share: 0.2,
            query_cache_size: 1024,
            save_every_chunks: 20_000,
            save_every_secs: 30,
        }
    }
}

/// Which index a search asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// BM25 over the chunk text only.
    Keyword,
    /// Nearest neighbours of the query embedding only.
    Vector,
    /// Both, fused (the default).
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

/// One search of one collection.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// The query text.
    pub query: String,
    /// Hits wanted at most.
    pub top_k: usize,
    /// Which index to ask.
    pub mode: SearchMode,
    /// At most one hit (the best chunk) per document.
    pub distinct_documents: bool,
}

/// A search result: a stored chunk and its score.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The chunk, as the database holds it.
    pub chunk: ChunkRow,
    /// Higher is better; the scale depends on the mode (cosine, BM25 or fused).
    pub score: f32,
}

/// A collection's two derived indexes.
pub struct CollectionIndexes {
    collection: Collection,
    /// Swapped whole on rebuild; searches hold their own `Arc`.
    vectors: RwLock<Arc<VectorIndex>>,
    keywords: KeywordIndex,
    dir: PathBuf,
    /// Held by every change to the indexes (apply, reconcile, rebuild, save): one writer at a
    /// time, so a save never sees half an insert and a rebuild never loses a concurrent apply.
    /// Searches do not take it.
    writer: tokio::sync::Mutex<()>,
    /// Changes to the vector graph since it was last saved, and when the first of them came.
    unsaved: AtomicUsize,
    unsaved_since: Mutex<Option<Instant>>,
    /// An update failed part-way: the indexes may differ from the database until reconciled.
    stale: AtomicBool,
    /// The collection was deleted: nothing may be written for it any more.
    closed: AtomicBool,
}

impl CollectionIndexes {
    fn vectors(&self) -> Arc<VectorIndex> {
        self.vectors.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note_unsaved(&self, changes: usize) {
        if changes == 0 {
            return;
        }
        self.unsaved.fetch_add(changes, Ordering::AcqRel);
        self.unsaved_since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
    }

    /// Whether the graph is due for a save under `config`'s schedule.
    fn save_due(&self, config: &IndexConfig) -> bool {
        let unsaved = self.unsaved.load(Ordering::Acquire);
        let since = *self.unsaved_since.lock().unwrap_or_else(|e| e.into_inner());
        unsaved > 0
            && (unsaved >= config.save_every_chunks
                || since.is_some_and(|t| t.elapsed() >= Duration::from_secs(config.save_every_secs)))
    }

    /// The collection these indexes belong to.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }
}

/// The store, the embedder and every collection's open indexes: kb's retrieval core.
pub struct Engine {
    store: Store,
    embedder: Arc<dyn Embedder>,
    root: PathBuf,
    config: IndexConfig,
    open: RwLock<HashMap<i64, Arc<CollectionIndexes>>>,
    /// Serialises opening indexes: two tasks opening one collection would race for its
    /// keyword index's writer lock.
    opening: tokio::sync::Mutex<()>,
    query_cache: QueryCache,
    queries: QueryBatcher,
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
        let queries = QueryBatcher::new(embedder.clone());
        let engine = Self {
            store,
            queries,
            embedder,
            root: root.to_owned(),
            config,
            open: RwLock::default(),
            opening: tokio::sync::Mutex::new(()),
            query_cache,
        };
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

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The embedder of passages and queries.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The index configuration.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Creates an empty collection recorded as built by the configured embedder.
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

    /// Deletes a collection with its documents, chunks and index files.
    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let c = self.store.require_collection(name).await?;
        self.store.delete_collection(c.id).await?;
        let removed = self.open.write().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
        // Wait out a save or update in progress, and keep later ones from writing the files again.
        let _writer = match &removed {
            Some(ix) => {
                let guard = ix.writer.lock().await;
                ix.closed.store(true, Ordering::Release);
                Some(guard)
            }
            None => None,
        };
        let dir = self.collection_dir(c.id);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    fn collection_dir(&self, id: i64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// The open indexes of `c`, opening and reconciling them on first use.
    pub async fn indexes(&self, c: &Collection) -> Result<Arc<CollectionIndexes>> {
        if let Some(ix) = self.opened(c.id) {
            return Ok(ix);
        }
        let _opening = self.opening.lock().await;
        if let Some(ix) = self.opened(c.id) {
            return Ok(ix);
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
            writer: tokio::sync::Mutex::new(()),
            unsaved: AtomicUsize::new(0),
            unsaved_since: Mutex::new(None),
            stale: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        {
            let _writer = ix.writer.lock().await;
            self.reconcile(&ix).await?;
        }
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        Ok(open.entry(c.id).or_insert(ix).clone())
    }

    fn opened(&self, id: i64) -> Option<Arc<CollectionIndexes>> {
        self.open.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    fn all_open(&self) -> Vec<Arc<CollectionIndexes>> {
        self.open.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Brings both indexes to exactly the database's chunks: adds what they miss, drops what
    /// the database no longer has, rebuilds the vector graph when too much of it is deleted.
    /// The caller holds `ix.writer`.
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
        ix.stale.store(false, Ordering::Release);
        Ok(())
    }

    /// Builds the vector graph afresh from the database's vectors. The caller holds `ix.writer`.
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
    /// graph is saved on the schedule of [`Engine::maintain`] (or by [`Engine::flush`]); a
    /// crash before then is caught up from the database at start. When this fails the
    /// collection is marked for reconciliation, which `maintain` retries.
    pub async fn apply(&self, c: &Collection, added: Vec<(ChunkText, Vec<f32>)>, removed: Vec<i64>) -> Result<()> {
        let ix = self.indexes(c).await?;
        let _writer = ix.writer.lock().await;
        let changes = added.len() + removed.len();
        let result = self.apply_locked(&ix, added, removed).await;
        ix.note_unsaved(changes);
        if result.is_err() {
            ix.stale.store(true, Ordering::Release);
        }
        result
    }

    async fn apply_locked(
        &self,
        ix: &Arc<CollectionIndexes>,
        added: Vec<(ChunkText, Vec<f32>)>,
        removed: Vec<i64>,
    ) -> Result<()> {
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
            if !texts.is_empty() {
                ix2.keywords.insert(&texts)?;
            }
            Ok(())
        })
        .await?;
        if ix.vectors().deleted_share() > self.config.rebuild_deleted_share {
            let db: HashSet<i64> = self.store.chunk_ids(ix.collection.id).await?.into_iter().collect();
            self.rebuild_vectors(ix, &db).await?;
        }
        Ok(())
    }

    /// Deletes a document from the store and its chunks from both indexes.
    pub async fn delete_document(&self, c: &Collection, document_id: i64) -> Result<()> {
        let removed = self.store.delete_document(document_id).await?;
        self.apply(c, Vec::new(), removed).await
    }

    /// Persists the vector graph of `c` now (the keyword index commits on every change).
    pub async fn flush(&self, c: &Collection) -> Result<()> {
        let ix = self.indexes(c).await?;
        self.save(&ix).await
    }

    /// Persists every open collection's vector graph that has unsaved changes.
    pub async fn flush_all(&self) -> Result<()> {
        for ix in self.all_open() {
            if ix.unsaved.load(Ordering::Acquire) > 0 {
                self.save(&ix).await?;
            }
        }
        Ok(())
    }

    async fn save(&self, ix: &Arc<CollectionIndexes>) -> Result<()> {
        let _writer = ix.writer.lock().await;
        if ix.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        // Taken before the save: changes that come while it runs wait for the lock anyway.
        let unsaved = ix.unsaved.load(Ordering::Acquire);
        let v = ix.vectors();
        blocking(move || v.save()).await?;
        ix.unsaved.fetch_sub(unsaved, Ordering::AcqRel);
        *ix.unsaved_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Background upkeep, called every second or so by the service: reconciles collections
    /// whose last update failed and saves vector graphs that are due (every
    /// `save_every_chunks` changes or `save_every_secs`). Failures are the service's, not any
    /// document's: they are logged and tried again at the next call.
    pub async fn maintain(&self) {
        for ix in self.all_open() {
            if ix.stale.load(Ordering::Acquire) {
                let _writer = ix.writer.lock().await;
                if ix.closed.load(Ordering::Acquire) {
                    continue;
                }
                match self.reconcile(&ix).await {
                    Ok(()) => {
                        tracing::info!(collection = %ix.collection.name, "indexes reconciled after a failed update")
                    }
                    Err(e) => {
                        tracing::error!(collection = %ix.collection.name, error = %e, "reconciling indexes; will retry")
                    }
                }
            }
            if ix.save_due(&self.config) {
                if let Err(e) = self.save(&ix).await {
                    tracing::error!(collection = %ix.collection.name, error = %e, "saving the vector index; will retry");
                }
            }
        }
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

    /// For each hit, the share of `query`'s terms (IDF-weighted over the collection) that its
    /// passage holds, as the keyword index reads both ([`KeywordIndex::term_coverage`]).
    pub async fn term_coverage(&self, c: &Collection, query: &str, hits: &[Hit]) -> Result<Vec<f32>> {
        let ix = self.indexes(c).await?;
        let (query, texts): (String, Vec<String>) = (
            query.to_owned(),
            hits.iter()
                .map(|h| crate::contextual_text(h.chunk.title.as_deref(), &h.chunk.heading_path, &h.chunk.text))
                .collect(),
        );
        blocking(move || {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            ix.keywords.term_coverage(&query, &texts)
        })
        .await
    }

    /// The query's embedding, from a small cache: the same question is often embedded twice
    /// in a row (an answer's relevance probe, then its search) and popular queries repeat.
    async fn embed_query(&self, query: &str) -> Result<Arc<Vec<f32>>> {
        if let Some(v) = self.query_cache.get(query) {
            return Ok(v);
        }
        let v = self.queries.embed(query).await?;
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
