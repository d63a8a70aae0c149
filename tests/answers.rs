//! Grounded answers over real HTTP with the real CPU generator (SmolLM2) and, without a
//! generator, extractive answers: citations point at the right document and page, every
//! answer sentence is supported by the passages it cites, absent facts get the not-in-corpus
//! answer, follow-up questions use the conversation (through `/ask` with `history` and
//! through chat completions), streaming and the OpenAI shape work, feedback is stored and
//! exported, and a full generator queue answers 503 with Retry-After.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use crate::common::server::Server;
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
    let files: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (*n, crate::common::fixture(n))).collect();
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
    cites(citations, "handbook.pdf", Some(2))
}

fn cites(citations: &Value, file: &str, page: Option<u64>) -> bool {
    citations.as_array().unwrap().iter().any(|c| c["filename"] == file && page.is_none_or(|p| c["page"] == p))
}

/// The SQuAD harness's stop words: an answer sentence is judged by its other words.
const STOP: &str = "a an the of to in on at for by with and or but is are was were be been being it its this that \
    these those as from into than then so such not no do does did has have had which who whom what when where why how \
    there their they them he she his her we our you your i me my also can could would should may might will shall";

fn content_words(text: &str) -> Vec<String> {
    let stop: Vec<&str> = STOP.split_whitespace().collect();
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !stop.contains(&w.as_str()))
        .collect()
}

/// The sentences of `answer` that fewer than 80% of whose content words occur in its cited
/// passages (as the SQuAD harness judges them; markers removed).
fn unsupported(answer: &Value) -> Vec<String> {
    let bag: std::collections::HashSet<String> = answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| content_words(c["text"].as_str().unwrap()))
        .collect();
    let text = strip_markers(answer["answer"].as_str().unwrap());
    text.split_inclusive(['.', '!', '?'])
        .filter(|s| {
            let w = content_words(s);
            !w.is_empty() && (w.iter().filter(|w| bag.contains(*w)).count() as f64) < 0.8 * w.len() as f64
        })
        .map(str::to_owned)
        .collect()
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
    // The generator wrote a draft; what is shown is its supported sentences or, when none
    // survived the check, the best evidence sentence quoted.
    assert!(a["kind"] == "generated" || a["kind"] == "extractive", "{a}");
    assert!(!a["answer"].as_str().unwrap().trim().is_empty(), "{a}");
    assert_citation_shape(&a["citations"]);
    assert!(cites_handbook_page_2(&a["citations"]), "citations miss handbook.pdf page 2: {a:#}");
    // Every citation appears in the answer as its [n] marker.
    let text = a["answer"].as_str().unwrap();
    for c in a["citations"].as_array().unwrap() {
        let n = c["n"].as_u64().unwrap();
        assert!(text.contains(&format!("[{n}")) || text.contains(&format!(" {n}]")), "no marker for [{n}] in {text:?}");
    }

    assert!(unsupported(&a).is_empty(), "unsupported sentences {:?} in {a:#}", unsupported(&a));

    let (status, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": ABSENT}));
    assert_eq!(status, 200, "{a}");
    assert_eq!(
        a,
        json!({"answer": NOT_IN_CORPUS, "kind": "not_in_corpus", "citations": [], "question": ABSENT, "dropped_sentences": 0})
    );

    // Streaming: the draft's tokens, then the verified answer (with citations), then done.
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
    // The final answer replaces the draft: only its supported sentences, or quoted evidence.
    assert!(!streamed.trim().is_empty());
    assert!(unsupported(&last).is_empty(), "draft {streamed:?}, final {last:#}");
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
    // Only the verified answer streams: it is what the non-streaming request answered.
    assert_eq!(text, c["choices"][0]["message"]["content"].as_str().unwrap());
    server.assert_healthy();
}

