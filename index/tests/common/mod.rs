//! A deterministic test embedder, an in-memory SQLite store, and documents written the way the
//! ingest pipeline writes them: rows and chunks to the store first, then `Engine::apply`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use kb_index::keyword::KeywordIndex;
use kb_index::store::{ChunkText, DocumentStatus, NewChunk, NewDocument};
use kb_index::vector::VectorIndex;
use kb_index::{Collection, Engine, HnswParams, IndexConfig, SearchMode, SearchRequest, Store};
use kb_inference::{Embedder, ModelError};
use tokenizers::Tokenizer;

/// Vector dimension of [`WordHashEmbedder`].
const DIM: usize = 256;

/// Bag of words: each lower-cased word adds one to the bucket its FNV-1a hash picks, and the
/// vector is scaled to unit length. Texts that share words are close and others nearly
/// orthogonal: enough to tell which chunk a query names, deterministically, with no model.
pub struct WordHashEmbedder {
    tokenizer: Tokenizer,
}

impl WordHashEmbedder {
    pub fn new() -> Self {
        // The engine never tokenizes (coverage is fixed below); a word-level tokenizer
        // satisfies the trait.
        let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}}"#;
        Self { tokenizer: Tokenizer::from_str(json).expect("word-level tokenizer") }
    }

    fn embed(text: &str) -> Vec<f32> {
        let mut v = vec![0f32; DIM];
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let hash = word
                .to_lowercase()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
            v[(hash % DIM as u64) as usize] += 1.0;
        }
        if v.iter().all(|x| *x == 0.0) {
            v[0] = 1.0; // No words: some direction, never the zero vector.
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }
}

impl Embedder for WordHashEmbedder {
    fn id(&self) -> &str {
        "test-word-hash-256"
    }
    fn dim(&self) -> usize {
        DIM
    }
    fn max_tokens(&self) -> usize {
        512
    }
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(texts.iter().map(|t| Self::embed(t)).collect())
    }
    fn coverage(&self, _text: &str) -> f32 {
        1.0
    }
}

/// A fresh in-memory SQLite database (shared by the pool's connections), migrated.
pub async fn memory_store() -> Store {
    // One named, shared-cache database per call: the pool's connections must all see the
    // migrated schema (`sqlite::memory:` gives each connection a database of its own).
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = format!("sqlite:file:kbtest-{}-{n}?mode=memory&cache=shared", std::process::id());
    Store::open(&url).await.expect("in-memory SQLite store")
}

/// An engine over `store` with its indexes under `root`: what a start of `kb` opens.
pub async fn open_engine(store: &Store, root: &Path) -> Engine {
    let embedder: Arc<dyn Embedder> = Arc::new(WordHashEmbedder::new());
    Engine::open(store.clone(), embedder, root, IndexConfig::default()).await.expect("engine")
}

/// Stores a document of `chunks` (texts) in `c`: the rows, then the chunks with their vectors.
/// Returns the document id and its chunks, ready for `Engine::apply`; the indexes are not told.
pub async fn store_document(
    store: &Store,
    c: &Collection,
    filename: &str,
    chunks: &[&str],
) -> (i64, Vec<(ChunkText, Vec<f32>)>) {
    let doc = store
        .insert_document(&NewDocument {
            collection_id: c.id,
            filename,
            content_hash: filename,
            size_bytes: chunks.iter().map(|t| t.len() as i64).sum(),
            status: DocumentStatus::Running,
            source_path: None,
            parent_id: None,
        })
        .await
        .expect("document row");
    let new: Vec<NewChunk> = chunks
        .iter()
        .map(|t| NewChunk {
            text: (*t).to_owned(),
            heading_path: Vec::new(),
            page: None,
            location: None,
            start: 0,
            end: t.len(),
            embedding: WordHashEmbedder::embed(t),
        })
        .collect();
    let (ids, _) = store.store_chunks(doc.id, c.id, None, "text", None, &new).await.expect("chunks");
    let added = ids
        .iter()
        .zip(new)
        .map(|(id, n)| {
            let text = ChunkText { id: *id, document_id: doc.id, title: None, heading_path: Vec::new(), text: n.text };
            (text, n.embedding)
        })
        .collect();
    (doc.id, added)
}

/// Stores a document and applies it to the indexes, as the ingest pipeline does.
pub async fn add_document(engine: &Engine, c: &Collection, filename: &str, chunks: &[&str]) -> i64 {
    let (id, added) = store_document(engine.store(), c, filename, chunks).await;
    engine.apply(c, added, Vec::new()).await.expect("apply");
    engine.store().mark_done(&[id]).await.expect("mark done");
    id
}

/// The chunk texts `query` finds in `mode`, best first (every chunk, not one per document).
pub async fn found(engine: &Engine, c: &Collection, query: &str, mode: SearchMode) -> Vec<String> {
    let req = SearchRequest { query: query.into(), top_k: 100, mode, distinct_documents: false };
    engine.search(c, &req).await.expect("search").into_iter().map(|h| h.chunk.text).collect()
}

/// What the saved indexes of `c` under `root` hold: (live vector ids, keyword ids), read from
/// disk with the engine closed.
pub fn saved_ids(root: &Path, c: &Collection) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let dir = root.join(c.id.to_string());
    let vectors = VectorIndex::load(&dir.join("vectors"), DIM, &HnswParams::default()).expect("saved vector index");
    let keywords = KeywordIndex::open(&dir.join("keywords")).expect("keyword index");
    (vectors.live_ids().into_iter().collect(), keywords.ids().expect("keyword ids").into_iter().collect())
}

/// Every chunk id the database holds for `c`.
pub async fn stored_ids(store: &Store, c: &Collection) -> BTreeSet<i64> {
    store.chunk_ids(c.id).await.expect("chunk ids").into_iter().collect()
}
