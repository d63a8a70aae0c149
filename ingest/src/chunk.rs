//! Cuts a parsed document into chunks sized in the embedder's own tokens.
//!
//! Cut points, best first: a new heading section or page, a block (paragraph) boundary, a
//! sentence boundary, and only for a sentence longer than a chunk, a token boundary. Each
//! block is tokenized once; sentences and chunks are counted from its token offsets.

use std::ops::Range;

use kb_index::is_cjk;
use tokenizers::Tokenizer;

use crate::parse::{Block, ParsedDocument};

/// Sizes counted in the embedder's tokens.
#[derive(Debug, Clone)]
pub struct ChunkerConfig {
    pub target_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        // Leaves room under a 256-token encoder for the title prefix and special tokens.
        Self { target_tokens: 200, overlap_tokens: 32 }
    }
}

/// A piece of a document ready to embed and index.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    /// Byte offsets into `ParsedDocument::text`.
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
    /// The block's citation location when it is not a page (slide, sheet rows).
    pub location: Option<String>,
    pub heading_path: Vec<String>,
    pub tokens: usize,
}

/// Chunks `doc`; `chunk.text == doc.text[chunk.start..chunk.end]` always holds, chunks never
/// cross a page or heading section, and only consecutive chunks of one section overlap.
/// The tokenizer's own truncation and padding settings are ignored for counting.
pub fn chunk_document(doc: &ParsedDocument, tokenizer: &Tokenizer, config: &ChunkerConfig) -> Vec<Chunk> {
    let target = config.target_tokens.max(1);
    // More overlap than half a chunk would make chunks mostly repeats of each other.
    let overlap = config.overlap_tokens.min(target / 2);
    let blocks: Vec<&Block> = doc.blocks.iter().filter(|b| valid_block(&doc.text, b)).collect();
    if blocks.len() != doc.blocks.len() {
        tracing::warn!(dropped = doc.blocks.len() - blocks.len(), "blocks with offsets outside the text ignored");
    }
    let mut packer = Packer { text: &doc.text, target, overlap, toks: Tokens::default(), out: Vec::new() };
    let sections = sections(&blocks);
    let mut pending_headings: Vec<Piece> = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let units = packer.units(tokenizer, &blocks[section.blocks.clone()], section.blocks.start);
        let leftover = packer.pack(&units, std::mem::take(&mut pending_headings), section);
        // A heading with no body of its own (directly followed by a subheading) opens the
        // subsection's first chunk instead of standing alone.
        if !leftover.is_empty() {
            match sections.get(i + 1) {
                Some(next)
                    if next.page == section.page
                        && next.location == section.location
                        && next.heading_path.starts_with(section.heading_path) =>
                {
                    pending_headings = leftover
                }
                _ => packer.emit(&leftover, section),
            }
        }
    }
    packer.out
}

fn valid_block(text: &str, b: &Block) -> bool {
    b.start < b.end && text.get(b.start..b.end).is_some_and(|t| !t.trim().is_empty())
}

/// A run of blocks under one heading on one page: chunks never cross it.
struct Section<'a> {
    /// Indices into the valid blocks.
    blocks: Range<usize>,
    page: Option<u32>,
    location: Option<&'a str>,
    heading_path: &'a [String],
}

fn sections<'a>(blocks: &[&'a Block]) -> Vec<Section<'a>> {
    let mut out: Vec<Section<'a>> = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match out.last_mut() {
            Some(s)
                if !b.is_heading
                    && s.page == b.page
                    && s.location == b.location.as_deref()
                    && s.heading_path == b.heading_path.as_slice() =>
            {
                s.blocks.end = i + 1
            }
            _ => out.push(Section {
                blocks: i..i + 1,
                page: b.page,
                location: b.location.as_deref(),
                heading_path: &b.heading_path,
            }),
        }
    }
    out
}

/// Token spans of the document, absolute byte offsets, in order.
#[derive(Default)]
struct Tokens {
    starts: Vec<usize>,
    ends: Vec<usize>,
}

