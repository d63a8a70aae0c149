//! The real `kb serve` as a child process on an ephemeral port, and a small blocking HTTP
//! client for it (ureq, plain HTTP only).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a fresh server may take to load its models and bind.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `kb serve`; killed (SIGKILL) and reaped when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    agent: ureq::Agent,
    /// The API key sent as `Authorization: Bearer`, when set.
    key: std::sync::Mutex<Option<String>>,
}

/// A full response: status, headers that tests look at, body text.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub request_id: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

/// Runs the `kb` command line over `data_dir`; returns (success, stdout, stderr).
pub fn kb(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kb"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--models-dir")
        .arg(super::models_dir())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KB_CONFIG")
        .output()
        .expect("running kb");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Server {
    /// Starts `kb serve` on 127.0.0.1:0 over `data_dir`, with the repository's models.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, None)
    }

    /// As `start`, with a TOML configuration file (`--config`).
    pub fn start_with(data_dir: &Path, config: Option<&Path>) -> Self {
        Self::start_at(data_dir, config, "127.0.0.1:0")
    }

    /// As `start_with`, listening on `addr`.
    pub fn start_at(data_dir: &Path, config: Option<&Path>, addr: &str) -> Self {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .expect("server log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kb"));
        cmd.arg("serve")
            .args(["--addr", addr])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--models-dir")
            .arg(super::models_dir());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        // Nothing from the test's environment may redirect the server elsewhere.
        for var in ["KB_CONFIG", "KB_DATA_DIR", "KB_MODELS_DIR", "DATABASE_URL", "KB_LOG_JSON"] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning kb serve");

        // Read stdout on a thread (and keep draining it) so a slow start cannot hang the test.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("kb listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                panic!("kb serve did not report its address within {START_TIMEOUT:?}; log:\n{log}");
            }
        };
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        let base = base.replace("0.0.0.0", "127.0.0.1");
        Self { child, base, data_dir: data_dir.to_owned(), agent, key: Default::default() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown hooks, no flushing.
    pub fn kill(mut self) {
        self.child.kill().expect("killing kb serve");
        self.child.wait().expect("reaping kb serve");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `key` as the API key on every later request (`None`: no key).
    pub fn use_key(&self, key: Option<&str>) {
        *self.key.lock().unwrap() = key.map(str::to_owned);
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &self.url(path));
        match self.key.lock().unwrap().as_deref() {
            Some(k) => req.set("Authorization", &format!("Bearer {k}")),
            None => req,
        }
    }

    /// Any request, with extra headers and an optional JSON body; the whole reply as text.
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        let mut req = self.request(method, path);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let res = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("HTTP transport error: {e}"),
        };
        Reply {
            status: res.status(),
            content_type: res.header("content-type").unwrap_or("").to_owned(),
            request_id: res.header("x-request-id").map(str::to_owned),
            retry_after: res.header("retry-after").map(str::to_owned),
            body: res.into_string().expect("reading the response body"),
        }
    }

    fn finish(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
        let res = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("HTTP transport error: {e}"),
        };
        let status = res.status();
        super::json_reply(status, &res.into_string().expect("reading the response body"))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(self.request("GET", path).call())
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        Self::finish(self.request("DELETE", path).call())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(self.request("POST", path).send_json(body.clone()))
    }

    /// A POST with any body and content type (malformed JSON, hand-made multipart).
    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        Self::finish(self.request("POST", path).set("Content-Type", content_type).send_bytes(body))
    }

    /// Uploads files as multipart parts named `file`, file names sent verbatim.
    pub fn upload(&self, collection: &str, files: &[(&str, &[u8])]) -> (u16, Value) {
        let (content_type, body) = super::multipart(files);
        self.post_raw(&format!("/v1/collections/{collection}/documents"), &content_type, &body)
    }

    pub fn create_collection(&self, name: &str) {
        let (status, body) = self.post_json("/v1/collections", &serde_json::json!({"name": name}));
        assert_eq!(status, 201, "creating {name}: {body}");
        assert_eq!(body, serde_json::json!({"name": name}));
    }

    pub fn documents(&self, collection: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/collections/{collection}/documents"));
        assert_eq!(status, 200, "{body}");
        body["documents"].as_array().expect("documents array").clone()
    }

    /// Polls the documents list until none is queued or running; returns the final list.
    pub fn wait_idle(&self, collection: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let docs = self.documents(collection);
            if docs.iter().all(|d| d["status"] == "done" || d["status"] == "failed") {
                return docs;
            }
            assert!(Instant::now() < deadline, "documents still pending after {timeout:?}: {docs:#?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls one job until it is done or failed; returns its final JSON.
    pub fn wait_job(&self, id: i64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{id}"));
            assert_eq!(status, 200, "{job}");
            if job["status"] == "done" || job["status"] == "failed" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} still {} after {timeout:?}\n{}", job["status"], self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn search(&self, collection: &str, query: &str, mode: &str, top_k: usize) -> Vec<Value> {
        let (status, body) = self.post_json(
            &format!("/v1/collections/{collection}/search"),
            // Chunks, not documents: the tests count what each index holds.
            &serde_json::json!({"query": query, "mode": mode, "top_k": top_k, "distinct_documents": false}),
        );
        assert_eq!(status, 200, "search {query:?} ({mode}): {body}");
        body["hits"].as_array().expect("hits array").clone()
    }

    /// Asserts the server still answers its liveness probe.
    pub fn assert_healthy(&self) {
        let (status, body) = self.get("/healthz");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, serde_json::json!({"status": "ok"}));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
