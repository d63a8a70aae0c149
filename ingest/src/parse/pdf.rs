//! PDFs are parsed by pdf-extract in a child process: it can panic, abort, exhaust memory or
//! loop forever on hostile files, and none of that may reach the service. The parent
//! (`PdfParser`) feeds the bytes on stdin and reads JSON back; the child runs
//! `pdf_worker_main`, which caps its own memory and CPU time first.
//!
//! The same worker parses the other formats that unpack untrusted archives or run external
//! tools: Word, PowerPoint and Excel files (a ZIP bomb or a calamine bug meets the worker's
//! memory limit, not the service's), and images through OCR. `FORMAT_ENV` says which; PDF
//! pages without a text layer are read by OCR there too, and poppler's pdftotext stands in
//! when pdf-extract fails or returns mostly non-words.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::builder::{clean_title, collapse_whitespace, DocBuilder};
use super::{docx, ocr, pptx, sheet, ParsedDocument};
use crate::{Format, IngestError};

/// Env var carrying the worker's memory budget in bytes.
pub const MEMORY_LIMIT_ENV: &str = "KB_PDF_WORKER_MEMORY_LIMIT";
/// Env var carrying the worker's CPU-time limit in seconds: a backstop should the parent die
/// and never kill it.
pub const CPU_LIMIT_ENV: &str = "KB_PDF_WORKER_CPU_LIMIT";
/// Env var naming the format the worker parses (`Format::name`); PDF when unset.
pub const FORMAT_ENV: &str = "KB_WORKER_FORMAT";

/// The worker's reply sits on the last stdout line after this marker, so stray prints from
/// libraries (or a host binary's logging) cannot corrupt it.
const REPLY_MARKER: &str = "KB-PDF-WORKER-REPLY:";
/// The worker's panic hook prints this before the panic message on stderr.
const PANIC_MARKER: &str = "KB-PDF-WORKER-PANIC:";

/// Far above any real PDF's text; output past it means something is wrong.
const MAX_STDOUT_BYTES: usize = 256 << 20;
/// Only the end of stderr is kept: that is where the fatal message is.
const MAX_STDERR_BYTES: usize = 64 << 10;

