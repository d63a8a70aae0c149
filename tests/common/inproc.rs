//! The service in-process: the library's app factory (`kb::server::app`) over a data
//! directory, the real models and SQLite, called through actix-web's test harness: no process,
//! no socket. For HTTP contract tests (bad input, error codes, response shapes); restarts,
//! signals and the PDF worker's isolation need the real process (`server.rs`). PDFs are still
//! parsed by the real `kb pdf-worker` child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix_web::body::to_bytes;
use actix_web::dev::Service;
use actix_web::test::{self, TestRequest};
use actix_web::web;
use kb::config::{Config, GeneratorKind};
use kb::server::State;
use serde_json::{json, Value};

/// The service's state, ready; each request goes through a fresh `kb::server::app` over it.
pub struct Api {
    state: web::Data<State>,
    pub data_dir: PathBuf,
}

impl Api {
    /// The service over `data_dir` with the default configuration, extractive answers.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, "").await
    }

    /// As `start`, with `toml` on top of the defaults (as a `--config` file would be).
    pub async fn start_with(data_dir: &Path, toml: &str) -> Self {
        let mut config: Config = toml::from_str(toml).expect("test configuration");
        if !toml.contains("generator") {
            // No test here asks a question: skip loading SmolLM2.
            config.generator = GeneratorKind::None;
        }
        config.data_dir = data_dir.to_owned();
        config.models_dir = super::models_dir();
        config.validate().expect("valid test configuration");
        let state = kb::server::state(config, env!("CARGO_BIN_EXE_kb").into()).await.expect("starting the service");
        state.set_ready(true);
        Self { state, data_dir: data_dir.to_owned() }
    }

    /// Any request; (status, `X-Request-Id`, body text). Errors the service returns become
    /// responses, as the HTTP server makes them.
    pub async fn send(&self, req: TestRequest) -> (u16, Option<String>, String) {
        let app = test::init_service(kb::server::app(self.state.clone())).await;
        let res = match app.call(req.to_request()).await {
            Ok(res) => res.map_into_boxed_body().into_parts().1,
            Err(e) => e.error_response(),
        };
        let status = res.status().as_u16();
        let id = res.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = to_bytes(res.into_body()).await.unwrap_or_else(|e| panic!("{status}: reading the body: {e}"));
        (status, id, String::from_utf8(bytes.to_vec()).expect("UTF-8 body"))
    }

    async fn json(&self, req: TestRequest) -> (u16, Value) {
        let (status, _, text) = self.send(req).await;
        super::json_reply(status, &text)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.json(TestRequest::get().uri(path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.json(TestRequest::delete().uri(path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.json(TestRequest::post().uri(path).set_json(body)).await
    }

    /// A POST with any body and content type (malformed JSON, hand-made multipart).
    pub async fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let req =
            TestRequest::post().uri(path).insert_header(("content-type", content_type)).set_payload(body.to_vec());
        self.json(req).await
    }

    /// Uploads files as multipart parts named `file`, file names sent verbatim.
    pub async fn upload(&self, collection: &str, files: &[(&str, &[u8])]) -> (u16, Value) {
        let (content_type, body) = super::multipart(files);
        self.post_raw(&format!("/v1/collections/{collection}/documents"), &content_type, &body).await
    }

    pub async fn create_collection(&self, name: &str) {
        let (status, body) = self.post_json("/v1/collections", &json!({"name": name})).await;
        assert_eq!(status, 201, "creating {name}: {body}");
        assert_eq!(body, json!({"name": name}));
    }

    pub async fn documents(&self, collection: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/collections/{collection}/documents")).await;
        assert_eq!(status, 200, "{body}");
        body["documents"].as_array().expect("documents array").clone()
    }

    /// Polls one job until it is done or failed; returns its final JSON.
    pub async fn wait_job(&self, id: i64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if job["status"] == "done" || job["status"] == "failed" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} still {} after {timeout:?}", job["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn search(&self, collection: &str, query: &str, mode: &str, top_k: usize) -> Vec<Value> {
        let (status, body) = self
            .post_json(
                &format!("/v1/collections/{collection}/search"),
                // Chunks, not documents: the tests count what each index holds.
                &json!({"query": query, "mode": mode, "top_k": top_k, "distinct_documents": false}),
            )
            .await;
        assert_eq!(status, 200, "search {query:?} ({mode}): {body}");
        body["hits"].as_array().expect("hits array").clone()
    }

    /// Asserts the service still answers its liveness probe.
    pub async fn assert_healthy(&self) {
        assert_eq!(self.get("/healthz").await, (200, json!({"status": "ok"})));
    }
}
