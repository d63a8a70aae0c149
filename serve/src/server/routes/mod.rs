//! One module per resource: a route parses the request, calls the engine, shapes the answer.

pub mod ask;
pub mod chat;
pub mod collections;
pub mod documents;
pub mod health;
pub mod jobs;
pub mod search;
pub mod ui;

use actix_web::web;
use futures_util::Stream;
use kb_index::Hit;
use kb_inference::Flow;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::answer::Answer;
use crate::server::error::ApiError;
use crate::server::State;

/// A place among the answers being generated or waiting for the generator; beyond the
/// configured number, the request is turned away with 503 and Retry-After instead of queueing
/// without bound behind the one generator.
fn admit(state: &State) -> Result<OwnedSemaphorePermit, ApiError> {
    state.answer_slots().try_acquire_owned().map_err(|_| ApiError::Unavailable {
        message: "too many answers are being generated; retry shortly".into(),
        retry_after: 5,
    })
}

/// Answers without streaming, off the async executor.
async fn answer_whole(state: web::Data<State>, question: String, passages: Vec<Hit>) -> Result<Answer, ApiError> {
    let permit = admit(&state)?;
    web::block(move || {
        let _permit = permit;
        state.answerer().answer(&question, &passages, &mut |_| Flow::Continue)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A streaming response body fed by a generation thread through `rx`.
fn event_stream(rx: mpsc::Receiver<web::Bytes>) -> impl Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) })
}
