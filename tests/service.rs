//! Whole-service tests over a temporary data directory and the repository's models. The HTTP
//! contract (routes, bad input, error codes, response shapes) runs in-process against the
//! library's app (`common::inproc`); failing PDFs (the worker's isolation) and a SIGKILL in
//! the middle of ingestion run the real `kb` binary on an ephemeral port (`common::server`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::common::inproc::Api;
use crate::common::server::Server;
use crate::common::{assert_error, fixture};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(40);
const MODES: [&str; 3] = ["hybrid", "vector", "keyword"];

fn collection_summary(server: &Server, name: &str) -> Option<Value> {
    let (status, body) = server.get("/v1/collections");
    assert_eq!(status, 200, "{body}");
    body["collections"].as_array().expect("collections array").iter().find(|c| c["name"] == name).cloned()
}

/// Uploads one file, waits for its job, and returns (upload entry, final job, document row).
fn ingest_one(server: &Server, collection: &str, name: &str, bytes: &[u8]) -> (Value, Value, Value) {
    let (status, body) = server.upload(collection, &[(name, bytes)]);
    assert_eq!(status, 202, "{body}");
    let entry = body["documents"][0].clone();
    assert_eq!(entry["status"], "queued", "{body}");
    let job = server.wait_job(entry["job_id"].as_i64().expect("job_id"), JOB_TIMEOUT);
    assert_eq!(job["document_id"], entry["id"], "{job}");
    let doc = server
        .documents(collection)
        .into_iter()
        .find(|d| d["id"] == entry["id"])
        .unwrap_or_else(|| panic!("document {} not listed", entry["id"]));
    assert_eq!(doc["status"], job["status"], "document {doc} vs job {job}");
    (entry, job, doc)
}

async fn summary_of(api: &Api, name: &str) -> Option<Value> {
    let (status, body) = api.get("/v1/collections").await;
    assert_eq!(status, 200, "{body}");
    body["collections"].as_array().expect("collections array").iter().find(|c| c["name"] == name).cloned()
}

/// In-process `ingest_one`: uploads one file, waits for its job; (upload entry, job, document row).
async fn ingest(api: &Api, collection: &str, name: &str, bytes: &[u8]) -> (Value, Value, Value) {
    let (status, body) = api.upload(collection, &[(name, bytes)]).await;
    assert_eq!(status, 202, "{body}");
    let entry = body["documents"][0].clone();
    assert_eq!(entry["status"], "queued", "{body}");
    let job = api.wait_job(entry["job_id"].as_i64().expect("job_id"), JOB_TIMEOUT).await;
    assert_eq!(job["document_id"], entry["id"], "{job}");
    let doc = api
        .documents(collection)
        .await
        .into_iter()
        .find(|d| d["id"] == entry["id"])
        .unwrap_or_else(|| panic!("document {} not listed", entry["id"]));
    assert_eq!(doc["status"], job["status"], "document {doc} vs job {job}");
    (entry, job, doc)
}

