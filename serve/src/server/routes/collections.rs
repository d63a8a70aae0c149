use actix_web::{delete, get, post, web, HttpResponse};
use kb_index::store::CollectionSummary;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorBody, ErrorResponses};
use crate::server::State;

#[derive(Deserialize, ToSchema)]
pub struct CreateCollection {
    name: String,
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

impl From<CollectionSummary> for CollectionInfo {
    fn from(c: CollectionSummary) -> Self {
        Self { name: c.name, documents: c.documents, chunks: c.chunks }
    }
}

#[utoipa::path(post, path = "/v1/collections", tag = "collections", request_body = CreateCollection, responses((status = 201, body = CollectionName), (status = 409, description = "It exists", body = ErrorBody), ErrorResponses))]
#[post("/v1/collections")]
pub async fn create(
    state: web::Data<State>,
    caller: Caller,
    body: web::Json<CreateCollection>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let c = state.engine().create_collection(&body.name).await?;
    Ok(HttpResponse::Created().json(CollectionName { name: c.name }))
}

#[utoipa::path(get, path = "/v1/collections", tag = "collections", responses((status = 200, body = CollectionList), ErrorResponses))]
#[get("/v1/collections")]
pub async fn list(state: web::Data<State>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let all = state.engine().store().collection_summaries().await?;
    let collections = all.into_iter().filter(|c| caller.sees(&c.name)).map(CollectionInfo::from).collect();
    Ok(HttpResponse::Ok().json(CollectionList { collections }))
}

#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path)), responses((status = 204, description = "Deleted with its documents"), ErrorResponses))]
#[delete("/v1/collections/{name}")]
pub async fn remove(
    state: web::Data<State>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    state.engine().delete_collection(&name).await?;
    Ok(HttpResponse::NoContent().finish())
}
