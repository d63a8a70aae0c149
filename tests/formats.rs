//! Every kind of document an enterprise keeps, over real HTTP: Word, PowerPoint, Excel, CSV,
//! e-mail with an attachment, scanned PDFs and images. Each planted fact is found first in
//! every search mode with its location; hostile files fail with their own message while the
//! good files of the same upload are indexed; `kb sync` mirrors a folder, deletions included.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::fixture;
use crate::common::server::{kb, Server};
use serde_json::{json, Value};

const MODES: [&str; 3] = ["keyword", "vector", "hybrid"];

/// (question, file, location the hit and the citation must show, the planted fact the top
/// hit and the cited passage must hold).
const FACTS: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "At what temperature does the Tromsø cold-storage hall keep frozen salmon?",
        "report.docx",
        Some("Operations › Warehouses › Cold storage"),
        "minus 23 degrees",
    ),
    (
        "What is the range of the Volta E-7 truck at the Lindqvist depot?",
        "report.docx",
        Some("Operations › Fleet"),
        "Range: 410 km",
    ),
    (
        "How much will the Nimbus subscription cost per seat from October?",
        "deck.pptx",
        Some("slide 2"),
        "19 euros per seat",
    ),
    ("When does the Falkenberg pilot end?", "deck.pptx", Some("slide 3"), "ends on 30 June"),
    (
        "How much did the Quartz centrifuge from Helvetia Instruments cost?",
        "budget.xlsx",
        Some("sheet Costs, rows 2–8"),
        "Amount (EUR): 48300",
    ),
    (
        "In which office does Ingrid Solberg the Chief Glaciologist work?",
        "budget.xlsx",
        Some("sheet Staff, rows 2–3"),
        "Office: Bergen",
    ),
    (
        "What is the lead time of the titanium hinge T-88 from Okafor Metals?",
        "suppliers.csv",
        Some("rows 2–4"),
        "Lead time: 11 weeks",
    ),
    ("When will the Pelican crane at berth 14 be inspected?", "memo.eml", None, "inspected on 9 May"),
    ("What is the safe load limit of the Pelican crane?", "memo.eml/inspection.pdf", Some("page 1"), "62 tonnes"),
    ("How often is the Quokka reactor vessel pressure tested?", "scan.pdf", Some("page 1"), "every 90 days"),
    ("Where must visitors to the Marlowe archive sign in?", "sign.png", None, "sign in at desk 5"),
    (
        "How much power does the Oriole data centre draw at peak load?",
        "mixed.pdf",
        Some("page 1"),
        "3.2 megawatts at peak load",
    ),
    ("What fuel do the backup generators at Oriole run on?", "mixed.pdf", Some("page 2"), "hydrotreated vegetable oil"),
];

const GOOD: [&str; 8] =
    ["report.docx", "deck.pptx", "budget.xlsx", "suppliers.csv", "memo.eml", "scan.pdf", "sign.png", "mixed.pdf"];

/// (file, what its error must say, lower-cased).
const BAD: [(&str, &str); 5] = [
    ("bomb.docx", "zip bomb"),
    ("truncated.xlsx", "truncated or damaged"),
    ("encrypted.docx", "encrypted"),
    ("photo.pptx", "jpeg image named .pptx"),
    ("empty.eml", "empty"),
];

fn server_with(dir: &Path, config: &str) -> Server {
    let path = dir.join("kb.toml");
    std::fs::write(&path, config).unwrap();
    Server::start_with(&dir.join("data"), Some(&path))
}

