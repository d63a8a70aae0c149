//! Query embedding, owned by one thread. Searches that arrive while a forward pass runs are
//! embedded together in the next one: a batch of short queries costs little more than one
//! (the encoder's matrices are tiny for a single query), so under concurrent load the
//! encoder's throughput grows with the load instead of queueing it. The pass runs on a pool
//! of its own at normal priority, apart from ingest's low-priority pool, so a search never
//! waits behind an upload's embedding.

use std::sync::mpsc;
use std::sync::Arc;

use kb_inference::Embedder;
use tokio::sync::oneshot;

use crate::{IndexError, Result};

/// The most queries embedded in one forward pass.
const MAX_BATCH: usize = 32;

struct Request {
    text: String,
    /// The vector, or the failed pass's message (shared by every query of the batch).
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

pub struct QueryBatcher {
    requests: mpsc::Sender<Request>,
}

impl QueryBatcher {
    pub fn new(embedder: Arc<dyn Embedder>) -> Self {
        let (tx, rx) = mpsc::channel::<Request>();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("kb-query-{i}")).build().ok();
        let spawned = std::thread::Builder::new().name("kb-query-batcher".into()).spawn(move || {
            // Ends when the engine (and with it the sender) is dropped.
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let texts: Vec<&str> = batch.iter().map(|r| r.text.as_str()).collect();
                let embed = || embedder.embed_queries(&texts);
                let result = match &pool {
                    Some(p) => p.install(embed),
                    None => embed(),
                };
                match result {
                    Ok(vectors) => {
                        for (r, v) in batch.into_iter().zip(vectors) {
                            let _ = r.reply.send(Ok(v));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for r in batch {
                            let _ = r.reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the query embedding thread");
        }
        Self { requests: tx }
    }

    /// The query's embedding, from the next forward pass.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { text: text.to_owned(), reply })
            .map_err(|_| IndexError::Task("the query embedding thread has stopped".into()))?;
        rx.await
            .map_err(|_| IndexError::Task("query embedding was dropped".into()))?
            .map_err(|e| IndexError::Task(format!("embedding the query: {e}")))
    }
}