#[actix_web::test]
async fn contract_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&dir.path().join("data")).await;

    api.assert_healthy().await;
    assert_eq!(api.get("/readyz").await, (200, json!({"status": "ready"})));

    // Collections: create, duplicate, bad names, list.
    assert_eq!(api.get("/v1/collections").await, (200, json!({"collections": []})));
    assert_eq!(api.post_json("/v1/collections", &json!({"name": "docs"})).await, (201, json!({"name": "docs"})));
    assert_error(&api.post_json("/v1/collections", &json!({"name": "docs"})).await, 409, "collection_exists");
    for bad in ["", "has space", ".hidden", "a/b", &"x".repeat(65)] {
        assert_error(&api.post_json("/v1/collections", &json!({"name": bad})).await, 400, "invalid_name");
    }
    api.create_collection("other").await;
    assert_eq!(
        api.get("/v1/collections").await,
        (
            200,
            json!({"collections": [
                {"name": "docs", "documents": 0, "chunks": 0},
                {"name": "other", "documents": 0, "chunks": 0},
            ]})
        )
    );

    // Upload several fixtures in one request.
    let names = ["handbook.pdf", "guide.md", "page.html", "notes.txt"];
    let files: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (*n, fixture(n))).collect();
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let (status, body) = api.upload("docs", &parts).await;
    assert_eq!(status, 202, "{body}");
    let uploaded = body["documents"].as_array().expect("documents").clone();
    assert_eq!(uploaded.len(), names.len(), "{body}");
    for (entry, name) in uploaded.iter().zip(names) {
        assert_eq!(entry["filename"], name, "{entry}");
        assert_eq!(entry["status"], "queued", "{entry}");
        assert!(entry["id"].is_i64() && entry["job_id"].is_i64(), "{entry}");
    }

    // Jobs run to completion.
    for entry in &uploaded {
        let job = api.wait_job(entry["job_id"].as_i64().unwrap(), JOB_TIMEOUT).await;
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["document_id"], entry["id"]);
        assert_eq!(job["error"], Value::Null);
        assert_eq!(job["id"], entry["job_id"]);
    }
    assert_error(&api.get("/v1/jobs/999999").await, 404, "not_found");

    // The documents list: status, chunks, no error.
    let docs = api.documents("docs").await;
    assert_eq!(docs.len(), names.len(), "{docs:#?}");
    let mut total = 0;
    for name in names {
        let d = docs.iter().find(|d| d["filename"] == name).unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(d["status"], "done", "{d}");
        assert_eq!(d["error"], Value::Null, "{d}");
        let chunks = d["chunks"].as_i64().unwrap();
        assert!(chunks >= 1, "{d}");
        total += chunks;
    }
    assert_eq!(docs.iter().find(|d| d["filename"] == "handbook.pdf").unwrap()["format"], "pdf");
    assert_eq!(summary_of(&api, "docs").await.unwrap(), json!({"name": "docs", "documents": 4, "chunks": total}));
    assert_eq!(summary_of(&api, "other").await.unwrap(), json!({"name": "other", "documents": 0, "chunks": 0}));

    // The same bytes again: recognised, nothing new queued.
    let (status, body) = api.upload("docs", &[("notes.txt", &fixture("notes.txt"))]).await;
    assert_eq!(status, 202, "{body}");
    let notes = docs.iter().find(|d| d["filename"] == "notes.txt").unwrap();
    assert_eq!(body["documents"][0]["duplicate"], true, "{body}");
    assert_eq!(body["documents"][0]["id"], notes["id"], "{body}");
    assert_eq!(api.documents("docs").await.len(), names.len());

    // Search: the page-2 fact is the top hit in every mode.
    let handbook_id = docs.iter().find(|d| d["filename"] == "handbook.pdf").unwrap()["id"].clone();
    let query = "What torque goes on each blade bolt? 42 newton-metres";
    for mode in MODES {
        let hits = api.search("docs", query, mode, 5).await;
        assert!(!hits.is_empty(), "{mode}: no hits");
        let top = &hits[0];
        assert_eq!(top["filename"], "handbook.pdf", "{mode}: {top}");
        assert_eq!(top["document_id"], handbook_id, "{mode}: {top}");
        assert_eq!(top["page"], 2, "{mode}: {top}");
        assert!(top["text"].as_str().unwrap().contains("42 newton-metres"), "{mode}: {top}");
        assert!(top["score"].is_number() && top["chunk_id"].is_i64(), "{mode}: {top}");
        let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{mode}: scores not descending: {scores:?}");
    }
    // top_k is honoured.
    assert_eq!(api.search("docs", "maintenance", "hybrid", 2).await.len(), 2);

    // Delete the handbook: 204, and its chunks leave every mode's results.
    assert_eq!(api.delete(&format!("/v1/collections/docs/documents/{handbook_id}")).await, (204, Value::Null));
    assert_error(&api.delete(&format!("/v1/collections/docs/documents/{handbook_id}")).await, 404, "not_found");
    for mode in MODES {
        let hits = api.search("docs", query, mode, 50).await;
        assert!(
            hits.iter().all(|h| h["document_id"] != handbook_id && h["filename"] != "handbook.pdf"),
            "{mode}: deleted document still found: {hits:#?}"
        );
        assert!(hits.iter().all(|h| !h["text"].as_str().unwrap().contains("newton-metres")), "{mode}: {hits:#?}");
    }
    assert!(api.search("docs", "newton-metres", "keyword", 10).await.is_empty());
    let left = api.documents("docs").await;
    assert_eq!(left.len(), 3);
    let left_chunks: i64 = left.iter().map(|d| d["chunks"].as_i64().unwrap()).sum();
    assert_eq!(summary_of(&api, "docs").await.unwrap(), json!({"name": "docs", "documents": 3, "chunks": left_chunks}));
    // The other documents are still found.
    let hits = api.search("docs", "Project Halcyon launch date", "hybrid", 3).await;
    assert_eq!(hits[0]["filename"], "notes.txt", "{hits:#?}");

    // Delete the collection: 204, then 404 everywhere.
    assert_eq!(api.delete("/v1/collections/docs").await, (204, Value::Null));
    assert_error(&api.delete("/v1/collections/docs").await, 404, "collection_not_found");
    assert_error(&api.get("/v1/collections/docs/documents").await, 404, "collection_not_found");
    assert_error(
        &api.post_json("/v1/collections/docs/search", &json!({"query": "torque"})).await,
        404,
        "collection_not_found",
    );
    assert_eq!(
        api.get("/v1/collections").await,
        (200, json!({"collections": [{"name": "other", "documents": 0, "chunks": 0}]}))
    );
    // The name is free again.
    api.create_collection("docs").await;
    assert!(api.documents("docs").await.is_empty());
    api.assert_healthy().await;
}

