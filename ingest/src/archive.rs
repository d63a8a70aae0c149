//! Office Open XML packages: ZIP files read under size limits, and telling Word, Excel and
//! PowerPoint apart from their `[Content_Types].xml`.
//!
//! A ZIP's sizes are the sender's claims, so every entry is measured while it is inflated:
//! a ZIP bomb stops at the limit with an error of its own document, never an out-of-memory.

use std::io::{Cursor, Read};

use zip::ZipArchive;

use crate::{Format, IngestError};

/// Most bytes one entry may inflate to: far above the XML of any real document.
pub const MAX_ENTRY_BYTES: u64 = 128 << 20;
/// Most bytes all entries read from one package may inflate to together.
pub const MAX_TOTAL_BYTES: u64 = 512 << 20;
/// Most entries a package may hold.
pub const MAX_ENTRIES: usize = 50_000;

const CFB_MAGIC: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// A ZIP package whose reads count against the limits.
pub struct Package<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    inflated: u64,
    entry_limit: u64,
    total_limit: u64,
}

impl<'a> Package<'a> {
    /// Opens the package; a truncated or damaged ZIP is an error that says so.
    pub fn open(bytes: &'a [u8]) -> Result<Self, String> {
        let zip = ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| format!("the file is truncated or damaged: not a complete ZIP archive ({e})"))?;
        if zip.len() > MAX_ENTRIES {
            return Err(format!("the archive holds {} entries, more than the {MAX_ENTRIES} allowed", zip.len()));
        }
        Ok(Self { zip, inflated: 0, entry_limit: MAX_ENTRY_BYTES, total_limit: MAX_TOTAL_BYTES })
    }

    /// Lower limits (tests).
    pub fn with_limits(mut self, entry: u64, total: u64) -> Self {
        self.entry_limit = entry;
        self.total_limit = total;
        self
    }

    pub fn names(&self) -> Vec<String> {
        self.zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect()
    }

    /// Reads one entry (None when absent), stopping at the per-entry and total limits.
    pub fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let index = match self.zip.index_for_name(name) {
            Some(i) => i,
            None => return Ok(None),
        };
        let limit = self.entry_limit.min(self.total_limit.saturating_sub(self.inflated));
        let mut out = Vec::new();
        {
            let mut file = self.zip.by_index(index).map_err(|e| entry_error(name, e))?;
            (&mut file).take(limit + 1).read_to_end(&mut out).map_err(|e| format!("{name} cannot be inflated: {e}"))?;
        }
        self.inflated += out.len() as u64;
        if out.len() as u64 > limit {
            return Err(self.over_limit(name));
        }
        Ok(Some(out))
    }

    /// An entry as text (UTF-8, as Office writes it).
    pub fn read_text(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.read(name)? {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            None => Ok(None),
        }
    }

    /// Inflates every entry without keeping it: a package handed whole to another reader
    /// (calamine) is proven within the limits first.
    pub fn check_all(&mut self) -> Result<(), String> {
        for i in 0..self.zip.len() {
            let limit = self.entry_limit.min(self.total_limit.saturating_sub(self.inflated));
            let (name, n) = {
                let mut file = self.zip.by_index(i).map_err(|e| entry_error(&format!("entry {i}"), e))?;
                let name = file.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("entry {i}"));
                let n = std::io::copy(&mut (&mut file).take(limit + 1), &mut std::io::sink())
                    .map_err(|e| format!("{name} cannot be inflated: {e}"))?;
                (name, n)
            };
            self.inflated += n;
            if n > limit {
                return Err(self.over_limit(&name));
            }
        }
        Ok(())
    }

    fn over_limit(&self, name: &str) -> String {
        format!(
            "{name} expands beyond the limit ({} MiB per entry, {} MiB in all): refused as a likely ZIP bomb",
            self.entry_limit >> 20,
            self.total_limit >> 20
        )
    }
}

fn entry_error(name: &str, e: zip::result::ZipError) -> String {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("password") || text.to_ascii_lowercase().contains("encrypt") {
        return "the document is encrypted (password-protected)".to_string();
    }
    format!("{name} cannot be read: {text}")
}

