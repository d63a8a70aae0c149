//! The PDF worker process: timeouts, crashes, garbage and limits never reach the caller.

use std::time::{Duration, Instant};

use crate::common::*;
use kb_ingest::parse::PdfParser;
use kb_ingest::IngestError;

fn sh(script: &str) -> PdfParser {
    PdfParser::new("/bin/sh", vec!["-c".into(), script.into()])
}

#[test]
fn timeout_kills_the_child_without_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // A worker that never reads its input nor answers; 4 MiB of input would block a naive
    // parent writing stdin before waiting.
    let parser = sh(&format!("echo $$ > {}; exec sleep 60", pid_file.display())).with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let err = parser.parse(&vec![b'x'; 4 << 20]).unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, IngestError::PdfTimeout { seconds: 1 }), "{err:?}");
    assert_eq!(err.to_string(), "PDF parsing took longer than 1 s and was stopped");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "worker {pid} still alive");
}

#[test]
fn timeout_with_plain_sleep() {
    let parser = PdfParser::new("/bin/sleep", vec!["30".into()]).with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = parser.parse(b"%PDF-1.4").unwrap_err();
    assert!(matches!(err, IngestError::PdfTimeout { seconds: 1 }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn garbage_output_is_an_error() {
    let err = PdfParser::new("/bin/echo", vec!["hello".into()]).parse(b"%PDF-").unwrap_err();
    let IngestError::Pdf { message } = err else { panic!("{err:?}") };
    assert_eq!(message, "the PDF parser returned unreadable output");
}

#[test]
fn failing_worker_reports_status_and_stderr() {
    let err =
        sh("cat >/dev/null; echo 'first line' >&2; echo 'boom: disk on fire' >&2; exit 7").parse(b"%PDF-").unwrap_err();
    let IngestError::Pdf { message } = err else { panic!("{err:?}") };
    assert!(message.contains("exit status 7"), "{message}");
    assert!(message.contains("boom: disk on fire"), "{message}");
}

#[test]
fn killed_worker_names_the_signal() {
    let err = sh("kill -SEGV $$").parse(b"%PDF-").unwrap_err();
    let IngestError::Pdf { message } = err else { panic!("{err:?}") };
    assert!(message.contains("signal 11") && message.contains("SIGSEGV"), "{message}");
}

#[test]
fn missing_program_is_an_error() {
    let err = PdfParser::new("/nonexistent/kb-pdf-worker", vec![]).parse(b"%PDF-").unwrap_err();
    let IngestError::Pdf { message } = err else { panic!("{err:?}") };
    assert!(message.contains("could not start the PDF parser"), "{message}");
}

#[test]
fn memory_limit_applies_in_the_worker() {
    // Left 64 KiB above its start-up size, the worker cannot even hold the input.
    let err = pdf_parser().with_memory_limit(64 << 10).parse(&read_fixture("handbook.pdf")).unwrap_err();
    let IngestError::Pdf { message } = err else { panic!("{err:?}") };
    assert_eq!(message, "the PDF needs more than the 64 KiB of memory allowed for parsing");
    // The default budget is plenty for a real PDF.
    assert!(pdf_parser().parse(&read_fixture("handbook.pdf")).is_ok());
}

#[test]
fn parallel_parses_are_independent() {
    let parser = pdf_parser();
    std::thread::scope(|s| {
        let handles: Vec<_> = ["handbook.pdf", "panic.pdf", "truncated.pdf", "handbook.pdf"]
            .into_iter()
            .map(|name| {
                let parser = &parser;
                s.spawn(move || (name, parser.parse(&read_fixture(name))))
            })
            .collect();
        for h in handles {
            let (name, result) = h.join().unwrap();
            assert_eq!(result.is_ok(), name == "handbook.pdf", "{name}: {result:?}");
        }
    });
}