#[actix_web::test]
async fn unknown_collection_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&dir.path().join("data")).await;
    assert_error(&api.get("/v1/collections/nope/documents").await, 404, "collection_not_found");
    assert_error(&api.upload("nope", &[("notes.txt", b"some text")]).await, 404, "collection_not_found");
    assert_error(
        &api.post_json("/v1/collections/nope/search", &json!({"query": "q"})).await,
        404,
        "collection_not_found",
    );
    assert_error(&api.delete("/v1/collections/nope").await, 404, "collection_not_found");
    assert_error(&api.delete("/v1/collections/nope/documents/1").await, 404, "collection_not_found");
    // A document id of another collection is not found in this one.
    api.create_collection("a").await;
    api.create_collection("b").await;
    let (entry, _, _) = ingest(&api, "a", "notes.txt", &fixture("notes.txt")).await;
    assert_error(&api.delete(&format!("/v1/collections/b/documents/{}", entry["id"])).await, 404, "not_found");
    assert_eq!(api.documents("a").await.len(), 1);
    // Nothing was written for the unknown collection's upload.
    let uploads: Vec<_> = std::fs::read_dir(dir.path().join("data/uploads")).unwrap().flatten().collect();
    assert!(uploads.is_empty(), "{uploads:?}");
    api.assert_healthy().await;
}

#[actix_web::test]
async fn malformed_json_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&dir.path().join("data")).await;
    api.create_collection("c").await;
    for body in [&b"{\"name\": "[..], b"not json", b"", b"{\"name\": \"x\",}"] {
        assert_error(&api.post_raw("/v1/collections", "application/json", body).await, 400, "malformed_json");
        assert_error(&api.post_raw("/v1/collections/c/search", "application/json", body).await, 400, "malformed_json");
    }
    assert_error(
        &api.post_raw("/v1/collections", "text/plain", br#"{"name": "x"}"#).await,
        400,
        "unsupported_content_type",
    );
    // Nothing was created by the bad requests.
    assert_eq!(
        api.get("/v1/collections").await,
        (200, json!({"collections": [{"name": "c", "documents": 0, "chunks": 0}]}))
    );
    api.assert_healthy().await;
}