const EXIT_OK: i32 = 0;
const EXIT_PDF_ERROR: i32 = 2;
const EXIT_SETUP_ERROR: i32 = 3;
const EXIT_PANIC: i32 = 101;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Reply {
    Ok {
        title: Option<String>,
        pages: Vec<PageText>,
        warnings: Vec<String>,
        #[serde(default)]
        extractor: Option<String>,
    },
    /// A format other than PDF, parsed whole in the worker.
    Parsed {
        doc: ParsedDocument,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct PageText {
    /// 1-based.
    number: u32,
    text: String,
}

/// Runs pdf-extract in a separate process with a time and memory limit.
#[derive(Debug, Clone)]
pub struct PdfParser {
    /// The worker executable: `kb-pdf-worker`, or `kb` with args `["pdf-worker"]`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The child is killed after this long.
    pub timeout: Duration,
    /// Address space the child may map beyond what it holds at start-up (RLIMIT_AS), so a
    /// large host binary used as the worker does not eat the budget.
    pub memory_limit_bytes: u64,
}

impl PdfParser {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;

    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            program: program.into(),
            args,
            timeout: Self::DEFAULT_TIMEOUT,
            memory_limit_bytes: Self::DEFAULT_MEMORY_LIMIT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit_bytes = bytes;
        self
    }

    /// Parses a PDF into one block per paragraph, each with its page number.
    pub fn parse(&self, bytes: &[u8]) -> Result<ParsedDocument, IngestError> {
        self.parse_isolated(bytes, Format::Pdf)
    }

    /// Parses `bytes` as `format` in the worker process.
    pub fn parse_isolated(&self, bytes: &[u8], format: Format) -> Result<ParsedDocument, IngestError> {
        match self.extract(bytes, format)? {
            Reply::Ok { title, pages, extractor, .. } => {
                let mut doc = build_document(title, &pages);
                doc.extractor = extractor.or_else(|| Some("pdf-extract".into()));
                Ok(doc)
            }
            Reply::Parsed { doc } => Ok(doc),
            Reply::Error { message } => Err(worker_error(format, message)),
        }
    }

    /// Runs the worker on `bytes` and returns its successful reply.
    fn extract(&self, bytes: &[u8], format: Format) -> Result<Reply, IngestError> {
        let pdf_error = |message: String| worker_error(format, message);
        let started = Instant::now();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env(FORMAT_ENV, format.name())
            .env(MEMORY_LIMIT_ENV, self.memory_limit_bytes.to_string())
            .env(CPU_LIMIT_ENV, (self.timeout.as_secs() + 5).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            // Its own process group, so a timeout kills anything it started too.
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|e| {
            tracing::error!(program = %self.program.display(), error = %e, "cannot start PDF worker");
            pdf_error(format!("could not start the {} parser ({}): {e}", format.label(), self.program.display()))
        })?;
        let run = self.supervise(&mut child, bytes);
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, bytes = bytes.len(), "PDF worker done");
        let Run { status, stdout, stderr, stdout_overflow } = run?;
        let status = match status {
            Some(status) => status,
            None => {
                tracing::warn!(seconds = self.timeout.as_secs_f64(), "PDF worker timed out, killed");
                let seconds = self.timeout.as_secs_f64().ceil() as u64;
                if format != Format::Pdf {
                    return Err(pdf_error(format!("parsing took longer than {seconds} s and was stopped")));
                }
                return Err(IngestError::PdfTimeout { seconds });
            }
        };
        let stderr = String::from_utf8_lossy(&stderr);
        if stdout_overflow {
            return Err(pdf_error(format!("the PDF parser produced more than {} MiB of text", MAX_STDOUT_BYTES >> 20)));
        }
        match parse_reply(&stdout) {
            Some(Reply::Ok { title, pages, warnings, extractor }) if status.success() => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "PDF partly unreadable");
                }
                Ok(Reply::Ok { title, pages, warnings, extractor })
            }
            Some(Reply::Parsed { doc }) if status.success() => Ok(Reply::Parsed { doc }),
            Some(Reply::Error { message }) => Err(pdf_error(message)),
            _ => Err(pdf_error(self.describe_failure(format, status, &stderr))),
        }
    }

    /// Feeds stdin, drains stdout/stderr and enforces the timeout, all at once so that no
    /// pipe can fill up and stall either side. `status` is None when the child was killed.
    fn supervise(&self, child: &mut Child, bytes: &[u8]) -> Result<Run, IngestError> {
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill(child);
            return Err(IngestError::Task("could not connect to the parser process".into()));
        };
        let deadline = Instant::now() + self.timeout;
        std::thread::scope(|s| {
            s.spawn(move || {
                // A child that exits without reading everything closes the pipe: not our error
                // to report, its exit status tells what happened.
                if let Err(e) = stdin.write_all(bytes) {
                    tracing::debug!(error = %e, "PDF worker stopped reading its input");
                }
            });
            let out = s.spawn(move || read_capped(&mut stdout, MAX_STDOUT_BYTES, false));
            let err = s.spawn(move || read_capped(&mut stderr, MAX_STDERR_BYTES, true));
            let status = wait_until(child, deadline);
            let status = match status {
                Ok(status) => status,
                Err(e) => {
                    kill(child);
                    return Err(IngestError::Io(e));
                }
            };
            // Once the child is gone its pipes close and the threads finish.
            let (stdout, stdout_overflow) = out.join().unwrap_or_default();
            let (stderr, _) = err.join().unwrap_or_default();
            Ok(Run { status, stdout, stderr, stdout_overflow })
        })
    }

    fn describe_failure(&self, format: Format, status: ExitStatus, stderr: &str) -> String {
        let label = format.label();
        if let Some(panic) = stderr.lines().rev().find_map(|l| l.split_once(PANIC_MARKER)) {
            return format!("the {label} parser crashed on this file: {}", truncate(panic.1.trim(), 500));
        }
        if stderr.contains("memory allocation of") {
            return format!(
                "the {label} needs more than the {} of memory allowed for parsing",
                human_bytes(self.memory_limit_bytes)
            );
        }
        let tail = stderr_tail(stderr);
        let what = match status_signal(status) {
            Some(sig) => format!("the {label} parser was killed by signal {sig} ({})", signal_name(sig)),
            None => match status.code() {
                Some(code) => format!("the {label} parser failed with exit status {code}"),
                None => format!("the {label} parser failed"),
            },
        };
        if tail.is_empty() {
            if status.success() {
                return format!("the {label} parser returned unreadable output");
            }
            what
        } else {
            format!("{what}: {tail}")
        }
    }
}

