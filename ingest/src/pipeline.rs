//! The ingest pipeline: detect, parse, chunk, embed, store, index. Used by the command line
//! (many files at once) and by the service's jobs (one document at a time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kb_index::store::{ChunkText, Document, DocumentStatus, NewChunk, NewDocument};
use kb_index::{contextual_text, Collection, Engine};
use sha2::{Digest, Sha256};

use crate::parse::PdfParser;
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
}

pub struct Ingestor {
    engine: Arc<Engine>,
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

fn format_name(f: detect::Format) -> &'static str {
    f.name()
}

impl Ingestor {
    pub fn new(engine: Arc<Engine>, pdf: PdfParser, chunker: ChunkerConfig) -> Self {
        Self { engine, pdf, chunker, embed_nanos: AtomicU64::new(0), embedded_chunks: AtomicU64::new(0) }
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
    pub async fn register(
        &self,
        c: &Collection,
        filename: &str,
        bytes_hash: &str,
        size: usize,
        status: DocumentStatus,
        source_path: Option<&str>,
    ) -> Result<Result<Document, Document>, IngestError> {
        let store = self.engine.store();
        if let Some(existing) = store.document_by_hash(c.id, bytes_hash).await? {
            return Ok(Err(existing));
        }
        let doc = store
            .insert_document(&NewDocument {
                collection_id: c.id,
                filename,
                content_hash: bytes_hash,
                size_bytes: size as i64,
                status,
                source_path,
            })
            .await?;
        Ok(Ok(doc))
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
                Ok(document) => {
                    slots.push(outcomes.len());
                    outcomes.push(None);
                    pending.push(Pending { document, bytes });
                }
                Err(existing) => outcomes.push(Some(Outcome::Unchanged { document_id: existing.id })),
            }
        }
        for (slot, outcome) in slots.into_iter().zip(self.run(c, pending).await?) {
            outcomes[slot] = Some(outcome);
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Processes registered documents together (one embedding pass, one index commit) and
    /// records each one's result in the store. Errors of single documents are their outcomes;
    /// the `Err` of this function is a store or index failure that stops the batch.
    pub async fn run(&self, c: &Collection, pending: Vec<Pending>) -> Result<Vec<Outcome>, IngestError> {
        let store = self.engine.store();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(pending.len());
        let mut prepared = Vec::new();
        for p in pending {
            let document_id = p.document.id;
            match self.prepare(p).await {
                Ok(ready) => {
                    outcomes.push(None);
                    prepared.push((outcomes.len() - 1, ready));
                }
                Err(error) => {
                    store.set_document_status(document_id, DocumentStatus::Failed, Some(&error.to_string())).await?;
                    outcomes.push(Some(Outcome::Failed { document_id, error }));
                }
            }
        }

        let texts: Vec<String> = prepared
            .iter()
            .flat_map(|(_, p)| p.chunks.iter().map(|k| contextual_text(p.title.as_deref(), &k.heading_path, &k.text)))
            .collect();
        let embedder = self.engine.embedder().clone();
        let started = Instant::now();
        let count = texts.len() as u64;
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed_passages(&refs)
        })
        .await
        .map_err(|e| IngestError::Task(format!("embedding: {e}")))??;
        self.embed_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.embedded_chunks.fetch_add(count, Ordering::Relaxed);

        let mut vectors = vectors.into_iter();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut replaced_docs = Vec::new();
        for (slot, p) in prepared {
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
            let (ids, old) = store.store_chunks(p.document.id, c.id, p.title.as_deref(), p.format, &new_chunks).await?;
            removed.extend(old);
            if let Some(extractor) = &p.extractor {
                store.set_document_extractor(p.document.id, extractor).await?;
            }
            for (id, k) in ids.into_iter().zip(new_chunks) {
                let text = ChunkText {
                    id,
                    document_id: p.document.id,
                    title: p.title.clone(),
                    heading_path: k.heading_path,
                    text: k.text,
                };
                added.push((text, k.embedding));
            }
            // A new version replaces the collection's other documents of the same name.
            replaced_docs.extend(store.documents_named(c.id, &p.document.filename, p.document.id).await?);
            outcomes[slot] = Some(Outcome::Indexed { document_id: p.document.id, chunks: p.chunks.len() });
        }
        self.engine.apply(c, added, removed).await?;
        for old in replaced_docs {
            tracing::info!(document = old.id, filename = %old.filename, "replaced by a new version");
            self.engine.delete_document(c, old.id).await?;
        }
        Ok(outcomes.into_iter().flatten().collect())
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
            let extractor = doc.extractor;
            Ok(Prepared { document: p.document, title: doc.title, format: format_name(format), extractor, chunks })
        })
        .await
        .map_err(|e| IngestError::Task(format!("parsing: {e}")))?
    }
}
