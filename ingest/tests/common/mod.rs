//! Shared helpers: fixture paths, the real tokenizer, the worker binary, chunk checks.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use kb_ingest::chunk::{chunk_document, ChunkerConfig};
use kb_ingest::parse::PdfParser;
use kb_ingest::{Chunk, ParsedDocument};
use tokenizers::Tokenizer;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// The embedder's tokenizer, exactly as shipped (its truncation/padding settings included).
pub fn tokenizer() -> Tokenizer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(path.exists(), "tokenizer missing at {}: run scripts/fetch-models.sh first", path.display());
    Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
}

/// Counts tokens the plain way (no truncation, no padding, no special tokens).
pub fn count_tokens(tokenizer: &Tokenizer, text: &str) -> usize {
    let mut t = tokenizer.clone();
    t.with_truncation(None).expect("disable truncation");
    t.with_padding(None);
    t.encode(text, false).expect("encode").len()
}

pub fn pdf_parser() -> PdfParser {
    PdfParser::new(env!("CARGO_BIN_EXE_kb-pdf-worker"), Vec::new()).with_timeout(Duration::from_secs(60))
}

pub fn block_texts(doc: &ParsedDocument) -> Vec<&str> {
    doc.blocks.iter().map(|b| &doc.text[b.start..b.end]).collect()
}

/// Chunks and checks every invariant the chunker promises.
pub fn chunk_checked(doc: &ParsedDocument, tokenizer: &Tokenizer, config: &ChunkerConfig) -> Vec<Chunk> {
    let chunks = chunk_document(doc, tokenizer, config);
    check_invariants(doc, &chunks, tokenizer, config);
    chunks
}

pub fn check_invariants(doc: &ParsedDocument, chunks: &[Chunk], tokenizer: &Tokenizer, config: &ChunkerConfig) {
    assert!(!chunks.is_empty(), "no chunks for a document with text");
    let mut clean = tokenizer.clone();
    clean.with_truncation(None).expect("disable truncation");
    clean.with_padding(None);
    for (i, c) in chunks.iter().enumerate() {
        assert!(!c.text.trim().is_empty(), "chunk {i} is empty");
        assert_eq!(c.text, doc.text[c.start..c.end], "chunk {i} text differs from its span");
        let recount = clean.encode(c.text.as_str(), false).expect("encode").len();
        assert_eq!(c.tokens, recount, "chunk {i} token count wrong: {:?}", c.text);
        assert!(c.tokens <= config.target_tokens, "chunk {i} has {} tokens > {}", c.tokens, config.target_tokens);
        if i > 0 {
            assert!(c.start > chunks[i - 1].start, "chunks out of order at {i}");
        }
        // Every block the chunk touches is on the chunk's page, and every body block is in
        // the chunk's section (heading blocks may be enclosing parents).
        for b in doc.blocks.iter().filter(|b| b.start < c.end && c.start < b.end) {
            assert_eq!(b.page, c.page, "chunk {i} spans pages: {:?}", c.text);
            if !b.is_heading {
                assert_eq!(b.heading_path, c.heading_path, "chunk {i} spans sections: {:?}", c.text);
            } else {
                assert!(c.heading_path.starts_with(&b.heading_path), "chunk {i} has a foreign heading");
            }
        }
        // Overlap only within a section and page.
        if i > 0 && c.start < chunks[i - 1].end {
            let p = &chunks[i - 1];
            assert_eq!((&p.heading_path, p.page), (&c.heading_path, c.page), "overlap across sections at {i}");
        }
    }
    // Nothing lost: every non-whitespace byte of every block is in some chunk.
    for b in &doc.blocks {
        for (off, ch) in doc.text[b.start..b.end].char_indices() {
            let pos = b.start + off;
            if !ch.is_whitespace() {
                assert!(
                    chunks.iter().any(|c| c.start <= pos && pos < c.end),
                    "text at byte {pos} ({ch:?}) is in no chunk"
                );
            }
        }
    }
    // A chunk is never just a heading when its section has body text after it.
    for c in chunks {
        // Every block it overlaps: a chunk holding a heading and the start of a long paragraph
        // holds body text although the paragraph is not inside it whole.
        let inside: Vec<_> = doc.blocks.iter().filter(|b| b.start < c.end && b.end > c.start).collect();
        if !inside.is_empty() && inside.iter().all(|b| b.is_heading) {
            let has_body = doc.blocks.iter().any(|b| !b.is_heading && b.heading_path == c.heading_path);
            assert!(!has_body, "heading stands alone: {:?}", c.text);
        }
    }
}
