//! One module per resource: a route parses the request, calls the engine, shapes the answer.

pub mod ask;
pub mod chat;
pub mod collections;
pub mod documents;
pub mod feedback;
pub mod health;
pub mod jobs;
pub mod search;
pub mod sources;
pub mod ui;

use actix_web::web;
use futures_util::Stream;
use kb_index::Hit;
use kb_inference::{Flow, ModelError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::answer::{Answer, Turn};
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

/// `question` made standalone with the help of `history`, off the async executor (the
/// generator may rewrite it).
async fn standalone(state: &web::Data<State>, question: String, history: Vec<Turn>) -> Result<String, ApiError> {
    if history.is_empty() {
        return Ok(question);
    }
    let state = state.clone();
    web::block(move || state.answerer().standalone(&question, &history))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
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
    .map_err(ApiError::from)
}

/// Streams an answer as server-sent events: `preamble`, then `piece(text)` per generated
/// piece of the draft (when it gives bytes), then `end(result)` with the verified answer. The response starts only once the generator has produced
/// something or finished, so a generator that turns the request away (busy) yields a 503
/// with Retry-After instead of a stream that opens and fails. When the client goes away the
/// receiver is dropped, the next send fails, and generation stops, freeing its place.
async fn stream_answer(
    state: web::Data<State>,
    question: String,
    passages: Vec<Hit>,
    preamble: Option<web::Bytes>,
    piece: impl Fn(&str) -> Option<web::Bytes> + Send + 'static,
    end: impl FnOnce(Result<Answer, ModelError>) -> Vec<web::Bytes> + Send + 'static,
) -> Result<actix_web::HttpResponse, ApiError> {
    let permit = admit(&state)?;
    let (tx, rx) = mpsc::channel::<web::Bytes>(64);
    let (started_tx, started) = oneshot::channel::<Result<(), ApiError>>();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut started_tx = Some(started_tx);
        if let Some(p) = preamble {
            let _ = tx.blocking_send(p);
        }
        let result = state.answerer().answer(&question, &passages, &mut |text| {
            if let Some(s) = started_tx.take() {
                let _ = s.send(Ok(()));
            }
            let Some(bytes) = piece(text) else {
                return if tx.is_closed() { Flow::Stop } else { Flow::Continue };
            };
            match tx.blocking_send(bytes) {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Stop,
            }
        });
        if let Some(s) = started_tx.take() {
            if let Err(ModelError::Busy(m)) = result {
                let _ = s.send(Err(ModelError::Busy(m).into()));
                return;
            }
            let _ = s.send(Ok(()));
        }
        for bytes in end(result) {
            if tx.blocking_send(bytes).is_err() {
                break;
            }
        }
    });
    started.await.map_err(|_| ApiError::Internal("the answer task ended early".into()))??;
    Ok(actix_web::HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(event_stream(rx)))
}

/// A streaming response body fed by a generation thread through `rx`.
fn event_stream(rx: mpsc::Receiver<web::Bytes>) -> impl Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) })
}
