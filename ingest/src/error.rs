/// Why one document could not be ingested. Each is that document's error, never the service's.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unsupported format: {detected}")]
    UnsupportedFormat { detected: String },
    #[error("file is empty")]
    Empty,
    #[error(
        "the file is binary data, not text (neither UTF-8 nor UTF-16) and not a supported \
         document format (PDF, Word, PowerPoint, Excel, CSV, e-mail, image, Markdown, HTML or plain \
         text)"
    )]
    Undecodable,
    #[error("PDF could not be parsed: {message}")]
    Pdf { message: String },
    #[error("the {what} is encrypted (password-protected): save a copy without a password and upload that")]
    Encrypted { what: String },
    /// A format other than PDF failed to parse; `format` is its name ("DOCX", "e-mail").
    #[error("{format} could not be parsed: {message}")]
    Parse { format: String, message: String },
    #[error("PDF parsing took longer than {seconds} s and was stopped")]
    PdfTimeout { seconds: u64 },
    #[error("no text could be extracted from the document")]
    NoText,
    #[error("embedding failed: {0}")]
    Embed(#[from] kb_inference::ModelError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("store or index: {0}")]
    Index(#[from] kb_index::IndexError),
    #[error("internal task failed: {0}")]
    Task(String),
}