struct Run {
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_overflow: bool,
}

/// A worker's message as the error of a document of `format`.
fn worker_error(format: Format, message: String) -> IngestError {
    match format {
        Format::Pdf => IngestError::Pdf { message },
        other => IngestError::Parse { format: other.label().into(), message },
    }
}

/// Polls the child until it exits or the deadline passes (then kills it: None).
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            kill(child);
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills the child's whole process group and reaps it.
fn kill(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the group we created at spawn.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads to EOF keeping at most `cap` bytes (the head, or the tail when `keep_tail`), and
/// says whether anything was dropped.
fn read_capped(r: &mut impl Read, cap: usize, keep_tail: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut dropped = false;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if keep_tail {
            out.extend_from_slice(&buf[..n]);
            if out.len() > 2 * cap {
                out.drain(..out.len() - cap);
                dropped = true;
            }
        } else if out.len() < cap {
            let room = cap - out.len();
            out.extend_from_slice(&buf[..n.min(room)]);
            dropped |= n > room;
        } else {
            dropped = true;
        }
    }
    if keep_tail && out.len() > cap {
        out.drain(..out.len() - cap);
    }
    (out, dropped)
}

fn parse_reply(stdout: &[u8]) -> Option<Reply> {
    let text = std::str::from_utf8(stdout).ok()?;
    let json = text.lines().rev().find_map(|l| l.strip_prefix(REPLY_MARKER))?;
    serde_json::from_str(json).ok()
}

/// The last few meaningful stderr lines, for messages about crashes we cannot name.
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    truncate(&tail, 500)
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(unix)]
fn status_signal(status: ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

#[cfg(not(unix))]
fn status_signal(_: ExitStatus) -> Option<i32> {
    None
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        6 => "SIGABRT: aborted",
        9 => "SIGKILL: killed, often for running out of memory",
        11 => "SIGSEGV: invalid memory access",
        24 => "SIGXCPU: CPU time limit exceeded",
        _ => "unexpected signal",
    }
}

/// One block per paragraph of each page. pdf-extract marks paragraph gaps with blank lines;
/// the lines inside a paragraph are soft wraps and are joined with spaces.
fn build_document(title: Option<String>, pages: &[PageText]) -> ParsedDocument {
    let mut doc = DocBuilder::default();
    let mut first_line = None;
    for page in pages {
        let text: String = page.text.chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect();
        let mut para = String::new();
        for line in text.lines() {
            let line = collapse_whitespace(line);
            if line.is_empty() {
                doc.push(&para, Some(page.number), &[], false);
                para.clear();
                continue;
            }
            if first_line.is_none() {
                first_line = clean_title(&line);
            }
            if ends_in_broken_word(&para) && line.starts_with(|c: char| c.is_lowercase()) {
                // A word hyphenated at the end of a line: "impor-" + "tant" is "important".
                para.pop();
            } else if !para.is_empty() {
                para.push(' ');
            }
            para.push_str(&line);
        }
        doc.push(&para, Some(page.number), &[], false);
    }
    doc.finish(title.or(first_line))
}

/// Whether `para` ends in a hyphen right after a letter (a word broken across lines).
fn ends_in_broken_word(para: &str) -> bool {
    let mut rev = para.chars().rev();
    matches!((rev.next(), rev.next()), (Some('-' | '\u{ad}' | '\u{2010}'), Some(c)) if c.is_alphabetic())
}

// ---------------------------------------------------------------------------------------
// The worker side.

