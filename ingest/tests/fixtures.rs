//! Detection and parsing of the committed fixtures, end to end through the PDF worker.

use crate::common::*;
use kb_ingest::chunk::ChunkerConfig;
use kb_ingest::detect::detect_format;
use kb_ingest::parse::parse;
use kb_ingest::{Format, IngestError, ParsedDocument};

fn parse_fixture(name: &str) -> Result<ParsedDocument, IngestError> {
    let bytes = read_fixture(name);
    let format = detect_format(&bytes, name)?;
    parse(&bytes, format, name, &pdf_parser())
}

/// The known facts of handbook.pdf and the page each is printed on.
const HANDBOOK_FACTS: &[(&str, u32)] = &[
    ("Technicians must wear a class 4 arc-flash suit when opening the Zephyr-9 converter cabinet.", 1),
    ("The emergency assembly point at the Kestrel Ridge wind farm is the blue container beside gate 3.", 1),
    ("The Zephyr-9 turbine requires a torque of 42 newton-metres on each blade bolt.", 2),
    ("Each Zephyr-9 rotor carries exactly three blades made of basalt fibre.", 2),
    ("The main bearing of the Zephyr-9 is greased every 1,800 operating hours with Lumora LX-7 grease.", 3),
    ("The gearbox oil of the Zephyr-9 is replaced every four years.", 3),
    ("Fault code E-517 on the Zephyr-9 controller means the yaw motor has overheated.", 4),
    ("The Northwind support desk for the Zephyr-9 is reached at extension 7731.", 4),
];

#[test]
fn detects_every_fixture() {
    let expect = [
        ("handbook.pdf", Format::Pdf),
        ("truncated.pdf", Format::Pdf),
        ("panic.pdf", Format::Pdf),
        ("guide.md", Format::Markdown),
        ("page.html", Format::Html),
        ("notes.txt", Format::Text),
    ];
    for (name, format) in expect {
        assert_eq!(detect_format(&read_fixture(name), name).expect(name), format, "{name}");
    }
    // HTML is recognised by its content without the extension too.
    assert_eq!(detect_format(&read_fixture("page.html"), "upload").unwrap(), Format::Html);
}

#[test]
fn binary_named_pdf_is_refused_clearly() {
    let err = detect_format(&read_fixture("binary.pdf"), "binary.pdf").unwrap_err();
    assert!(matches!(err, IngestError::Undecodable), "{err:?}");
    assert!(err.to_string().contains("binary data"), "{err}");
    // Forced through the PDF parser anyway, it fails in the worker with a message.
    let err = parse(&read_fixture("binary.pdf"), Format::Pdf, "binary.pdf", &pdf_parser()).unwrap_err();
    let IngestError::Pdf { message } = err else { panic!("expected a PDF error, got {err:?}") };
    assert!(message.contains("not a readable PDF"), "{message}");
}

