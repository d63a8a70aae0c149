//! Operations: API keys and their scopes, the loopback rule, metrics, the OpenAPI document,
//! request ids, graceful shutdown. The real `kb` binary over real HTTP.

use std::time::{Duration, Instant};

use crate::common::server::{kb, Server};
use crate::common::{assert_error, fixture};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates a key with `kb keys create` and returns its secret.
fn create_key(data: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = kb(data, &all);
    assert!(ok, "kb keys create {args:?} failed: {stderr}");
    let key = stdout.trim().to_owned();
    assert!(key.starts_with("kb_") && key.len() > 40, "{stdout:?}");
    key
}

fn upload_and_wait(server: &Server, collection: &str, name: &str, bytes: &[u8]) -> Value {
    let (status, body) = server.upload(collection, &[(name, bytes)]);
    assert_eq!(status, 202, "{body}");
    let entry = body["documents"][0].clone();
    let job = server.wait_job(entry["job_id"].as_i64().unwrap(), JOB_TIMEOUT);
    assert_eq!(job["status"], "done", "{job}");
    entry
}

#[test]
fn api_keys_scope_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    // No keys yet: the API is open (on loopback).
    server.create_collection("alpha");
    server.create_collection("beta");
    let alpha_doc = upload_and_wait(&server, "alpha", "notes.txt", &fixture("notes.txt"));
    let beta_doc = upload_and_wait(&server, "beta", "guide.md", &fixture("guide.md"));

    let admin = create_key(&data, &["ops", "--admin"]);
    let reader = create_key(&data, &["alpha-reader", "--read", "alpha"]);
    let writer = create_key(&data, &["beta-writer", "--write", "beta", "--read", "alpha"]);
    let (ok, listed, _) = kb(&data, &["keys", "list"]);
    assert!(ok);
    assert!(
        listed.contains("ops")
            && listed.contains("admin")
            && listed.contains("alpha:read")
            && listed.contains("beta:write"),
        "{listed}"
    );
    // Only hashes are stored.
    let db = std::fs::read(data.join("kb.sqlite")).unwrap();
    for k in [&admin, &reader, &writer] {
        assert!(!db.windows(k.len()).any(|w| w == k.as_bytes()), "a key is stored in clear");
    }

    // Keys exist now: without one, or with a wrong one, 401; probes stay open.
    server.use_key(None);
    assert_error(&server.get("/v1/collections"), 401, "unauthorized");
    assert_error(&server.post_json("/v1/collections/alpha/search", &json!({"query": "launch"})), 401, "unauthorized");
    server.use_key(Some("kb_0000000000000000000000000000000000000000000000000000000000000000"));
    assert_error(&server.get("/v1/collections"), 401, "unauthorized");
    let wrong_scheme = server.call("GET", "/v1/collections", &[("Authorization", "Basic a2I6a2I=")], None);
    assert_eq!(wrong_scheme.status, 401, "{}", wrong_scheme.body);
    server.use_key(None);
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.call("GET", "/metrics", &[], None).status, 200);

    // A read key on alpha: sees alpha only, cannot change it, and beta does not exist for it.
    server.use_key(Some(&reader));
    let (status, body) = server.get("/v1/collections");
    assert_eq!(status, 200);
    let names: Vec<&str> =
        body["collections"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha"], "{body}");
    assert!(!server.search("alpha", "Project Halcyon launch date", "hybrid", 3).is_empty());
    assert_eq!(server.documents("alpha").len(), 1);
    let job = server.get(&format!("/v1/jobs/{}", alpha_doc["job_id"]));
    assert_eq!(job.0, 200, "{}", job.1);
    assert_error(
        &server.post_json("/v1/collections/beta/search", &json!({"query": "ports"})),
        404,
        "collection_not_found",
    );
    assert_error(
        &server.post_json("/v1/collections/beta/ask", &json!({"question": "Which port?"})),
        404,
        "collection_not_found",
    );
    assert_error(
        &server.post_json(
            "/v1/chat/completions",
            &json!({"model": "kb:beta", "messages": [{"role": "user", "content": "Which port?"}]}),
        ),
        404,
        "collection_not_found",
    );
    assert_error(&server.get("/v1/collections/beta/documents"), 404, "collection_not_found");
    assert_error(&server.get(&format!("/v1/jobs/{}", beta_doc["job_id"])), 404, "not_found");
    assert_error(&server.upload("alpha", &[("x.txt", b"hello there")]), 403, "forbidden");
    assert_error(&server.delete(&format!("/v1/collections/alpha/documents/{}", alpha_doc["id"])), 403, "forbidden");
    assert_error(&server.post_json("/v1/collections", &json!({"name": "gamma"})), 403, "forbidden");
    assert_error(&server.delete("/v1/collections/alpha"), 403, "forbidden");

    // A write key on beta (and read on alpha): uploads to beta, cannot delete in alpha.
    server.use_key(Some(&writer));
    upload_and_wait(&server, "beta", "page.html", &fixture("page.html"));
    assert_error(&server.delete(&format!("/v1/collections/alpha/documents/{}", alpha_doc["id"])), 403, "forbidden");
    assert_error(&server.post_json("/v1/collections", &json!({"name": "gamma"})), 403, "forbidden");

    // The admin key does everything.
    server.use_key(Some(&admin));
    server.create_collection("gamma");
    assert_eq!(server.delete("/v1/collections/gamma"), (204, Value::Null));
    assert_eq!(server.documents("beta").len(), 2);

    // Revoked keys stop working at once.
    let (ok, _, _) = kb(&data, &["keys", "revoke", "alpha-reader"]);
    assert!(ok);
    server.use_key(Some(&reader));
    assert_error(&server.get("/v1/collections"), 401, "unauthorized");
    server.assert_healthy();
}

