//! The ingest pipeline: detect, parse, chunk, embed, store, index. Used by the command line
//! (many files at once) and by the service's jobs (one document at a time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kb_index::store::{ChunkText, Document, DocumentStatus, NewChunk, NewDocument};
use kb_index::{contextual_text, Collection, Engine};
use sha2::{Digest, Sha256};

use crate::parse::{Attachment, PdfParser};
use crate::{chunk, detect, parse, ChunkerConfig, IngestError};

/// What happened to one file.
#[derive(Debug)]
pub enum Outcome {
    Indexed {
        document_id: i64,
        chunks: usize,
    },
    /// The collection already has these exact bytes.
    Unchanged {
        document_id: i64,
    },
    Failed {
        document_id: i64,
        error: IngestError,
    },
}

impl Outcome {
    /// The document this outcome is about.
    pub fn document_id(&self) -> i64 {
        match self {
            Self::Indexed { document_id, .. } | Self::Unchanged { document_id } | Self::Failed { document_id, .. } => {
                *document_id
            }
        }
    }
}

/// What [`Ingestor::register`] found for a file's bytes.
#[derive(Debug)]
pub enum Registered {
    /// A new document row, to be processed.
    New(Document),
    /// The collection's document with the same bytes; nothing was added.
    Duplicate(Document),
}

/// A document row waiting for its bytes to be processed.
pub struct Pending {
    pub document: Document,
    pub bytes: Vec<u8>,
}

/// A document parsed and chunked, not yet embedded.
struct Prepared {
    document: Document,
    title: Option<String>,
    format: &'static str,
    extractor: Option<String>,
    chunks: Vec<crate::Chunk>,
    attachments: Vec<Attachment>,
}

pub struct Ingestor {
    engine: Arc<Engine>,
    /// Where passages are embedded; see [`Ingestor::yield_to_queries`].
    pool: Option<Arc<rayon::ThreadPool>>,
    pdf: PdfParser,
    chunker: ChunkerConfig,
    embed_nanos: AtomicU64,
    embedded_chunks: AtomicU64,
}

/// Time spent so far in the embedding stage, for throughput reports and metrics.
#[derive(Debug, Clone, Copy)]
pub struct EmbedStats {
    pub time: Duration,
    pub chunks: u64,
}

pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A pool as wide as the machine for passage embedding.
fn background_pool() -> Option<rayon::ThreadPool> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    match rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("kb-ingest-{i}")).build() {
        Ok(pool) => Some(pool),
        Err(e) => {
            tracing::warn!(error = %e, "no pool of its own for ingest; embedding on the shared one");
            None
        }
    }
}

/// Lowers the calling thread's CPU priority to nice 10: it then gets about a tenth of a core
/// that normal-priority work also wants, and all of an idle one.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; on Linux PRIO_PROCESS with a
    // thread id (gettid) changes that one thread's nice value.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if rc != 0 {
        tracing::debug!("could not lower the ingest thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

fn format_name(f: detect::Format) -> &'static str {
    f.name()
}

impl Ingestor {
    pub fn new(engine: Arc<Engine>, pdf: PdfParser, chunker: ChunkerConfig) -> Self {
        Self {
            engine,
            pool: background_pool().map(Arc::new),
            pdf,
            chunker,
            embed_nanos: AtomicU64::new(0),
            embedded_chunks: AtomicU64::new(0),
        }
    }

    /// Lowers the priority of the threads that embed passages, so that searches (embedded on
    /// a pool of their own at normal priority) take the cores first while an upload runs.
    /// For the service; the command line's ingestion has the machine to itself.
    pub fn yield_to_queries(&self) {
        if let Some(pool) = &self.pool {
            pool.broadcast(|_| lower_priority());
        }
    }