#[actix_web::test]
async fn missing_or_wrong_fields_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&dir.path().join("data")).await;
    api.create_collection("c").await;
    assert_error(&api.post_json("/v1/collections", &json!({})).await, 400, "invalid_request");
    assert_error(&api.post_json("/v1/collections", &json!({"name": 7})).await, 400, "invalid_request");
    let search = "/v1/collections/c/search";
    assert_error(&api.post_json(search, &json!({})).await, 400, "invalid_request");
    assert_error(&api.post_json(search, &json!({"top_k": 3})).await, 400, "invalid_request");
    assert_error(&api.post_json(search, &json!({"query": "   "})).await, 400, "invalid_request");
    assert_error(&api.post_json(search, &json!({"query": "q", "top_k": 0})).await, 400, "invalid_request");
    assert_error(&api.post_json(search, &json!({"query": "q", "top_k": 100000})).await, 400, "invalid_request");
    assert_error(&api.post_json(search, &json!({"query": "q", "top_k": -1})).await, 400, "invalid_request");
    assert_error(&api.post_json(search, &json!({"query": "q", "mode": "fuzzy"})).await, 400, "invalid_request");
    // A multipart body without a `file` part, and one that is not multipart at all.
    let b = "kbtestboundary";
    let no_file = format!("--{b}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhello\r\n--{b}--\r\n");
    assert_error(
        &api.post_raw("/v1/collections/c/documents", &format!("multipart/form-data; boundary={b}"), no_file.as_bytes())
            .await,
        400,
        "no_files",
    );
    let (status, body) = api.post_raw("/v1/collections/c/documents", "application/json", b"{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    // A file name that sanitises to nothing.
    assert_error(&api.upload("c", &[("..", b"text")]).await, 400, "invalid_filename");
    assert!(api.documents("c").await.is_empty());
    // A search with only the query uses the defaults and works on an empty collection.
    assert!(api.search("c", "anything", "hybrid", 10).await.is_empty());
    api.assert_healthy().await;
}

#[actix_web::test]
async fn oversized_upload_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let api = Api::start_with(&data, "max_upload_bytes = 2048\n").await;
    api.create_collection("c").await;
    let big = "All work and no play makes a dull upload. ".repeat(200); // ~8.6 KB
    let got = api.upload("c", &[("big.txt", big.as_bytes())]).await;
    assert_error(&got, 413, "payload_too_large");
    assert!(got.1["error"]["message"].as_str().unwrap().contains("2048"), "{}", got.1);
    // A small file before a big one in the same request: the request is refused whole.
    let got = api.upload("c", &[("small.txt", b"A small file about otters."), ("big.txt", big.as_bytes())]).await;
    assert_error(&got, 413, "payload_too_large");
    assert!(api.documents("c").await.is_empty());
    let uploads: Vec<_> = std::fs::read_dir(data.join("uploads")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(uploads.is_empty(), "partial uploads left behind: {uploads:?}");
    api.assert_healthy().await;
    // A file under the limit still goes through.
    let (_, job, doc) = ingest(&api, "c", "notes.txt", &fixture("notes.txt")).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(doc["status"], "done", "{doc}");
}

