//! Accumulates blocks into one text with exact byte offsets; shared by every format.

use super::{Block, ParsedDocument};

/// Longest title kept; titles come from untrusted text and end up in every chunk's prefix.
const TITLE_MAX_CHARS: usize = 200;

const BLOCK_SEPARATOR: &str = "\n\n";

#[derive(Default)]
pub(crate) struct DocBuilder {
    text: String,
    blocks: Vec<Block>,
}

impl DocBuilder {
    /// Appends one block; blank blocks are dropped so every block holds text.
    pub fn push(&mut self, text: &str, page: Option<u32>, heading_path: &[String], is_heading: bool) {
        self.push_at(text, page, None, heading_path, is_heading);
    }

    /// `push` with a citation location other than a page (a slide, a sheet's rows).
    pub fn push_at(
        &mut self,
        text: &str,
        page: Option<u32>,
        location: Option<&str>,
        heading_path: &[String],
        is_heading: bool,
    ) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str(BLOCK_SEPARATOR);
        }
        let start = self.text.len();
        self.text.push_str(text);
        self.blocks.push(Block {
            start,
            end: self.text.len(),
            page,
            location: location.map(str::to_owned),
            heading_path: heading_path.to_vec(),
            is_heading,
        });
    }

    /// The first non-blank line of the text so far, for formats without a better title.
    pub fn first_line(&self) -> Option<String> {
        self.text.lines().find_map(clean_title)
    }

    pub fn finish(self, title: Option<String>) -> ParsedDocument {
        let title = title.as_deref().and_then(clean_title).or_else(|| self.first_line());
        ParsedDocument { title, text: self.text, blocks: self.blocks, extractor: None, attachments: Vec::new() }
    }
}

/// Whitespace collapsed to single spaces, trimmed.
pub(crate) fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A one-line title of at most `TITLE_MAX_CHARS` characters, or None if blank.
pub(crate) fn clean_title(s: &str) -> Option<String> {
    let s = collapse_whitespace(s);
    if s.is_empty() {
        return None;
    }
    Some(match s.char_indices().nth(TITLE_MAX_CHARS) {
        Some((cut, _)) => s[..cut].trim_end().to_string(),
        None => s,
    })
}

/// Tracks the enclosing headings by level (1 = outermost).
#[derive(Default)]
pub(crate) struct HeadingStack {
    levels: Vec<(u8, String)>,
    path: Vec<String>,
}

impl HeadingStack {
    /// Enters a heading: it replaces any heading at its level or deeper.
    pub fn enter(&mut self, level: u8, text: String) {
        self.levels.retain(|(l, _)| *l < level);
        self.levels.push((level, text));
        self.path = self.levels.iter().map(|(_, t)| t.clone()).collect();
    }

    pub fn path(&self) -> &[String] {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_titles() {
        let mut b = DocBuilder::default();
        b.push("  first  ", None, &[], false);
        b.push("   ", None, &[], false);
        b.push("second", Some(2), &["H".into()], true);
        let doc = b.finish(None);
        assert_eq!(doc.text, "first\n\nsecond");
        assert_eq!(doc.blocks.len(), 2);
        assert_eq!(&doc.text[doc.blocks[1].start..doc.blocks[1].end], "second");
        assert_eq!(doc.title.as_deref(), Some("first"));
        let long = "ü".repeat(300);
        assert_eq!(clean_title(&long).unwrap().chars().count(), TITLE_MAX_CHARS);
    }

    #[test]
    fn heading_stack_replaces_same_and_deeper_levels() {
        let mut h = HeadingStack::default();
        h.enter(1, "A".into());
        h.enter(2, "B".into());
        h.enter(3, "C".into());
        h.enter(2, "D".into());
        assert_eq!(h.path(), ["A", "D"]);
        h.enter(1, "E".into());
        assert_eq!(h.path(), ["E"]);
    }
}
