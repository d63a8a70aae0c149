//! Shared test harness: real models, a real database (SQLite file or a fresh PostgreSQL
//! database), real indexes in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kb_index::{Engine, IndexConfig, Store};
use kb_inference::{BertEmbedder, Embedder};
use kb_ingest::parse::PdfParser;
use kb_ingest::pipeline::Ingestor;
use kb_ingest::ChunkerConfig;
use sqlx::Connection;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

pub fn models_dir() -> PathBuf {
    let dir = repo().join("models");
    assert!(dir.join("all-MiniLM-L6-v2/model.safetensors").is_file(), "models missing: run scripts/fetch-models.sh");
    dir
}

/// One embedder for all tests of a binary: loading it is the slow part.
pub fn embedder() -> Arc<dyn Embedder> {
    static E: OnceLock<Arc<dyn Embedder>> = OnceLock::new();
    E.get_or_init(|| Arc::new(BertEmbedder::load(&models_dir().join("all-MiniLM-L6-v2")).expect("embedder"))).clone()
}

pub fn pdf_parser() -> PdfParser {
    PdfParser::new(env!("CARGO_BIN_EXE_kb"), vec!["pdf-worker".into()])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A database for one test: a SQLite file in `dir`, or a new PostgreSQL database.
/// PostgreSQL comes from `KB_TEST_POSTGRES_URL` (default: the local server); a test that
/// cannot reach it fails, it is never skipped.
pub async fn database_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("kb.sqlite").display()),
        Db::Postgres => {
            let admin = std::env::var("KB_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
            let name = format!(
                "kb_test_{}_{}",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            );
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
            format!("{base}/{name}")
        }
    }
}

pub struct Kb {
    pub engine: Arc<Engine>,
    pub ingestor: Ingestor,
    pub url: String,
    pub index_dir: PathBuf,
}

pub async fn open(url: &str, index_dir: &Path) -> Kb {
    let store = Store::open(url).await.expect("open store");
    let engine = Arc::new(Engine::open(store, embedder(), index_dir, IndexConfig::default()).await.expect("engine"));
    let ingestor = Ingestor::new(engine.clone(), pdf_parser(), ChunkerConfig::default());
    Kb { engine, ingestor, url: url.to_owned(), index_dir: index_dir.to_owned() }
}

pub fn read_fixture(name: &str) -> (String, Vec<u8>) {
    (name.to_owned(), fixture(name))
}
pub mod inproc;
pub mod server;

/// The bytes of a file in `fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).expect(name)
}

/// Asserts the `{"error": {"code", "message"}}` shape with the given status and code.
pub fn assert_error(got: &(u16, serde_json::Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {body}"));
    assert!(!message.trim().is_empty(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only `error` expected: {body}");
}

/// A response body as JSON: `Null` when empty; a body that is not JSON fails the test.
pub fn json_reply(status: u16, text: &str) -> (u16, serde_json::Value) {
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("response {status} is not JSON ({e}): {text:?}"))
    };
    (status, body)
}

/// A multipart body of parts named `file`, file names sent verbatim: (content type, body).
pub fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = format!("kbtest{:x}", std::process::id() as u64 * 7919 + files.len() as u64);
    let mut body = Vec::new();
    for (name, bytes) in files {
        // A quoted-string: backslashes and quotes are escaped, so the name arrives verbatim.
        let name = name.replace('\\', "\\\\").replace('"', "\\\"");
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n").as_bytes(),
        );
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