/// The two facts a new user asked about, answered with nothing the passages do not say.
#[test]
fn answers_say_only_what_the_passages_support() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_fixtures(dir.path(), "");
    for (question, fact, file) in [
        ("Which port does the Orion web console listen on by default?", "8443", "guide.md"),
        ("How often is the main bearing greased?", "1,800 operating hours", "handbook.pdf"),
    ] {
        let (status, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": question}));
        assert_eq!(status, 200, "{a}");
        println!("{question} → {a}");
        assert!(a["answer"].as_str().unwrap().contains(fact), "{question}: {a:#}");
        assert!(cites(&a["citations"], file, None), "{question}: {a:#}");
        assert!(unsupported(&a).is_empty(), "{question}: unsupported {:?} in {a:#}", unsupported(&a));
    }
}

/// A follow-up leans on the question before it, through /ask's history and through the chat
/// completion's message list.
#[test]
fn follow_up_questions_use_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_fixtures(dir.path(), "");
    let first = "How often is the main bearing greased?";
    let follow_up = "what grease is used for it?";
    let (status, a1) = server.post_json("/v1/collections/docs/ask", &json!({"question": first}));
    assert_eq!(status, 200, "{a1}");
    assert!(a1["answer"].as_str().unwrap().contains("1,800"), "{a1:#}");

    let history = json!([{"question": first, "answer": a1["answer"]}]);
    let (status, a2) =
        server.post_json("/v1/collections/docs/ask", &json!({"question": follow_up, "history": history}));
    assert_eq!(status, 200, "{a2}");
    println!("{follow_up} → {a2}");
    let asked = a2["question"].as_str().unwrap().to_lowercase();
    assert!(asked.contains("bearing") && asked.contains("grease"), "not made standalone: {a2:#}");
    assert!(a2["answer"].as_str().unwrap().contains("Lumora LX-7"), "{a2:#}");
    assert!(cites(&a2["citations"], "handbook.pdf", Some(3)), "{a2:#}");
    assert!(unsupported(&a2).is_empty(), "{a2:#}");

    let chat = json!({"model": "kb:docs", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": first},
        {"role": "assistant", "content": a1["answer"]},
        {"role": "user", "content": follow_up},
    ]});
    let (status, c) = server.post_json("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{c}");
    assert!(c["choices"][0]["message"]["content"].as_str().unwrap().contains("Lumora LX-7"), "{c:#}");
    assert!(cites(&c["citations"], "handbook.pdf", Some(3)), "{c:#}");
}

#[test]
fn feedback_is_stored_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_fixtures(dir.path(), "generator = \"none\"\n");
    let (status, a) = server.post_json("/v1/collections/docs/ask", &json!({"question": QUESTION}));
    assert_eq!(status, 200, "{a}");
    let up = json!({"rating": "up", "question": QUESTION, "answer": a["answer"], "citations": a["citations"]});
    let (status, body) = server.post_json("/v1/collections/docs/feedback", &up);
    assert_eq!(status, 201, "{body}");
    assert!(body["id"].is_i64(), "{body}");
    let down = json!({"rating": "down", "comment": "  Wrong page cited.  ", "question": "q?", "answer": "a."});
    assert_eq!(server.post_json("/v1/collections/docs/feedback", &down).0, 201);
    crate::common::assert_error(
        &server
            .post_json("/v1/collections/docs/feedback", &json!({"rating": "sideways", "question": "q", "answer": "a"})),
        400,
        "invalid_request",
    );
    crate::common::assert_error(
        &server.post_json("/v1/collections/docs/feedback", &json!({"rating": "up", "question": " ", "answer": "a"})),
        400,
        "invalid_request",
    );
    crate::common::assert_error(&server.post_json("/v1/collections/nope/feedback", &down), 404, "collection_not_found");

    let (ok, out, err) = crate::common::server::kb(&server.data_dir, &["feedback", "export"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["rating"], "up");
    assert_eq!(lines[0]["collection"], "docs");
    assert_eq!(lines[0]["question"], QUESTION);
    assert_eq!(lines[0]["answer"], a["answer"]);
    assert_eq!(lines[0]["citations"], a["citations"]);
    assert!(lines[0]["comment"].is_null());
    assert_eq!(lines[1]["rating"], "down");
    assert_eq!(lines[1]["comment"], "Wrong page cited.");
    assert_eq!(lines[1]["citations"], json!([]));
    assert!(lines[1]["created_at"].is_i64());
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