impl Tokens {
    /// A token that begins a word (follows a gap, or meets CJK text, which has no gaps between
    /// words) is the preferred place to cut a sentence.
    fn starts_word(&self, text: &str, i: usize) -> bool {
        if i == 0 || self.starts[i] > self.ends[i - 1] {
            return true;
        }
        let at = self.starts[i];
        let before = text.get(..at).and_then(|t| t.chars().next_back());
        let after = text.get(at..).and_then(|t| t.chars().next());
        before.is_some_and(is_cjk) || after.is_some_and(is_cjk)
    }
}

/// The smallest thing packed: a sentence, a heading, or a piece of an over-long sentence.
#[derive(Debug, Clone)]
struct Unit {
    start: usize,
    end: usize,
    /// Into `Tokens`.
    tok: Range<usize>,
    /// Index of the block it comes from.
    block: usize,
    heading: bool,
    /// A token-cut piece of a sentence longer than a chunk.
    cut: bool,
}

/// A unit, or for overlap the tail of one, placed in a chunk.
#[derive(Debug, Clone)]
struct Piece {
    start: usize,
    end: usize,
    tok: Range<usize>,
    heading: bool,
    cut: bool,
}

impl From<&Unit> for Piece {
    fn from(u: &Unit) -> Self {
        Piece { start: u.start, end: u.end, tok: u.tok.clone(), heading: u.heading, cut: u.cut }
    }
}

struct Packer<'a> {
    text: &'a str,
    target: usize,
    overlap: usize,
    toks: Tokens,
    out: Vec<Chunk>,
}

