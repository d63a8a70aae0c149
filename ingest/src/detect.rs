//! Names a document's format from its bytes; the file name only chooses between text formats.

use serde::{Deserialize, Serialize};

use crate::IngestError;

/// The formats kb parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Pdf,
    Markdown,
    Html,
    Text,
    /// Word (Office Open XML).
    Docx,
    /// PowerPoint (Office Open XML).
    Pptx,
    /// Excel (Office Open XML).
    Xlsx,
    /// Comma- or tab-separated values.
    Csv,
    /// An RFC 5322 message (.eml) with its MIME parts.
    Email,
    /// A PNG, JPEG or TIFF image, read by OCR.
    Image,
}

impl Format {
    /// The name stored on the document.
    pub fn name(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Text => "text",
            Format::Docx => "docx",
            Format::Pptx => "pptx",
            Format::Xlsx => "xlsx",
            Format::Csv => "csv",
            Format::Email => "email",
            Format::Image => "image",
        }
    }

    /// The name in messages.
    pub fn label(self) -> &'static str {
        match self {
            Format::Pdf => "PDF",
            Format::Markdown => "Markdown",
            Format::Html => "HTML",
            Format::Text => "text",
            Format::Docx => "DOCX",
            Format::Pptx => "PPTX",
            Format::Xlsx => "XLSX",
            Format::Csv => "CSV",
            Format::Email => "e-mail",
            Format::Image => "image",
        }
    }
}

/// Acrobat accepts a PDF header anywhere in the first KiB, and so do we.
const PDF_HEADER_WINDOW: usize = 1024;

/// Detects the format of `bytes`; `filename` (may be empty) only picks Markdown/HTML among
/// valid text, so a `.pdf` that is not a PDF is reported for what its bytes are.
pub fn detect_format(bytes: &[u8], filename: &str) -> Result<Format, IngestError> {
    if bytes.is_empty() {
        return Err(IngestError::Empty);
    }
    let ext = extension(filename);
    if is_pdf(bytes) {
        return Ok(Format::Pdf);
    }
    if let Some(format) = crate::archive::detect_office(bytes)? {
        return Ok(format);
    }
    if let Some(kind) = binary_kind(bytes) {
        if matches!(kind, "PNG image" | "JPEG image" | "TIFF image") && !names_another_format(ext.as_deref()) {
            return Ok(Format::Image);
        }
        if let Some(ext) = ext.as_deref().filter(|e| names_another_format(Some(*e))) {
            return Err(IngestError::UnsupportedFormat { detected: format!("a {kind} named .{ext}") });
        }
        return Err(IngestError::UnsupportedFormat { detected: kind.to_string() });
    }
    let text = decode_text(bytes)?;
    if text.trim().is_empty() {
        return Err(IngestError::Empty);
    }
    if looks_like_rtf(&text) {
        return Err(IngestError::UnsupportedFormat { detected: "RTF document".into() });
    }
    let format = match ext.as_deref() {
        Some("md" | "markdown" | "mdown" | "mkd") => Format::Markdown,
        Some("html" | "htm" | "xhtml") => Format::Html,
        Some("csv" | "tsv") => Format::Csv,
        Some("eml") => Format::Email,
        _ if sniff_email(&text) => Format::Email,
        _ if sniff_html(&text) => Format::Html,
        _ => Format::Text,
    };
    tracing::debug!(filename, ?format, "detected format");
    Ok(format)
}

/// Decodes text: UTF-8 (BOM optional), or UTF-16/UTF-32 when a BOM says so.
/// Text holding NUL characters is binary data in disguise and is refused.
pub fn decode_text(bytes: &[u8]) -> Result<String, IngestError> {
    if bytes.is_empty() {
        return Err(IngestError::Empty);
    }
    // UTF-32 LE's BOM begins with UTF-16 LE's, so it is checked first.
    let text = if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE, 0, 0]) {
        decode_utf32(rest, u32::from_le_bytes)?
    } else if let Some(rest) = bytes.strip_prefix(&[0, 0, 0xFE, 0xFF]) {
        decode_utf32(rest, u32::from_be_bytes)?
    } else if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        decode_utf16(rest, u16::from_le_bytes)?
    } else if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        decode_utf16(rest, u16::from_be_bytes)?
    } else {
        let rest = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
        std::str::from_utf8(rest).map_err(|_| IngestError::Undecodable)?.to_owned()
    };
    if text.contains('\0') {
        return Err(IngestError::Undecodable);
    }
    Ok(text)
}

fn decode_utf16(bytes: &[u8], from: fn([u8; 2]) -> u16) -> Result<String, IngestError> {
    let pairs = bytes.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(IngestError::Undecodable);
    }
    let units = pairs.map(|c| from([c[0], c[1]]));
    char::decode_utf16(units).collect::<Result<String, _>>().map_err(|_| IngestError::Undecodable)
}