#[test]
fn beyond_loopback_only_with_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kb"))
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .arg("--models-dir")
        .arg(crate::common::models_dir())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success(), "kb serve listened on 0.0.0.0 without keys");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("API keys") && stderr.contains("kb keys create"), "{stderr}");

    let admin = create_key(&data, &["ops", "--admin"]);
    let server = Server::start_at(&data, None, "0.0.0.0:0");
    assert_error(&server.get("/v1/collections"), 401, "unauthorized");
    server.use_key(Some(&admin));
    assert_eq!(server.get("/v1/collections"), (200, json!({"collections": []})));
}

#[test]
fn metrics_openapi_and_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.create_collection("docs");
    upload_and_wait(&server, "docs", "notes.txt", &fixture("notes.txt"));
    server.search("docs", "Project Halcyon budget", "hybrid", 3);
    assert_error(&server.post_json("/v1/collections/nope/search", &json!({"query": "x"})), 404, "collection_not_found");

    // Request ids: made up when absent, echoed when sent.
    let a = server.call("GET", "/healthz", &[], None);
    let b = server.call("GET", "/healthz", &[], None);
    let (ida, idb) = (a.request_id.expect("x-request-id"), b.request_id.expect("x-request-id"));
    assert!(!ida.is_empty() && ida != idb);
    let c = server.call("GET", "/healthz", &[("X-Request-Id", "trace-42")], None);
    assert_eq!(c.request_id.as_deref(), Some("trace-42"));
    // ... and they appear in the logs next to the request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("trace-42") {
        assert!(Instant::now() < deadline, "request id not logged:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    let m = server.call("GET", "/metrics", &[], None);
    assert_eq!(m.status, 200);
    assert!(m.content_type.starts_with("text/plain"), "{}", m.content_type);
    for needle in [
        r#"kb_http_requests_total{method="POST",route="/v1/collections/{name}/search",status="200"} 1"#,
        r#"kb_http_requests_total{method="POST",route="/v1/collections/{name}/search",status="404"} 1"#,
        r#"kb_http_request_duration_seconds_bucket{method="POST",route="/v1/collections/{name}/search""#,
        r#"kb_ingest_jobs_total{outcome="done"} 1"#,
        r#"kb_ingest_jobs{status="queued"} 0"#,
        r#"kb_embedding_batch_seconds_count{kind="passages"}"#,
        r#"kb_embedding_batch_seconds_count{kind="query"}"#,
    ] {
        assert!(m.body.contains(needle), "metrics lack {needle}:\n{}", m.body);
    }

    let doc = server.call("GET", "/openapi.json", &[], None);
    assert_eq!(doc.status, 200);
    let api: Value = serde_json::from_str(&doc.body).unwrap();
    assert!(api["openapi"].as_str().unwrap().starts_with("3."), "{}", api["openapi"]);
    let paths = api["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/collections", "post"),
        ("/v1/collections", "get"),
        ("/v1/collections/{name}", "delete"),
        ("/v1/collections/{name}/documents", "post"),
        ("/v1/collections/{name}/documents", "get"),
        ("/v1/collections/{name}/documents/{id}", "delete"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/collections/{name}/search", "post"),
        ("/v1/collections/{name}/ask", "post"),
        ("/v1/chat/completions", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let search = &api["paths"]["/v1/collections/{name}/search"]["post"];
    assert!(search["requestBody"].is_object() && search["responses"]["200"].is_object(), "{search}");
}

#[test]
fn sigterm_finishes_or_requeues_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    server.create_collection("docs");
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("doc{i}.txt"),
                format!("Document {i}\n\n{}", "Turbines need regular inspection of every blade. ".repeat(200))
                    .into_bytes(),
            )
        })
        .collect();
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let (status, body) = server.upload("docs", &parts);
    assert_eq!(status, 202, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(40);
    while server.alive() {
        assert!(Instant::now() < deadline, "kb serve did not stop after SIGTERM:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log();
    assert!(log.contains("ingest workers idle") || log.contains("queued again for the next start"), "{log}");
    drop(server);

    // Nothing was left running: the next start finishes everything, each document once.
    let server = Server::start(&data);
    let docs = server.wait_idle("docs", Duration::from_secs(120));
    assert_eq!(docs.len(), 6, "{docs:#?}");
    assert!(docs.iter().all(|d| d["status"] == "done" && d["chunks"].as_i64().unwrap() > 0), "{docs:#?}");
    let chunks: i64 = docs.iter().map(|d| d["chunks"].as_i64().unwrap()).sum();
    let (_, body) = server.get("/v1/collections");
    assert_eq!(body["collections"][0]["chunks"], chunks, "{body}");
}
