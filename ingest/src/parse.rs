//! Turns a document's bytes into text blocks, one module per format.

mod builder;
mod html;
mod markdown;
pub mod pdf;
mod text;

pub use pdf::{pdf_worker_main, PdfParser};

use crate::{detect, Format, IngestError};

/// A document reduced to text: `text` is everything extracted, `blocks` cut it into
/// paragraphs/headings with the page and heading path each sits under.
#[derive(Debug, Clone, Default)]
pub struct ParsedDocument {
    pub title: Option<String>,
    pub text: String,
    pub blocks: Vec<Block>,
}

/// One block of `ParsedDocument::text`: `start..end` are byte offsets into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub start: usize,
    pub end: usize,
    /// 1-based page number (PDF only).
    pub page: Option<u32>,
    /// Headings enclosing this block, outermost first. A heading block's path ends with
    /// itself, so a heading and the body under it share one path.
    pub heading_path: Vec<String>,
    pub is_heading: bool,
}

impl ParsedDocument {
    /// The text of one block.
    pub fn block_text(&self, block: &Block) -> &str {
        self.text.get(block.start..block.end).unwrap_or("")
    }
}

/// Parses `bytes` as `format`. PDFs go to `pdf`'s isolated worker process; `filename` is
/// used only in logs.
pub fn parse(bytes: &[u8], format: Format, filename: &str, pdf: &PdfParser) -> Result<ParsedDocument, IngestError> {
    let doc = match format {
        Format::Pdf => pdf.parse(bytes)?,
        Format::Markdown => markdown::parse(&detect::decode_text(bytes)?),
        Format::Html => html::parse(&detect::decode_text(bytes)?),
        Format::Text => text::parse(&detect::decode_text(bytes)?),
    };
    tracing::debug!(filename, ?format, blocks = doc.blocks.len(), bytes = doc.text.len(), "parsed");
    if doc.blocks.is_empty() {
        return Err(IngestError::NoText);
    }
    Ok(doc)
}
