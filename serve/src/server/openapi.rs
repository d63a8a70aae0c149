//! The OpenAPI 3 document served at `/openapi.json`, generated from the route annotations and
//! the types below (the shapes the handlers return).

#![allow(dead_code)] // The response types exist to describe the JSON the handlers build.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::routes;

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `collection_not_found`.
    code: String,
    message: String,
}

#[derive(Serialize, ToSchema)]
pub struct CollectionName {
    name: String,
}

#[derive(Serialize, ToSchema)]
pub struct CollectionList {
    collections: Vec<CollectionInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct CollectionInfo {
    name: String,
    documents: i64,
    chunks: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    documents: Vec<AcceptedDocument>,
}

#[derive(Serialize, ToSchema)]
pub struct AcceptedDocument {
    id: i64,
    filename: String,
    job_id: Option<i64>,
    /// `queued`; for bytes the collection already holds, that document's status.
    status: String,
    /// Present and true when the same bytes were already in the collection.
    duplicate: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct JobInfo {
    id: i64,
    document_id: i64,
    /// `queued`, `running`, `done` or `failed`.
    status: String,
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentList {
    documents: Vec<DocumentInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentInfo {
    id: i64,
    filename: String,
    title: Option<String>,
    status: String,
    chunks: i64,
    error: Option<String>,
    size: i64,
    format: Option<String>,
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
}

#[derive(Serialize, ToSchema)]
pub struct AnswerBody {
    answer: String,
    /// `generated`, `extractive` (no generator configured) or `not_in_corpus`.
    kind: String,
    citations: Vec<CitationInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct CitationInfo {
    /// The passage number the answer cites as `[n]`.
    n: usize,
    chunk_id: i64,
    document_id: i64,
    filename: String,
    text: String,
    page: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Upload {
    /// One or more files.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kb", description = "Enterprise knowledge base: collections of documents, hybrid search, grounded answers with citations."),
    paths(
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
        routes::collections::create,
        routes::collections::list,
        routes::collections::remove,
        routes::documents::upload,
        routes::documents::list,
        routes::documents::remove,
        routes::jobs::get,
        routes::search::search,
        routes::ask::ask,
        routes::chat::completions,
        routes::feedback::create,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("api_key" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("kb API key (kb keys create)"))
                    .build(),
            ),
        );
    }
}

#[actix_web::get("/openapi.json")]
pub async fn document() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(ApiDoc::openapi())
}
