use actix_web::{post, web, HttpResponse};
use kb_index::store::Access;
use serde::Deserialize;
use serde_json::json;

use super::{answer_whole, standalone, stream_answer};
use crate::answer::{Answer, Turn};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorBody, ErrorResponses};
use crate::server::State;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AskBody {
    question: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    stream: bool,
    /// Earlier turns of the conversation, oldest first: a follow-up question is rewritten
    /// into a standalone one with their help before retrieval.
    #[serde(default)]
    history: Vec<Turn>,
}

fn default_top_k() -> usize {
    5
}

fn answer_json(a: &Answer, question: &str) -> serde_json::Value {
    json!({
        "answer": a.answer, "kind": a.kind, "citations": a.citations,
        "question": question, "dropped_sentences": a.dropped_sentences,
    })
}

fn sse(event: &str, data: &impl serde::Serialize) -> web::Bytes {
    let data = serde_json::to_string(data).unwrap_or_default();
    web::Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

#[utoipa::path(post, path = "/v1/collections/{name}/ask", tag = "search", params(("name" = String, Path)), request_body = AskBody, responses((status = 200, description = "The answer; with stream: true, text/event-stream events token (the draft), citations (the verified answer, which replaces the draft), done", body = Answer), (status = 503, description = "Too many answers in progress (Retry-After)", body = ErrorBody), ErrorResponses))]
#[post("/v1/collections/{name}/ask")]
pub async fn ask(
    state: web::Data<State>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<AskBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&name, Access::Read)?;
    if body.question.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_request", "question must not be empty"));
    }
    if body.top_k == 0 || body.top_k > 50 {
        return Err(ApiError::bad_request("invalid_request", "top_k must be between 1 and 50"));
    }
    let c = state.engine().collection(&name).await?;
    let body = body.into_inner();
    let question = standalone(&state, body.question, body.history).await?;
    let passages = state.answerer().retrieve(&c, &question, body.top_k).await?;
    let state2 = state.clone();

    if !body.stream {
        let answer = answer_whole(state2, question.clone(), passages).await?;
        return Ok(HttpResponse::Ok().json(answer_json(&answer, &question)));
    }
    let asked = question.clone();

    stream_answer(
        state2,
        question,
        passages,
        None,
        |piece| Some(sse("token", &json!({"text": piece}))),
        move |result| match result {
            // The verified answer: it replaces the streamed draft.
            Ok(a) => vec![sse("citations", &answer_json(&a, &asked)), sse("done", &json!({}))],
            Err(e) => {
                let e = ApiError::from(e);
                vec![sse("error", &json!({"error": {"code": "generation_failed", "message": e.to_string()}}))]
            }
        },
    )
    .await
}