impl Packer<'_> {
    /// Tokenizes each block once and cuts it into sentence units.
    fn units(&mut self, tokenizer: &Tokenizer, blocks: &[&Block], first_index: usize) -> Vec<Unit> {
        let mut units = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            let text = &self.text[block.start..block.end];
            let first_tok = self.toks.starts.len();
            for (s, e) in token_offsets(tokenizer, text) {
                self.toks.starts.push(block.start + s);
                self.toks.ends.push(block.start + e);
            }
            let spans = if block.is_heading { vec![trimmed(text, 0, text.len())] } else { sentence_spans(text) };
            // Each token belongs to the sentence its start falls in (or the one before a gap).
            let mut tok = first_tok;
            for (k, span) in spans.iter().enumerate() {
                let next_start = spans.get(k + 1).map_or(usize::MAX, |n| block.start + n.start);
                let from = tok;
                while tok < self.toks.starts.len() && self.toks.starts[tok] < next_start {
                    tok += 1;
                }
                let sentence = Unit {
                    start: block.start + span.start,
                    end: block.start + span.end,
                    tok: from..tok,
                    block: first_index + i,
                    heading: block.is_heading,
                    cut: false,
                };
                self.split_long(sentence, &mut units);
            }
        }
        units
    }

    /// Cuts a sentence longer than a chunk at token boundaries, preferring word starts.
    /// Pieces leave room for the overlap that links them.
    fn split_long(&self, sentence: Unit, units: &mut Vec<Unit>) {
        if sentence.tok.len() <= self.target {
            units.push(sentence);
            return;
        }
        let size = self.target - self.overlap;
        let Range { mut start, end: tok_end } = sentence.tok;
        let mut byte_start = sentence.start;
        while tok_end - start > size {
            let mut cut = start + size;
            let floor = start + (size / 2).max(1);
            if let Some(k) = (floor..=cut).rev().find(|&k| self.toks.starts_word(self.text, k)) {
                cut = k;
            }
            let end = ceil_boundary(self.text, self.toks.ends[cut - 1]);
            units.push(Unit { start: byte_start, end, tok: start..cut, cut: true, ..sentence.clone() });
            start = cut;
            byte_start = floor_boundary(self.text, self.toks.starts[cut]).max(end);
        }
        units.push(Unit { start: byte_start, tok: start..tok_end, cut: true, ..sentence });
    }

    /// Packs one section's units into chunks. `cur` may start with headings carried from a
    /// bodiless parent section. Returns headings left without body, for the caller to place.
    fn pack(&mut self, units: &[Unit], mut cur: Vec<Piece>, section: &Section) -> Vec<Piece> {
        let mut block_tokens = vec![0usize; section.blocks.len()];
        for u in units {
            block_tokens[u.block - section.blocks.start] += u.tok.len();
        }
        let mut cur_tokens: usize = cur.iter().map(|p| p.tok.len()).sum();
        // Holds text that is neither overlap nor heading: only then may the chunk be closed.
        let mut has_content = false;
        let mut i = 0;
        while i < units.len() {
            let u = &units[i];
            let n = u.tok.len();
            let block_start = i == 0 || units[i - 1].block != u.block;
            if block_start && has_content && !u.heading {
                // Keep a paragraph whole when it fits a chunk of its own.
                let whole = block_tokens[u.block - section.blocks.start];
                if cur_tokens + whole > self.target && whole <= self.target {
                    (cur, cur_tokens) = self.close(&cur, section, self.target - whole);
                    has_content = false;
                    continue;
                }
            }
            if cur_tokens + n <= self.target {
                cur.push(u.into());
                cur_tokens += n;
                has_content |= !u.heading;
                i += 1;
                continue;
            }
            if has_content {
                (cur, cur_tokens) = self.close(&cur, section, self.target - n);
                has_content = false;
            } else if cur.iter().any(|p| p.heading) {
                // Heading and first sentence together exceed a chunk: the heading goes alone.
                self.emit(&cur, section);
                (cur, cur_tokens) = (Vec::new(), 0);
            } else {
                // Only overlap in the way (not expected: `close` leaves room); drop it.
                (cur, cur_tokens) = (Vec::new(), 0);
            }
        }
        if has_content {
            self.emit(&cur, section);
            Vec::new()
        } else {
            cur.retain(|p| p.heading);
            cur
        }
    }

    /// Emits `cur` and returns the overlap that opens the next chunk: trailing whole
    /// sentences within the budget; inside an over-long sentence, its last tokens.
    fn close(&mut self, cur: &[Piece], section: &Section, room: usize) -> (Vec<Piece>, usize) {
        self.emit(cur, section);
        let budget = self.overlap.min(room);
        if budget == 0 {
            return (Vec::new(), 0);
        }
        let mut carried = Vec::new();
        let mut sum = 0;
        for p in cur.iter().rev().take_while(|p| !p.heading) {
            if sum + p.tok.len() > budget {
                break;
            }
            sum += p.tok.len();
            carried.push(p.clone());
        }
        if carried.is_empty() {
            // A partial sentence is no useful context, except where the text has no sentence
            // boundaries to offer.
            let Some(last) = cur.last().filter(|p| p.cut && !p.tok.is_empty()) else {
                return (Vec::new(), 0);
            };
            // Only from a word start, so the overlap reads (and re-tokenizes) cleanly.
            let first = last.tok.end - budget.min(last.tok.len());
            let Some(from) = (first..last.tok.end).find(|&k| self.toks.starts_word(self.text, k)) else {
                return (Vec::new(), 0);
            };
            let start = floor_boundary(self.text, self.toks.starts[from]).max(last.start);
            carried.push(Piece { start, end: last.end, tok: from..last.tok.end, heading: false, cut: true });
            sum = last.tok.end - from;
        }
        carried.reverse();
        (carried, sum)
    }

    fn emit(&mut self, pieces: &[Piece], section: &Section) {
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else { return };
        let Some(text) = self.text.get(first.start..last.end) else {
            tracing::warn!(start = first.start, end = last.end, "chunk offsets off a character boundary; skipped");
            return;
        };
        if text.trim().is_empty() {
            return;
        }
        self.out.push(Chunk {
            text: text.to_string(),
            start: first.start,
            end: last.end,
            page: section.page,
            location: section.location.map(str::to_owned),
            heading_path: section.heading_path.to_vec(),
            tokens: pieces.iter().map(|p| p.tok.len()).sum(),
        });
    }
}