#[test]
fn handbook_pages_and_title() {
    let doc = parse_fixture("handbook.pdf").expect("handbook parses");
    assert_eq!(doc.title.as_deref(), Some("Zephyr-9 Turbine Maintenance Handbook"));
    let pages: std::collections::BTreeSet<_> = doc.blocks.iter().filter_map(|b| b.page).collect();
    assert_eq!(pages.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
    for &(fact, page) in HANDBOOK_FACTS {
        let block = doc
            .blocks
            .iter()
            .find(|b| doc.text[b.start..b.end].contains(fact))
            .unwrap_or_else(|| panic!("fact not found as one block: {fact:?}\ntext: {}", doc.text));
        assert_eq!(block.page, Some(page), "{fact}");
    }
    assert!(block_texts(&doc).contains(&"Chapter 2: Blade Assembly"), "{:?}", block_texts(&doc));

    // Chunked small enough to split pages, each fact's chunk keeps its page.
    let tok = tokenizer();
    for config in [ChunkerConfig::default(), ChunkerConfig { target_tokens: 24, overlap_tokens: 6 }] {
        let chunks = chunk_checked(&doc, &tok, &config);
        for &(fact, page) in HANDBOOK_FACTS {
            let hits: Vec<_> = chunks.iter().filter(|c| c.text.contains(fact)).collect();
            if config.target_tokens >= 200 {
                assert_eq!(hits.len(), 1, "{fact}");
            }
            assert!(
                chunks.iter().filter(|c| c.text.contains(&fact[..20])).all(|c| c.page == Some(page)),
                "{fact} chunked onto the wrong page"
            );
        }
        if config.target_tokens >= 200 {
            // Each page fits one chunk; four pages give four chunks.
            assert_eq!(chunks.iter().map(|c| c.page).collect::<Vec<_>>(), [Some(1), Some(2), Some(3), Some(4)]);
        }
    }
}

#[test]
fn broken_pdfs_fail_with_a_message_and_the_caller_survives() {
    for (name, expect) in [("truncated.pdf", "not a readable PDF"), ("panic.pdf", "crashed")] {
        let err = parse_fixture(name).expect_err(name);
        let IngestError::Pdf { message } = &err else { panic!("{name}: expected a PDF error, got {err:?}") };
        assert!(message.contains(expect), "{name}: {message}");
        assert!(err.to_string().starts_with("PDF could not be parsed: "), "{err}");
    }
    // The panic message itself is passed on.
    let err = parse_fixture("panic.pdf").unwrap_err().to_string();
    assert!(err.contains("unwrap") || err.contains("None"), "{err}");
    // And this process still works.
    assert!(parse_fixture("handbook.pdf").is_ok());
}

#[test]
fn markdown_guide() {
    let doc = parse_fixture("guide.md").expect("guide parses");
    assert_eq!(doc.title.as_deref(), Some("Orion Data Platform Operator Guide"));
    for syntax in ["```", "**", "|---|", "## ", "title:"] {
        assert!(!doc.text.contains(syntax), "markdown syntax {syntax:?} left in text");
    }
    let path = |fact: &str| {
        doc.blocks
            .iter()
            .find(|b| doc.text[b.start..b.end].contains(fact))
            .unwrap_or_else(|| panic!("{fact:?} not in any block"))
            .heading_path
            .clone()
    };
    let root = "Orion Data Platform Operator Guide";
    assert_eq!(path("at least 12 GiB of RAM"), [root, "Installation", "System requirements"]);
    assert_eq!(path("200 GiB of free disk"), [root, "Installation", "System requirements"]);
    assert_eq!(path("port 8443"), [root, "Installation", "Network ports"]);
    assert_eq!(path("02:30 UTC"), [root, "Backups"]);
    assert_eq!(path("orionctl backup create"), [root, "Backups"]);
    assert_eq!(path("ORN-404 means"), [root, "Troubleshooting", "Error ORN-404"]);
    assert_eq!(path("max_parallel_jobs | 48"), [root, "Troubleshooting", "Default settings"]);

    let chunks = chunk_checked(&doc, &tokenizer(), &ChunkerConfig::default());
    let c = chunks.iter().find(|c| c.text.contains("12 GiB")).expect("chunk with the fact");
    assert!(c.text.starts_with("System requirements"), "heading should open its chunk: {:?}", c.text);
    assert_eq!(c.heading_path, [root, "Installation", "System requirements"]);
    // "Installation" has body text, so it opens its own chunk; "Troubleshooting" has none and
    // opens the first subsection's chunk instead of standing alone.
    let t = chunks.iter().find(|c| c.text.contains("ORN-404 means")).unwrap();
    assert!(t.text.starts_with("Troubleshooting\n\nError ORN-404"), "{:?}", t.text);
}

#[test]
fn html_page() {
    let doc = parse_fixture("page.html").expect("page parses");
    assert_eq!(doc.title.as_deref(), Some("Harbor Café Staff Portal"));
    for canary in [
        "SCRIPT-CANARY",
        "trackingSecret",
        "STYLE-CANARY",
        "NAV-CANARY",
        "HEADER-CANARY",
        "FOOTER-CANARY",
        "ASIDE-CANARY",
        "NOSCRIPT-CANARY",
        "FORM-CANARY",
        "Rota",
    ] {
        assert!(!doc.text.contains(canary), "{canary} leaked into text: {:?}", doc.text);
    }
    let texts = block_texts(&doc);
    assert!(texts.contains(&"These procedures apply to every shift at the Harbor Café on Quay Street."), "{texts:?}");
    assert!(texts.contains(&"Oat milk | Greenfield Dairy"), "{texts:?}");
    let block = |fact: &str| doc.blocks.iter().find(|b| doc.text[b.start..b.end].contains(fact)).unwrap();
    let root = "Harbor Café Opening Procedures";
    assert_eq!(block("150 euros").heading_path, [root, "Morning Shift", "Cash Desk"]);
    assert_eq!(block("descaled every Tuesday").heading_path, [root, "Morning Shift"]);
    assert_eq!(block("almond croissant").heading_path, [root, "Allergens"]);
    assert_eq!(block("21:45").heading_path, [root, "Closing Shift"]);
    assert!(block("Cash Desk").is_heading);
    chunk_checked(&doc, &tokenizer(), &ChunkerConfig::default());
}

#[test]
fn text_notes() {
    let doc = parse_fixture("notes.txt").expect("notes parse");
    assert_eq!(doc.title.as_deref(), Some("Project Halcyon steering meeting notes"));
    let texts = block_texts(&doc);
    assert_eq!(texts.len(), 6, "{texts:?}");
    assert!(texts[3].starts_with("The Halcyon budget was capped at 380,000 euros"));
    let chunks = chunk_checked(&doc, &tokenizer(), &ChunkerConfig::default());
    assert_eq!(chunks.len(), 1);
    let small = ChunkerConfig { target_tokens: 30, overlap_tokens: 8 };
    let chunks = chunk_checked(&doc, &tokenizer(), &small);
    assert!(chunks.iter().any(|c| c.text.contains("The Project Halcyon launch date is 14 March 2025.")));
}
