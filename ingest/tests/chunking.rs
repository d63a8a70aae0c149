//! Chunker behaviour with the real embedder tokenizer.

use std::time::Instant;

use crate::common::*;
use kb_ingest::chunk::{chunk_document, ChunkerConfig};
use kb_ingest::{Block, ParsedDocument};

/// Builds a document from (text, page, heading path, is_heading) blocks.
fn doc(blocks: &[(&str, Option<u32>, &[&str], bool)]) -> ParsedDocument {
    let mut d = ParsedDocument::default();
    for &(text, page, path, is_heading) in blocks {
        if !d.text.is_empty() {
            d.text.push_str("\n\n");
        }
        let start = d.text.len();
        d.text.push_str(text);
        d.blocks.push(Block {
            start,
            end: d.text.len(),
            page,
            location: None,
            heading_path: path.iter().map(|s| s.to_string()).collect(),
            is_heading,
        });
    }
    d
}

fn sentence(i: usize) -> String {
    format!("Sentence number {i} describes the calibration of valve {i} in plant seven.")
}

fn paragraph(from: usize, n: usize) -> String {
    (from..from + n).map(sentence).collect::<Vec<_>>().join(" ")
}

#[test]
fn packs_paragraphs_and_overlaps_within_a_section() {
    let tok = tokenizer();
    let paras: Vec<String> = (0..12).map(|p| paragraph(p * 5, 5)).collect();
    let mut blocks: Vec<(&str, Option<u32>, &[&str], bool)> = vec![("Valves", None, &["Valves"], true)];
    blocks.extend(paras.iter().map(|p| (p.as_str(), None, &["Valves"][..], false)));
    let d = doc(&blocks);
    let config = ChunkerConfig { target_tokens: 120, overlap_tokens: 20 };
    let chunks = chunk_checked(&d, &tok, &config);
    assert!(chunks.len() >= 5, "{}", chunks.len());
    assert!(chunks[0].text.starts_with("Valves\n\nSentence number 0 "), "heading opens the first chunk");
    for pair in chunks.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.start < a.end, "no overlap between {:?} and {:?}", a.text, b.text);
        let shared = &d.text[b.start..a.end];
        let shared_tokens = count_tokens(&tok, shared);
        assert!(shared_tokens > 0 && shared_tokens <= config.overlap_tokens, "overlap of {shared_tokens}: {shared:?}");
    }
    // Paragraph boundaries are preferred: each chunk's new text begins at a paragraph start.
    let para_starts: Vec<usize> = d.blocks.iter().map(|b| b.start).collect();
    for pair in chunks.windows(2) {
        let new_from = pair[0].end + 2; // past the "\n\n" that ends the previous block
        assert!(para_starts.contains(&new_from), "cut inside a paragraph that fits a chunk");
    }
    // Most of each chunk is used.
    let avg = chunks.iter().map(|c| c.tokens).sum::<usize>() / chunks.len();
    assert!(avg > config.target_tokens / 2, "chunks too small: {avg}");
}

#[test]
fn long_paragraph_is_cut_at_sentences() {
    let tok = tokenizer();
    let long = paragraph(0, 40);
    let d = doc(&[(long.as_str(), None, &[], false)]);
    let config = ChunkerConfig { target_tokens: 64, overlap_tokens: 24 };
    let chunks = chunk_checked(&d, &tok, &config);
    assert!(chunks.len() > 8);
    for c in &chunks {
        assert!(c.text.starts_with("Sentence number ") && c.text.ends_with("plant seven."), "{:?}", c.text);
    }
    for pair in chunks.windows(2) {
        // Overlap is the previous chunk's last whole sentence.
        let last_sentence = pair[0].text.rsplit_once(". ").map_or(pair[0].text.as_str(), |(_, s)| s);
        assert!(pair[1].text.starts_with(last_sentence), "{:?} / {:?}", pair[0].text, pair[1].text);
    }
}

