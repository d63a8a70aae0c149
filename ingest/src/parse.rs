//! Turns a document's bytes into text blocks, one module per format.

mod builder;
mod docx;
mod email;
mod html;
mod markdown;
pub mod ocr;
pub mod pdf;
mod pptx;
mod sheet;
mod text;
mod xml;

pub use pdf::{pdf_worker_main, PdfParser};

use serde::{Deserialize, Serialize};

use crate::{detect, Format, IngestError};

/// A document reduced to text: `text` is everything extracted, `blocks` cut it into
/// paragraphs/headings with the page and heading path each sits under.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ParsedDocument {
    pub title: Option<String>,
    pub text: String,
    pub blocks: Vec<Block>,
    /// What produced the text where a format has several ways ("pdf-extract", "pdftotext",
    /// "pdf-extract+tesseract").
    pub extractor: Option<String>,
    /// Files carried inside this one (an e-mail's attachments of supported formats), each
    /// ingested as a document of its own that points at this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file carried inside a document, not yet parsed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// Its file name as the carrying document gives it.
    pub name: String,
    /// Its bytes, as carried.
    pub bytes: Vec<u8>,
}

/// One block of `ParsedDocument::text`: `start..end` are byte offsets into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub start: usize,
    pub end: usize,
    /// 1-based page number (PDF only).
    pub page: Option<u32>,
    /// Where a citation points when it is not a page: "slide 3", "sheet Costs, rows 2–9".
    pub location: Option<String>,
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
        // ZIP-based formats and OCR run in the isolated worker: see `pdf`.
        Format::Docx | Format::Pptx | Format::Xlsx | Format::Image => pdf.parse_isolated(bytes, format)?,
        Format::Csv => {
            let tabs = filename.to_ascii_lowercase().ends_with(".tsv");
            sheet::parse_csv(&detect::decode_text(bytes)?, tabs)
                .map_err(|message| IngestError::Parse { format: format.label().into(), message })?
        }
        Format::Email => email::parse(bytes)?,
    };
    tracing::debug!(filename, ?format, blocks = doc.blocks.len(), bytes = doc.text.len(), "parsed");
    if doc.blocks.is_empty() {
        return Err(IngestError::NoText);
    }
    Ok(doc)
}