fn decode_utf32(bytes: &[u8], from: fn([u8; 4]) -> u32) -> Result<String, IngestError> {
    let quads = bytes.chunks_exact(4);
    if !quads.remainder().is_empty() {
        return Err(IngestError::Undecodable);
    }
    quads.map(|c| char::from_u32(from([c[0], c[1], c[2], c[3]])).ok_or(IngestError::Undecodable)).collect()
}

fn is_pdf(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    if bytes[start..].starts_with(b"%PDF-") {
        return true;
    }
    // Junk before the header is tolerated in binary files only: text that merely mentions
    // "%PDF-" is text.
    let window = &bytes[..bytes.len().min(PDF_HEADER_WINDOW)];
    window.windows(5).any(|w| w == b"%PDF-") && std::str::from_utf8(bytes).is_err()
}

/// Names well-known binary formats from their magic numbers, so the error says what the file
/// is rather than just "not text".
fn binary_kind(b: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| b.starts_with(magic);
    let at = |offset: usize, magic: &[u8]| b.get(offset..offset + magic.len()) == Some(magic);
    let kind = if starts(b"\x89PNG\r\n\x1a\n") {
        "PNG image"
    } else if starts(&[0xFF, 0xD8, 0xFF]) {
        "JPEG image"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "GIF image"
    } else if starts(b"RIFF") && at(8, b"WEBP") {
        "WebP image"
    } else if starts(b"RIFF") && at(8, b"WAVE") {
        "WAV audio"
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        "TIFF image"
    } else if at(4, b"ftyp") {
        "MP4/QuickTime media"
    } else if starts(b"ID3") || starts(b"OggS") || starts(b"fLaC") {
        "audio file"
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        zip_kind(b)
    } else if starts(&[0x1F, 0x8B]) {
        "gzip archive"
    } else if starts(b"BZh") && at(4, b"1AY&SY") {
        "bzip2 archive"
    } else if starts(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        "xz archive"
    } else if starts(&[0x28, 0xB5, 0x2F, 0xFD]) {
        "zstd archive"
    } else if starts(&[b'7', b'z', 0xBC, 0xAF, 0x27, 0x1C]) {
        "7-Zip archive"
    } else if starts(b"Rar!\x1a\x07") {
        "RAR archive"
    } else if starts(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        "legacy Microsoft Office document (DOC/XLS/PPT)"
    } else if starts(b"\x7fELF") {
        "ELF executable"
    } else if starts(&[0xCF, 0xFA, 0xED, 0xFE]) || starts(&[0xFE, 0xED, 0xFA, 0xCF]) {
        "Mach-O executable"
    } else if starts(b"\0asm") {
        "WebAssembly module"
    } else if starts(b"SQLite format 3\0") {
        "SQLite database"
    } else if starts(b"MZ") && std::str::from_utf8(b).is_err() {
        // "MZ" alone is too common a start for text, so only binary data counts.
        "Windows executable"
    } else {
        return None;
    };
    Some(kind)
}

/// Office formats are ZIP files; their member names tell them apart.
fn zip_kind(b: &[u8]) -> &'static str {
    let head = &b[..b.len().min(64 * 1024)];
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if has(b"word/") {
        "Word document (DOCX)"
    } else if has(b"xl/") {
        "Excel workbook (XLSX)"
    } else if has(b"ppt/") {
        "PowerPoint presentation (PPTX)"
    } else if has(b"application/vnd.oasis.opendocument") {
        "OpenDocument file"
    } else if has(b"application/epub+zip") {
        "EPUB book"
    } else {
        "ZIP archive"
    }
}

/// An extension that promises a format other than an image: bytes that are an image anyway
/// are a mislabelled file, refused rather than read by OCR.
fn names_another_format(ext: Option<&str>) -> bool {
    matches!(
        ext,
        Some(
            "pdf"
                | "docx"
                | "docm"
                | "pptx"
                | "pptm"
                | "xlsx"
                | "xlsm"
                | "doc"
                | "xls"
                | "ppt"
                | "eml"
                | "csv"
                | "tsv"
                | "md"
                | "html"
                | "htm"
                | "txt"
        )
    )
}

/// A message without an .eml name: it opens with header lines and has a From and a Date or
/// Subject before the first blank line.
fn sniff_email(text: &str) -> bool {
    let head: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).take(200).collect();
    let is_header = |l: &&str| {
        l.starts_with([' ', '\t'])
            || l.split_once(':').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    let has = |name: &str| head.iter().any(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name));
    head.len() >= 2 && head.iter().all(is_header) && has("from:") && (has("date:") || has("subject:"))
}

fn looks_like_rtf(text: &str) -> bool {
    text.trim_start().starts_with("{\\rtf")
}

