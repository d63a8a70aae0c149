use actix_web::{post, web, HttpResponse};
use kb_index::{SearchMode, SearchRequest};
use serde::Deserialize;
use serde_json::json;

use crate::server::error::ApiError;
use crate::server::State;

#[derive(Deserialize)]
pub struct SearchBody {
    query: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default)]
    mode: SearchMode,
    /// At most one hit per document.
    #[serde(default)]
    distinct_documents: bool,
}

fn default_top_k() -> usize {
    10
}

/// The most hits one search may ask for.
const MAX_TOP_K: usize = 1000;

#[post("/v1/collections/{name}/search")]
pub async fn search(state: web::Data<State>, name: web::Path<String>, body: web::Json<SearchBody>) -> Result<HttpResponse, ApiError> {
    if body.query.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_request", "query must not be empty"));
    }
    if body.top_k == 0 || body.top_k > MAX_TOP_K {
        return Err(ApiError::bad_request("invalid_request", format!("top_k must be between 1 and {MAX_TOP_K}")));
    }
    let c = state.engine().collection(&name).await?;
    let req = SearchRequest {
        query: body.query.clone(),
        top_k: body.top_k,
        mode: body.mode,
        distinct_documents: body.distinct_documents,
    };
    let hits = state.engine().search(&c, &req).await?;
    let hits: Vec<_> = hits
        .into_iter()
        .map(|h| {
            json!({
                "chunk_id": h.chunk.id,
                "document_id": h.chunk.document_id,
                "filename": h.chunk.filename,
                "score": h.score,
                "text": h.chunk.text,
                "page": h.chunk.page,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"hits": hits})))
}