/// The last panic's message: pdf-extract panicking on its thread is recovered from.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Entry point of the PDF worker process: PDF bytes on stdin, reply on stdout. Returns the
/// process exit code. Only ever call this in a dedicated process.
pub fn pdf_worker_main() -> i32 {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let location = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        let message = format!("{}{location}", message.replace('\n', " "));
        eprintln!("{PANIC_MARKER} {message}");
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(message);
        }
    }));
    if let Err(e) = limit_resources() {
        eprintln!("kb-pdf-worker: cannot set resource limits: {e}");
        return EXIT_SETUP_ERROR;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        eprintln!("kb-pdf-worker: cannot read input: {e}");
        return EXIT_SETUP_ERROR;
    }
    let format = std::env::var(FORMAT_ENV).unwrap_or_default();
    let (reply, code) = match std::panic::catch_unwind(|| parse_in_worker(&format, &input)) {
        Ok(Ok(reply)) => (reply, EXIT_OK),
        Ok(Err(message)) => (Reply::Error { message }, EXIT_PDF_ERROR),
        // The hook has printed the message.
        Err(_) => return EXIT_PANIC,
    };
    let json = match serde_json::to_string(&reply) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("kb-pdf-worker: cannot encode reply: {e}");
            return EXIT_SETUP_ERROR;
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "\n{REPLY_MARKER}{json}").and_then(|()| out.flush()).is_err() {
        return EXIT_SETUP_ERROR;
    }
    code
}

/// Parses `input` as the format named `format` (`Format::name`).
fn parse_in_worker(format: &str, input: &[u8]) -> Result<Reply, String> {
    let parsed = |doc: Result<ParsedDocument, String>| doc.map(|doc| Reply::Parsed { doc });
    match format {
        "docx" => parsed(docx::parse(input)),
        "pptx" => parsed(pptx::parse(input)),
        "xlsx" => parsed(sheet::parse_xlsx(input)),
        "image" => parsed(ocr::image_document(input)),
        "" | "pdf" => extract_pdf(input),
        other => Err(format!("the worker does not parse {other:?}")),
    }
}

/// How pdf-extract's attempt ended.
enum Primary {
    Read(Pages),
    Failed(String),
    Crashed(String),
    TooSlow(Duration),
}

/// pdf-extract first, with half the time budget; poppler's pdftotext when it fails, crashes,
/// is too slow or returns mostly non-words; Tesseract for pages with no text layer.
fn extract_pdf(bytes: &[u8]) -> Result<Reply, String> {
    let mut file = TempPdf::new(bytes);
    let (title, mut pages, mut warnings, mut extractor) = match run_pdf_extract(bytes) {
        Primary::Read((title, pages, warnings)) => {
            let text = joined(&pages);
            let better = if !ocr::lacks_text(&text) && ocr::mostly_not_words(&text) {
                fallback_pages(&mut file).filter(|p| !ocr::mostly_not_words(&joined(p)))
            } else {
                None
            };
            match better {
                Some(better) => (title, better, warnings, "pdftotext".to_string()),
                None => (title, pages, warnings, "pdf-extract".to_string()),
            }
        }
        failure => {
            let message = match failure {
                Primary::Failed(m) => m,
                Primary::Crashed(m) => format!("the PDF parser crashed on this file: {m}"),
                Primary::TooSlow(t) => format!("pdf-extract took longer than {} s", t.as_secs()),
                Primary::Read(_) => unreachable!("matched above"),
            };
            match fallback_pages(&mut file) {
                Some(pages) if !ocr::lacks_text(&joined(&pages)) => {
                    (None, pages, vec![format!("pdf-extract: {message}")], "pdftotext".to_string())
                }
                _ => return Err(message),
            }
        }
    };
    let scanned: Vec<usize> = (0..pages.len()).filter(|&i| ocr::lacks_text(&pages[i].text)).collect();
    if !scanned.is_empty() {
        if !ocr::tesseract_available() {
            if scanned.len() == pages.len() {
                return Err(ocr::NO_TEXT_LAYER.to_string());
            }
            warnings.push(format!("{} page(s) without a text layer skipped: {}", scanned.len(), ocr::NO_TEXT_LAYER));
        } else if let Some(path) = file.path() {
            let mut read = 0;
            for i in scanned {
                match ocr::ocr_pdf_page(&path, pages[i].number) {
                    Ok(text) => {
                        read += 1;
                        pages[i].text = text;
                    }
                    Err(e) => warnings.push(format!("page {}: OCR failed: {e}", pages[i].number)),
                }
            }
            if read > 0 {
                extractor.push_str("+tesseract");
            }
        }
    }
    Ok(Reply::Ok { title, pages, warnings, extractor: Some(extractor) })
}