/// Byte offsets of `text`'s tokens, as the embedder would see them without special tokens.
/// A tokenizer configured to truncate or pad (as model tokenizers often are) still counts
/// everything: overflow windows are followed and padding is skipped.
fn token_offsets(tokenizer: &Tokenizer, text: &str) -> Vec<(usize, usize)> {
    let encoding = match tokenizer.encode(text, false) {
        Ok(e) => e,
        Err(e) => {
            // Rare (tokenizer bugs); words are a fair stand-in for counting.
            tracing::warn!(error = %e, "tokenizer failed; counting words instead");
            return words(text);
        }
    };
    let stride = tokenizer.get_truncation().map_or(0, |t| t.stride);
    let mut out = Vec::with_capacity(encoding.len());
    for (window, enc) in std::iter::once(&encoding).chain(encoding.get_overflowing()).enumerate() {
        let real = enc
            .get_offsets()
            .iter()
            .zip(enc.get_attention_mask())
            .zip(enc.get_special_tokens_mask())
            .filter(|((_, mask), special)| **mask == 1 && **special == 0)
            .map(|((&o, _), _)| o);
        // Each overflow window repeats the previous one's last `stride` tokens.
        out.extend(real.skip(if window == 0 { 0 } else { stride }));
    }
    out
}

fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    out
}

/// Sentence spans of a block (relative, trimmed, never empty). A sentence ends at a line
/// break; at `。！？；…` (CJK text puts no space after them); or at `.`/`!`/`?` before CJK text,
/// or before whitespace and a word that is not lower-case, so "e.g. this" and "3.5" stay
/// whole. Closing quotes and brackets stay with the sentence they close.
fn sentence_spans(text: &str) -> Vec<Range<usize>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut spans = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if c == '\n' {
            push_trimmed(text, start, pos, &mut spans);
            start = pos + 1;
        } else if is_terminator(c) {
            let mut j = i + 1;
            while j < chars.len() && (is_terminator(chars[j].1) || is_closer(chars[j].1)) {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |&(p, _)| p);
            // An ellipsis ends a sentence the CJK way only in CJK text.
            let cjk = matches!(c, '。' | '！' | '？' | '；' | '｡') || (c == '…' && i > 0 && is_cjk(chars[i - 1].1));
            let boundary = match chars.get(j) {
                None => false,
                Some(&(_, next)) if cjk => next != '\n',
                Some(&(_, next)) if is_cjk(next) => c != '…',
                Some(&(_, next)) if next.is_whitespace() => {
                    let word = chars[j..].iter().map(|&(_, c)| c).find(|c| !c.is_whitespace());
                    word.is_some_and(|w| !w.is_lowercase())
                }
                _ => false,
            };
            if boundary {
                push_trimmed(text, start, end, &mut spans);
                start = end;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    push_trimmed(text, start, text.len(), &mut spans);
    spans
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '；' | '…' | '｡')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」' | '』' | '）' | '】' | '》' | '〉' | '〕' | '］')
}

fn push_trimmed(text: &str, start: usize, end: usize, spans: &mut Vec<Range<usize>>) {
    let span = trimmed(text, start, end);
    if !span.is_empty() {
        spans.push(span);
    }
}

fn trimmed(text: &str, start: usize, end: usize) -> Range<usize> {
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let body = s.trim();
    start + lead..start + lead + body.len()
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences(text: &str) -> Vec<&str> {
        sentence_spans(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn splits_sentences_sensibly() {
        assert_eq!(
            sentences("One is 3.5 m, e.g. tall. Two! \"Three?\" Four\nfive. (Six.) seven"),
            ["One is 3.5 m, e.g. tall.", "Two!", "\"Three?\"", "Four", "five.", "(Six.) seven"]
        );
        assert_eq!(sentences("  \n "), Vec::<&str>::new());
        assert_eq!(sentences("第一句。第二句。"), ["第一句。", "第二句。"]);
        assert_eq!(
            sentences("他说：「好。」然后走了！真的？是的；不过……还有。Yes.中文"),
            ["他说：「好。」", "然后走了！", "真的？", "是的；", "不过……", "还有。", "Yes.", "中文"]
        );
        // An English ellipsis keeps the English rule.
        assert_eq!(sentences("Wait… and then. Go"), ["Wait… and then.", "Go"]);
    }

    #[test]
    fn words_fallback() {
        assert_eq!(words(" ab  c"), [(1, 3), (5, 6)]);
    }
}
