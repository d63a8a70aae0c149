use actix_web::{delete, get, post, web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::server::error::ApiError;
use crate::server::State;

#[derive(Deserialize)]
pub struct CreateCollection {
    name: String,
}

#[post("/v1/collections")]
pub async fn create(state: web::Data<State>, body: web::Json<CreateCollection>) -> Result<HttpResponse, ApiError> {
    let c = state.engine().create_collection(&body.name).await?;
    Ok(HttpResponse::Created().json(json!({"name": c.name})))
}

#[get("/v1/collections")]
pub async fn list(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let all = state.engine().store().collection_summaries().await?;
    Ok(HttpResponse::Ok().json(json!({"collections": all})))
}

#[delete("/v1/collections/{name}")]
pub async fn remove(state: web::Data<State>, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    state.engine().delete_collection(&name).await?;
    Ok(HttpResponse::NoContent().finish())
}
