//! Bulk uploads the way an internal tool sends them: many small documents in several
//! concurrent requests to the real `kb serve`. Every document must end done and searchable,
//! in every mode, and stay so after the server is killed before it saved its vector graph.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::server::Server;
use serde_json::Value;

const DOCUMENTS: usize = 300;
const REQUESTS: usize = 10;

/// A short note with one word no other note has, in a sentence whose meaning no other note
/// shares: (note name, text, marker, a query for that sentence).
fn note(i: usize) -> (String, String, String, String) {
    const COLOURS: [&str; 10] =
        ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink"];
    const ANIMALS: [&str; 10] =
        ["fox", "whale", "eagle", "tortoise", "badger", "octopus", "camel", "penguin", "beetle", "horse"];
    const PLACES: [&str; 3] = ["Lisbon", "Nairobi", "Osaka"];
    let marker = format!("bulkmark{i:03}q");
    let (colour, animal, place) = (COLOURS[i % 10], ANIMALS[(i / 10) % 10], PLACES[i / 100]);
    let topic = ["turbine maintenance", "payroll rules", "office moves", "backup policy", "travel claims"][i % 5];
    let body = format!(
        "Note {i} on {topic}.\n\nThis note belongs to a bulk upload of many small files about {topic}. \
         It records that the {colour} {animal} statue from {place} is catalogued as item {marker}.\n"
    );
    let query = format!("item {marker}: the {colour} {animal} statue from {place}");
    (format!("note-{i:03}.txt"), body, marker, query)
}

/// Asserts every document is done with its chunks and each marker is found first, in its own
/// document, in every mode; and that the vector index holds every chunk exactly once.
fn assert_all_searchable(server: &Server, notes: &[(String, String, String, String)]) {
    let docs = server.wait_idle("bulk", Duration::from_secs(300));
    assert_eq!(docs.len(), DOCUMENTS, "documents listed");
    let failed: Vec<&Value> = docs.iter().filter(|d| d["status"] != "done").collect();
    assert!(failed.is_empty(), "{} documents not done: {failed:#?}", failed.len());
    let chunks: i64 = docs.iter().map(|d| d["chunks"].as_i64().unwrap()).sum();
    assert!(chunks >= DOCUMENTS as i64);

    for (name, body, marker, query) in notes {
        let hits = server.search("bulk", marker, "keyword", 3);
        assert_eq!(hits[0]["filename"], name.as_str(), "keyword {marker}: {hits:#?}");
        // A note's own text finds it first by meaning alone and fused.
        for mode in ["vector", "hybrid"] {
            let hits = server.search("bulk", body, mode, 1);
            assert_eq!(hits[0]["filename"], name.as_str(), "{mode}: {hits:#?}");
        }
        // The sentence that only this note has finds it first by its words.
        let hits = server.search("bulk", query, "keyword", 1);
        assert_eq!(hits[0]["filename"], name.as_str(), "keyword {query:?}: {hits:#?}");
    }
    let hits = server.search("bulk", "a note in a bulk upload of small files", "vector", 2 * chunks as usize);
    let ids: HashSet<i64> = hits.iter().map(|h| h["chunk_id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), hits.len(), "a chunk twice in the vector index");
    assert_eq!(hits.len() as i64, chunks, "the vector index holds {} of {chunks} chunks", hits.len());
}

#[test]
fn concurrent_bulk_uploads_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notes: Vec<(String, String, String, String)> = (0..DOCUMENTS).map(note).collect();
    let server = Server::start(&data);
    server.create_collection("bulk");

    let per_request = DOCUMENTS / REQUESTS;
    let accepted: Vec<Vec<Value>> = std::thread::scope(|s| {
        let handles: Vec<_> = notes
            .chunks(per_request)
            .map(|part| {
                let server = &server;
                s.spawn(move || {
                    let files: Vec<(&str, &[u8])> =
                        part.iter().map(|(n, b, _, _)| (n.as_str(), b.as_bytes())).collect();
                    let (status, body) = server.upload("bulk", &files);
                    assert_eq!(status, 202, "{body}");
                    body["documents"].as_array().unwrap().clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let entries: Vec<Value> = accepted.into_iter().flatten().collect();
    assert_eq!(entries.len(), DOCUMENTS);
    let by_name: HashMap<&str, &Value> = entries.iter().map(|e| (e["filename"].as_str().unwrap(), e)).collect();
    assert_eq!(by_name.len(), DOCUMENTS, "every file got its own document");

    assert_all_searchable(&server, &notes);
    // Every job says done too.
    for e in entries.iter().step_by(29) {
        let job = server.wait_job(e["job_id"].as_i64().unwrap(), Duration::from_secs(10));
        assert_eq!(job["status"], "done", "{job}");
    }
    server.assert_healthy();

    // Killed before its scheduled save of the vector graph: the restart catches up from the
    // database, and nothing is lost or doubled.
    server.kill();
    let server = Server::start(&data);
    assert_all_searchable(&server, &notes);
}
