use actix_web::{post, web, HttpResponse};
use kb_index::store::Access;
use serde::Deserialize;
use serde_json::json;

use super::{answer_whole, stream_answer};
use crate::answer::Answer;
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
}

fn default_top_k() -> usize {
    5
}

fn sse(event: &str, data: &impl serde::Serialize) -> web::Bytes {
    let data = serde_json::to_string(data).unwrap_or_default();
    web::Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

#[utoipa::path(post, path = "/v1/collections/{name}/ask", tag = "search", params(("name" = String, Path)), request_body = AskBody, responses((status = 200, description = "The answer; with stream: true, text/event-stream events token, citations, done", body = Answer), (status = 503, description = "Too many answers in progress (Retry-After)", body = ErrorBody), ErrorResponses))]
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
    let passages = state.answerer().retrieve(&c, &body.question, body.top_k).await?;
    let question = body.question.clone();
    let state2 = state.clone();

    if !body.stream {
        let answer = answer_whole(state2, question, passages).await?;
        return Ok(HttpResponse::Ok().json(answer));
    }

    stream_answer(
        state2,
        question,
        passages,
        None,
        |piece| sse("token", &json!({"text": piece})),
        |result| match result {
            Ok(a) => vec![sse("citations", &a), sse("done", &json!({}))],
            Err(e) => {
                let e = ApiError::from(e);
                vec![sse("error", &json!({"error": {"code": "generation_failed", "message": e.to_string()}}))]
            }
        },
    )
    .await
}
