//! Grounded answers over real HTTP with the real CPU generator (SmolLM2) and, without a
//! generator, extractive answers: citations point at the right document and page, absent
//! facts get the not-in-corpus answer, streaming and the OpenAI shape work, and a full
//! generator queue answers 503 with Retry-After.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use common::server::Server;
use serde_json::{json, Value};

const QUESTION: &str = "What torque goes on each blade bolt of the Zephyr-9 turbine?";
const ABSENT: &str = "What is the boiling point of liquid nitrogen at sea level?";
const NOT_IN_CORPUS: &str = "The documents in this collection do not contain an answer to this question.";

fn config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("kb-test.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A server over the four good fixtures, all ingested.
fn server_with_fixtures(dir: &Path, config_text: &str) -> Server {
    let config = config(dir, config_text);
    let server = Server::start_with(&dir.join("data"), Some(&config));
    server.create_collection("docs");
    let names = ["handbook.pdf", "guide.md", "page.html", "notes.txt"];
    let files: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (*n, common::fixture(n))).collect();
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let (status, body) = server.upload("docs", &parts);
    assert_eq!(status, 202, "{body}");
    let docs = server.wait_idle("docs", Duration::from_secs(90));
    assert!(docs.iter().all(|d| d["status"] == "done"), "{docs:#?}");
    server
}

fn strip_markers(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(" [") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(']') {
            Some(j) if after[..j].chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ') => rest = &after[j + 1..],
            _ => {
                out.push_str(" [");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn cites_handbook_page_2(citations: &Value) -> bool {
    citations.as_array().unwrap().iter().any(|c| c["filename"] == "handbook.pdf" && c["page"] == 2)
}

fn assert_citation_shape(citations: &Value) {
    for c in citations.as_array().unwrap() {
        assert!(c["chunk_id"].is_i64() && c["document_id"].is_i64() && c["n"].is_u64(), "{c}");
        assert!(c["filename"].is_string() && !c["text"].as_str().unwrap().is_empty(), "{c}");
        assert!(c["page"].is_null() || c["page"].is_u64(), "{c}");
    }
}

/// Server-sent events of a POST, as (event, data) pairs, read to the end.
fn sse(server: &Server, path: &str, body: &Value) -> (String, Vec<(String, String)>) {
    let r = server.call("POST", path, &[], Some(body));
    assert_eq!(r.status, 200, "{}", r.body);
    let mut events = Vec::new();
    let mut event = String::from("message");
    for line in r.body.lines() {
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            events.push((event.clone(), d.to_owned()));
        } else if line.is_empty() {
            event = "message".into();
        }
    }
    (r.content_type, events)
}

#[test]
fn generated_answers_cite_the_right_page() {
    let dir = tempfile::tempdir().unwrap();
    // Short answers keep the CPU generator quick; the prompt is the real one.
    let server = server_with_fixtures(dir.path(), "answer_max_tokens = 40\n");

    let (status, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": QUESTION, "top_k": 3}));
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["kind"], "generated", "{a}");
    assert!(!a["answer"].as_str().unwrap().trim().is_empty(), "{a}");
    assert_citation_shape(&a["citations"]);
    assert!(cites_handbook_page_2(&a["citations"]), "citations miss handbook.pdf page 2: {a:#}");
    // Every citation appears in the answer as its [n] marker.
    let text = a["answer"].as_str().unwrap();
    for c in a["citations"].as_array().unwrap() {
        let n = c["n"].as_u64().unwrap();
        assert!(text.contains(&format!("[{n}")) || text.contains(&format!(" {n}]")), "no marker for [{n}] in {text:?}");
    }

    let (status, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": ABSENT}));
    assert_eq!(status, 200, "{a}");
    assert_eq!(a, json!({"answer": NOT_IN_CORPUS, "kind": "not_in_corpus", "citations": []}));

    // Streaming: tokens, then the citations, then done.
    let (content_type, events) =
        sse(&server, "/v1/collections/docs/ask", &json!({"question": QUESTION, "top_k": 3, "stream": true}));
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(names.len() >= 3 && names[..names.len() - 2].iter().all(|e| *e == "token"), "{names:?}");
    assert_eq!(&names[names.len() - 2..], ["citations", "done"]);
    let streamed: String = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    let last: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    // The final answer is the streamed text, with [n] markers added where the model cited none.
    let unmarked = strip_markers(last["answer"].as_str().unwrap());
    assert_eq!(strip_markers(streamed.trim()), unmarked, "streamed text differs from the final answer");
    assert!(cites_handbook_page_2(&last["citations"]), "{last:#}");

    // An OpenAI client's request, unchanged: extra fields, a system message, content parts.
    let request = json!({
        "model": "kb:docs",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]}
        ],
        "temperature": 0.2, "max_tokens": 64, "user": "test", "stream": false
    });
    let (status, c) = server.post_json("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "kb:docs");
    assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    assert!(!c["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{c}");
    assert!(c["choices"][0]["finish_reason"].is_string());
    assert!(cites_handbook_page_2(&c["citations"]), "{c:#}");

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let (content_type, events) = sse(&server, "/v1/chat/completions", &streaming);
    assert!(content_type.starts_with("text/event-stream"));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "kb:docs"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.trim().is_empty());
    server.assert_healthy();
}

#[test]
fn extractive_answers_without_a_generator() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_fixtures(dir.path(), "generator = \"none\"\n");
    let (status, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": QUESTION}));
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["kind"], "extractive", "{a}");
    assert!(a["answer"].as_str().unwrap().contains("42 newton-metres"), "{a}");
    assert_citation_shape(&a["citations"]);
    assert_eq!(a["citations"][0]["filename"], "handbook.pdf", "{a:#}");
    assert_eq!(a["citations"][0]["page"], 2, "{a:#}");

    let (status, a) =
        server.post_json("/v1/collections/docs/ask", &json!({"question": "Which port does the web console use?"}));
    assert_eq!(status, 200, "{a}");
    assert!(a["answer"].as_str().unwrap().contains("8443"), "{a}");
    assert_eq!(a["citations"][0]["filename"], "guide.md", "{a:#}");

    let (_, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": ABSENT}));
    assert_eq!(a["kind"], "not_in_corpus", "{a}");
}

#[test]
fn a_full_generator_queue_is_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_fixtures(dir.path(), "answer_max_tokens = 200\nmax_pending_answers = 1\n");
    let url = format!("{}/v1/collections/docs/ask", server.base);
    // Hold the one slot with a streaming answer, read until its first token.
    let first = ureq::post(&url).send_json(json!({"question": QUESTION, "stream": true})).unwrap();
    let mut reader = BufReader::new(first.into_reader());
    let mut line = String::new();
    while !line.starts_with("event: token") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended before a token");
    }
    let busy = server.call("POST", "/v1/collections/docs/ask", &[], Some(&json!({"question": QUESTION})));
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert_eq!(busy.retry_after.as_deref(), Some("5"));
    let body: Value = serde_json::from_str(&busy.body).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // Hanging up frees the slot: the generator stops at its next token.
    drop(reader);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = server.call("POST", "/v1/collections/docs/ask", &[], Some(&json!({"question": ABSENT})));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(std::time::Instant::now() < deadline, "the slot was not freed after the client left");
        std::thread::sleep(Duration::from_millis(200));
    }
}