    pub fn embed_stats(&self) -> EmbedStats {
        EmbedStats {
            time: Duration::from_nanos(self.embed_nanos.load(Ordering::Relaxed)),
            chunks: self.embedded_chunks.load(Ordering::Relaxed),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Registers a file as a document of `c`, or recognises bytes the collection already has.
    /// `source_path` is where a service upload waits for its job.
    /// `Err` is a store failure; a duplicate is [`Registered::Duplicate`].
    pub async fn register(
        &self,
        c: &Collection,
        filename: &str,
        bytes_hash: &str,
        size: usize,
        status: DocumentStatus,
        source_path: Option<&str>,
    ) -> Result<Registered, IngestError> {
        let store = self.engine.store();
        if let Some(existing) = store.document_by_hash(c.id, bytes_hash).await? {
            return Ok(Registered::Duplicate(existing));
        }
        let doc = store
            .insert_document(&NewDocument {
                collection_id: c.id,
                filename,
                content_hash: bytes_hash,
                size_bytes: size as i64,
                status,
                source_path,
                parent_id: None,
            })
            .await?;
        Ok(Registered::New(doc))
    }

    /// Ingests files given as (name, bytes): the command line's path.
    pub async fn ingest_files(
        &self,
        c: &Collection,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Outcome>, IngestError> {
        let mut outcomes = Vec::with_capacity(files.len());
        let mut pending = Vec::new();
        let mut slots = Vec::new();
        for (name, bytes) in files {
            let hash = content_hash(&bytes);
            match self.register(c, &name, &hash, bytes.len(), DocumentStatus::Running, None).await? {
                Registered::New(document) => {
                    slots.push(outcomes.len());
                    outcomes.push(None);
                    pending.push(Pending { document, bytes });
                }
                Registered::Duplicate(existing) => outcomes.push(Some(Outcome::Unchanged { document_id: existing.id })),
            }
        }
        // `run` lists the files' outcomes first, then their attachments' (their documents say).
        for (slot, outcome) in slots.into_iter().zip(self.run(c, pending).await?) {
            outcomes[slot] = Some(outcome);
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Processes registered documents as one batch and records each one's result in the
    /// store: all are parsed at once, their chunks embedded together (full, length-sorted
    /// batches for the encoder) and applied to both indexes in one update (one keyword
    /// commit). Each document's chunks are stored in a transaction of its own, and a failure of
    /// one document is that document's outcome; documents are marked done together once the
    /// indexes have their chunks. The indexes are derived: a failure to update
    /// them is logged and repaired from the database by the engine, never a document's error.
    /// The `Err` of this function is an embedding failure, which stops the whole batch.
    pub async fn run(&self, c: &Collection, pending: Vec<Pending>) -> Result<Vec<Outcome>, IngestError> {
        let store = self.engine.store();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(pending.len());
        let mut prepared = Vec::new();
        self.prepare_all(pending, &mut outcomes, &mut prepared).await?;
        // Attachments become documents of their own, after their messages' outcomes and in the
        // same batch (their passages join the same embedding batches).
        let mut carried = Vec::new();
        for (_, p) in prepared.iter_mut() {
            for a in std::mem::take(&mut p.attachments) {
                carried.push(self.register_attachment(c, &p.document, a).await?);
            }
        }
        self.prepare_all(carried, &mut outcomes, &mut prepared).await?;

        let texts: Vec<String> = prepared
            .iter()
            .flat_map(|(_, p)| p.chunks.iter().map(|k| contextual_text(p.title.as_deref(), &k.heading_path, &k.text)))
            .collect();
        let vectors = self.embed(texts).await?;

        let mut vectors = vectors.into_iter();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut replaced_docs = Vec::new();
        for (slot, p) in prepared {
            let document_id = p.document.id;
            let new_chunks: Vec<NewChunk> = p
                .chunks
                .iter()
                .map(|k| NewChunk {
                    text: k.text.clone(),
                    heading_path: k.heading_path.clone(),
                    page: k.page,
                    location: k.location.clone(),
                    start: k.start,
                    end: k.end,
                    embedding: vectors.next().unwrap_or_default(),
                })
                .collect();
            // One transaction per document: the chunks, title, format and extractor land together,
            // and a failure is this document's alone.
            let stored = store
                .store_chunks(document_id, c.id, p.title.as_deref(), p.format, p.extractor.as_deref(), &new_chunks)
                .await;
            let (ids, old) = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    let error = IngestError::from(e);
                    // A job records its own result too; an attachment or a command-line file
                    // has only this.
                    if let Err(e) =
                        store.set_document_status(document_id, DocumentStatus::Failed, Some(&error.to_string())).await
                    {
                        tracing::error!(document = document_id, error = %e, "recording a failed document");
                    }
                    outcomes[slot] = Some(Outcome::Failed { document_id, error });
                    continue;
                }
            };
            removed.extend(old);
            for (id, k) in ids.into_iter().zip(new_chunks) {
                let text =
                    ChunkText { id, document_id, title: p.title.clone(), heading_path: k.heading_path, text: k.text };
                added.push((text, k.embedding));
            }
            // A new version replaces the collection's other documents of the same name.
            match store.documents_named(c.id, &p.document.filename, document_id).await {
                Ok(older) => replaced_docs.extend(older),
                Err(e) => tracing::error!(document = document_id, error = %e, "looking up older versions"),
            }
            outcomes[slot] = Some(Outcome::Indexed { document_id, chunks: p.chunks.len() });
        }
        if let Err(e) = self.engine.apply(c, added, removed).await {
            tracing::error!(collection = %c.name, error = %e, "updating the indexes failed; they will be reconciled from the database");
        }
        // Done once searchable: the chunks are in the database, and in the indexes (or, after
        // a failed update, on their way there from the database).
        let stored: Vec<i64> = outcomes
            .iter()
            .flatten()
            .filter_map(|o| match o {
                Outcome::Indexed { document_id, .. } => Some(*document_id),
                _ => None,
            })
            .collect();
        if let Err(e) = store.mark_done(&stored).await {
            for slot in outcomes.iter_mut() {
                if let Some(Outcome::Indexed { document_id, .. }) = slot {
                    let error = IngestError::Task(format!("recording the document as done: {e}"));
                    *slot = Some(Outcome::Failed { document_id: *document_id, error });
                }
            }
        }
        for old in replaced_docs {
            tracing::info!(document = old.id, filename = %old.filename, "replaced by a new version");
            if let Err(e) = self.engine.delete_document(c, old.id).await {
                tracing::error!(document = old.id, error = %e, "removing the replaced version");
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Parses and chunks documents in parallel; each one's outcome slot is pushed in order,
    /// empty for a document ready to embed (listed in `prepared` with its slot), filled for one
    /// that failed (and marked failed in the store).
    async fn prepare_all(
        &self,
        pending: Vec<Pending>,
        outcomes: &mut Vec<Option<Outcome>>,
        prepared: &mut Vec<(usize, Prepared)>,
    ) -> Result<(), IngestError> {
        let parsed = futures_util::future::join_all(pending.into_iter().map(|p| {
            let document_id = p.document.id;
            async move { (document_id, self.prepare(p).await) }
        }))
        .await;
        for (document_id, result) in parsed {
            match result {
                Ok(ready) => {
                    outcomes.push(None);
                    prepared.push((outcomes.len() - 1, ready));
                }
                Err(error) => {
                    self.engine
                        .store()
                        .set_document_status(document_id, DocumentStatus::Failed, Some(&error.to_string()))
                        .await?;
                    outcomes.push(Some(Outcome::Failed { document_id, error }));
                }
            }
        }
        Ok(())
    }

    /// A document row for a file carried by `parent`, named "PARENT/NAME". Never a duplicate
    /// of another document: it lives and goes with its message.
    async fn register_attachment(
        &self,
        c: &Collection,
        parent: &Document,
        a: Attachment,
    ) -> Result<Pending, IngestError> {
        let filename = format!("{}/{}", parent.filename, a.name);
        let document = self
            .engine
            .store()
            .insert_document(&NewDocument {
                collection_id: c.id,
                filename: &filename,
                content_hash: &content_hash(&a.bytes),
                size_bytes: a.bytes.len() as i64,
                status: DocumentStatus::Running,
                source_path: None,
                parent_id: Some(parent.id),
            })
            .await?;
        Ok(Pending { document, bytes: a.bytes })
    }

    /// Embeds passages off the executor, counting the time for throughput reports.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, IngestError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (embedder, pool) = (self.engine.embedder().clone(), self.pool.clone());
        let started = Instant::now();
        let count = texts.len() as u64;
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            match pool {
                Some(pool) => pool.install(|| embedder.embed_passages(&refs)),
                None => embedder.embed_passages(&refs),
            }
        })
        .await
        .map_err(|e| IngestError::Task(format!("embedding: {e}")))??;
        self.embed_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.embedded_chunks.fetch_add(count, Ordering::Relaxed);
        Ok(vectors)
    }

    /// Detects, parses and chunks one document (blocking work, off the executor).
    async fn prepare(&self, p: Pending) -> Result<Prepared, IngestError> {
        let pdf = self.pdf.clone();
        let chunker = self.chunker.clone();
        let embedder = self.engine.embedder().clone();
        tokio::task::spawn_blocking(move || {
            let format = detect::detect_format(&p.bytes, &p.document.filename)?;
            let doc = parse::parse(&p.bytes, format, &p.document.filename, &pdf)?;
            let chunks = chunk::chunk_document(&doc, embedder.tokenizer(), &chunker);
            if chunks.is_empty() {
                return Err(IngestError::NoText);
            }
            let (extractor, attachments) = (doc.extractor, doc.attachments);
            Ok(Prepared {
                document: p.document,
                title: doc.title,
                format: format_name(format),
                extractor,
                chunks,
                attachments,
            })
        })
        .await
        .map_err(|e| IngestError::Task(format!("parsing: {e}")))?
    }
}