fn extension(filename: &str) -> Option<String> {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// HTML without an .html name: a doctype or `<html>` near the start (after comments or an XML
/// declaration).
fn sniff_html(text: &str) -> bool {
    let head: String = text.trim_start().chars().take(1024).collect::<String>().to_ascii_lowercase();
    if head.starts_with("<!doctype html") || head.starts_with("<html") {
        return true;
    }
    (head.starts_with("<!--") || head.starts_with("<?xml")) && head.contains("<html")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_formats_by_name_and_sniffing() {
        assert_eq!(detect_format(b"# Hi", "a.md").unwrap(), Format::Markdown);
        assert_eq!(detect_format(b"# Hi", "A.MARKDOWN").unwrap(), Format::Markdown);
        assert_eq!(detect_format(b"<p>x</p>", "a.htm").unwrap(), Format::Html);
        assert_eq!(detect_format(b"  <!DOCTYPE html><p>x", "upload").unwrap(), Format::Html);
        assert_eq!(detect_format(b"<html><body>x", "a.txt").unwrap(), Format::Html);
        assert_eq!(detect_format(b"plain words", "notes").unwrap(), Format::Text);
        // Text named .pdf is text.
        assert_eq!(detect_format(b"plain words", "fake.pdf").unwrap(), Format::Text);
        assert_eq!(detect_format(b"%PDF-1.7\n...", "x.bin").unwrap(), Format::Pdf);
        assert_eq!(detect_format(b"\xff\x00junk%PDF-1.4\n", "x.bin").unwrap(), Format::Pdf);
        assert_eq!(detect_format(b"Files start with %PDF-1.7.", "a.md").unwrap(), Format::Markdown);
        assert_eq!(detect_format(b"a,b\n1,2\n", "t.csv").unwrap(), Format::Csv);
        let mail = b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: Hi\r\n\r\nBody text.\r\n";
        assert_eq!(detect_format(mail, "message").unwrap(), Format::Email);
        assert_eq!(
            detect_format(b"From: the desk of Ann\nDear all, the plan is ready.\n", "n.txt").unwrap(),
            Format::Text
        );
    }

    #[test]
    fn binary_magics_are_named() {
        let err = detect_format(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "scan.pdf").unwrap_err();
        assert!(err.to_string().contains("PNG image"), "{err}");
        let err = detect_format(b"\x7fELF\x02\x01\x01\0", "a.txt").unwrap_err();
        assert!(err.to_string().contains("ELF"), "{err}");
        // A damaged Word package is still Word: its parser reports the damage.
        assert_eq!(detect_format(b"PK\x03\x04\x14\0\0\0word/document.xml", "a.docx").unwrap(), Format::Docx);
        let err = detect_format(b"PK\x03\x04\x14\0\0\0other/thing.bin", "a.zip").unwrap_err();
        assert!(err.to_string().contains("ZIP archive"), "{err}");
        let err = detect_format(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10], "slides.pptx").unwrap_err();
        assert!(err.to_string().contains("JPEG image named .pptx"), "{err}");
        assert_eq!(detect_format(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10], "photo.jpg").unwrap(), Format::Image);
        let err = detect_format(&[0x1F, 0x8B, 8, 0, 0, 0], "a.gz").unwrap_err();
        assert!(err.to_string().contains("gzip"), "{err}");
    }

    #[test]
    fn empty_and_undecodable() {
        assert!(matches!(detect_format(b"", "a.txt"), Err(IngestError::Empty)));
        assert!(matches!(detect_format(b"  \n\t ", "a.txt"), Err(IngestError::Empty)));
        assert!(matches!(detect_format(b"ab\0cd", "a.txt"), Err(IngestError::Undecodable)));
        assert!(matches!(detect_format(&[0xC3, 0x28, 0x41], "a.txt"), Err(IngestError::Undecodable)));
    }

    #[test]
    fn decodes_boms() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFhi").unwrap(), "hi");
        let le: Vec<u8> = [0xFF, 0xFE].into_iter().chain("héllo €".encode_utf16().flat_map(u16::to_le_bytes)).collect();
        assert_eq!(decode_text(&le).unwrap(), "héllo €");
        let be: Vec<u8> = [0xFE, 0xFF].into_iter().chain("# Tïtle".encode_utf16().flat_map(u16::to_be_bytes)).collect();
        assert_eq!(decode_text(&be).unwrap(), "# Tïtle");
        assert_eq!(detect_format(&be, "doc.md").unwrap(), Format::Markdown);
        // UTF-16 without a BOM is not guessed.
        let bare: Vec<u8> = "hello".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert!(matches!(decode_text(&bare), Err(IngestError::Undecodable)));
        // Odd length after a UTF-16 BOM.
        assert!(matches!(decode_text(&[0xFF, 0xFE, b'a']), Err(IngestError::Undecodable)));
    }
}
