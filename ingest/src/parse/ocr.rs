//! Text from pixels and the PDF fallback, run inside the isolated worker: Tesseract for
//! images and scanned PDF pages (rasterised with poppler's pdftoppm), and poppler's
//! pdftotext when pdf-extract fails. The tools are child processes of the worker, so its
//! limits and its process group (killed on timeout) cover them too.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::builder::{collapse_whitespace, DocBuilder};
use super::ParsedDocument;

/// The message of a document whose pages are images when Tesseract is missing.
pub const NO_TEXT_LAYER: &str = "no text layer: install tesseract-ocr to read scanned pages";

/// Raster resolution for OCR: Tesseract reads body text best at about 300 dpi.
const OCR_DPI: &str = "300";

/// Tesseract's languages: English and Simplified Chinese where installed.
fn languages() -> Option<String> {
    let out = Command::new("tesseract").arg("--list-langs").stderr(Stdio::null()).output().ok()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let langs: Vec<&str> = ["eng", "chi_sim"].into_iter().filter(|l| listed.lines().any(|x| x.trim() == *l)).collect();
    (!langs.is_empty()).then(|| langs.join("+"))
}

pub fn tesseract_available() -> bool {
    languages().is_some()
}

/// Runs `cmd` with `input` on stdin and returns stdout, or a message with its stderr.
fn pipe(mut cmd: Command, input: &[u8], what: &str) -> Result<Vec<u8>, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let output = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })
    .map_err(|e| format!("{what} failed: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{what} failed ({}): {}", output.status, collapse_whitespace(&err)));
    }
    Ok(output.stdout)
}

/// OCR of one image (PNG, JPEG, TIFF) to text.
pub fn ocr_image(image: &[u8]) -> Result<String, String> {
    let langs = languages().ok_or_else(|| NO_TEXT_LAYER.to_string())?;
    let mut cmd = Command::new("tesseract");
    // One thread: OCR runs next to the service's own work.
    cmd.args(["stdin", "stdout", "-l", &langs]).env("OMP_THREAD_LIMIT", "1");
    let out = pipe(cmd, image, "tesseract")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Renders one page of the PDF at `path` and reads it with Tesseract.
pub fn ocr_pdf_page(path: &Path, page: u32) -> Result<String, String> {
    let n = page.to_string();
    let mut cmd = Command::new("pdftoppm");
    cmd.args(["-png", "-gray", "-r", OCR_DPI, "-f", &n, "-l", &n]).arg(path);
    let png = pipe(cmd, &[], "pdftoppm")?;
    if png.is_empty() {
        return Err(format!("pdftoppm rendered nothing for page {page}"));
    }
    ocr_image(&png)
}

/// poppler's text of every page (pages split on form feeds), or None without pdftotext.
pub fn pdftotext_pages(path: &Path) -> Result<Vec<String>, String> {
    let mut cmd = Command::new("pdftotext");
    cmd.args(["-enc", "UTF-8"]).arg(path).arg("-");
    let out = pipe(cmd, &[], "pdftotext")?;
    let text = String::from_utf8_lossy(&out);
    let mut pages: Vec<String> = text.split('\u{c}').map(str::to_owned).collect();
    // pdftotext ends every page with a form feed, so the last piece is empty.
    if pages.last().is_some_and(|p| p.trim().is_empty()) && pages.len() > 1 {
        pages.pop();
    }
    Ok(pages)
}

/// An image document: its OCR text as paragraphs.
pub fn image_document(bytes: &[u8]) -> Result<ParsedDocument, String> {
    let text = ocr_image(bytes)?;
    let mut doc = DocBuilder::default();
    for para in text.split("\n\n") {
        doc.push(&collapse_whitespace(para), None, &[], false);
    }
    let mut parsed = doc.finish(None);
    parsed.extractor = Some("tesseract".into());
    Ok(parsed)
}

/// True when text has too few letters to be a page's text layer (a scan, or only page
/// numbers and stray marks).
pub fn lacks_text(text: &str) -> bool {
    text.chars().filter(|c| c.is_alphanumeric()).count() < 16
}

/// True when extracted text is mostly not words: few letters, or letters that rarely make
/// up words (broken encodings yield runs of symbols or single glyphs).
pub fn mostly_not_words(text: &str) -> bool {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens.is_empty() {
        return true;
    }
    let wordy = tokens
        .iter()
        .filter(|t| {
            let letters = t.chars().filter(|c| c.is_alphabetic()).count();
            letters >= 2 && letters * 2 >= t.chars().count()
                || t.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
        })
        .count();
    wordy * 2 < tokens.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_or_not() {
        assert!(!mostly_not_words("The main bearing is greased every 1,800 hours."));
        assert!(mostly_not_words("\u{1} \u{2} # % & ( ) 1 2 3 4 5 6 x"));
        assert!(!mostly_not_words("扫描的页面 需要 文字识别"));
        assert!(lacks_text("  12  \n"));
        assert!(!lacks_text("A page with a real text layer on it."));
    }
}