fn joined(pages: &[PageText]) -> String {
    pages.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join("\n")
}

/// Runs pdf-extract on a thread of its own so that a slow document (pdf-extract takes
/// minutes on some books) leaves time for the fallback within the worker's budget.
fn run_pdf_extract(bytes: &[u8]) -> Primary {
    let budget = std::env::var(CPU_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|cpu| Duration::from_secs(cpu.saturating_sub(5).max(2) / 2))
        .unwrap_or(Duration::from_secs(15));
    let outcome = |r: std::thread::Result<Result<Pages, String>>| match r {
        Ok(Ok(pages)) => Primary::Read(pages),
        Ok(Err(m)) => Primary::Failed(m),
        Err(_) => Primary::Crashed(LAST_PANIC.lock().ok().and_then(|p| p.clone()).unwrap_or_default()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let data = bytes.to_vec();
    let spawned = std::thread::Builder::new().name("pdf-extract".into()).spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(|| extract_pages(&data)));
    });
    match spawned {
        Ok(_) => match rx.recv_timeout(budget) {
            Ok(r) => outcome(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Primary::TooSlow(budget),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                outcome(Err(Box::new(()) as Box<dyn std::any::Any + Send>))
            }
        },
        // No room for a thread (a tight memory limit): run it here, without the deadline.
        Err(_) => outcome(std::panic::catch_unwind(|| extract_pages(bytes))),
    }
}

/// pdftotext's pages, numbered from 1; None when it is missing or fails.
fn fallback_pages(file: &mut TempPdf) -> Option<Vec<PageText>> {
    let pages = ocr::pdftotext_pages(&file.path()?).ok()?;
    Some(pages.into_iter().zip(1..).map(|(text, number)| PageText { number, text }).collect())
}

/// The PDF written to a temporary file for the poppler tools on first use, removed on drop.
struct TempPdf<'a> {
    bytes: &'a [u8],
    file: Option<tempfile::NamedTempFile>,
}

impl<'a> TempPdf<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, file: None }
    }

    fn path(&mut self) -> Option<std::path::PathBuf> {
        if self.file.is_none() {
            let mut f = tempfile::Builder::new().prefix("kb-worker-").suffix(".pdf").tempfile().ok()?;
            f.write_all(self.bytes).ok()?;
            f.flush().ok()?;
            self.file = Some(f);
        }
        self.file.as_ref().map(|f| f.path().to_owned())
    }
}

type Pages = (Option<String>, Vec<PageText>, Vec<String>);

fn extract_pages(bytes: &[u8]) -> Result<Pages, String> {
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| format!("not a readable PDF ({e})"))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err("the PDF is protected by a password".into());
    }
    let title = info_title(&doc);
    let page_ids = doc.get_pages();
    if page_ids.is_empty() {
        return Err("the PDF has no pages".into());
    }
    let mut pages = Vec::with_capacity(page_ids.len());
    let mut warnings = Vec::new();
    // Page by page, so one bad page costs only its own text.
    for &number in page_ids.keys() {
        let mut text = String::new();
        {
            let mut output = pdf_extract::PlainTextOutput::new(&mut text);
            if let Err(e) = pdf_extract::output_doc_page(&doc, &mut output, number) {
                warnings.push(format!("page {number}: {e}"));
            }
        }
        pages.push(PageText { number, text });
    }
    if warnings.len() == pages.len() {
        return Err(format!("no page could be read ({})", warnings.join("; ")));
    }
    Ok((title, pages, warnings))
}