#[actix_web::test]
async fn path_traversal_filename_is_sanitised() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let api = Api::start(&data).await;
    api.create_collection("c").await;
    let text = b"The evil file mentions the zanzibarite protocol exactly once.";
    let (entry, job, doc) = ingest(&api, "c", "../../etc/evil.txt", text).await;
    assert_eq!(entry["filename"], "evil.txt", "{entry}");
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(doc["filename"], "evil.txt", "{doc}");
    let (_, job, doc) =
        ingest(&api, "c", "..\\..\\windows\\evil2.txt", b"Another file about the quokkanite rule.").await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(doc["filename"], "evil2.txt", "{doc}");
    let hits = api.search("c", "zanzibarite", "keyword", 5).await;
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(hits[0]["filename"], "evil.txt");
    // Nothing was written outside the data directory: not where the raw name points from
    // the uploads folder, nor anywhere else in the temporary directory.
    assert!(!data.join("uploads/../../etc/evil.txt").exists());
    assert!(!dir.path().join("etc").exists());
    assert!(!Path::new("/etc/evil.txt").exists());
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = entry.file_name();
        assert!(name == "data" || name == "kb.toml", "unexpected {name:?} beside the data dir");
    }
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(&data, &mut files);
    assert!(!files.iter().any(|f| f.contains("evil")), "{files:?}");
    api.assert_healthy().await;
}

/// A document that must fail: its job and document row both say `failed`, with an error
/// containing `expect` (lower-cased), and it adds no chunks. The server stays healthy.
fn assert_ingest_fails(name: &str, bytes: &[u8], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.create_collection("bad");
    let (_, job, doc) = ingest_one(&server, "bad", name, bytes);
    assert_eq!(job["status"], "failed", "{job}");
    let job_error = job["error"].as_str().unwrap_or_else(|| panic!("job without error: {job}"));
    assert!(job_error.to_lowercase().contains(expect), "job error {job_error:?} lacks {expect:?}");
    assert_eq!(doc["status"], "failed", "{doc}");
    let doc_error = doc["error"].as_str().unwrap_or_else(|| panic!("document without error: {doc}"));
    assert!(doc_error.to_lowercase().contains(expect), "document error {doc_error:?} lacks {expect:?}");
    assert_eq!(doc["chunks"], 0, "{doc}");
    let summary = collection_summary(&server, "bad").unwrap();
    assert_eq!(summary, json!({"name": "bad", "documents": 1, "chunks": 0}));
    // The upload is not left behind in the uploads folder.
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("data/uploads")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "uploads left behind: {left:?}");
    // The service carries on: healthy, and still ingests a good document.
    server.assert_healthy();
    let (_, job, _) = ingest_one(&server, "bad", "notes.txt", &fixture("notes.txt"));
    assert_eq!(job["status"], "done", "{job}");
}

#[test]
fn empty_file_fails_clearly() {
    assert_ingest_fails("empty.txt", b"", "empty");
}

#[test]
fn binary_pdf_fails() {
    assert_ingest_fails("binary.pdf", &fixture("binary.pdf"), "binary");
}

#[test]
fn truncated_pdf_fails() {
    assert_ingest_fails("truncated.pdf", &fixture("truncated.pdf"), "not a readable pdf");
}

#[test]
fn panicking_pdf_fails_and_server_survives() {
    assert_ingest_fails("panic.pdf", &fixture("panic.pdf"), "crashed");
}

/// A small text file with one sentence no other file has.
fn generated(i: usize) -> (String, String, String) {
    let marker = format!("zqmarker{i:03}x");
    let body = format!(
        "Generated note number {i}.\n\nThis paragraph is filler about ordinary office matters, \
         meetings, coffee and the weather in spring, repeated in every generated note.\n\n\
         The unique sentence of this note names {marker} and nothing else does.\n"
    );
    (format!("gen-{i:03}.txt"), body, marker)
}

