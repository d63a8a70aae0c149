//! OpenAI-compatible chat completions: `model` is `kb:<collection>`; the last user message is
//! the question, the earlier user and assistant messages the conversation it may follow up
//! on; it is answered from the collection like `/ask`, so OpenAI clients work unchanged.
//! Streaming sends only the verified answer: an OpenAI client cannot take back a draft.

use actix_web::{post, web, HttpResponse};
use kb_index::store::Access;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{answer_whole, standalone, stream_answer};
use crate::answer::{Citation, Turn};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorBody, ErrorResponses};
use crate::server::State;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessageIn>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ChatMessageIn {
    role: String,
    /// OpenAI allows a string or an array of content parts; text parts are joined.
    #[schema(value_type = Object)]
    content: serde_json::Value,
}

/// An OpenAI `chat.completion`, with the answer's citations beside its one choice.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    id: String,
    /// Always `chat.completion`.
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<ChatChoice>,
    citations: Vec<Citation>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChatChoice {
    index: usize,
    message: ChatMessageOut,
    /// Always `stop`.
    finish_reason: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    role: &'static str,
    content: String,
}

fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => {
            parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// The last user message's text and the turns before it (each user message with the
/// assistant message that followed it). System messages are not part of the conversation.
fn conversation(messages: &[ChatMessageIn]) -> Option<(String, Vec<Turn>)> {
    let last = messages.iter().rposition(|m| m.role == "user")?;
    let question = text_of(&messages[last].content);
    if question.trim().is_empty() {
        return None;
    }
    let mut history: Vec<Turn> = Vec::new();
    for m in &messages[..last] {
        match m.role.as_str() {
            "user" => history.push(Turn { question: text_of(&m.content), answer: String::new() }),
            "assistant" => {
                if let Some(t) = history.last_mut() {
                    t.answer = text_of(&m.content);
                }
            }
            _ => {}
        }
    }
    Some((question, history))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn chunk(id: &str, model: &str, delta: serde_json::Value, finish: Option<&str>) -> web::Bytes {
    let body = json!({
        "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    web::Bytes::from(format!("data: {body}\n\n"))
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "search", request_body = ChatRequest, responses((status = 200, description = "OpenAI chat.completion (or chat.completion.chunk events with stream: true)", body = ChatCompletion), (status = 503, description = "Too many answers in progress (Retry-After)", body = ErrorBody), ErrorResponses))]
#[post("/v1/chat/completions")]
pub async fn completions(
    state: web::Data<State>,
    caller: Caller,
    body: web::Json<ChatRequest>,
) -> Result<HttpResponse, ApiError> {
    let collection = body.model.strip_prefix("kb:").ok_or_else(|| {
        ApiError::bad_request("invalid_model", format!("model must be \"kb:<collection>\", not {:?}", body.model))
    })?;
    let (question, history) = conversation(&body.messages)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "messages must contain a user message with text"))?;
    caller.require(collection, Access::Read)?;
    let c = state.engine().collection(collection).await?;
    let question = standalone(&state, question, history).await?;
    let passages = state.answerer().retrieve(&c, &question, 5).await?;
    let model = body.model.clone();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let state2 = state.clone();

    if !body.stream {
        let answer = answer_whole(state2, question, passages).await?;
        let message = ChatMessageOut { role: "assistant", content: answer.answer };
        return Ok(HttpResponse::Ok().json(ChatCompletion {
            id,
            object: "chat.completion",
            created: now(),
            model,
            choices: vec![ChatChoice { index: 0, message, finish_reason: "stop" }],
            citations: answer.citations,
        }));
    }

    let (id2, model2) = (id.clone(), model.clone());
    stream_answer(
        state2,
        question,
        passages,
        Some(chunk(&id, &model, json!({"role": "assistant", "content": ""}), None)),
        |_| None,
        move |result| {
            let mut out = Vec::new();
            match result {
                Ok(a) => out.push(chunk(&id2, &model2, json!({"content": a.answer}), None)),
                Err(e) => tracing::error!(error = %e, "generation failed"),
            }
            out.push(chunk(&id, &model, json!({}), Some("stop")));
            out.push(web::Bytes::from_static(b"data: [DONE]\n\n"));
            out
        },
    )
    .await
}
