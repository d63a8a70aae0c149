use actix_web::{delete, get, post, web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::State;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateCollection {
    name: String,
}

#[utoipa::path(post, path = "/v1/collections", tag = "collections", request_body = CreateCollection, responses((status = 201, body = crate::server::openapi::CollectionName), (status = 409, description = "It exists", body = crate::server::openapi::ErrorBody), (status = 400, description = "Bad request", body = crate::server::openapi::ErrorBody), (status = 401, description = "API key missing or unknown", body = crate::server::openapi::ErrorBody), (status = 403, description = "The key lacks the right", body = crate::server::openapi::ErrorBody), (status = 404, description = "No such collection (or not visible to the key)", body = crate::server::openapi::ErrorBody)))]
#[post("/v1/collections")]
pub async fn create(
    state: web::Data<State>,
    caller: Caller,
    body: web::Json<CreateCollection>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let c = state.engine().create_collection(&body.name).await?;
    Ok(HttpResponse::Created().json(json!({"name": c.name})))
}

#[utoipa::path(get, path = "/v1/collections", tag = "collections", responses((status = 200, body = crate::server::openapi::CollectionList), (status = 400, description = "Bad request", body = crate::server::openapi::ErrorBody), (status = 401, description = "API key missing or unknown", body = crate::server::openapi::ErrorBody), (status = 403, description = "The key lacks the right", body = crate::server::openapi::ErrorBody), (status = 404, description = "No such collection (or not visible to the key)", body = crate::server::openapi::ErrorBody)))]
#[get("/v1/collections")]
pub async fn list(state: web::Data<State>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let mut all = state.engine().store().collection_summaries().await?;
    all.retain(|c| caller.sees(&c.name));
    Ok(HttpResponse::Ok().json(json!({"collections": all})))
}

#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path)), responses((status = 204, description = "Deleted with its documents"), (status = 400, description = "Bad request", body = crate::server::openapi::ErrorBody), (status = 401, description = "API key missing or unknown", body = crate::server::openapi::ErrorBody), (status = 403, description = "The key lacks the right", body = crate::server::openapi::ErrorBody), (status = 404, description = "No such collection (or not visible to the key)", body = crate::server::openapi::ErrorBody)))]
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