#[test]
fn every_format_found_with_its_location_and_bad_files_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "generator = \"none\"\n");
    server.create_collection("office");
    let files: Vec<(&str, Vec<u8>)> = GOOD.iter().chain(BAD.iter().map(|(n, _)| n)).map(|n| (*n, fixture(n))).collect();
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let (status, body) = server.upload("office", &parts);
    assert_eq!(status, 202, "{body}");
    let docs = server.wait_idle("office", Duration::from_secs(300));
    server.assert_healthy();
    let doc = |name: &str| docs.iter().find(|d| d["filename"] == name).unwrap_or_else(|| panic!("{name} missing"));
    for name in GOOD {
        assert_eq!(doc(name)["status"], "done", "{:#}", doc(name));
    }
    for (name, expect) in BAD {
        let d = doc(name);
        assert_eq!(d["status"], "failed", "{d:#}");
        let error = d["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains(expect), "{name}: {error:?} lacks {expect:?}");
    }
    assert_eq!(doc("scan.pdf")["extractor"], "pdf-extract+tesseract", "{:#}", doc("scan.pdf"));
    assert_eq!(doc("report.docx")["format"], "docx");

    assert_eq!(doc("mixed.pdf")["extractor"], "pdf-extract+tesseract", "{:#}", doc("mixed.pdf"));
    // The e-mail's PDF attachment is a document of its own that points at its message.
    let attachment = doc("memo.eml/inspection.pdf");
    assert_eq!(attachment["status"], "done", "{attachment:#}");
    assert_eq!(attachment["parent_id"], doc("memo.eml")["id"], "{attachment:#}");
    assert_eq!(attachment["format"], "pdf", "{attachment:#}");

    for (question, file, location, fact) in FACTS {
        for mode in MODES {
            let hits = server.search("office", question, mode, 5);
            let top = hits.first().unwrap_or_else(|| panic!("{mode}: no hit for {question:?}"));
            assert_eq!(top["filename"], *file, "{mode}: {question:?} found {top:#}");
            assert_eq!(top["location"].as_str(), *location, "{mode}: {question:?} located at {top:#}");
            assert!(top["text"].as_str().unwrap_or_default().contains(fact), "{mode}: {fact:?} not in {top:#}");
        }
        let (status, a) = server.post_json("/v1/collections/office/ask", &json!({"question": question}));
        assert_eq!(status, 200, "{a}");
        let cite = &a["citations"][0];
        assert_eq!(cite["filename"], *file, "{question:?}: {a:#}");
        assert_eq!(cite["location"].as_str(), *location, "{question:?}: {a:#}");
        assert!(cite["text"].as_str().unwrap_or_default().contains(fact), "{question:?}: {fact:?} not cited: {a:#}");
        assert!(a["answer"].as_str().unwrap_or_default().contains(fact), "{question:?}: {fact:?} not answered: {a:#}");
    }
    // Header and footer text of the Word file never reaches the index.
    assert!(server.search("office", "HEADER-CANARY FOOTER-CANARY", "keyword", 5).is_empty());

    // Deleting the message deletes its attachment, in the store and in every index.
    let (status, body) = server.delete(&format!("/v1/collections/office/documents/{}", doc("memo.eml")["id"]));
    assert!(status == 200 || status == 204, "{status} {body}");
    let left = server.documents("office");
    assert!(!left.iter().any(|d| d["filename"].as_str().unwrap_or_default().starts_with("memo.eml")), "{left:#?}");
    for mode in MODES {
        for hit in server.search("office", "What is the safe load limit of the Pelican crane?", mode, 10) {
            assert!(!hit["text"].as_str().unwrap_or_default().contains("62 tonnes"), "{mode}: {hit:#}");
        }
    }
    server.assert_healthy();
}

/// Writes `files` into `dir` (a fresh folder).
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn cli_search(data: &Path, query: &str, mode: &str) -> String {
    let (ok, out, err) = kb(data, &["search", "--collection", "docs", "--mode", mode, "--top-k", "3", query]);
    assert!(ok, "kb search failed: {err}");
    out
}

#[test]
fn sync_mirrors_a_folder_deletions_included() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    write_files(
        &folder,
        &[
            ("alpha.txt", "The Alpha greenhouse grows saffron crocuses under violet lamps."),
            ("beta.md", "# Beta\n\nThe Beta observatory tracks comets from a hill above Lake Ohrid."),
            ("gamma.txt", "The Gamma bakery proofs its rye dough for exactly nine hours."),
            ("delta.csv", "Vessel,Home port\nMV Delta Kittiwake,Stornoway\n"),
            ("epsilon.txt", "The Epsilon choir rehearses madrigals in a lighthouse on Thursdays."),
        ],
    );
    // An e-mail whose PDF attachment becomes a document of its own: no file of the folder,
    // yet neither a removed file on the next run nor left behind when the message goes.
    std::fs::write(folder.join("memo.eml"), fixture("memo.eml")).unwrap();
    let sync = |expect: &str| {
        let (ok, out, err) = kb(&data, &["sync", "--collection", "docs", folder.to_str().unwrap()]);
        assert!(ok, "kb sync failed: {err}");
        assert!(out.contains(expect), "sync said {out:?}, expected {expect:?}");
        out
    };
    sync("6 added, 0 updated, 0 deleted");
    assert!(cli_search(&data, "saffron crocuses under violet lamps", "keyword").contains("alpha.txt"));
    assert!(cli_search(&data, "safe load limit of the Pelican crane", "keyword").contains("memo.eml/inspection.pdf"));
    sync("no change");

    // Edit one, delete two (one of them the e-mail), add one.
    write_files(&folder, &[("alpha.txt", "The Alpha greenhouse now grows vanilla orchids in humid air.")]);
    std::fs::remove_file(folder.join("gamma.txt")).unwrap();
    std::fs::remove_file(folder.join("memo.eml")).unwrap();
    write_files(&folder, &[("zeta.txt", "The Zeta ferry crosses the fjord to Vikøyri every ninety minutes.")]);
    sync("1 added, 1 updated, 2 deleted, 3 unchanged");
    sync("no change");

    // The command line opens the store afresh each time, and so does a new server: both are
    // a restart.
    for mode in MODES {
        let out = cli_search(&data, "Alpha greenhouse vanilla orchids", mode);
        assert!(out.lines().next().is_some_and(|l| l.contains("alpha.txt")), "{mode}: {out}");
        let out = cli_search(&data, "bakery proofs rye dough nine hours", mode);
        assert!(!out.contains("gamma.txt"), "{mode}: the deleted file is still found: {out}");
        let out = cli_search(&data, "Zeta ferry crosses the fjord", mode);
        assert!(out.lines().next().is_some_and(|l| l.contains("zeta.txt")), "{mode}: {out}");
    }
    let server = Server::start(&data);
    for mode in MODES {
        for hit in server.search("docs", "saffron crocuses violet lamps", mode, 10) {
            assert!(!hit["text"].as_str().unwrap().contains("saffron"), "{mode}: old text still found: {hit}");
        }
        for hit in server.search("docs", "Gamma bakery rye dough proofs nine hours", mode, 10) {
            assert_ne!(hit["filename"], "gamma.txt", "{mode}: deleted file found: {hit}");
        }
        let hits = server.search("docs", "Zeta ferry to Vikøyri", mode, 3);
        assert_eq!(hits[0]["filename"], "zeta.txt", "{mode}: {hits:#?}");
        for hit in server.search("docs", "safe load limit of the Pelican crane 62 tonnes", mode, 10) {
            assert!(!hit["filename"].as_str().unwrap().starts_with("memo.eml"), "{mode}: deleted e-mail found: {hit}");
        }
    }
    let names: Vec<String> =
        server.documents("docs").iter().map(|d| d["filename"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(!names.contains(&"gamma.txt".to_string()), "{names:?}");
}

/// Sends raw bytes and returns the status line and the time it took to come.
fn raw_exchange(base: &str, head: &str, body: &[u8], stall: bool) -> (String, Duration) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the status line is in; a stalled upload sends nothing more meanwhile.
    while !buf.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = stall;
    let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string();
    (line, started.elapsed())
}

