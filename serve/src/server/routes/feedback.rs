//! Feedback on an answer: thumbs up or down, an optional comment, stored with the question,
//! the answer and its citations as the person saw them.

use actix_web::{post, web, HttpResponse};
use kb_index::store::{Access, NewFeedback, Rating};
use serde::Deserialize;
use serde_json::json;

use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::State;

/// The longest comment kept, in characters.
const MAX_COMMENT: usize = 4000;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct FeedbackBody {
    /// `up` or `down`.
    #[schema(value_type = String)]
    rating: Rating,
    #[serde(default)]
    comment: Option<String>,
    question: String,
    answer: String,
    /// The answer's citations as `/ask` returned them.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    citations: Vec<serde_json::Value>,
}

#[utoipa::path(post, path = "/v1/collections/{name}/feedback", tag = "search", params(("name" = String, Path)), request_body = FeedbackBody, responses((status = 201, description = "Stored: {\"id\"}", body = serde_json::Value), (status = 400, description = "Bad request", body = crate::server::error::ErrorBody), (status = 401, description = "API key missing or unknown", body = crate::server::error::ErrorBody), (status = 403, description = "The key lacks the right", body = crate::server::error::ErrorBody), (status = 404, description = "No such collection (or not visible to the key)", body = crate::server::error::ErrorBody)))]
#[post("/v1/collections/{name}/feedback")]
pub async fn create(
    state: web::Data<State>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<FeedbackBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&name, Access::Read)?;
    if body.question.trim().is_empty() || body.answer.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_request", "question and answer must not be empty"));
    }
    let comment = body.comment.as_deref().map(str::trim).filter(|c| !c.is_empty());
    if comment.is_some_and(|c| c.chars().count() > MAX_COMMENT) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("comment must be at most {MAX_COMMENT} characters"),
        ));
    }
    let c = state.engine().collection(&name).await?;
    let citations = serde_json::Value::Array(body.citations.clone());
    let id = state
        .engine()
        .store()
        .add_feedback(&NewFeedback {
            collection: &c.name,
            rating: body.rating,
            comment,
            question: &body.question,
            answer: &body.answer,
            citations: &citations,
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({"id": id})))
}