/// The Title entry of the document information dictionary, if any.
fn info_title(doc: &pdf_extract::Document) -> Option<String> {
    use pdf_extract::Object;
    let info = doc.trailer.get(b"Info").ok()?;
    let (_, info) = doc.dereference(info).ok()?;
    let Object::Dictionary(info) = info else { return None };
    let (_, title) = doc.dereference(info.get(b"Title").ok()?).ok()?;
    let Object::String(bytes, _) = title else { return None };
    clean_title(&decode_pdf_string(bytes))
}

/// PDF text strings: UTF-16BE or UTF-8 with a BOM, else PDFDocEncoding (Latin-1 is close
/// enough for titles).
fn decode_pdf_string(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        let units = rest.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
    } else if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        bytes.iter().map(|&b| char::from(b)).collect()
    }
}

/// Caps the worker's address space (on top of what is mapped now) and CPU time, and asks
/// the kernel to kill it should the parent die.
#[cfg(unix)]
fn limit_resources() -> Result<(), String> {
    let set = |resource, value: u64| -> Result<(), String> {
        let lim = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(())
    };
    // No core files from crashes on hostile input.
    set(libc::RLIMIT_CORE, 0)?;
    if let Some(budget) = env_u64(MEMORY_LIMIT_ENV)? {
        set(libc::RLIMIT_AS, mapped_bytes().saturating_add(budget))?;
    }
    if let Some(secs) = env_u64(CPU_LIMIT_ENV)? {
        set(libc::RLIMIT_CPU, secs.max(1))?;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    Ok(())
}

#[cfg(not(unix))]
fn limit_resources() -> Result<(), String> {
    Ok(())
}

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| format!("{name} is not a number: {v:?}")),
        Err(_) => Ok(None),
    }
}

/// Current virtual memory size, from /proc (0 where there is none).
fn mapped_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(|pages| pages * page_size())
        .unwrap_or(0)
}

#[cfg(unix)]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> u64 {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_keep_pages() {
        let pages = vec![
            PageText { number: 1, text: "\n\nManual  Title\nfirst para\nwraps here.\n\n\nsecond.\n".into() },
            PageText { number: 2, text: "page two\u{c}text.".into() },
            PageText { number: 3, text: "  \n ".into() },
        ];
        let doc = build_document(None, &pages);
        let got: Vec<(&str, Option<u32>)> = doc.blocks.iter().map(|b| (&doc.text[b.start..b.end], b.page)).collect();
        assert_eq!(
            got,
            [("Manual Title first para wraps here.", Some(1)), ("second.", Some(1)), ("page two text.", Some(2))]
        );
        assert_eq!(doc.title.as_deref(), Some("Manual Title"));
    }

    #[test]
    fn words_broken_at_line_ends_are_joined() {
        let pages = vec![PageText { number: 1, text: "an impor-\ntant well-\nKnown point, 3-\n4 x-\n\ny.".into() }];
        let doc = build_document(None, &pages);
        assert_eq!(doc.text, "an important well- Known point, 3- 4 x-\n\ny.");
    }

    #[test]
    fn pdf_strings() {
        assert_eq!(decode_pdf_string(b"\xFE\xFF\x00H\x00i"), "Hi");
        assert_eq!(decode_pdf_string(b"Caf\xE9"), "Café");
    }

    #[test]
    fn reply_found_after_noise() {
        let out = format!("noise\n{REPLY_MARKER}{{\"status\":\"error\",\"message\":\"bad\"}}\n");
        assert!(matches!(parse_reply(out.as_bytes()), Some(Reply::Error { message }) if message == "bad"));
        assert!(parse_reply(b"garbage").is_none());
    }

    #[test]
    fn capped_reads() {
        let data = vec![7u8; 300_000];
        let (head, dropped) = read_capped(&mut &data[..], 1000, false);
        assert_eq!((head.len(), dropped), (1000, true));
        let mut data = vec![1u8; 300_000];
        data.extend_from_slice(b"END");
        let (tail, dropped) = read_capped(&mut &data[..], 1000, true);
        assert!(dropped && tail.len() == 1000 && tail.ends_with(b"END"));
    }
}