/// Names an Office Open XML package from its bytes: Some(format) for Word, Excel and
/// PowerPoint; an error for a password-protected Office file (which is a CFB container, not
/// a ZIP); None for anything else.
pub fn detect_office(bytes: &[u8]) -> Result<Option<Format>, IngestError> {
    if bytes.starts_with(&CFB_MAGIC) {
        // Encrypted OOXML is stored in a CFB container with an "EncryptedPackage" stream.
        let marker: Vec<u8> = "EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes).collect();
        if bytes.windows(marker.len()).any(|w| w == marker.as_slice()) {
            return Err(IngestError::Encrypted { what: "Office document".into() });
        }
        return Ok(None);
    }
    if !(bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")) {
        return Ok(None);
    }
    let types = Package::open(bytes).and_then(|p| p.with_limits(4 << 20, 4 << 20).read_text("[Content_Types].xml"));
    Ok(match types {
        Ok(Some(types)) => format_from_content_types(&types),
        Ok(None) => None,
        // A damaged package: the local headers still name its parts, and the parser will
        // report the damage in that format's terms.
        Err(_) => format_from_part_names(bytes),
    })
}

fn format_from_content_types(types: &str) -> Option<Format> {
    if types.contains("wordprocessingml.document.main") || types.contains("wordprocessingml.template.main") {
        Some(Format::Docx)
    } else if types.contains("spreadsheetml.sheet.main") || types.contains("spreadsheetml.template.main") {
        Some(Format::Xlsx)
    } else if types.contains("presentationml.presentation.main")
        || types.contains("presentationml.slideshow.main")
        || types.contains("presentationml.template.main")
    {
        Some(Format::Pptx)
    } else {
        None
    }
}

fn format_from_part_names(bytes: &[u8]) -> Option<Format> {
    let head = &bytes[..bytes.len().min(256 * 1024)];
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if has(b"word/") {
        Some(Format::Docx)
    } else if has(b"xl/") {
        Some(Format::Xlsx)
    } else if has(b"ppt/") {
        Some(Format::Pptx)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut out);
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            for (name, data) in entries {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
            w.finish().unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn content_types_name_the_format() {
        let docx = zip_of(&[(
            "[Content_Types].xml",
            b"<Types><Override ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml\"/></Types>",
        )]);
        assert_eq!(detect_office(&docx).unwrap(), Some(Format::Docx));
        let plain = zip_of(&[("a.txt", b"hello")]);
        assert_eq!(detect_office(&plain).unwrap(), None);
        let truncated = &zip_of(&[("xl/workbook.xml", b"<workbook/>"), ("pad", &[7u8; 4000])])[..60];
        assert_eq!(detect_office(truncated).unwrap(), Some(Format::Xlsx));
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 3 << 20];
        let bytes = zip_of(&[("word/document.xml", &zeros)]);
        assert!(bytes.len() < 64 << 10, "compresses well: {}", bytes.len());
        let mut p = Package::open(&bytes).unwrap().with_limits(1 << 20, 2 << 20);
        let err = p.read("word/document.xml").unwrap_err();
        assert!(err.contains("ZIP bomb"), "{err}");
        let mut p = Package::open(&bytes).unwrap().with_limits(1 << 20, 2 << 20);
        assert!(p.check_all().unwrap_err().contains("ZIP bomb"));
        let mut p = Package::open(&bytes).unwrap();
        assert_eq!(p.read("word/document.xml").unwrap().unwrap().len(), 3 << 20);
        assert_eq!(p.read("missing").unwrap(), None);
    }

    #[test]
    fn encrypted_office_files_are_named() {
        let mut cfb = CFB_MAGIC.to_vec();
        cfb.extend(std::iter::repeat_n(0u8, 100));
        cfb.extend("EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes));
        let err = detect_office(&cfb).unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        assert_eq!(detect_office(&CFB_MAGIC).unwrap(), None);
    }
}