#[test]
fn crash_recovery_leaves_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut files: Vec<(String, Vec<u8>)> =
        ["handbook.pdf", "guide.md", "page.html", "notes.txt", "binary.pdf", "panic.pdf", "truncated.pdf"]
            .iter()
            .map(|n| (n.to_string(), fixture(n)))
            .collect();
    let mut markers = BTreeMap::new();
    for i in 0..30 {
        let (name, body, marker) = generated(i);
        markers.insert(name.clone(), marker);
        files.push((name, body.into_bytes()));
    }
    let names: HashSet<String> = files.iter().map(|(n, _)| n.clone()).collect();

    let server = Server::start(&data);
    server.create_collection("crash");
    // Two requests, so that some jobs finish, some run and some wait when the server dies.
    let (first, second) = files.split_at(10);
    for batch in [first, second] {
        let parts: Vec<(&str, &[u8])> = batch.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        let (status, body) = server.upload("crash", &parts);
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["documents"].as_array().unwrap().len(), batch.len());
    }
    // Let a few finish, then SIGKILL while the rest are queued or running.
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    let before = loop {
        let docs = server.documents("crash");
        let finished = docs.iter().filter(|d| d["status"] == "done" || d["status"] == "failed").count();
        if finished >= 3 {
            break docs;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {docs:#?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    server.kill();
    let pending = before.iter().filter(|d| d["status"] == "queued" || d["status"] == "running").count();
    assert!(pending > 0, "every job finished before the kill; the test proves nothing");

    // Restart on the same data directory; the interrupted jobs run again.
    let server = Server::start(&data);
    let docs = server.wait_idle("crash", Duration::from_secs(45));

    // Each uploaded file is listed exactly once, done or failed.
    let listed: Vec<String> = docs.iter().map(|d| d["filename"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed.len(), names.len(), "{listed:?}");
    assert_eq!(listed.iter().cloned().collect::<HashSet<_>>(), names);
    for d in &docs {
        let name = d["filename"].as_str().unwrap();
        let bad = ["binary.pdf", "panic.pdf", "truncated.pdf"].contains(&name);
        let expected = if bad { "failed" } else { "done" };
        assert_eq!(d["status"], expected, "{d}");
        if bad {
            assert_eq!(d["chunks"], 0, "{d}");
            assert!(d["error"].is_string(), "{d}");
        } else {
            assert!(d["chunks"].as_i64().unwrap() >= 1, "{d}");
            assert_eq!(d["error"], Value::Null, "{d}");
        }
    }
    // The chunk counts add up.
    let sum: i64 = docs.iter().map(|d| d["chunks"].as_i64().unwrap()).sum();
    assert_eq!(
        collection_summary(&server, "crash").unwrap(),
        json!({"name": "crash", "documents": names.len(), "chunks": sum})
    );
    // Each unique sentence is found once, in its own document, in keyword and hybrid search.
    for (name, marker) in &markers {
        for mode in ["keyword", "hybrid"] {
            let hits: Vec<Value> = server
                .search("crash", marker, mode, 100)
                .into_iter()
                .filter(|h| h["text"].as_str().unwrap().contains(marker.as_str()))
                .collect();
            assert_eq!(hits.len(), 1, "{mode} {marker}: {hits:#?}");
            assert_eq!(hits[0]["filename"], name.as_str(), "{mode}: {hits:#?}");
        }
    }
    // Every chunk is in the vector index exactly once: a search deep enough returns each
    // chunk id once and no more than the collection holds.
    let hits = server.search("crash", "generated note about office matters", "vector", 1000);
    let ids: HashSet<i64> = hits.iter().map(|h| h["chunk_id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), hits.len(), "duplicate chunk ids in vector results");
    assert_eq!(hits.len() as i64, sum, "vector index holds {} of {sum} chunks", hits.len());
    // The fixtures are searchable again in every mode.
    for mode in MODES {
        let hits = server.search("crash", "What torque goes on each blade bolt? 42 newton-metres", mode, 5);
        assert_eq!(hits[0]["filename"], "handbook.pdf", "{mode}: {hits:#?}");
        assert_eq!(hits[0]["page"], 2, "{mode}: {hits:#?}");
    }
    // No upload is left waiting in the uploads folder.
    let uploads: Vec<_> = std::fs::read_dir(data.join("uploads")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(uploads.is_empty(), "{uploads:?}");
    server.assert_healthy();
}
