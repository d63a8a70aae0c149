//! Office files, CSV, e-mail, scans and hostile files: detected from their bytes, parsed
//! (through the isolated worker where they should be) with their citation locations.

use crate::common::*;
use kb_ingest::chunk::ChunkerConfig;
use kb_ingest::detect::detect_format;
use kb_ingest::parse::{ocr, parse};
use kb_ingest::{Block, Format, IngestError, ParsedDocument};

fn parse_fixture(name: &str) -> Result<ParsedDocument, IngestError> {
    let bytes = read_fixture(name);
    let format = detect_format(&bytes, name)?;
    parse(&bytes, format, name, &pdf_parser())
}

/// The block holding `needle`, panicking with the document's blocks when there is none.
fn block_with<'a>(doc: &'a ParsedDocument, needle: &str) -> &'a Block {
    doc.blocks.iter().find(|b| doc.block_text(b).contains(needle)).unwrap_or_else(|| {
        panic!("{needle:?} not found in blocks {:#?}", block_texts(doc));
    })
}

#[test]
fn formats_come_from_the_bytes() {
    let expect = [
        ("report.docx", Format::Docx),
        ("deck.pptx", Format::Pptx),
        ("budget.xlsx", Format::Xlsx),
        ("suppliers.csv", Format::Csv),
        ("memo.eml", Format::Email),
        ("sign.png", Format::Image),
        ("scan.pdf", Format::Pdf),
        ("truncated.xlsx", Format::Xlsx),
    ];
    for (name, format) in expect {
        assert_eq!(detect_format(&read_fixture(name), name).expect(name), format, "{name}");
    }
    // Not the extension: a Word file named .bin is Word, a message without .eml is e-mail.
    assert_eq!(detect_format(&read_fixture("report.docx"), "upload.bin").unwrap(), Format::Docx);
    assert_eq!(detect_format(&read_fixture("memo.eml"), "message").unwrap(), Format::Email);
    assert_eq!(detect_format(&read_fixture("notes.txt"), "notes.txt").unwrap(), Format::Text);
}

#[test]
fn docx_headings_lists_and_tables() {
    let doc = parse_fixture("report.docx").expect("report.docx parses");
    assert_eq!(doc.title.as_deref(), Some("Aurora Logistics Quarterly Review"));
    let b = block_with(&doc, "Tromsø cold-storage hall keeps frozen salmon");
    assert_eq!(b.heading_path, ["Operations", "Warehouses", "Cold storage"]);
    assert_eq!(doc.block_text(block_with(&doc, "Door seals")), "• Door seals are checked weekly");
    let row = block_with(&doc, "Volta E-7");
    assert_eq!(doc.block_text(row), "Vehicle: Volta E-7 truck; Depot: Lindqvist depot; Range: 410 km");
    assert_eq!(row.heading_path, ["Operations", "Fleet"]);
    assert_eq!(block_with(&doc, "Revenue grew").heading_path, ["Finance"]);
    assert!(!doc.text.contains("CANARY"), "header or footer text leaked: {}", doc.text);
    chunk_checked(&doc, &tokenizer(), &ChunkerConfig::default());
}

#[test]
fn pptx_slides_titles_and_notes() {
    let doc = parse_fixture("deck.pptx").expect("deck.pptx parses");
    let b = block_with(&doc, "Nimbus subscription rises to 19 euros");
    assert_eq!(b.location.as_deref(), Some("slide 2"));
    assert_eq!(b.heading_path, ["Pricing Update"]);
    let notes = block_with(&doc, "Falkenberg pilot ends on 30 June");
    assert_eq!(notes.location.as_deref(), Some("slide 3"));
    assert!(doc.block_text(notes).starts_with("Speaker notes:"), "{}", doc.block_text(notes));
    let title = block_with(&doc, "Pilot Customers");
    assert!(title.is_heading);
    let chunks = chunk_checked(&doc, &tokenizer(), &ChunkerConfig::default());
    // A chunk never spans two slides.
    assert!(chunks.iter().any(|c| c.location.as_deref() == Some("slide 2") && c.text.contains("19 euros")));
}

#[test]
fn xlsx_and_csv_rows_with_headers() {
    let doc = parse_fixture("budget.xlsx").expect("budget.xlsx parses");
    let b = block_with(&doc, "Quartz centrifuge");
    assert!(
        doc.block_text(b).contains("Item: Quartz centrifuge; Supplier: Helvetia Instruments; Amount (EUR): 48300"),
        "{}",
        doc.block_text(b)
    );
    assert_eq!(b.heading_path, ["Costs"]);
    assert_eq!(b.location.as_deref(), Some("sheet Costs, rows 2–8"));
    let staff = block_with(&doc, "Ingrid Solberg");
    assert_eq!(staff.location.as_deref(), Some("sheet Staff, rows 2–3"));
    let csv = parse_fixture("suppliers.csv").expect("suppliers.csv parses");
    let b = block_with(&csv, "titanium hinge T-88");
    assert!(csv.block_text(b).contains("Part: titanium hinge T-88; Supplier: Okafor Metals; Lead time: 11 weeks"));
    assert_eq!(b.location.as_deref(), Some("rows 2–4"));
}

#[test]
fn email_headers_bodies_and_attachment() {
    let doc = parse_fixture("memo.eml").expect("memo.eml parses");
    assert_eq!(doc.title.as_deref(), Some("Harbour crane inspection schedule"));
    let head = doc.block_text(&doc.blocks[0]);
    assert!(head.contains("From: Mara Lindgren <mara.lindgren@example.org>"), "{head}");
    assert!(head.contains("To: Port Operations <ops@example.org>"), "{head}");
    assert!(head.contains("Date: 2025-04-02"), "{head}");
    block_with(&doc, "Pelican crane at berth 14 will be inspected on 9 May");
    // The attachment is handed back whole, to become a document of its own.
    assert!(!doc.text.contains("62 tonnes"), "the attachment's text is not the message's");
    assert_eq!(doc.attachments.len(), 1);
    assert_eq!(doc.attachments[0].name, "inspection.pdf");
    assert!(doc.attachments[0].bytes.starts_with(b"%PDF"));
}

#[test]
fn scans_are_read_by_ocr() {
    assert!(ocr::tesseract_available(), "tesseract-ocr is required: scripts/ensure-tools.sh installs it");
    let doc = parse_fixture("sign.png").expect("sign.png parses");
    block_with(&doc, "Visitors to the Marlowe archive must sign in at desk 5");
    assert_eq!(doc.extractor.as_deref(), Some("tesseract"));
    let doc = parse_fixture("scan.pdf").expect("scan.pdf parses");
    assert_eq!(block_with(&doc, "pressure tested every 90 days").page, Some(1));
    assert_eq!(doc.extractor.as_deref(), Some("pdf-extract+tesseract"));
    let doc = parse_fixture("mixed.pdf").expect("mixed.pdf parses");
    assert_eq!(block_with(&doc, "draws 3.2 megawatts at peak load").page, Some(1));
    assert_eq!(block_with(&doc, "hydrotreated vegetable oil").page, Some(2));
}

#[test]
fn hostile_files_fail_with_their_message() {
    let cases = [
        ("bomb.docx", "zip bomb"),
        ("truncated.xlsx", "truncated or damaged"),
        ("encrypted.docx", "encrypted"),
        ("photo.pptx", "jpeg image named .pptx"),
        ("empty.eml", "empty"),
    ];
    for (name, expect) in cases {
        let err = parse_fixture(name).expect_err(name).to_string();
        assert!(err.to_lowercase().contains(expect), "{name}: {err:?} lacks {expect:?}");
    }
}