#[test]
fn uploads_declaring_too_much_or_stalling_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "max_upload_bytes = 4096\nmax_request_bytes = 65536\nupload_idle_secs = 2\n");
    server.create_collection("c");
    let boundary = "kbstall";
    let preamble =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nsome text");
    // Declares 50 GiB, sends 64 KiB: refused at once, without waiting for the rest.
    let head = format!(
        "POST /v1/collections/c/documents HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        50u64 << 30
    );
    let mut body = preamble.clone().into_bytes();
    body.resize(64 << 10, b'x');
    let (status, took) = raw_exchange(&server.base, &head, &body, false);
    assert!(status.contains(" 413 "), "{status}");
    assert!(took < Duration::from_secs(5), "413 took {took:?}");
    // Declares a small body but stops sending half-way: cut off after the idle timeout.
    let head = format!(
        "POST /v1/collections/c/documents HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000\r\n\r\n"
    );
    let (status, took) = raw_exchange(&server.base, &head, preamble.as_bytes(), true);
    assert!(status.contains(" 408 "), "{status}");
    assert!(took < Duration::from_secs(10), "408 took {took:?}");
    server.assert_healthy();
    assert!(server.documents("c").is_empty());
}

/// Polls the collection's sources until `done` accepts the first one's status.
fn wait_source(server: &Server, collection: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = server.get(&format!("/v1/collections/{collection}/sources"));
        if status == 200 && done(&body["sources"][0]) {
            return body["sources"][0].clone();
        }
        assert!(Instant::now() < deadline, "source never got there: {body:#}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn serve_keeps_configured_sources_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("share");
    std::fs::create_dir_all(&folder).unwrap();
    write_files(
        &folder,
        &[
            ("otters.txt", "Sea otters in the Monterey kelp beds hold hands while they sleep."),
            ("lynx.txt", "The Iberian lynx hunts rabbits in the scrubland of the Doñana park."),
        ],
    );
    let config = format!(
        "generator = \"none\"\n[[sources]]\ncollection = \"share\"\npath = {:?}\ninterval_secs = 1\n",
        folder.display().to_string()
    );
    let server = server_with(dir.path(), &config);
    let first = wait_source(&server, "share", |s| s["last_report"]["added"].as_array().is_some_and(|a| a.len() == 2));
    assert!(first["last_error"].is_null(), "{first:#}");
    assert_eq!(server.search("share", "Iberian lynx rabbits", "hybrid", 1)[0]["filename"], "lynx.txt");
    std::fs::remove_file(folder.join("lynx.txt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.documents("share").iter().any(|d| d["filename"] == "lynx.txt") {
        assert!(Instant::now() < deadline, "lynx.txt never left the collection\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    for mode in MODES {
        for hit in server.search("share", "Iberian lynx hunts rabbits Doñana", mode, 5) {
            assert_ne!(hit["filename"], "lynx.txt", "{mode}: deleted file still found");
        }
    }
    let quiet = wait_source(&server, "share", |s| s["summary"].as_str().is_some_and(|t| t.starts_with("no change")));
    assert_eq!(quiet["last_report"]["unchanged"], 1, "{quiet:#}");
    // A collection without sources lists none; an unknown one is a 404.
    server.create_collection("plain");
    assert_eq!(server.get("/v1/collections/plain/sources"), (200, json!({"sources": []})));
    assert_eq!(server.get("/v1/collections/nope/sources").0, 404);
}
