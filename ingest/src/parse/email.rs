//! E-mail messages (.eml, RFC 5322 with MIME parts): the subject is the title, sender,
//! recipients and date a block of their own, then the text bodies (HTML ones reduced to
//! text). Attachments of supported formats are parsed and follow under an
//! "Attachment: NAME" heading, their location naming the attachment (and page, for PDFs).

use mail_parser::{Address, MessageParser, MimeHeaders};

use super::builder::{collapse_whitespace, DocBuilder};
use super::{ParsedDocument, PdfParser};
use crate::{detect, Format, IngestError};

pub(crate) fn parse(bytes: &[u8], pdf: &PdfParser) -> Result<ParsedDocument, IngestError> {
    let error = |message: &str| IngestError::Parse { format: "e-mail".into(), message: message.into() };
    // mail-parser is pure Rust but reads hostile input: a panic is this message's error.
    let message = std::panic::catch_unwind(|| MessageParser::default().parse(bytes))
        .map_err(|_| error("the e-mail parser crashed on this file"))?
        .ok_or_else(|| error("not a readable e-mail message"))?;
    let subject = message.subject().map(collapse_whitespace).filter(|s| !s.is_empty());
    let mut doc = DocBuilder::default();
    let mut header = Vec::new();
    if let Some(s) = &subject {
        header.push(format!("Subject: {s}"));
    }
    if let Some(from) = message.from() {
        header.push(format!("From: {}", addresses(from)));
    }
    if let Some(to) = message.to() {
        header.push(format!("To: {}", addresses(to)));
    }
    if let Some(cc) = message.cc() {
        header.push(format!("Cc: {}", addresses(cc)));
    }
    if let Some(date) = message.date() {
        header.push(format!("Date: {}", date.to_rfc3339()));
    }
    if header.is_empty() && message.text_body_count() == 0 {
        return Err(error("not an e-mail message (no headers and no body)"));
    }
    doc.push(&header.join("\n"), None, &[], false);
    for i in 0..message.text_body_count() {
        if let Some(body) = message.body_text(i) {
            for para in body.split("\n\n") {
                doc.push(&collapse_whitespace(para), None, &[], false);
            }
        }
    }
    for part in message.attachments() {
        let name = part.attachment_name().unwrap_or("attachment").to_string();
        let contents = part.contents();
        let parsed = detect::detect_format(contents, &name).and_then(|format| match format {
            // One level only: a message attached to a message is not opened again.
            Format::Email => Err(IngestError::UnsupportedFormat { detected: "attached e-mail".into() }),
            f => super::parse(contents, f, &name, pdf),
        });
        match parsed {
            Ok(inner) => append_attachment(&mut doc, &name, &inner),
            Err(e) => tracing::info!(attachment = %name, error = %e, "e-mail attachment skipped"),
        }
    }
    Ok(doc.finish(subject))
}

fn addresses(a: &Address) -> String {
    a.iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (Some(n), None) => n.to_string(),
            (None, Some(e)) => e.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attachment's blocks under "Attachment: NAME", located at the attachment (and its own
/// location within it).
fn append_attachment(doc: &mut DocBuilder, name: &str, inner: &ParsedDocument) {
    let heading = format!("Attachment: {name}");
    for b in &inner.blocks {
        let mut path = vec![heading.clone()];
        path.extend(b.heading_path.iter().cloned());
        let location = match &b.location {
            Some(l) => format!("attachment {name}, {l}"),
            None => format!("attachment {name}"),
        };
        doc.push_at(inner.block_text(b), b.page, Some(&location), &path, b.is_heading);
    }
}