#[test]
fn sentence_longer_than_a_chunk_is_cut_at_tokens() {
    let tok = tokenizer();
    let words: Vec<String> = (0..900).map(|i| format!("word{i}")).collect();
    let giant = words.join(" ");
    let d = doc(&[("Intro sentence.", Some(1), &[], false), (giant.as_str(), Some(1), &[], false)]);
    let config = ChunkerConfig { target_tokens: 100, overlap_tokens: 10 };
    let chunks = chunk_checked(&d, &tok, &config);
    // 900 words of ~3 tokens each: at least 27 chunks, none over the target.
    assert!(chunks.len() >= 27, "{}", chunks.len());
    for c in &chunks[1..chunks.len() - 1] {
        assert!(c.text.starts_with("word"), "cut inside a word: {:?}", &c.text[..20]);
        assert!(c.tokens > 50, "fallback pieces should be well filled: {}", c.tokens);
    }
    assert!(chunks.last().unwrap().text.ends_with("word899"));
    // Inside the giant sentence consecutive chunks overlap by whole words, within the budget.
    for pair in chunks[1..].windows(2) {
        let shared = &d.text[pair[1].start..pair[0].end];
        assert!(pair[1].start < pair[0].end, "no overlap inside the long sentence");
        assert!(count_tokens(&tok, shared) <= config.overlap_tokens, "{shared:?}");
    }
}

#[test]
fn chunks_never_span_pages_or_sections() {
    let tok = tokenizer();
    let p = paragraph(0, 3);
    let d = doc(&[
        (p.as_str(), Some(1), &[], false),
        (p.as_str(), Some(2), &[], false),
        (p.as_str(), Some(2), &[], false),
        (p.as_str(), Some(3), &[], false),
    ]);
    let chunks = chunk_checked(&d, &tok, &ChunkerConfig::default());
    assert_eq!(chunks.iter().map(|c| c.page).collect::<Vec<_>>(), [Some(1), Some(2), Some(3)]);

    let d = doc(&[
        ("Guide", None, &["Guide"], true),
        ("Setup", None, &["Guide", "Setup"], true),
        ("Install it.", None, &["Guide", "Setup"], false),
        ("Usage", None, &["Guide", "Usage"], true),
        ("Run it.", None, &["Guide", "Usage"], false),
        ("Appendix", None, &["Appendix"], true),
    ]);
    let chunks = chunk_checked(&d, &tok, &ChunkerConfig::default());
    let got: Vec<(&str, Vec<String>)> = chunks.iter().map(|c| (c.text.as_str(), c.heading_path.clone())).collect();
    assert_eq!(
        got,
        [
            ("Guide\n\nSetup\n\nInstall it.", vec!["Guide".to_string(), "Setup".to_string()]),
            ("Usage\n\nRun it.", vec!["Guide".to_string(), "Usage".to_string()]),
            // A trailing heading with nothing under it is still kept.
            ("Appendix", vec!["Appendix".to_string()]),
        ]
    );
}

#[test]
fn counts_past_the_tokenizers_own_truncation() {
    // The shipped tokenizer.json truncates and pads to 128; chunk counts must not.
    let tok = tokenizer();
    assert!(tok.get_truncation().is_some() && tok.get_padding().is_some(), "fixture assumption");
    let long = paragraph(0, 30);
    let d = doc(&[(long.as_str(), None, &[], false)]);
    let chunks = chunk_document(&d, &tok, &ChunkerConfig { target_tokens: 1000, overlap_tokens: 0 });
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].tokens, count_tokens(&tok, &long));
    assert!(chunks[0].tokens > 300);
}

#[test]
fn empty_and_odd_inputs() {
    let tok = tokenizer();
    assert!(chunk_document(&ParsedDocument::default(), &tok, &ChunkerConfig::default()).is_empty());
    // Blocks with offsets outside the text are ignored rather than trusted.
    let mut d = doc(&[("Real text here.", None, &[], false)]);
    d.blocks.push(Block { start: 5, end: 500, page: None, location: None, heading_path: vec![], is_heading: false });
    let chunks = chunk_document(&d, &tok, &ChunkerConfig::default());
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].text, "Real text here.");
    // Non-ASCII text keeps exact byte offsets.
    let d = doc(&[("Ärger über Öl. Ça coûte 5 €. 東京は大きい。次の文。", None, &[], false)]);
    chunk_checked(&d, &tok, &ChunkerConfig { target_tokens: 8, overlap_tokens: 2 });
}

