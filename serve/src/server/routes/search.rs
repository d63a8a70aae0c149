use actix_web::{post, web, HttpResponse};
use kb_index::store::Access;
use kb_index::Hit;
use kb_index::{SearchMode, SearchRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorResponses};
use crate::server::State;

#[derive(Deserialize, ToSchema)]
pub struct SearchBody {
    query: String,
    #[serde(default = "default_top_k")]
    #[schema(default = 10)]
    top_k: usize,
    /// `hybrid` (default), `vector` or `keyword`.
    #[serde(default)]
    #[schema(value_type = String)]
    mode: SearchMode,
    /// At most one hit (its best passage) per document: what a person scanning results
    /// wants, and the default. `false` returns every matching chunk, several per document.
    #[serde(default = "distinct_by_default")]
    #[schema(default = true)]
    distinct_documents: bool,
}

fn distinct_by_default() -> bool {
    true
}

#[derive(Serialize, ToSchema)]
pub struct SearchHits {
    hits: Vec<SearchHit>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchHit {
    chunk_id: i64,
    document_id: i64,
    filename: String,
    score: f32,
    text: String,
    page: Option<u32>,
    /// Where in the document: the page, slide, sheet and rows, or the heading path.
    location: Option<String>,
    heading_path: Vec<String>,
}

impl From<Hit> for SearchHit {
    fn from(h: Hit) -> Self {
        let location = h.chunk.location_label();
        Self {
            chunk_id: h.chunk.id,
            document_id: h.chunk.document_id,
            filename: h.chunk.filename,
            score: h.score,
            location,
            text: h.chunk.text,
            page: h.chunk.page,
            heading_path: h.chunk.heading_path,
        }
    }
}

fn default_top_k() -> usize {
    10
}

/// The most hits one search may ask for.
const MAX_TOP_K: usize = 1000;

#[utoipa::path(post, path = "/v1/collections/{name}/search", tag = "search", params(("name" = String, Path)), request_body = SearchBody, responses((status = 200, body = SearchHits), ErrorResponses))]
#[post("/v1/collections/{name}/search")]
pub async fn search(
    state: web::Data<State>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<SearchBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&name, Access::Read)?;
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
    Ok(HttpResponse::Ok().json(SearchHits { hits: hits.into_iter().map(SearchHit::from).collect() }))
}
