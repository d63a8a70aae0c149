//! E-mail messages (.eml, RFC 5322 with MIME parts): the subject is the title, sender,
//! recipients and date a block of their own, then the text bodies (HTML ones reduced to
//! text). Attachments of supported formats are handed back unparsed: the pipeline ingests
//! each as a document of its own that points at its message, so a citation names the
//! attached file and its page, and the attachment's failure is its own.

use mail_parser::{Address, MessageParser, MimeHeaders};

use super::builder::{collapse_whitespace, DocBuilder};
use super::{Attachment, ParsedDocument};
use crate::{detect, Format, IngestError};

pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedDocument, IngestError> {
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
    let mut attachments = Vec::new();
    for part in message.attachments() {
        let name = part.attachment_name().unwrap_or("attachment").to_string();
        let contents = part.contents();
        match detect::detect_format(contents, &name) {
            // One level only: a message attached to a message is not opened again.
            Ok(Format::Email) => tracing::info!(attachment = %name, "attached e-mail skipped"),
            // Pictures shown in the body (logos, signatures) are decoration, not documents.
            Ok(Format::Image) if part.content_id().is_some() => {}
            Ok(_) => attachments.push(Attachment { name, bytes: contents.to_vec() }),
            Err(e) => tracing::info!(attachment = %name, error = %e, "e-mail attachment skipped"),
        }
    }
    let mut parsed = doc.finish(subject);
    parsed.attachments = attachments;
    Ok(parsed)
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