#[test]
fn scifact_sized_corpus_chunks_in_seconds() {
    let tok = tokenizer();
    // 5,000 abstracts of ~250 words, the size of SciFact's corpus.
    let docs: Vec<ParsedDocument> = (0..5000)
        .map(|i| {
            let title = format!("Study {i} of protein folding");
            let body = paragraph(i, 12);
            let more = paragraph(i + 1, 10);
            doc(&[
                (title.as_str(), None, &[], false),
                (body.as_str(), None, &[], false),
                (more.as_str(), None, &[], false),
            ])
        })
        .collect();
    let started = Instant::now();
    let total: usize = docs.iter().map(|d| chunk_document(d, &tok, &ChunkerConfig::default()).len()).sum();
    let elapsed = started.elapsed();
    eprintln!("chunked 5000 documents into {total} chunks in {elapsed:?}");
    assert!(total >= 5000);
    assert!(elapsed.as_secs() < 60, "chunking too slow: {elapsed:?}");
}

/// A Chinese sentence of some twenty characters; the number makes each one distinct.
fn chinese_sentence(i: usize) -> String {
    format!("第{i}号阀门的校准记录由七号车间的值班工程师在每周一上午填写。")
}

#[test]
fn chinese_text_is_cut_at_its_own_sentence_ends() {
    let tok = tokenizer();
    // Two paragraphs of Chinese sentences with no space after their full stops, a heading,
    // and a sentence with no punctuation that is longer than a chunk.
    let first: String = (0..30).map(chinese_sentence).collect();
    let second: String = (30..45).map(chinese_sentence).collect();
    let endless: String = "青岚水泵叶轮密封润滑保养记录".repeat(12);
    let d = doc(&[
        ("维护规程", None, &["维护规程"], true),
        (first.as_str(), None, &["维护规程"], false),
        (second.as_str(), None, &["维护规程"], false),
        (endless.as_str(), None, &["维护规程"], false),
    ]);
    let config = ChunkerConfig { target_tokens: 64, overlap_tokens: 16 };
    // Within the budget, in order, nothing lost, never off a character boundary.
    let chunks = chunk_checked(&d, &tok, &config);
    assert!(chunks.len() >= 12, "{} chunks", chunks.len());
    // Every sentence is one CJK character per token, about twenty: no sentence is split.
    let sentence_tokens = count_tokens(&tok, &chinese_sentence(10));
    assert!(sentence_tokens < config.target_tokens / 2, "fixture assumption: {sentence_tokens}");
    let endless_start = d.blocks[3].start;
    let whole: Vec<_> = chunks.iter().filter(|c| c.end <= endless_start).collect();
    assert!(whole.len() >= 8, "{} chunks of whole sentences", whole.len());
    for c in &whole {
        let body = c.text.strip_prefix("维护规程\n\n").unwrap_or(&c.text);
        assert!(body.starts_with('第') && body.ends_with('。'), "cut inside a sentence: {:?}", c.text);
        // Each sentence in it is whole: as many sentence starts as full stops.
        assert_eq!(body.matches('第').count(), body.matches('。').count(), "{:?}", c.text);
    }
    // Packed, not a sentence each (the last of a paragraph may hold what is left).
    for c in &whole[..whole.len() - 1] {
        assert!(c.tokens > config.target_tokens / 2, "chunk under-filled: {} tokens {:?}", c.tokens, c.text);
    }
    // Consecutive chunks of one paragraph overlap by whole sentences.
    for pair in whole.windows(2) {
        if pair[1].start < pair[0].end {
            let shared = &d.text[pair[1].start..pair[0].end];
            assert!(shared.starts_with('第') && shared.ends_with('。'), "overlap {shared:?}");
        }
    }
    // The sentence without punctuation is cut between characters, each piece within budget.
    let pieces: Vec<_> = chunks.iter().filter(|c| c.start >= endless_start).collect();
    assert!(pieces.len() >= 3, "{}", pieces.len());
    let joined_len: usize = pieces.iter().map(|c| c.end).max().unwrap() - pieces[0].start;
    assert_eq!(joined_len, endless.len(), "the long sentence is covered end to end");
}
